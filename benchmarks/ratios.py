"""Ratios of one plain-SGD step's times: interleaved contenders, several processes.

    python benchmarks/ratios.py                     # 5 rounds of processes, CPU, ~10-15 minutes
    python benchmarks/ratios.py --processes 3 --batches 128 512
    python benchmarks/report.py                     # prints these beside the pytest tables

On a shared machine one process can run twice as slow as the next, so a ratio is credible only
when its two sides are timed in the same process, interleaved, over several processes. Each
round starts a torch process (this file with --child) in which, for each batch, every torch
contender (contenders.py; matmuls is the floor) is checked against autograd, warmed up, then
timed in blocks of back-to-back steps, the contenders taking turns block by block; then a JAX
worker (jax_step.py) does the same for JAX. A ratio is taken within each torch process (with
JAX, between the round's two processes); report.py shows its median over rounds and its range.
The results go to .benchmarks/ratios_<device>.json, with the measured matmul peak (peak.py).
"""

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import contenders as c
import peak
import report
import torch

common = c.common
BATCHES = (1, 32, 128, 512, 2048)
TORCH_IMPLS = ("pure", "inplace", "fused", "compiled", "autograd", "matmuls")


def time_interleaved(fns, device, blocks, block_seconds=0.02):
    """{name: fn} -> {name: median seconds per step}: each warmed up, its block sized to about
    block_seconds of back-to-back steps, then the blocks in turn, the order rotating. A fn with
    a .block(steps) (the JAX worker's) times its blocks itself."""
    def block(name, steps):
        fn = fns[name]
        if hasattr(fn, "block"):
            return fn.block(steps) / steps
        with c.mode(name):
            common.sync(device)
            begin = time.perf_counter()
            for _ in range(steps):
                fn()
            common.sync(device)
        return (time.perf_counter() - begin) / steps

    names, steps, times = list(fns), {}, {name: [] for name in fns}
    for name in names:
        block(name, 3)
        steps[name] = max(1, int(block_seconds / max(min(block(name, 3) for _ in range(3)), 1e-7)))
    for r in range(blocks):
        for name in names[r % len(names):] + names[:r % len(names)]:
            times[name].append(block(name, steps[name]))
    return {name: statistics.median(t) for name, t in times.items()}


def time_torch(device, batches, blocks):
    """In this process: check, then time the torch contenders interleaved ->
    {batch: {impl: median seconds per step}}."""
    out = {}
    for batch in batches:
        params, x, y = c.make_problem(batch, device)
        fns = {}
        for impl in TORCH_IMPLS:
            try:
                made = c.build("step", impl, params, x, y, lr=1.0)
                c.check_against_autograd("step", impl, params, x, y, made=made)
                fns[impl] = c.build("step", impl, params, x, y, lr=c.LR)[0]
            except c.Skip as err:
                print(f"batch {batch}, {impl} skipped: {err}", file=sys.stderr)
        out[str(batch)] = time_interleaved(fns, device, blocks)
    return out


def time_jax(device, batches, blocks):
    """A fresh JAX worker: check against autograd here, time there -> {batch: {"jax": s}}."""
    try:
        worker = c.JaxWorker()
    except c.Skip as err:
        print(f"jax skipped: {err}")
        return {}
    out = {"version": worker.version}
    try:
        for batch in batches:
            params, x, y = c.make_problem(batch, device)
            try:
                made = c.step_jax(params, x, y, lr=1.0, worker=worker)
                c.check_against_autograd("step", "jax", params, x, y, made=made)
                fn = c.step_jax(params, x, y, lr=c.LR, worker=worker)[0]
            except c.Skip as err:
                print(f"batch {batch}, jax skipped: {err}")
                continue
            out[str(batch)] = time_interleaved({"jax": fn}, device, blocks)
    finally:
        worker.close()
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", type=common.device_type, default="cpu",
                        help="cpu (default), cuda, cuda:N, mps or auto")
    parser.add_argument("--processes", type=common.int_in(1, 100), default=5,
                        help="rounds of processes (default 5)")
    parser.add_argument("--blocks", type=common.int_in(1, 10_000), default=15,
                        help="timed blocks per contender (default 15)")
    parser.add_argument("--batches", type=common.int_in(1, 65_536), nargs="+",
                        default=list(BATCHES))
    parser.add_argument("--out", type=Path, help="default: .benchmarks/ratios_<device>.json")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:  # one torch process: its times as one JSON line
        common.keep_freed_memory()
        print(json.dumps(time_torch(args.device, args.batches, args.blocks)))
        return 0
    out = args.out or c.HERE.parent / ".benchmarks" / f"ratios_{args.device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    batches, rounds, jax_version = list(map(str, args.batches)), [], None
    for r in range(args.processes):
        print(f"round {r + 1}/{args.processes}: torch process, then JAX process", flush=True)
        command = [sys.executable, __file__, "--child", "--device", str(args.device),
                   "--blocks", str(args.blocks), "--batches", *batches]
        done = subprocess.run(command, stdout=subprocess.PIPE, text=True)  # its stderr: here
        if done.returncode != 0:
            raise ValueError(f"the torch process of round {r + 1} failed (status "
                             f"{done.returncode}); its error is above")
        t = json.loads(done.stdout.splitlines()[-1])
        j = time_jax(args.device, args.batches, args.blocks)
        rounds.append({b: {**t.get(b, {}), **j.get(b, {})} for b in batches})
        jax_version = j.get("version", jax_version)
    impls = [i for i in (*TORCH_IMPLS, "jax") if any(i in r[b] for r in rounds for b in r)]
    data = {"device": args.device.type, "device_name": common.device_description(args.device),
            "torch": torch.__version__, "threads": torch.get_num_threads(), "jax": jax_version,
            "processes": args.processes, "blocks": args.blocks, "batches": args.batches,
            "peak": peak.summary(peak.measure_all(str(args.device))),
            # {impl: {batch: [seconds per step in each round, None where it did not run]}}
            "times": {i: {b: [r[b].get(i) for r in rounds] for b in batches} for i in impls}}
    common.save_json(out, data)
    print(report.ratios_section(data) + f"\n\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(common.run_main(main))
