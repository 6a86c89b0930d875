"""Turn a saved pytest-benchmark run (and ratios.py's file) into Markdown tables and pictures.

    python -m pytest benchmarks --benchmark-autosave   # saves .benchmarks/<machine>/NNNN_*.json
    python benchmarks/ratios.py                        # .benchmarks/ratios_<device>.json
    python benchmarks/report.py                        # the newest saved run, + the ratios
    python benchmarks/report.py path/to/run.json [--ratios path.json] [--no-plots]
    python benchmarks/report.py path/to/run.json --docs /tmp/pictures   # draw them elsewhere

Times are each benchmark's fastest round (the least disturbed by other work on a shared
machine). "manual / autograd" is the time ratio: 0.80x means the hand-written code takes 80 %
of autograd's time. GFLOP/s counts the matmul FLOPs of the operation (see contenders.py);
"% of peak" divides it by the machine's measured float32 matmul peak, the fastest backend
that benchmarks/peak.py found (numpy's OpenBLAS or JAX on some CPUs), and "% of torch mm" by
torch's own matmul, the ceiling torch's kernels could reach here.

Pictures (matplotlib, Agg): docs/benchmark_<device>.png, the time per example of one training
step against the batch size, log-log, one line per implementation, the measured peak drawn
as the limit; docs/scaling_<device>.png, the step's time against the parameter count as the
first hidden layer widens. They are files, drawn with Agg whatever MPLBACKEND says (an
MPLBACKEND that matplotlib does not know is set aside, with a note).
"""

import os
import sys

# Before matplotlib is imported (a second or more; main does it before any work), so that
# Ctrl-C, SIGTERM or SIGHUP while it loads prints one line instead of a traceback (as in
# 04_train_mnist.py). Once it is in, a signal raises KeyboardInterrupt: a picture being
# written is removed, not left half-written, and run() ends with one line and status 130.
if __name__ == "__main__":
    if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # early_signals sits here
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import early_signals

    _phase, _received = early_signals.install("interrupted while starting; nothing was written.")

import json  # noqa: E402 (after the early signal handlers, on purpose)
import math  # noqa: E402
import re  # noqa: E402
import stat  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

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
    saved = sorted((p for p in root.glob("*/*.json") if p.is_file()),  # no dangling link
                   key=lambda p: p.stat().st_mtime)
    if not saved:
        raise ValueError(f"no saved benchmark run under {root}; run "
                         "`python -m pytest benchmarks --benchmark-autosave` first.")
    return saved[-1]


def read_plain_text(path, what):
    """The text of path, which must be a plain file (or a link to one) -> str.

    A FIFO would make the read wait for ever, and a device (/dev/zero, a terminal) is no saved
    file either: both are refused before any byte is read (opened without blocking, then
    checked on the opened file itself). Anything unreadable is a ValueError in one sentence
    that ends with what to give instead (what: e.g. "a file that benchmarks/ratios.py
    wrote").
    """
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    except OSError as err:
        raise ValueError(f"{path} cannot be read ({err.strerror or type(err).__name__}); give "
                         f"{what}.") from None
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError(f"{path} is not a plain file (a folder, a FIFO or a device, "
                             f"say), so it is not read; give {what}.")
        try:
            return f.read().decode()
        except (OSError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} cannot be read ({type(err).__name__}); give "
                             f"{what}.") from None


def load_runs(path):
    """-> (machine info, {(device, op, impl, batch, width): extra_info + its min seconds}).

    width is the first hidden layer's (512 but in the scaling group). Every entry of ours
    (extra_info with an "op", timed) is checked first (entry_problem): one the suite did not
    write is a ValueError in one sentence naming the file and the field.
    """
    text = read_plain_text(path, "a file that --benchmark-autosave or --benchmark-json wrote")
    try:
        data = json.loads(text)
        benchmarks = list(data["benchmarks"])
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise ValueError(f"{path} is not a pytest-benchmark JSON file ({type(err).__name__}); "
                         "give a file that --benchmark-autosave or --benchmark-json "
                         "wrote.") from None
    runs = {}
    for bench in benchmarks:
        info = bench.get("extra_info", {}) if isinstance(bench, dict) else None
        if isinstance(info, dict) and ("op" not in info or not bench.get("stats")):
            continue  # another suite's benchmark, or one run with --benchmark-disable
        problem = entry_problem(bench)
        if problem:
            raise ValueError(f"{path} holds a benchmark entry this suite did not write "
                             f"({problem}); give a file that `pytest benchmarks "
                             "--benchmark-autosave` wrote.")
        info, stats = bench["extra_info"], bench["stats"]
        width = info["sizes"][1]
        runs[(info["device"], info["op"], info["impl"], info["batch"], width)] = dict(
            info, seconds=stats["min"], median_s=stats.get("median"))
    if not runs:
        raise ValueError(f"{path} holds no timed MLP benchmarks (were they run with "
                         "--benchmark-disable?); run them with --benchmark-autosave.")
    machine = data.get("machine_info")
    machine = machine if isinstance(machine, dict) else {}
    if not isinstance(machine.get("cpu", {}), dict):  # pytest-benchmark writes an object
        machine = dict(machine, cpu={})
    return machine, runs


DEVICE_NAME = re.compile(r"(cpu|cuda|mps)(:[0-9]+)?")  # what the suite records

# What benchmarks/test_mlp_kernels.py writes in each entry, checked before any table or
# picture uses it, so that a string, a list, a boolean or a null where a number belongs is
# one sentence naming the field, not a traceback (or a wrong figure) later. Numbers are
# field -> (kind, whether null is allowed): "count" a whole number above 0, "positive" a
# finite number above 0. Null is what the suite writes for a rate it could not measure.
ENTRY_REQUIRED = ("op", "impl", "device", "batch", "flops", "sizes", "params_count",
                  "threads", "torch")
ENTRY_NUMBERS = {"batch": ("count", False), "flops": ("count", False),
                 "params_count": ("count", False), "threads": ("count", False),
                 "steps_per_round": ("count", False), "peak_matmul_n": ("count", True),
                 "first_call_s": ("positive", False), "samples_per_s": ("positive", False),
                 "gflops": ("positive", False), "peak_gflops": ("positive", False),
                 "pct_of_peak": ("positive", False), "torch_matmul_gflops": ("positive", True)}
ENTRY_TEXTS = ("op", "impl", "device", "device_name", "torch", "jax", "peak_backend")
STATS_NUMBERS = {"min": ("positive", False), "median": ("positive", False)}
KINDS = {"count": "a whole number above 0", "positive": "a finite number above 0"}


def number_problem(value, kind, nullable=False):
    """None when value is a JSON number of kind ("count" or "positive"; null where nullable),
    else what it should have been, in words."""
    if value is None and nullable:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):  # True is an int too
        return KINDS[kind] + (" or null" if nullable else "")
    if kind == "count" and not (isinstance(value, int) and value > 0):
        return KINDS[kind]
    if kind == "positive" and not (math.isfinite(value) and value > 0):
        return KINDS[kind]
    return None


def shown(value):
    """A field's value as the error sentence quotes it: its JSON, cut to 40 characters."""
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def entry_problem(bench):
    """What makes one benchmark entry unusable, in words (e.g. 'its extra_info.batch is
    "64", not a whole number above 0'), or None when it is as this suite writes it."""
    if not isinstance(bench, dict) or not isinstance(bench.get("extra_info"), dict):
        return "an entry that is not an object with an extra_info object"
    info, stats = bench["extra_info"], bench.get("stats")
    if not isinstance(stats, dict):
        return f"its stats is {shown(stats)}, not an object"
    missing = [field for field in ENTRY_REQUIRED if field not in info]
    if missing:
        return "its extra_info lacks " + ", ".join(missing)
    if "min" not in stats:
        return "its stats lack min"
    checks = [(f"extra_info.{field}", info[field], *rule)
              for field, rule in ENTRY_NUMBERS.items() if field in info]
    checks += [(f"stats.{field}", stats[field], *rule)
               for field, rule in STATS_NUMBERS.items() if field in stats]
    for where, value, kind, nullable in checks:
        expected = number_problem(value, kind, nullable)
        if expected:
            return f"its {where} is {shown(value)}, not {expected}"
    for field in ENTRY_TEXTS:
        if field in info and not isinstance(info[field], str):
            return f"its extra_info.{field} is {shown(info[field])}, not a string"
    if not DEVICE_NAME.fullmatch(info["device"]):  # it names the pictures' files
        return f"its extra_info.device is {shown(info['device'])}, not a device name"
    sizes = info["sizes"]
    if not (isinstance(sizes, list) and len(sizes) >= 2
            and not any(number_problem(n, "count") for n in sizes)):
        return (f"its extra_info.sizes is {shown(sizes)}, not a list of layer widths "
                "(whole numbers above 0)")
    backends = info.get("peak_backends", {})
    if not isinstance(backends, dict) or any(
            number_problem(v, "positive", nullable=True) for v in backends.values()):
        return (f"its extra_info.peak_backends is {shown(backends)}, not an object of rates "
                "(finite numbers above 0, or null)")
    return None


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
    """ratios.py's JSON -> dict, or None when the file is absent.

    A plain file only (read_plain_text), whose numbers are checked as the entries of a saved
    run are (ratios_problem): anything else is a ValueError in one sentence.
    """
    path = Path(path)
    if not path.exists():
        return None
    text = read_plain_text(path, "a file that benchmarks/ratios.py wrote")
    try:
        data = json.loads(text)
        data["summary"], data["ratios"]
    except (ValueError, KeyError, TypeError, RecursionError) as err:
        raise ValueError(f"{path} is not a file that benchmarks/ratios.py wrote "
                         f"({type(err).__name__}).") from None
    problem = ratios_problem(data)
    if problem:
        raise ValueError(f"{path} is not a file that benchmarks/ratios.py wrote ({problem}); "
                         "run benchmarks/ratios.py again.")
    return data


def ratios_problem(data):
    """What in ratios.py's file the report cannot use, in words (e.g. 'its blocks is "15",
    not a whole number above 0'), or None when it is as ratios.py writes it."""
    for field, kind, nullable in (("processes", "count", False), ("blocks", "count", False),
                                  ("threads", "count", True)):
        expected = number_problem(data.get(field), kind, nullable)
        if expected:
            return f"its {field} is {shown(data.get(field))}, not {expected}"
    batches = data.get("batches")
    if not isinstance(batches, list) or any(number_problem(b, "count") for b in batches):
        return f"its batches is {shown(batches)}, not a list of whole numbers above 0"
    if not isinstance(data.get("device"), str):
        return f"its device is {shown(data.get('device'))}, not a string"
    peak = data.get("peak") or {}
    if not isinstance(peak, dict):
        return f"its peak is {shown(peak)}, not an object"
    if number_problem(peak.get("peak_gflops"), "positive", nullable=True):
        return (f"its peak.peak_gflops is {shown(peak.get('peak_gflops'))}, not "
                f"{KINDS['positive']}")
    if peak.get("peak_gflops") and not isinstance(peak.get("peak_backend"), str):
        return f"its peak.peak_backend is {shown(peak.get('peak_backend'))}, not a string"
    # {impl: {batch: {"median_s": ...}}} and {name: {batch: {"median": ...}}}
    for part, field in (("summary", "median_s"), ("ratios", "median")):
        if not isinstance(data[part], dict):
            return f"its {part} is {shown(data[part])}, not an object"
        for name, by_batch in data[part].items():
            entries = by_batch.items() if isinstance(by_batch, dict) else [("", by_batch)]
            for batch, entry in entries:
                where = f"{part}.{name}" + (f".{batch}" if batch else "")
                if not isinstance(entry, dict):
                    return f"its {where} is {shown(entry)}, not an object"
                if number_problem(entry.get(field), "positive"):
                    return (f"its {where}.{field} is {shown(entry.get(field))}, not "
                            f"{KINDS['positive']}")
    firsts = data.get("first_call_s") or {}
    compiled = (firsts.get("compiled") or {}) if isinstance(firsts, dict) else None
    if not isinstance(compiled, dict) or any(
            not isinstance(v, list) or any(number_problem(t, "positive", True) for t in v)
            for v in compiled.values()):
        return (f"its first_call_s is {shown(firsts)}, not lists of seconds by batch "
                "(finite numbers above 0, or null)")
    return None


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
    firsts = {b: sorted(t for t in v if t is not None)  # null: a process that could not say
              for b, v in ((data.get("first_call_s") or {}).get("compiled") or {}).items()}
    if any(firsts.values()):
        lines += ["", "compiled, first call (the compilation), median over processes: "
                  + ", ".join(f"batch {b} {fmt_time(v[len(v) // 2])}"
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


def load_pyplot(environ=os.environ):
    """matplotlib's pyplot on the file-only Agg backend -> the module (main imports it before
    any work, under the early signal handler).

    matplotlib refuses, as it is imported, an MPLBACKEND it does not know (a typo, say). The
    pictures here are files, drawn with Agg whatever MPLBACKEND says, so such a value is set
    aside while matplotlib loads, with a one-line note, instead of stopping the report over a
    setting it does not use (a valid one is overridden silently, as it always was).
    """
    if "matplotlib" in sys.modules:  # imported already: it reads MPLBACKEND no more
        return agg_pyplot()
    wanted = environ.pop("MPLBACKEND", None)
    try:
        plt = agg_pyplot()
    except ImportError as err:
        raise ValueError(f"matplotlib cannot be imported here ({err}); install it (pip install "
                         "-r requirements.txt) or add --no-plots.") from None
    finally:
        if wanted is not None:
            environ["MPLBACKEND"] = wanted  # this process's environment as it was
    if wanted:
        import matplotlib

        try:
            matplotlib.rcsetup.validate_backend(wanted)
        except ValueError:
            print(f"note: MPLBACKEND={wanted!r} names no matplotlib backend; it is ignored "
                  "here, as report.py draws its pictures into files with Agg whatever it "
                  "says.", file=sys.stderr)
    return plt


def agg_pyplot():
    """matplotlib.pyplot, on Agg."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def literal(text):
    """text as matplotlib should draw it, character for character.

    matplotlib reads text between two $ as mathtext, where ^, _ and \\ mean something and a
    stray one fails when the picture is drawn; with every $ escaped there is no mathtext, and
    matplotlib draws \\$ as $. Names from the JSON (a device, an implementation) go through
    this.
    """
    return str(text).replace("$", r"\$")


def plot_lines(path, series, title, xlabel, ylabel, limit=None, limit_label=None):
    """One log-log line per implementation (+ the limit, dashed) -> path (PNG, Agg)."""
    plt = load_pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    try:
        for impl in sorted(series, key=lambda i: (STEP_IMPLS + ("?",)).index(i)
                           if i in STEP_IMPLS else 99):
            xs, ys = zip(*series[impl])
            # One colour per implementation in every picture (jax is purple in each of them).
            color = f"C{STEP_IMPLS.index(impl)}" if impl in STEP_IMPLS else None
            ax.plot(xs, ys, marker="o", label=literal(impl), color=color)
        if limit:
            xs, ys = zip(*limit)
            ax.plot(xs, ys, "k--", label=literal(limit_label) if limit_label else None)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_title(literal(title), fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        return save_picture(path, fig)
    finally:
        plt.close(fig)


# Temporary files named as common.atomic_write names its own: .<name>.XXXXXXXX.tmp.
LEFTOVER_FILE = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{8}\.tmp$")


def remove_leftovers(path):
    """Remove the temporary files of path's name that a killed report (SIGKILL: no chance to
    clean up) left beside it -> their names. Only those: as common.clean_leftovers."""
    removed = []
    for entry in os.scandir(path.parent):
        match = LEFTOVER_FILE.match(entry.name)
        if match and match.group(1) == path.name and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
            removed.append(entry.name)
    return removed


def save_picture(path, fig):
    """fig as a PNG at path, written whole or not at all -> path.

    Drawn into a temporary file beside path (.<name>.XXXXXXXX.tmp), renamed over path once
    complete: the old picture stays whole until then. An error, Ctrl-C or SIGTERM (a
    KeyboardInterrupt) removes the temporary file on the way out; one that a SIGKILL left is
    removed by the next run that draws path. Nothing is written over what is not a file.
    """
    if path.exists() and not path.is_file():
        raise ValueError(f"{path} exists and is not a plain file, so no picture is written "
                         "over it; remove it and run again.")
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_leftovers(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            umask = os.umask(0)
            os.umask(umask)
            if hasattr(os, "fchmod"):  # mkstemp makes 0600 files: give the usual (not Windows)
                os.fchmod(f.fileno(), 0o666 & ~umask)
            fig.savefig(f, format="png")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
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


USAGE = ("usage: python benchmarks/report.py [saved.json] [--ratios file.json] "
         "[--docs folder] [--no-plots]")


def parse_arguments(argv):
    """The command line -> (saved run or None, ratios file or None, pictures' folder, plots?).

    A mistake is a ValueError in one sentence, with the usage.
    """
    argv = list(argv)
    plots = "--no-plots" not in argv
    argv = [a for a in argv if a != "--no-plots"]
    values = {}
    for flag in ("--ratios", "--docs"):
        if flag in argv:
            i = argv.index(flag)
            if i + 1 >= len(argv) or argv[i + 1].startswith("-"):
                raise ValueError(f"{flag} needs a path after it; {USAGE}")
            values[flag] = Path(argv[i + 1])
            del argv[i:i + 2]
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        raise ValueError(f"unexpected argument {(argv[1:] or argv)[0]!r}; {USAGE}")
    return (Path(argv[0]) if argv else None, values.get("--ratios"),
            values.get("--docs", DOCS), plots)


def main(argv=None, started=None):
    """The report on stdout, the pictures in docs/ -> exit status (2: a bad argument or file,
    1: a picture or the output could not be written).

    matplotlib is imported first, before any file is read; then started() (if given) is
    called: report.py's own run switches its signal handling there (see the top of the file).
    -h or --help prints this file's introduction and the usage.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        return print_output(f"{__doc__.strip()}\n\n{USAGE}")
    try:
        path, ratios_path, docs, plots = parse_arguments(argv)
        if plots:
            load_pyplot()
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if started is not None:
        started()
    try:
        path = path or newest_saved()
        text = report(path, ratios_path)
        pictures = []
        if plots:
            machine, runs = load_runs(path)
            pictures = write_pictures(runs, machine, docs)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"error: could not write a picture ({err.strerror or err}: "
              f"{err.filename or docs}); free some space or check the folder, and run "
              "again.", file=sys.stderr)
        return 1
    except (KeyError, TypeError, AttributeError, IndexError, RecursionError,
            ArithmeticError) as err:
        print(f"error: {path} (or the ratios file beside it) holds something this suite did "
              f"not write ({type(err).__name__}: {err}); give files that `pytest benchmarks "
              "--benchmark-autosave` and benchmarks/ratios.py wrote.", file=sys.stderr)
        return 2
    return print_output(f"from {path}\n\n{text}" + "".join(
        f"\n\nwrote {p.relative_to(ROOT) if p.is_relative_to(ROOT) else p}" for p in pictures))


def print_output(text):
    """Print text on stdout -> exit status: 0, or 1 with one sentence on stderr when stdout
    cannot take it (a full disk, /dev/full, a program that stopped reading: | head)."""
    try:
        print(text)
        if sys.stdout is not None:  # None when started with stdout closed (>&-)
            sys.stdout.flush()  # a full or closed output shows here, not in Python's exit
    except OSError as err:
        try:  # what is left in the buffer goes nowhere, so Python's exit does not fail again
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):  # no file descriptor (a test's captured output)
            pass
        why = ("the program reading it stopped" if isinstance(err, BrokenPipeError)
               else err.strerror or type(err).__name__)
        print(f"error: could not write the report to its output ({why}); send it to a "
              "terminal, or to a file on a disk with room, and run again.", file=sys.stderr)
        return 1
    return 0


def run(argv=None, started=None):
    """main(argv) as a command -> exit status: an interruption (Ctrl-C, or SIGTERM and SIGHUP
    through the handlers at the top) is one line and status 130, no picture half-written."""
    try:
        return main(argv, started)
    except KeyboardInterrupt:
        print("interrupted; nothing was left half-written.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    def _running():  # matplotlib is in: from now on a signal raises KeyboardInterrupt
        _phase[0] = "running"

    status = run(started=_running)
    early_signals.finish(_phase)
    if _received and status == 0:  # its KeyboardInterrupt was lost ("Exception ignored")
        print("interrupted.", file=sys.stderr)
        status = 130
    sys.exit(status)
