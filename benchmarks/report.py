"""Markdown tables and pictures from a saved pytest-benchmark run and from ratios.py's file.

    python -m pytest benchmarks --benchmark-autosave   # saves .benchmarks/<machine>/NNNN_*.json
    python benchmarks/ratios.py                        # writes .benchmarks/ratios_<device>.json
    python benchmarks/report.py                        # the newest saved run, and the ratios
    python benchmarks/report.py docs/benchmark_cuda.json --docs docs

A time is the benchmark's fastest round (the least disturbed on a shared machine). GFLOP/s is
the operation's matmul FLOPs (contenders.py) over its time; "% of peak" divides it by the
machine's measured float32 matmul peak (peak.py: the fastest backend); "x matmuls alone" divides
a step's time by the floor's, its own matrix products alone. The pictures (docs/benchmark_*.png
by batch, docs/scaling_*.png by first hidden width) draw one step's time with two limits: the
step's own FLOPs at the measured peak (dashed), and its matmuls alone (dotted).
"""

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import common  # noqa: E402

IMPLS = ("manual", "pure", "inplace", "fused", "compiled", "cudagraph", "jax", "autograd",
         "notebook", "matmuls")  # notebook: in runs saved before it was dropped
TORCH_STEPS = ("pure", "inplace", "fused", "compiled", "cudagraph", "autograd")
TARGET = 1.15  # issue 24: the fastest step within 1.15x of its matmuls alone at batch >= 128


def load_runs(path):
    """A saved pytest-benchmark run -> {(device, op, impl, x): entry}; x is the batch size, or
    the first hidden width in the scaling group; entry is the benchmark's extra_info with
    "seconds", its fastest round."""
    runs = {}
    for bench in json.loads(Path(path).read_text())["benchmarks"]:
        e = dict(bench["extra_info"], seconds=bench["stats"]["min"])
        if "op" not in e:  # not one of this suite's
            continue
        if e["op"] in ("step", "scaling") and e["impl"] == "manual":
            e["impl"] = "pure"  # runs saved before the step's name was "pure"
        runs[(e["device"], e["op"], e["impl"], e["sizes"][1] if e["op"] == "scaling"
              else e["batch"])] = e
    return runs


def newest_saved(root=ROOT / ".benchmarks"):
    newest = max(root.glob("*/*.json"), key=lambda p: p.stat().st_mtime, default=None)
    if newest is None:
        raise ValueError(f"no saved run under {root}; run `python -m pytest benchmarks "
                         "--benchmark-autosave` first")
    return newest


def limit_seconds(entry):
    """The time entry's own operation would take at the measured peak: its FLOPs / peak."""
    peak = entry.get("peak_gflops")
    return entry["flops"] / (peak * 1e9) if peak else None


def gflops(entry):
    return entry["flops"] / entry["seconds"] / 1e9


def fmt_time(seconds):
    """Three significant figures at most: 312 us, 1.70 ms, 54.3 ms, 367 ms, 2.1 s."""
    if seconds is None:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    if seconds >= 1:
        return f"{seconds:.1f} s"
    ms = seconds * 1e3
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def times(a, b):
    return f"{a['seconds'] / b['seconds']:.2f}x" if a and b else "-"


def pct(entry):
    if not entry.get("peak_gflops"):
        return "-"
    share = 100 * gflops(entry) / entry["peak_gflops"]
    return f"{share:.1f} %" if share < 10 else f"{share:.0f} %"


def heading(device, runs):
    """One line naming the machine, torch and the measured peak with its source."""
    e = next(v for k, v in runs.items() if k[0] == device)
    line = f"**{device}**: {e['device_name']}, {e['threads']} threads, torch {e['torch']}"
    if e.get("peak_gflops"):
        rates = ", ".join(f"{k} {v:.0f}" for k, v in (e.get("peak_backends") or {}).items() if v)
        line += (f"; measured float32 matmul peak {e['peak_gflops']:.0f} GFLOP/s "
                 f"({e.get('peak_backend')}" + (f"; {rates}" if rates else "") + ")")
    return line


def table(device, runs, op):
    """op's implementations by batch (by width for "scaling"): time, GFLOP/s, % of peak, and
    the time as a multiple of the matmuls alone's (where timed) and of autograd's."""
    mine = {k[2:]: v for k, v in runs.items() if k[:2] == (device, op)}
    columns = ["time", "GFLOP/s", "% of peak", "x matmuls alone", "x autograd"]
    if not any(impl == "matmuls" for impl, _ in mine):
        columns.remove("x matmuls alone")
    lines = [f"{op}, {device}:", "", f"| {'width' if op == 'scaling' else 'batch'} | implementation"
             " | " + " | ".join(columns) + " |", "|---:|---|" + "---:|" * len(columns)]
    for (impl, x), e in sorted(mine.items(), key=lambda kv: (kv[0][1], IMPLS.index(kv[0][0]))):
        cells = {"time": fmt_time(e["seconds"]), "GFLOP/s": f"{gflops(e):.0f}", "% of peak": pct(e),
                 "x matmuls alone": times(e, mine.get(("matmuls", x))),
                 "x autograd": times(e, mine.get(("autograd", x)))}
        lines.append(f"| {x} | {impl} | " + " | ".join(cells[c] for c in columns) + " |")
    firsts = [f"batch {x} {fmt_time(e['first_call_s'])}" for (impl, x), e in sorted(mine.items())
              if impl == "compiled" and "first_call_s" in e]
    if firsts:
        lines += ["", "compiled, first call (the compilation): " + ", ".join(firsts)]
    return "\n".join(lines) if mine else ""


def chart_series(device, runs, op):
    """-> ({impl: [(x, y)]}, [(x, limit)]) for op's chart: by batch size, y the seconds per
    example (op "step", "forward" or "backward"), or for "scaling" by parameter count, y the
    seconds per step. Each x's limit is its own operation's FLOPs at the measured peak."""
    series, limit = {}, {}
    for (dev, o, impl, _), e in runs.items():
        if (dev, o) == (device, op):
            x, per = (e["params_count"], 1) if op == "scaling" else (e["batch"], e["batch"])
            series.setdefault(impl, []).append((x, e["seconds"] / per))
            if limit_seconds(e):
                limit[x] = limit_seconds(e) / per
    return {k: sorted(v) for k, v in series.items()}, sorted(limit.items())


def plot(path, series, limit, title, xlabel, ylabel, peak_label):
    """One log-log line per implementation, the matmuls alone dotted and the peak dashed."""
    plt = common.pyplot()
    fig, ax = plt.subplots(figsize=(9, 4.5), dpi=100)
    for impl in sorted(series, key=IMPLS.index):
        xs, ys = zip(*series[impl])
        if impl == "matmuls":
            ax.plot(xs, ys, "k:", marker=".", label="matmuls alone (the floor)")
        else:  # one colour per implementation in every picture
            ax.plot(xs, ys, marker="o", label=impl, color=f"C{IMPLS.index(impl)}")
    if limit:
        ax.plot(*zip(*limit), "k--", label=peak_label)
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel=ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    return common.save_figure(fig, path)


def write_pictures(runs, docs):
    """docs/benchmark_<device>.png and docs/scaling_<device>.png for every device -> paths."""
    written = []
    for device in sorted({k[0] for k in runs}):
        e = next(v for k, v in runs.items() if k[0] == device)
        name = e["device_name"].replace("$", r"\$")  # not matplotlib's mathtext
        peak = (f"the step's FLOPs at the measured peak, {e['peak_gflops']:.0f} GFLOP/s "
                f"({e.get('peak_backend')})" if e.get("peak_gflops") else None)
        for op, file, title, xlabel, ylabel in (
                ("step", "benchmark", "784-512-128-10, one plain-SGD step", "batch size",
                 "seconds per example"),
                ("scaling", "scaling", "784-width-128-10, one plain-SGD step at batch 128",
                 "parameters", "seconds per step")):
            series, limit = chart_series(device, runs, op)
            if series:
                written.append(plot(docs / f"{file}_{device}.png", series, limit,
                                    f"{title}\n{device}: {name}, torch {e['torch']}",
                                    xlabel, ylabel, peak))
    return written


# ----------------------------------------------------------------------------- ratios.py's file

def per_round(data, a, b, batch):
    """[a's time / b's time in each round where both ran]; "fastest": the fastest torch step."""
    def column(impl):
        if impl == "fastest":
            steps = [data["times"][i][batch] for i in TORCH_STEPS if i in data["times"]]
            return [min((t for t in ts if t), default=None) for ts in zip(*steps)]
        return data["times"].get(impl, {}).get(batch, [])
    return [x / y for x, y in zip(column(a), column(b)) if x and y]


def spread(values):
    """median (min-max) of ratios, or - when there are none."""
    if not values:
        return "-"
    return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})"


def fastest_name(data, batch):
    medians = {i: statistics.median(t for t in data["times"][i][batch] if t)
               for i in TORCH_STEPS if any(data["times"].get(i, {}).get(batch) or [])}
    return min(medians, key=medians.get)


def ratios_section(data):
    """ratios.py's file as Markdown: median times, ratios with their range, the 1.15x target."""
    batches = [str(b) for b in data["batches"]]
    impls = [i for i in IMPLS if i in data["times"]]
    peak = data.get("peak") or {}
    lines = [f"Interleaved, {data['device']}: {data['device_name']}, {data['threads']} threads, "
             f"torch {data['torch']}" + (f", jax {data['jax']}" if data.get("jax") else "")
             + f"; measured peak {peak.get('peak_gflops', 0):.0f} GFLOP/s "
             f"({peak.get('peak_backend')}); median of {data['processes']} processes, each the "
             f"median of {data['blocks']} blocks.", "",
             "| batch | " + " | ".join(impls) + " |", "|---:|" + "---:|" * len(impls)]
    for b in batches:
        cells = [statistics.median([t for t in data["times"][i][b] if t] or [None]) for i in impls]
        lines.append(f"| {b} | " + " | ".join(fmt_time(t) for t in cells) + " |")
    pairs = (("fastest", "matmuls"), ("pure", "matmuls"), ("fused", "matmuls"),
             ("fused", "autograd"), ("pure", "autograd"), ("compiled", "pure"), ("fastest", "jax"))
    lines += ["", "Ratios of times, within each process; their median over processes (range):",
              "", "| batch | fastest torch step | " + " | ".join(f"{a} / {b}" for a, b in pairs)
              + " |", "|---:|---|" + "---:|" * len(pairs)]
    verdicts = []
    for b in batches:
        lines.append(f"| {b} | {fastest_name(data, b)} | "
                     + " | ".join(spread(per_round(data, x, y, b)) for x, y in pairs) + " |")
        floor = per_round(data, "fastest", "matmuls", b)
        if int(b) >= 128 and floor:
            verdicts.append(f"batch {b}: {statistics.median(floor):.2f}x "
                            f"({'met' if statistics.median(floor) <= TARGET else 'not met'})")
    if verdicts:
        lines += ["", f"Target: the fastest step within {TARGET}x of its matmuls alone at batch "
                  ">= 128: " + "; ".join(verdicts) + "."]
    return "\n".join(lines)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("saved", nargs="?", type=Path, help="default: the newest saved run")
    parser.add_argument("--ratios", type=Path, help="default: .benchmarks/ratios_<device>.json")
    parser.add_argument("--docs", type=common.writable_dir, default=ROOT / "docs",
                        help="where the pictures go (default docs/)")
    parser.add_argument("--no-plots", action="store_true")
    args = parser.parse_args(argv)
    path = args.saved or newest_saved()
    runs = load_runs(path)
    parts = [f"from {path}"]
    for device in sorted({k[0] for k in runs}):
        parts += [heading(device, runs)] + [table(device, runs, op) for op in
                                            ("forward", "backward", "step", "scaling")]
        ratios = args.ratios or ROOT / ".benchmarks" / f"ratios_{device}.json"
        if ratios.is_file():
            parts.append(ratios_section(json.loads(ratios.read_text())))
    if not args.no_plots:
        parts += [f"wrote {p}" for p in write_pictures(runs, args.docs)]
    print("\n\n".join(p for p in parts if p))
    return 0


if __name__ == "__main__":
    sys.exit(common.run_main(main))
