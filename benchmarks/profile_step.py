"""Where does a training step's time go? torch.profiler, per op, for the torch contenders.

    python benchmarks/profile_step.py                 # batch 32 per op, and the matmul share
    python benchmarks/profile_step.py --batches 32 2048 --steps 200

For each batch and implementation (manual = train_step, fused = fused_train_step_, autograd):
the ops by self CPU time per step, and the share of the step spent inside the matmul
library's calls (aten::mm, addmm, addmm_, bmm: the BLAS, MKL here) against everything else
(elementwise kernels, reductions, allocation, and the Python and dispatcher overhead between
ops, which the profiler's "self" times of the Python-level ops do not show: it is the
difference between the wall time and the ops' total).
"""

import argparse
import os
import sys
import time

# The profiler's C++ side (kineto) logs its own start and stop, and on a CUDA build without a
# GPU an "ERROR ... gpuGetDeviceCount failed", between the tables; level 6 silences it. It is
# read when torch loads, so it is set before the import; set KINETO_LOG_LEVEL yourself to see it.
os.environ.setdefault("KINETO_LOG_LEVEL", "6")

import torch  # noqa: E402 (after the environment variable above)
from contenders import build, common, device_label, make_problem, mode
from torch.profiler import ProfilerActivity, profile

MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::addmm_", "aten::bmm", "aten::matmul")
IMPLS = ("manual", "fused", "autograd")


def profile_impl(impl, batch, steps, top):
    """-> (lines of text, {"wall_us", "ops_us", "matmul_us"}) for steps steps of impl."""
    params, x, y = make_problem(batch, torch.device("cpu"))
    fn, _ = build("step", impl, params, x, y)
    with mode(impl):
        for _ in range(10):
            fn()
        begin = time.perf_counter()
        for _ in range(steps):
            fn()
        wall = (time.perf_counter() - begin) / steps * 1e6
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(steps):
                fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    events.sort(key=lambda e: -e.self_cpu_time_total)
    ops_total = sum(e.self_cpu_time_total for e in events) / steps
    matmul = sum(e.self_cpu_time_total for e in events if e.key in MATMUL_OPS) / steps
    lines = [f"{impl} at batch {batch}: {wall:.0f} us per step unprofiled; profiled ops "
             f"{ops_total:.0f} us per step, of which matmul calls {matmul:.0f} us "
             f"({100 * matmul / ops_total:.0f} %)",
             f"  {'op':<38}{'calls/step':>11}{'self us/step':>14}{'share':>8}"]
    for e in events[:top]:
        lines.append(f"  {e.key[:38]:<38}{e.count / steps:>11.1f}"
                     f"{e.self_cpu_time_total / steps:>14.1f}"
                     f"{100 * e.self_cpu_time_total / steps / ops_total:>7.0f}%")
    return lines, {"wall_us": wall, "ops_us": ops_total, "matmul_us": matmul}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, exit_on_error=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batches", type=common.int_in(1, 65_536), nargs="+", default=[32, 2048])
    parser.add_argument("--steps", type=common.int_in(1, 100_000), default=100)
    parser.add_argument("--top", type=common.int_in(1, 1000), default=12,
                        help="ops shown per implementation")
    args = common.parse_args(parser, argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU: "
          f"{device_label(torch.device('cpu'))}")
    shares = {}
    for batch in args.batches:
        steps = max(5, args.steps * 32 // max(batch, 32))
        for impl in IMPLS:
            lines, numbers = profile_impl(impl, batch, steps, args.top)
            print("\n".join(lines) + "\n", flush=True)
            shares[(impl, batch)] = numbers
    for (impl, batch), n in shares.items():
        print(f"result: impl={impl} batch={batch} wall_us={n['wall_us']:.0f} "
              f"matmul_share={n['matmul_us'] / n['ops_us']:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(common.run_main(main))
