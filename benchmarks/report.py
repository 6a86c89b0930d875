"""Turn a saved pytest-benchmark run (and ratios.py's file) into Markdown tables and pictures.

    python -m pytest benchmarks --benchmark-autosave   # saves .benchmarks/<machine>/NNNN_*.json
    python benchmarks/ratios.py                        # .benchmarks/ratios_<device>.json
    python benchmarks/report.py                        # the newest saved run, + the ratios
    python benchmarks/report.py path/to/run.json [--ratios path.json] [--no-plots]

Times are each benchmark's fastest round (the least disturbed by other work on a shared
machine). "manual / autograd" is the time ratio: 0.80x means the hand-written code takes 80 %
of autograd's time. GFLOP/s counts the matmul FLOPs of the operation (see contenders.py);
"% of peak" divides it by the machine's measured float32 matmul peak, the fastest backend
that benchmarks/peak.py found (numpy's OpenBLAS or JAX on some CPUs), and "% of torch mm" by
torch's own matmul, the ceiling torch's kernels could reach here.

Pictures (matplotlib, Agg): docs/benchmark_<device>.png, the time per example of one training
step against the batch size, log-log, one line per implementation, the measured peak drawn
as the limit; docs/scaling_<device>.png, the step's time against the parameter count as the
first hidden layer widens.
"""

import json
import math
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
ROWS = [("forward", "manual", "forward"), ("backward", "manual", "backward"),
        ("step", "manual", "step (pure)"), ("step", "fused", "step (fused)")]
STEP_IMPLS = ("manual", "fused", "compiled", "cudagraph", "jax", "autograd", "notebook")
SCALING_IMPLS = ("manual", "fused", "jax", "autograd")
DEFAULT_WIDTH = 512
# Point 3 of issue 12: (name, the ratios, batches, at most). Where a target names several
# ratios, each batch counts the lowest (the faster torch path at that batch) and says which.
TARGETS = [("fastest torch step (compiled or fused) <= 1.0x JAX at batch 1-128",
            ("compiled/jax", "fused/jax"), (1, 32, 128), 1.0),
           ("eager fused step <= 0.7x autograd at batch 32", ("fused/autograd",), (32,), 0.7),
           ("eager step (pure) <= 0.7x autograd at batch 32", ("manual/autograd",), (32,), 0.7)]
RATIO_WORDS = {"compiled/jax": "compiled", "fused/jax": "fused"}


def newest_saved(root=ROOT / ".benchmarks"):
    """The most recently saved pytest-benchmark JSON under root."""
    saved = sorted(root.glob("*/*.json"), key=lambda p: p.stat().st_mtime)
    if not saved:
        raise ValueError(f"no saved benchmark run under {root}; run "
                         "`python -m pytest benchmarks --benchmark-autosave` first.")
    return saved[-1]


def load_runs(path):
    """-> (machine info, {(device, op, impl, batch, width): extra_info + its min seconds}).

    width is the first hidden layer's (512 but in the scaling group).
    """
    try:
        data = json.loads(Path(path).read_text())
        benchmarks = data["benchmarks"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise ValueError(f"{path} is not a pytest-benchmark JSON file ({type(err).__name__}); "
                         "give a file that --benchmark-autosave or --benchmark-json "
                         "wrote.") from None
    runs = {}
    try:
        for bench in benchmarks:
            info = bench.get("extra_info", {})
            if "op" not in info or not bench.get("stats"):
                continue
            width = (info.get("sizes") or [0, DEFAULT_WIDTH])[1]
            seconds = float(bench["stats"]["min"])
            if not DEVICE_NAME.fullmatch(str(info["device"])):  # it names the pictures' files
                raise ValueError(f"device {str(info['device'])[:40]!r} is not a device name")
            if not (positive_int(info["batch"]) and positive_int(width)
                    and math.isfinite(seconds) and seconds > 0):
                raise ValueError("a batch, width or time that is not a positive number")
            runs[(info["device"], info["op"], info["impl"], info["batch"], width)] = dict(
                info, seconds=seconds, median_s=bench["stats"].get("median"))
    except (AttributeError, KeyError, TypeError, IndexError, ValueError) as err:
        raise ValueError(f"{path} holds a benchmark entry this suite did not write "
                         f"({type(err).__name__}: {err}); give a file that "
                         "`pytest benchmarks --benchmark-autosave` wrote.") from None
    if not runs:
        raise ValueError(f"{path} holds no timed MLP benchmarks (were they run with "
                         "--benchmark-disable?); run them with --benchmark-autosave.")
    return data.get("machine_info", {}), runs


DEVICE_NAME = re.compile(r"(cpu|cuda|mps)(:[0-9]+)?")  # what the suite records


def positive_int(value):
    """Whether value is an int (not a bool) above 0."""
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def fmt_time(seconds):
    """Three significant figures at most: 312 us, 1.70 ms, 54.3 ms, 367 ms, 2.1 s."""
    if seconds is None:
        return "-"
    if seconds >= 1:
        return f"{seconds:.1f} s"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f} us"
    ms = seconds * 1e3
    return f"{ms:.2f} ms" if ms < 10 else f"{ms:.1f} ms" if ms < 100 else f"{ms:.0f} ms"


def ratio(a, b):
    return f"{a['seconds'] / b['seconds']:.2f}x" if a and b else "-"


def pct(value):
    return f"{value:.0f} %" if value is not None else "-"


def device_name(device, some, machine):
    """The device in words: what the benchmark recorded (a CPU with its vector instructions,
    or a GPU's name); for runs saved before that was recorded, pytest-benchmark's CPU brand."""
    name = some.get("device_name")
    if name and name != device:
        return name
    return machine.get("cpu", {}).get("brand_raw", device) if device == "cpu" else device


def peak_line(device, some, machine):
    """The device's heading: its name, threads, torch, and the measured peak with its source."""
    name = device_name(device, some, machine)
    line = f"**{device}**: {name}, {some['threads']} threads, torch {some['torch']}"
    peak = some.get("peak_gflops")
    if peak:
        backend = some.get("peak_backend", "torch")
        line += f"; measured float32 matmul peak {peak:.0f} GFLOP/s ({backend}"
        n = some.get("peak_matmul_n")
        line += f", {n}x{n} matmul)" if n else ")"
        torch_mm = some.get("torch_matmul_gflops")
        if torch_mm and backend != "torch":
            line += f"; torch's own matmul {torch_mm:.0f} GFLOP/s"
        others = {k: v for k, v in (some.get("peak_backends") or {}).items() if v}
        if others:
            line += " (" + ", ".join(f"{k} {v:.0f}" for k, v in others.items()) + ")"
    return line


def torch_pct(entry):
    """GFLOP/s as a % of torch's own matmul (None when unknown)."""
    torch_mm = entry.get("torch_matmul_gflops")
    return 100 * entry["gflops"] / torch_mm if torch_mm and "gflops" in entry else None


def device_table(device, runs, machine):
    """The main table (with a heading line) for one device: operation by batch size."""
    mine = {k[1:4]: v for k, v in runs.items() if k[0] == device and k[4] == DEFAULT_WIDTH
            and k[1] != "scaling"}
    if not mine:
        return ""
    some = next(iter(mine.values()))
    lines = [peak_line(device, some, machine), "",
             "| batch | operation | manual | autograd | notebook | manual / autograd | "
             "manual / notebook | GFLOP/s | % of peak | % of torch mm |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for batch in sorted({k[2] for k in mine}):
        for op, impl, label in ROWS:
            ours = mine.get((op, impl, batch))
            if ours is None:
                continue
            theirs, nb = mine.get((op, "autograd", batch)), mine.get((op, "notebook", batch))
            lines.append(
                f"| {batch} | {label} | {fmt_time(ours['seconds'])} | "
                f"{fmt_time(theirs['seconds']) if theirs else '-'} | "
                f"{fmt_time(nb['seconds']) if nb else '-'} | {ratio(ours, theirs)} | "
                f"{ratio(ours, nb)} | {ours.get('gflops', 0):.0f} | "
                f"{pct(ours.get('pct_of_peak'))} | {pct(torch_pct(ours))} |")
    return "\n".join(lines)


def step_table(device, runs):
    """Every step implementation by batch size: time, and the first call of compiled ones."""
    mine = {(k[2], k[3]): v for k, v in runs.items()
            if k[0] == device and k[1] == "step" and k[4] == DEFAULT_WIDTH}
    impls = [i for i in STEP_IMPLS if any(k[0] == i for k in mine)]
    if not impls:
        return ""
    lines = [f"One plain-SGD step, {device} (fastest round; % of the measured peak):", "",
             "| batch | " + " | ".join(impls) + " | best torch / jax | compiled: first call |",
             "|---:|" + "---:|" * (len(impls) + 2)]
    for batch in sorted({k[1] for k in mine}):
        cells = []
        for impl in impls:
            e = mine.get((impl, batch))
            cells.append(f"{fmt_time(e['seconds'])} ({pct(e.get('pct_of_peak'))})" if e
                         else "-")
        torch_times = [mine[(i, batch)]["seconds"] for i in impls
                       if i not in ("jax", "notebook") and (i, batch) in mine]
        jax = mine.get(("jax", batch))
        best = (f"{min(torch_times) / jax['seconds']:.2f}x" if jax and torch_times else "-")
        compiled = mine.get(("compiled", batch), {})
        lines.append(f"| {batch} | " + " | ".join(cells) + f" | {best} | "
                     f"{fmt_time(compiled.get('first_call_s'))} |")
    return "\n".join(lines)


def scaling_table(device, runs):
    """The scaling group: step time at batch 128 by first hidden width and parameter count."""
    mine = {(k[2], k[4]): v for k, v in runs.items() if k[0] == device and k[1] == "scaling"}
    impls = [i for i in SCALING_IMPLS if any(k[0] == i for k in mine)]
    if not impls:
        return ""
    batch = next(iter(mine.values()))["batch"]
    lines = [f"How the step's cost grows, {device}: 784-width-128-10 at batch {batch} "
             "(fastest round; GFLOP/s and % of peak of the fastest implementation):", "",
             "| width | parameters | " + " | ".join(impls) + " | GFLOP/s | % of peak |",
             "|---:|---:|" + "---:|" * (len(impls) + 2)]
    for width in sorted({k[1] for k in mine}):
        entries = [mine.get((i, width)) for i in impls]
        present = [e for e in entries if e]
        fastest = min(present, key=lambda e: e["seconds"])
        lines.append(f"| {width} | {fastest['params_count']:,} | "
                     + " | ".join(fmt_time(e["seconds"]) if e else "-" for e in entries)
                     + f" | {fastest.get('gflops', 0):.0f} | {pct(fastest.get('pct_of_peak'))} |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- ratios.py's file

def load_ratios(path):
    """ratios.py's JSON -> dict, or None when the file is absent."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        data = json.loads(path.read_text())
        data["summary"], data["ratios"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError) as err:
        raise ValueError(f"{path} is not a file that benchmarks/ratios.py wrote "
                         f"({type(err).__name__}).") from None
    return data


def target_verdicts(data):
    """-> [(target name, "met"/"not met"/"not measured", the measured ratios as text)]."""
    out = []
    for name, keys, batches, limit in TARGETS:
        measured = []  # (batch, ratio, which ratio it is)
        for b in batches:
            found = [(data["ratios"].get(k, {}).get(str(b)), k) for k in keys]
            found = [(r["median"], k) for r, k in found if r]
            if found:
                measured.append((b, *min(found)))
        if not measured:
            out.append((name, "not measured", "-"))
            continue
        verdict = "met" if all(v <= limit for _, v, _ in measured) and len(measured) == len(
            batches) else "not met"
        out.append((name, verdict, ", ".join(
            f"{b}: {ratio_text(v, limit)}" + (f" ({RATIO_WORDS.get(k, k)})" if len(keys) > 1
                                              else "")
            for b, v, k in measured)))
    return out


def ratio_text(value, limit):
    """2 decimals, or 3 where 2 would print the limit itself (1.005 is not met: "1.005x")."""
    return f"{value:.3f}x" if f"{value:.2f}" == f"{limit:.2f}" else f"{value:.2f}x"


def ratios_section(data):
    """ratios.py's medians, ratios and the verdict on each target, as Markdown."""
    summary, ratios = data["summary"], data["ratios"]
    impls = [i for i in ("manual", "fused", "compiled", "autograd", "jax") if i in summary]
    batches = [str(b) for b in data["batches"]]
    peak = data.get("peak") or {}
    head = (f"Interleaved ratios ({data['device']}: {data.get('device_name')}, "
            f"{data.get('threads')} threads, torch {data.get('torch')}"
            + (f", jax {data['jax']}" if data.get("jax") else "")
            + f"): median of {data['processes']} processes, each the median of "
            f"{data['blocks']} interleaved blocks")
    if peak.get("peak_gflops"):
        head += (f"; measured peak {peak['peak_gflops']:.0f} GFLOP/s ({peak['peak_backend']})")
    if data.get("jax_skipped"):
        head += f"; jax skipped: {data['jax_skipped']}"
    lines = [head + ".", "",
             "| batch | " + " | ".join(impls) + " | fused / autograd | pure / autograd | "
             "compiled / pure | compiled / jax | fused / jax | autograd / jax |",
             "|---:|" + "---:|" * (len(impls) + 6)]
    for b in batches:
        cells = [fmt_time(summary.get(i, {}).get(b, {}).get("median_s")) for i in impls]
        rs = [ratios.get(k, {}).get(b) for k in ("fused/autograd", "manual/autograd",
                                                  "compiled/manual", "compiled/jax",
                                                  "fused/jax", "autograd/jax")]
        lines.append(f"| {b} | " + " | ".join(cells) + " | "
                     + " | ".join(f"{r['median']:.2f}x" if r else "-" for r in rs) + " |")
    firsts = data.get("first_call_s", {}).get("compiled", {})
    if any(firsts.values()):
        lines += ["", "compiled, first call (the compilation), median over processes: "
                  + ", ".join(f"batch {b} {fmt_time(sorted(v)[len(v) // 2])}"
                              for b, v in firsts.items() if v)]
    lines += ["", "| target (issue 12, point 3) | measured | verdict |", "|---|---|---|"]
    lines += [f"| {name} | {text} | {verdict} |" for name, verdict, text in
              target_verdicts(data)]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- pictures

def step_series(device, runs):
    """{impl: [(batch, seconds per example)]} for the step, and the peak's line."""
    series = {}
    for (dev, op, impl, batch, width), e in runs.items():
        if dev == device and op == "step" and width == DEFAULT_WIDTH:
            series.setdefault(impl, []).append((batch, e["seconds"] / batch))
    some = next((e for k, e in runs.items() if k[0] == device and e.get("peak_gflops")), None)
    limit = None
    if some:  # the time per example that the peak's GFLOP/s would give: flops / B / peak
        per_example = some["flops"] / some["batch"]
        limit = per_example / (some["peak_gflops"] * 1e9)
    return {k: sorted(v) for k, v in series.items()}, limit, some


def scaling_series(device, runs):
    """{impl: [(parameter count, seconds)]} and the peak's line [(params, seconds)]."""
    series, limit = {}, []
    for (dev, op, impl, _batch, _width), e in runs.items():
        if dev == device and op == "scaling":
            series.setdefault(impl, []).append((e["params_count"], e["seconds"]))
            if e.get("peak_gflops") and impl == "autograd":
                limit.append((e["params_count"], e["flops"] / (e["peak_gflops"] * 1e9)))
    return {k: sorted(v) for k, v in series.items()}, sorted(limit)


def plot_lines(path, series, title, xlabel, ylabel, limit=None, limit_label=None):
    """One log-log line per implementation (+ the limit, dashed) -> path (PNG, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    for impl in sorted(series, key=lambda i: (STEP_IMPLS + ("?",)).index(i)
                       if i in STEP_IMPLS else 99):
        xs, ys = zip(*series[impl])
        # One colour per implementation in every picture (jax is purple in each of them).
        color = f"C{STEP_IMPLS.index(impl)}" if impl in STEP_IMPLS else None
        ax.plot(xs, ys, marker="o", label=impl, color=color)
    if limit:
        xs, ys = zip(*limit)
        ax.plot(xs, ys, "k--", label=limit_label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(path.stem + ".tmp.png")
    try:
        if path.exists() and not path.is_file():
            raise ValueError(f"{path} exists and is not a plain file, so no picture is written "
                             "over it; remove it and run again.")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(tmp)
        tmp.replace(path)  # the old picture stays whole until the new one is complete
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        plt.close(fig)
    return path


def write_pictures(runs, machine, docs=None):
    """docs/benchmark_<device>.png and docs/scaling_<device>.png for every device -> paths."""
    written, docs = [], Path(docs or DOCS)
    for device in sorted({k[0] for k in runs}):
        series, limit, some = step_series(device, runs)
        if series and some:
            batches = sorted({b for pts in series.values() for b, _ in pts})
            peak = some.get("peak_gflops")
            name = device_name(device, some, machine)
            written.append(plot_lines(
                docs / f"benchmark_{device}.png", series,
                f"784-512-128-10, one plain-SGD step, {device}, torch {some['torch']}\n{name}",
                "batch size", "seconds per example",
                [(b, limit) for b in batches] if limit else None,
                f"measured peak {peak:.0f} GFLOP/s ({some.get('peak_backend')})"
                if peak else None))
        series, limit = scaling_series(device, runs)
        if series:
            some = next(e for k, e in runs.items() if k[0] == device and k[1] == "scaling")
            peak = some.get("peak_gflops")
            written.append(plot_lines(
                docs / f"scaling_{device}.png", series,
                f"784-width-128-10, one step at batch {some['batch']}, {device}, "
                f"torch {some['torch']}\n{device_name(device, some, machine)}",
                "parameters", "seconds per step", limit or None,
                f"measured peak {peak:.0f} GFLOP/s" if peak else None))
    return written


def report(path, ratios_path=None):
    machine, runs = load_runs(path)
    devices = sorted({k[0] for k in runs})
    parts = []
    for d in devices:
        parts += [device_table(d, runs, machine), step_table(d, runs), scaling_table(d, runs)]
        data = load_ratios(ratios_path or ROOT / ".benchmarks" / f"ratios_{d}.json")
        if data:
            parts.append(ratios_section(data))
    return "\n\n".join(p for p in parts if p)


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    usage = "usage: python benchmarks/report.py [saved.json] [--ratios file.json] [--no-plots]"
    plots, ratios_path = "--no-plots" not in argv, None
    argv = [a for a in argv if a != "--no-plots"]
    if "--ratios" in argv:
        i = argv.index("--ratios")
        if i + 1 >= len(argv):
            print(usage, file=sys.stderr)
            return 2
        ratios_path = Path(argv[i + 1])
        del argv[i:i + 2]
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print(usage, file=sys.stderr)
        return 2
    try:
        path = Path(argv[0]) if argv else newest_saved()
        text = report(path, ratios_path)
        pictures = write_pictures(load_runs(path)[1], load_runs(path)[0]) if plots else []
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: could not write a picture ({err.strerror or err}: "
              f"{err.filename or 'docs/'}); free some space or check the folder, and run "
              "again.", file=sys.stderr)
        return 1
    except (KeyError, TypeError, AttributeError, IndexError, RecursionError,
            ArithmeticError) as err:
        print(f"error: {path} (or the ratios file beside it) holds something this suite did "
              f"not write ({type(err).__name__}: {err}); give files that `pytest benchmarks "
              "--benchmark-autosave` and benchmarks/ratios.py wrote.", file=sys.stderr)
        return 2
    print(f"from {path}\n\n{text}")
    for picture in pictures:
        print(f"\nwrote {picture.relative_to(ROOT) if picture.is_relative_to(ROOT) else picture}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
