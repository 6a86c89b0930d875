"""Where does a training step's time go? torch.profiler, per op, for the torch contenders.

    python benchmarks/profile_step.py                  # batches 32, 128 and 512, CPU
    python benchmarks/profile_step.py --batches 2048 --steps 50

One Markdown row per batch and implementation (contenders.py): the time per step unprofiled,
the share of the profiled ops' time inside the matrix-product calls (aten::mm, addmm, addmm_),
and the top other ops by self time per step (which leaves out the Python between ops).
"""

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("KINETO_LOG_LEVEL", "6")  # read as torch loads: the profiler's own log off

import torch  # noqa: E402
from contenders import build, common, make_problem, mode  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm")
IMPLS = ("pure", "inplace", "fused", "autograd", "matmuls")


def profile_impl(impl, batch, steps):
    """-> (unprofiled us per step: the median of 5 blocks of steps, profiled ops' us per step,
    matmul us, [(op, us per step)])."""
    params, x, y = make_problem(batch, torch.device("cpu"))
    fn, _ = build("step", impl, params, x, y)
    walls = []
    with mode(impl):
        for _ in range(6):  # the first block warms up
            begin = time.perf_counter()
            for _ in range(steps):
                fn()
            walls.append((time.perf_counter() - begin) / steps * 1e6)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                fn()
    events = sorted((e for e in prof.key_averages() if e.self_cpu_time_total > 0),
                    key=lambda e: -e.self_cpu_time_total)
    ops = sum(e.self_cpu_time_total for e in events) / steps
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / steps
    others = [(e.key, e.self_cpu_time_total / steps) for e in events if e.key not in MATMUL_OPS]
    return statistics.median(walls[1:]), ops, matmul, others


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=common.int_in(1, 65_536), nargs="+",
                        default=[32, 128, 512])
    parser.add_argument("--steps", type=common.int_in(1, 100_000), default=200,
                        help="steps per block at batch 32, fewer for larger batches (default 200)")
    args = parser.parse_args(argv)
    common.keep_freed_memory()
    print(f"CPU: {common.device_description(torch.device('cpu'))}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads\n\n| batch | implementation | us per step | "
          "matmul calls, us (share of ops) | top non-matmul ops, self us per step |\n"
          "|---:|---|---:|---:|---|")
    for batch in args.batches:
        for impl in IMPLS:
            wall, ops, matmul, others = profile_impl(impl, batch,
                                                     max(20, args.steps * 32 // max(batch, 32)))
            top = ", ".join(f"{name.removeprefix('aten::')} {us:.0f}"
                            for name, us in others[:4])
            print(f"| {batch} | {impl} | {wall:.0f} | {matmul:.0f} ({100 * matmul / ops:.0f} %) "
                  f"| {top} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(common.run_main(main))
