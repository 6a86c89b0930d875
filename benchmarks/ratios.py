"""The ratios the README quotes: one plain-SGD step, interleaved contenders, several processes.

    python benchmarks/ratios.py                     # 7 rounds of processes, CPU, ~5-10 minutes
    python benchmarks/ratios.py --processes 5 --batches 32 128
    python benchmarks/report.py                     # prints these beside the pytest tables

On a shared machine one process can run twice as slow as the next, so a ratio is credible
only when its contenders are timed in the same process, interleaved, and repeated over
several processes. Each round here starts
    - a torch process (this file with --child): for each batch, every torch contender
      (manual, fused, compiled, autograd) is checked against autograd, warmed up, then
      timed in blocks of back-to-back steps, the contenders taking turns block by block
      (the order rotating), and the median block of each kept;
    - a JAX process (jax_step.py's worker; this process never imports jax): the same problem,
      checked here against autograd, then timed in blocks by the worker's own clock.
The rounds alternate torch, JAX, torch, JAX, ... so slow drifts touch both. A torch ratio is
the median over processes of the ratio within each process; a ratio to JAX is the median over
rounds of (torch process median) / (the same round's JAX process median).
The results go to .benchmarks/ratios_<device>.json, with the machine's measured matmul peak.
"""

import os
import signal
import sys

# Before "import torch" (through contenders), which takes seconds, so that Ctrl-C, SIGTERM or
# SIGHUP while it loads prints one line instead of a traceback (as in 04_train_mnist.py).
if __name__ == "__main__":
    if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # early_signals sits here
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import early_signals

    _phase, _ = early_signals.install("interrupted while starting; nothing was written.")

import argparse  # noqa: E402 (after the early signal handlers, on purpose)
import json  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # run as a script or imported by path, contenders sits here
    sys.path.insert(0, str(HERE))
import peak  # noqa: E402  (no torch at import: run_captured, interruptible, the peak itself)
from contenders import JaxWorker, Skip, common  # noqa: E402  (lessons' helpers; torch, no jax)

BATCHES = (1, 32, 128, 512, 2048)
TORCH_IMPLS = ("manual", "fused", "compiled", "autograd")
BLOCK_SECONDS = 0.02


def steps_per_block(seconds_per_step, block_seconds=BLOCK_SECONDS):
    """How many back-to-back steps make a block of about block_seconds (at least 1)."""
    return max(1, int(block_seconds / max(seconds_per_step, 1e-7)))


def rotated(items, r):
    """items, starting at index r (mod len): each contender leads a block in turn."""
    r %= len(items)
    return list(items[r:]) + list(items[:r])


def summarise(processes, impls, batches):
    """Per-process medians -> {impl: {batch: {"median_s", "best_s", "per_process"}}}."""
    out = {}
    for impl in impls:
        for batch in batches:
            values = [p[str(batch)][impl]["median_s"] for p in processes
                      if impl in p.get(str(batch), {})]
            if values:
                out.setdefault(impl, {})[str(batch)] = {
                    "median_s": statistics.median(values), "best_s": min(values),
                    "per_process": values}
    return out


def paired_ratios(torch_runs, jax_runs, num, den, batches):
    """{batch: median over rounds of num's median / den's median}, each from its own run.

    num and den name implementations; "jax" is looked up in jax_runs (round r of each pairs).
    """
    def find(runs_pair, impl, batch):
        runs = runs_pair[1] if impl == "jax" else runs_pair[0]
        return runs.get(str(batch), {}).get(impl, {}).get("median_s")

    out = {}
    for batch in batches:
        values = []
        for pair in zip(torch_runs, jax_runs or [{}] * len(torch_runs)):
            a, b = find(pair, num, batch), find(pair, den, batch)
            if a and b:
                values.append(a / b)
        if values:
            out[str(batch)] = {"median": statistics.median(values), "min": min(values),
                               "max": max(values), "n": len(values)}
    return out


# ----------------------------------------------------------------------------- torch process

def time_torch_process(device_name, batches, blocks, impls=TORCH_IMPLS):
    """In this process: check, then time the torch contenders interleaved -> per-batch dict."""
    import torch
    from contenders import LR, build, check_against_autograd, make_problem, mode, sync

    device = torch.device(device_name)
    result = {}
    for batch in batches:
        params, x, y = make_problem(batch, device)
        fns, skipped, first = {}, {}, {}
        for impl in impls:
            try:
                made = build("step", impl, params, x, y, lr=1.0)
                check_against_autograd("step", impl, params, x, y, made=made)
                first[impl] = getattr(made[0], "first_call_s", None)
                fn = build("step", impl, params, x, y, lr=LR)[0]
            except Skip as err:
                skipped[impl] = str(err)
                continue
            fns[impl] = fn
        names = list(fns)

        def block(impl, steps, fns=fns):
            fn = fns[impl]
            with mode(impl):
                sync(device)
                begin = time.perf_counter()
                for _ in range(steps):
                    fn()
                sync(device)
            return (time.perf_counter() - begin) / steps

        steps = {}
        for impl in names:  # warm up; size each contender's block
            block(impl, 3)
            steps[impl] = steps_per_block(min(block(impl, 3) for _ in range(3)))
        times = {impl: [] for impl in names}
        for r in range(blocks):
            for impl in rotated(names, r):
                times[impl].append(block(impl, steps[impl]))
        result[str(batch)] = {
            impl: {"median_s": statistics.median(times[impl]), "best_s": min(times[impl]),
                   "steps_per_block": steps[impl], "first_call_s": first.get(impl)}
            for impl in names}
        result[str(batch)]["skipped"] = skipped
    return result


# ----------------------------------------------------------------------------- JAX process

def time_jax_process(device_name, batches, blocks):
    """A fresh JAX worker process: check against autograd here, time there -> per-batch dict."""
    import torch
    from contenders import LR, check_against_autograd, make_problem, step_jax

    device = torch.device(device_name)
    try:
        worker = JaxWorker()
    except Skip as err:
        return {"skipped": str(err)}
    result = {}
    try:
        for batch in batches:
            params, x, y = make_problem(batch, device)
            try:
                made = step_jax(params, x, y, lr=1.0, worker=worker)
                check_against_autograd("step", "jax", params, x, y, made=made)
                fn = step_jax(params, x, y, lr=LR, worker=worker)[0]
            except Skip as err:
                result[str(batch)] = {"skipped": {"jax": str(err)}}
                continue
            fn.block(3)
            steps = steps_per_block(min(fn.block(3) / 3 for _ in range(3)))
            times = [fn.block(steps) / steps for _ in range(blocks)]
            result[str(batch)] = {"jax": {"median_s": statistics.median(times),
                                          "best_s": min(times), "steps_per_block": steps,
                                          "first_call_s": made[0].first_call_s,
                                          "version": worker.info["jax"]}}
    except BaseException:  # interrupted, or the worker failed: no polite "quit" and wait
        worker.stop()
        raise
    worker.close()
    return result


def run_torch_process(device, batches, blocks, label):
    """One torch measuring process (this file with --child) -> its per-batch dict, or None
    when it failed, said on stderr in one sentence naming label (e.g. "round 2").

    An interruption here kills that process and waits for it (peak.run_captured): none is
    left measuring, or waiting to be reaped, after this one has stopped.
    """
    command = [sys.executable, str(HERE / "ratios.py"), "--child", "--device", device,
               "--blocks", str(blocks), "--batches", *map(str, batches)]
    status, out, err = peak.run_captured(command, env=dict(os.environ))
    lines = out.strip().splitlines()
    if status == 0 and lines:
        try:
            result = json.loads(lines[-1])
        except ValueError:
            result = None
        if isinstance(result, dict):
            return result
    if status < 0:  # ended by a signal: the OOM killer's SIGKILL, someone's kill
        why = f"stopped by {signal.Signals(-status).name}"
    elif status == 130:  # its own handler's status: that process alone was interrupted
        why = "it was interrupted"
    elif status == 0:
        why = "its output ended without the measurements"
    else:  # its last line says why (its own one-sentence error, or a traceback's last line)
        why = (err.strip().splitlines() or ["no message"])[-1].removeprefix("error: ")
    print(f"error: the torch measuring process of {label} failed ({why}), so nothing was "
          "written; run again (with fewer --batches or --blocks if it ran out of memory).",
          file=sys.stderr)
    return None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, exit_on_error=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    parser.add_argument("--processes", type=common.int_in(1, 100), default=7,
                        help="rounds of processes (a ratio swings between processes)")
    parser.add_argument("--blocks", type=common.int_in(1, 10_000), default=15,
                        help="timed blocks per contender")
    parser.add_argument("--batches", type=common.int_in(1, 65_536), nargs="+",
                        default=list(BATCHES))
    parser.add_argument("--out", type=Path, help="default: .benchmarks/ratios_<device>.json")
    parser.add_argument("--no-peak", action="store_true", help="skip the peak measurement")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = common.parse_args(parser, argv)
    args.device = str(common.pick_device(args.device))  # "auto" resolved; no GPU: a sentence
    if args.child:  # one torch process: print its result as JSON
        print(json.dumps(time_torch_process(args.device, args.batches, args.blocks)))
        return 0
    out = args.out or HERE.parent / ".benchmarks" / f"ratios_{args.device.split(':')[0]}.json"
    if out.is_dir():
        raise ValueError(f"--out {out} is a folder; give the JSON file's path, e.g. "
                         f"{out / 'ratios.json'}.")
    if out.exists() and not out.is_file():
        raise ValueError(f"--out {out} exists and is not a plain file (a device, say), so it "
                         "is not written over; give a JSON file's path.")
    common.check_writable_dir(out.parent, "the folder of --out")  # now, not after minutes
    # A temporary file that a killed run's atomic_write left beside --out, and only those of
    # its name: the folder may hold anything else (it is .benchmarks/, or the user's own).
    common.clean_leftovers(out.parent, [out.name])
    torch_runs, jax_runs = [], []
    for r in range(args.processes):
        print(f"round {r + 1}/{args.processes}: torch process ...", flush=True)
        result = run_torch_process(args.device, args.batches, args.blocks, f"round {r + 1}")
        if result is None:
            return 1
        torch_runs.append(result)
        print(f"round {r + 1}/{args.processes}: JAX process ...", flush=True)
        jax_runs.append(time_jax_process(args.device, args.batches, args.blocks))
    import torch
    from contenders import device_label

    peak_summary = None if args.no_peak else peak.summary(peak.measure_all(args.device))
    impls = [*TORCH_IMPLS, "jax"]
    merged = [{b: {**t.get(b, {}), **{k: v for k, v in j.get(b, {}).items() if k == "jax"}}
               for b in map(str, args.batches)} for t, j in zip(torch_runs, jax_runs)]
    pairs = {"fused/autograd": ("fused", "autograd"), "manual/autograd": ("manual",
             "autograd"), "compiled/manual": ("compiled", "manual"),
             "compiled/jax": ("compiled", "jax"), "fused/jax": ("fused", "jax"),
             "manual/jax": ("manual", "jax"), "autograd/jax": ("autograd", "jax")}
    data = {
        "device": args.device, "device_name": device_label(torch.device(args.device)),
        "torch": torch.__version__, "threads": torch.get_num_threads(),
        "jax": next((j[b]["jax"]["version"] for j in jax_runs for b in j
                     if isinstance(j.get(b), dict) and "jax" in j[b]), None),
        "jax_skipped": next((j["skipped"] for j in jax_runs if "skipped" in j), None),
        "processes": args.processes, "blocks": args.blocks, "batches": args.batches,
        "peak": peak_summary, "summary": summarise(merged, impls, args.batches),
        "ratios": {name: paired_ratios(torch_runs, jax_runs, a, b, args.batches)
                   for name, (a, b) in pairs.items()},
        "first_call_s": {impl: {str(b): [t[str(b)][impl]["first_call_s"] for t in torch_runs
                                         if impl in t.get(str(b), {})]
                                for b in args.batches} for impl in ("compiled",)},
        "skipped": {b: t[str(b)].get("skipped") for t in torch_runs[:1] for b in
                    map(str, args.batches)},
        "raw": {"torch": torch_runs, "jax": jax_runs},
    }
    common.save_json(out, data)  # strict JSON, written to a temporary file and renamed
    print(f"wrote {out}; python benchmarks/report.py prints it")
    return 0


def main_interruptible(argv=None):
    """main, as peak.interruptible runs it: an interruption stops the measuring processes."""
    return peak.interruptible(main, argv)


if __name__ == "__main__":
    if "--child" in sys.argv[1:]:  # a measuring process: it writes nothing, so the early
        sys.exit(common.run_main(main))  # handler may stop it at once, in any import
    _phase[0] = "running"
    status = common.run_main(main_interruptible)
    early_signals.finish(_phase)
    sys.exit(status)
