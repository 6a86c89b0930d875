"""Forward, backward and one training step of the 784-512-128-10 network by batch size and
device, beside what a user would pick instead and beside the floor (the step's matrix products
alone); and a step's cost as the first hidden layer widens (the "scaling" group, batch 128).

    python -m pytest benchmarks --benchmark-autosave  # ~10 minutes; saves .benchmarks/.../*.json
    python benchmarks/report.py                       # the newest saved run: tables and pictures
    BENCH_MAX_TIME=0.5 python -m pytest benchmarks    # quicker and noisier (default 2 s a case)

One group (operation, batch) runs at a time, its implementations (contenders.py) one after the
other, so that a shared machine's slow drifts touch them alike. JAX's rounds are timed by its
worker's clock. With --benchmark-disable (CI) each case runs once, and "compiled" compiles only
batch 32 (each batch size is a 10-40 s compilation on a small CPU).
"""

import os

import pytest
import torch
from contenders import SIZES, Skip, build, check_against_autograd, common, make_problem, op_flops

BATCHES = (1, 32, 128, 512, 2048)
WIDTHS = (128, 256, 512, 1024, 2048, 4096)  # the first hidden layer's, in the scaling group
OPS = {"forward": ("manual", "autograd"),
       "backward": ("manual", "autograd"),
       "step": ("pure", "inplace", "fused", "compiled", "cudagraph", "jax", "autograd", "matmuls")}
SCALING_IMPLS = ("pure", "fused", "jax", "autograd", "matmuls")
CI_COMPILED_BATCH = 32
MAX_TIME = float(os.environ.get("BENCH_MAX_TIME", "2"))
pytestmark = pytest.mark.benchmark(warmup=True, warmup_iterations=10, min_rounds=20,
                                   max_time=MAX_TIME)


def time_in_worker(benchmark, fn, block_seconds=0.02):
    """pytest-benchmark rounds of the JAX step, each a block of about block_seconds of steps."""
    if not benchmark.enabled:
        return benchmark(fn)
    one = max(min(fn.block(5) for _ in range(2)) / 5, 1e-7)  # the first block warms up
    steps = max(1, int(block_seconds / one))
    clock = [0.0]  # advanced only by the worker's measured times
    benchmark._timer = lambda: clock[0]

    def advance():
        clock[0] += fn.block(steps) / steps
    benchmark.pedantic(advance, rounds=max(20, int(MAX_TIME / (steps * one))), warmup_rounds=2)


def run_case(benchmark, device, matmul_peak, jax_worker, op, batch, impl, sizes=SIZES,
             group="batch"):
    """Check one implementation against autograd, then time it; a skip says why it cannot run."""
    params, x, y = make_problem(batch, device, sizes)
    kwargs = {}
    if impl == "jax":
        if isinstance(jax_worker, str):
            pytest.skip(jax_worker)
        kwargs["worker"] = jax_worker
    if impl == "compiled" and not benchmark.enabled and batch != CI_COMPILED_BATCH:
        pytest.skip(f"with --benchmark-disable only batch {CI_COMPILED_BATCH} compiles")
    try:
        checked = build(op, impl, params, x, y, lr=1.0, **kwargs) if op == "step" else None
        check_against_autograd(op, impl, params, x, y, made=checked, **kwargs)
        # Timed at the notebook's lr; a run with timing disabled reuses the checked lr 1 step,
        # so that "compiled" compiles once.
        fn = (checked[0] if checked and not benchmark.enabled
              else build(op, impl, params, x, y, **kwargs)[0])
    except Skip as err:
        pytest.skip(f"{impl}: {err}")
    benchmark.group = (f"{op:<8} batch {batch:>4} {device.type}" if group == "batch"
                       else f"scaling  width {sizes[1]:>4} {device.type}")
    benchmark.extra_info.update(
        op=op if group == "batch" else group, impl=impl, batch=batch, device=device.type,
        flops=op_flops(op, batch, sizes), sizes=list(sizes),
        params_count=sum(p.numel() for p in params), device_name=common.device_description(device),
        threads=torch.get_num_threads(), torch=torch.__version__)
    if checked and hasattr(checked[0], "first_call_s"):  # a compilation, apart from the steps
        benchmark.extra_info["first_call_s"] = checked[0].first_call_s
    if impl == "jax":
        time_in_worker(benchmark, fn)
    else:
        timed = fn if device.type == "cpu" else lambda: (fn(), common.sync(device))
        with torch.enable_grad() if impl == "autograd" else torch.inference_mode():
            benchmark(timed)
    if benchmark.enabled:
        benchmark.extra_info.update(matmul_peak(device))  # peak_gflops, peak_backend, ...


@pytest.mark.parametrize("op, batch, impl",
                         [(op, b, i) for op, impls in OPS.items() for b in BATCHES for i in impls])
def test_mlp(benchmark, device, matmul_peak, jax_worker, op, batch, impl):
    run_case(benchmark, device, matmul_peak, jax_worker, op, batch, impl)


@pytest.mark.parametrize("width, impl", [(w, i) for w in WIDTHS for i in SCALING_IMPLS])
def test_scaling(benchmark, device, matmul_peak, jax_worker, width, impl):
    """One plain-SGD step at batch 128 as the first hidden layer widens: 784-width-128-10."""
    sizes = (SIZES[0], width, *SIZES[2:])
    run_case(benchmark, device, matmul_peak, jax_worker, "step", 128, impl, sizes, "scaling")
