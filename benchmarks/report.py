"""Turn a saved pytest-benchmark run into one Markdown table per device.

    python -m pytest benchmarks --benchmark-autosave   # saves .benchmarks/<machine>/NNNN_*.json
    python benchmarks/report.py                        # the newest saved run
    python benchmarks/report.py path/to/run.json

Rows: batch size by operation. Times are each benchmark's fastest round (the least disturbed
by other work on a shared machine). "manual / autograd" is the time ratio: 0.80x means the
hand-written code takes 80 % of autograd's time. GFLOP/s counts the matmul FLOPs of the
operation (see test_mlp_kernels.py); "% of peak" divides it by the device's measured float32
matmul peak.
"""

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROWS = [("forward", "manual", "forward"), ("backward", "manual", "backward"),
        ("step", "manual", "step (pure)"), ("step", "inplace", "step (in place)")]


def newest_saved(root=ROOT / ".benchmarks"):
    """The most recently saved pytest-benchmark JSON under root."""
    saved = sorted(root.glob("*/*.json"), key=lambda p: p.stat().st_mtime)
    if not saved:
        raise ValueError(f"no saved benchmark run under {root}; run "
                         "`python -m pytest benchmarks --benchmark-autosave` first.")
    return saved[-1]


def load_runs(path):
    """-> (machine info, {(device, op, impl, batch): benchmark's extra_info + its min seconds})."""
    try:
        data = json.loads(Path(path).read_text())
        benchmarks = data["benchmarks"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ValueError(f"{path} is not a pytest-benchmark JSON file ({type(err).__name__}); "
                         "give a file that --benchmark-autosave or --benchmark-json "
                         "wrote.") from None
    runs = {}
    for bench in benchmarks:
        info = bench.get("extra_info", {})
        if "op" not in info or not bench.get("stats"):
            continue
        runs[(info["device"], info["op"], info["impl"], info["batch"])] = dict(
            info, seconds=bench["stats"]["min"])
    if not runs:
        raise ValueError(f"{path} holds no timed MLP benchmarks (were they run with "
                         "--benchmark-disable?); run them with --benchmark-autosave.")
    return data.get("machine_info", {}), runs


def fmt_time(seconds):
    return f"{seconds * 1e6:.0f} us" if seconds < 1e-3 else f"{seconds * 1e3:.2f} ms"


def ratio(a, b):
    return f"{a['seconds'] / b['seconds']:.2f}x" if a and b else "-"


def device_table(device, runs, machine):
    """One Markdown table (with a heading line) for one device."""
    mine = {k[1:]: v for k, v in runs.items() if k[0] == device}
    some = next(iter(mine.values()))
    name = machine.get("cpu", {}).get("brand_raw", "cpu") if device == "cpu" else some[
        "device_name"]
    peak = some.get("peak_gflops")
    lines = [f"**{device}**: {name}, {some['threads']} threads, torch {some['torch']}; "
             f"float32 matmul peak {peak:.0f} GFLOP/s "
             f"({some.get('peak_matmul_n')}x{some.get('peak_matmul_n')} matmul)", "",
             "| batch | operation | manual | autograd | notebook | manual / autograd | "
             "manual / notebook | GFLOP/s | % of peak |",
             "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
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
                f"{ratio(ours, nb)} | {ours['gflops']:.0f} | {ours['pct_of_peak']:.0f} % |")
    return "\n".join(lines)


def report(path):
    machine, runs = load_runs(path)
    devices = sorted({k[0] for k in runs})
    return "\n\n".join(device_table(d, runs, machine) for d in devices)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) > 1 or (argv and argv[0].startswith("-")):
        print("usage: python benchmarks/report.py [saved.json]", file=sys.stderr)
        return 2
    try:
        path = Path(argv[0]) if argv else newest_saved()
        text = report(path)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(f"from {path}\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
