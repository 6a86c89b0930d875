"""How fast is the hand-written MLP? Forward, backward and one training step of the notebook's
784-512-128-10 network, by batch size and device, beside what a user would pick instead;
and how the step's cost grows with the first hidden layer's width (the "scaling" group).

The implementations (manual, fused, compiled, cudagraph, jax, autograd, notebook) and the
FLOPs credited to them are described in contenders.py. Every one is checked against autograd
on the benchmark's own inputs before it is timed.

    python -m pytest benchmarks                      # times everything, groups side by side
    python -m pytest benchmarks --benchmark-autosave # ... and saves .benchmarks/.../NNNN_*.json
    python benchmarks/report.py                      # the newest saved run: tables, pictures
    python benchmarks/ratios.py                      # the ratios: interleaved, several processes

JAX runs in a worker process of its own (jax_step.py): this process never imports jax. Its
rounds are blocks of back-to-back steps timed by the worker's clock and handed to
pytest-benchmark through a clock that advances by exactly those times (WorkerClock).
With --benchmark-disable (CI) each case runs once, except "compiled", which then compiles
one batch size only (32): each batch size is a separate compilation of 10-40 s on a small CPU.
"""

import pytest
import torch
from contenders import (
    SIZES,
    Skip,
    build,
    check_against_autograd,
    device_label,
    make_problem,
    op_flops,
    seconds_from_env,
    sync,
)

BATCHES = (1, 32, 128, 512, 2048)
WIDTHS = (128, 256, 512, 1024, 2048, 4096)  # the first hidden layer's, in the scaling group
SCALING_BATCH = 128
SCALING_IMPLS = ("manual", "fused", "jax", "autograd")
CI_COMPILED_BATCH = 32

OPS = {
    "forward": ("manual", "autograd", "notebook"),
    "backward": ("manual", "autograd", "notebook"),
    "step": ("manual", "fused", "compiled", "cudagraph", "jax", "autograd", "notebook"),
}
# One group (operation, batch) at a time, its implementations one after the other, so that
# the machine's slow drifts touch the implementations being compared alike.
CASES = [(op, batch, impl) for op, impls in OPS.items() for batch in BATCHES for impl in impls]

# Two seconds of rounds for each benchmark: on a shared machine the fastest of many rounds is
# the one least disturbed by others' work (report.py uses that minimum). BENCH_MAX_TIME=0.5
# makes a quicker, noisier run.
BENCHMARK = {"warmup": True, "warmup_iterations": 10, "min_rounds": 20,
             "max_time": seconds_from_env("BENCH_MAX_TIME", 2.0)}
pytestmark = pytest.mark.benchmark(**BENCHMARK)


class WorkerClock:
    """A pytest-benchmark timer that advances only by the times a worker process measured."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


def time_in_worker(benchmark, fn, min_time=0.02, max_time=BENCHMARK["max_time"]):
    """pytest-benchmark rounds of the JAX step: each a block of steps timed in the worker.

    Blocks of about min_time seconds (at least one step), as many rounds as fit max_time
    (at least 20): each round's value is the block's time per step.
    """
    if not benchmark.enabled:
        return benchmark(fn)
    fn.block(5)  # warm up
    one = max(fn.block(5) / 5, 1e-7)
    steps = max(1, int(min_time / one))
    rounds = max(BENCHMARK["min_rounds"], int(max_time / (steps * one)))
    clock = WorkerClock()
    benchmark._timer = clock  # the worker's clock, not this process's (see WorkerClock)
    benchmark.extra_info["steps_per_round"] = steps
    benchmark.pedantic(lambda: clock.advance(fn.block(steps) / steps), rounds=rounds,
                       warmup_rounds=2)


def run_case(benchmark, device, matmul_peak, jax_worker, op, batch, impl, sizes=SIZES,
             group="batch"):
    """Check one implementation against autograd, then time it; skips say why it cannot run.

    group: "batch" (the tables by batch size) or "scaling" (by hidden width).
    """
    params, x, y = make_problem(batch, device, sizes)
    kwargs = {}
    if impl == "jax":
        if isinstance(jax_worker, str):
            pytest.skip(jax_worker)
        kwargs["worker"] = jax_worker
    if impl == "compiled" and not benchmark.enabled and batch != CI_COMPILED_BATCH:
        pytest.skip(f"compiled: with --benchmark-disable only batch {CI_COMPILED_BATCH} "
                    "compiles (each batch size is a separate 10-40 s compilation on a small "
                    "CPU); a timed run covers every batch")
    try:
        checked = build(op, impl, params, x, y, lr=1.0, **kwargs) if op == "step" else None
        check_against_autograd(op, impl, params, x, y, made=checked, **kwargs)
        # Timing at the notebook's lr; a disabled run (CI) reuses lr 1, so that "compiled"
        # compiles once.
        fn, _ = build(op, impl, params, x, y, **(dict(kwargs, lr=1.0) if op == "step" and
                                                   not benchmark.enabled else kwargs))
    except Skip as err:
        pytest.skip(f"{impl}: {err}")
    first_call_s = getattr(checked[0], "first_call_s", None) if checked else None
    timed = fn if device.type == "cpu" or impl == "jax" else lambda: (fn(), sync(device))
    benchmark.group = (f"{op:<8} batch {batch:>4} {device.type}" if group == "batch" else
                       f"scaling  width {sizes[1]:>4} {device.type}")
    benchmark.extra_info.update(
        op=op if group == "batch" else group, impl=impl, batch=batch, device=device.type,
        flops=op_flops(op, batch, sizes),
        sizes=list(sizes), params_count=sum(p.numel() for p in params),
        device_name=device_label(device),
        threads=torch.get_num_threads(), torch=torch.__version__)
    if first_call_s is not None:
        benchmark.extra_info["first_call_s"] = first_call_s
    if impl == "jax":
        benchmark.extra_info["jax"] = jax_worker.info["jax"]
        time_in_worker(benchmark, fn)
    else:
        with torch.inference_mode() if impl != "autograd" else torch.enable_grad():
            benchmark(timed)
    if benchmark.enabled:
        peak = matmul_peak(device)
        best = benchmark.stats.stats.min  # the fastest round: the least disturbed by noise
        gflops = op_flops(op, batch, sizes) / best / 1e9
        benchmark.extra_info.update(
            samples_per_s=batch / best, gflops=gflops, peak_gflops=peak["peak_gflops"],
            peak_backend=peak["peak_backend"], peak_matmul_n=peak["peak_n"],
            torch_matmul_gflops=peak["torch_matmul_gflops"], peak_backends=peak["backends"],
            pct_of_peak=100 * gflops / peak["peak_gflops"])


@pytest.mark.parametrize("op, batch, impl", CASES)
def test_mlp(benchmark, device, matmul_peak, jax_worker, op, batch, impl):
    run_case(benchmark, device, matmul_peak, jax_worker, op, batch, impl)


@pytest.mark.parametrize("width, impl", [(w, i) for w in WIDTHS for i in SCALING_IMPLS])
def test_scaling(benchmark, device, matmul_peak, jax_worker, width, impl):
    """One plain-SGD step at batch 128 as the first hidden layer widens: 784-width-128-10."""
    sizes = (SIZES[0], width, *SIZES[2:])
    run_case(benchmark, device, matmul_peak, jax_worker, "step", SCALING_BATCH, impl,
             sizes=sizes, group="scaling")
