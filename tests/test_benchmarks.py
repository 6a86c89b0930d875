"""The benchmarks' arithmetic and bookkeeping, on tiny synthetic inputs (nothing is timed here).

The benchmarks themselves run with `python -m pytest benchmarks` (CI: once each, timing off).
"""

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import contenders  # noqa: E402
import peak  # noqa: E402
import report  # noqa: E402

training = contenders.training
PEAK = 100.0  # GFLOP/s


def entry(op, impl, batch, seconds, sizes=(784, 512, 128, 10), **extra):
    """One benchmark as pytest-benchmark saves it, with this suite's extra_info."""
    flops = contenders.op_flops("step" if op == "scaling" else op, batch, sizes)
    params = sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
    info = dict(op=op, impl=impl, batch=batch, device="cpu", flops=flops, sizes=list(sizes),
                params_count=params, device_name="Test CPU, AVX2", threads=2, torch="2.x",
                peak_gflops=PEAK, peak_backend="numpy", peak_backends={"torch": 80.0,
                                                                       "numpy": PEAK}, **extra)
    return {"extra_info": info, "stats": {"min": seconds}}


def saved_run(tmp_path):
    """A small saved run whose FIRST entry is a forward pass (the old limit took its FLOPs)."""
    benchmarks = [entry("forward", "manual", 128, 1e-3), entry("forward", "autograd", 128, 2e-3),
                  entry("backward", "manual", 128, 1.5e-3)]
    for impl, seconds in (("pure", 4e-3), ("fused", 3e-3), ("autograd", 6e-3), ("matmuls", 2.5e-3)):
        benchmarks += [entry("step", impl, b, seconds * b / 128) for b in (128, 512)]
    benchmarks.append(entry("step", "compiled", 128, 2.8e-3, first_call_s=12.0))
    for width in (256, 1024):
        sizes = (784, width, 128, 10)
        benchmarks += [entry("scaling", "fused", 128, width * 6e-6, sizes),
                       entry("scaling", "matmuls", 128, width * 5e-6, sizes)]
    path = tmp_path / "0001_run.json"
    path.write_text(json.dumps({"machine_info": {}, "benchmarks": benchmarks}))
    return path


def test_flops_per_operation():
    assert contenders.op_flops("forward", 3) == 2 * 3 * 468_224
    assert contenders.op_flops("backward", 3) == 2 * 3 * 535_040
    assert contenders.op_flops("step", 3) == 2 * 3 * 1_003_264


def test_each_charts_limit_is_its_own_operations_flops_at_the_peak(tmp_path):
    runs = report.load_runs(saved_run(tmp_path))
    for op, per_example in (("step", 1_003_264), ("forward", 468_224)):
        _, limit = report.chart_series("cpu", runs, op)
        assert [b for b, _ in limit] == ([128, 512] if op == "step" else [128])
        for _, seconds in limit:  # per example: 2 * FLOPs per example / peak
            assert seconds == pytest.approx(2 * per_example / (PEAK * 1e9), rel=1e-12)
    series, limit = report.chart_series("cpu", runs, "scaling")
    for (params, seconds), width in zip(limit, (256, 1024)):
        sizes = (784, width, 128, 10)
        assert params == sum(a * b + b for a, b in zip(sizes[:-1], sizes[1:]))
        assert seconds == pytest.approx(contenders.op_flops("step", 128, sizes) / (PEAK * 1e9))
    assert set(series) == {"fused", "matmuls"}


@pytest.mark.parametrize("sizes, batch", [((784, 512, 128, 10), 5), ((6, 7, 5, 4, 3), 2)])
def test_the_floor_is_exactly_the_steps_matrix_products(sizes, batch):
    params, x, y = contenders.make_problem(batch, torch.device("cpu"), sizes)
    with torch.inference_mode():
        pairs, dW_at = contenders.step_products(params, x, y)
    n = len(sizes) - 1
    assert len(pairs) == 3 * n - 1  # n forward, n dW, n - 1 dH
    flops = sum(2 * a.shape[0] * a.shape[1] * b.shape[1] for a, b in pairs)  # 2 m k n each
    assert flops == contenders.op_flops("step", batch, sizes)
    assert [tuple(pairs[i][0].shape[::-1]) for i in dW_at[:1]] == [(batch, sizes[0])]
    contenders.check_against_autograd("step", "matmuls", params, x, y)  # its dW are the grads


@pytest.mark.parametrize("impl", ["pure", "inplace", "fused", "matmuls"])
def test_each_cpu_step_agrees_with_autograd(impl):
    params, x, y = contenders.make_problem(16, torch.device("cpu"), (20, 12, 8, 5))
    contenders.check_against_autograd("step", impl, params, x, y)


@pytest.mark.parametrize("momentum, weight_decay, smoothing", [(0.9, 1e-4, 0.1), (0.0, 1e-2, 0.0)])
@pytest.mark.parametrize("step", [contenders.inplace_train_step_, contenders.fused_train_step_])
def test_speed_variants_equal_the_taught_step_in_float64(step, momentum, weight_decay, smoothing):
    g = torch.Generator().manual_seed(0)
    params = training.init_params([9, 7, 6, 4], g, dtype=torch.float64)
    velocity = tuple(torch.randn(p.shape, generator=g, dtype=torch.float64) for p in params)
    x = torch.randn(5, 9, generator=g, dtype=torch.float64)
    y = torch.randint(0, 4, (5,), generator=g)
    want = training.train_step(params, velocity, x, y, 0.3, momentum, weight_decay, smoothing)
    mine, v = [p.clone() for p in params], [t.clone() for t in velocity]
    loss = step(mine, v, x, y, 0.3, momentum, weight_decay, smoothing)
    for a, b in zip(mine + v + [loss], [*want[0], *want[1], want[2]]):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14), (a - b).abs().max()


def test_report_tables_and_pictures_from_a_saved_run(tmp_path, capsys):
    report.main([str(saved_run(tmp_path)), "--ratios", str(tmp_path / "none.json"),
                 "--docs", str(tmp_path)])
    assert (tmp_path / "benchmark_cpu.png").stat().st_size > 1000
    assert (tmp_path / "scaling_cpu.png").stat().st_size > 1000
    text = capsys.readouterr().out
    assert "measured float32 matmul peak 100 GFLOP/s (numpy" in text
    step_rows = [line for line in text.splitlines() if line.startswith("| 128 | ")]
    # batch 128, fused: 3 ms; matmuls alone 2.5 ms; autograd 6 ms; 2*128*1,003,264 / 3 ms
    assert "| 128 | fused | 3.00 ms | 86 | 86 % | 1.20x | 0.50x |" in step_rows
    assert "| 128 | matmuls | 2.50 ms | 103 | 103 % | 1.00x | 0.42x |" in step_rows
    assert "| 128 | manual | 1.00 ms | 120 | 120 % | 0.50x |" in step_rows  # a forward: no floor
    assert "| 1024 | fused | 6.14 ms |" in text and "compiled, first call" in text



def test_ratios_are_taken_within_each_process_and_judged_against_the_target():
    data = {"device": "cpu", "device_name": "Test CPU", "threads": 2, "torch": "2.x", "jax": None,
            "processes": 3, "blocks": 5, "batches": [128], "peak": {"peak_gflops": PEAK},
            "times": {"pure": {"128": [4.0, 8.0, 4.4]}, "fused": {"128": [3.0, 6.0, 3.6]},
                      "compiled": {"128": [3.3, 5.0, None]},
                      "matmuls": {"128": [2.5, 5.0, 3.0]}, "autograd": {"128": [6.0, 12.0, 6.0]}}}
    assert report.per_round(data, "fused", "matmuls", "128") == pytest.approx([1.2, 1.2, 1.2])
    assert report.per_round(data, "fastest", "matmuls", "128") == pytest.approx([1.2, 1.0, 1.2])
    assert report.fastest_name(data, "128") == "fused"
    text = report.ratios_section(data)
    assert "| 128 | fused | 1.20x (1.00-1.20) | 1.60x (1.47-1.60) |" in text
    assert "batch 128: 1.20x (not met)" in text


def test_the_peak_is_the_fastest_backend_measured():
    results = [{"backend": "torch", "gflops": 80.0, "n": 2048}, {"backend": "jax", "skipped": "x"},
               {"backend": "numpy", "gflops": 120.0, "n": 1024}]
    assert peak.summary(results) == {
        "peak_gflops": 120.0, "peak_backend": "numpy", "peak_n": 1024,
        "torch_matmul_gflops": 80.0, "peak_backends": {"torch": 80.0, "jax": None, "numpy": 120.0}}
    with pytest.raises(ValueError, match="jax: x"):
        peak.summary(results[1:2])
