"""benchmarks/peak.py's logic (parsing, environments, choosing the peak) and ratios.py's
bookkeeping, without timing anything."""

import json

import pytest
from conftest import load_benchmark

load = load_benchmark


@pytest.fixture(scope="module")
def peak():
    return load("peak")


@pytest.fixture(scope="module")
def ratios():
    return load("ratios")


def test_a_backend_process_output_is_parsed_from_its_last_peak_line(peak):
    first = {"backend": "numpy", "gflops": 100.0, "n": 1024}
    last = {"backend": "numpy", "gflops": 480.5, "n": 2048, "detail": "numpy 2.4"}
    text = "\n".join(["some warning", "peak:" + json.dumps(first), "peak:{broken",
                      "peak:" + json.dumps(last), "peak:[1, 2]", "bye"])
    assert peak.parse_backend_output(text) == last
    assert peak.parse_backend_output("no measurement at all\n") is None
    assert peak.parse_backend_output('peak:{"backend": "jax"}') is None  # no gflops


def test_the_pinning_variables_are_removed_from_a_copy_and_named(peak):
    environ = {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576", "PATH": "/bin"}
    clean, removed = peak.clean_environment(environ)
    assert clean == {"PATH": "/bin"}
    assert removed == {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_L2_SIZE": "1048576"}
    assert "OPENBLAS_CORETYPE" in environ  # the caller's environment is unchanged
    assert peak.clean_environment({"PATH": "/bin"}) == ({"PATH": "/bin"}, {})


def test_the_fastest_measured_backend_is_the_peak(peak):
    results = [{"backend": "torch", "gflops": 230.0, "n": 2048, "detail": "torch"},
               {"backend": "numpy", "gflops": 484.0, "n": 2048, "detail": "numpy",
                "unset": {"OPENBLAS_CORETYPE": "Haswell"}},
               {"backend": "jax", "skipped": "jax is not importable here"}]
    assert peak.fastest(results)["backend"] == "numpy"
    summary = peak.summary(results)
    assert summary == {"peak_gflops": 484.0, "peak_backend": "numpy", "peak_n": 2048,
                       "torch_matmul_gflops": 230.0,
                       "backends": {"torch": 230.0, "numpy": 484.0, "jax": None}}
    lines = [peak.describe(r) for r in results]
    assert lines[1].startswith("numpy    484.0 GFLOP/s  (2048x2048 float32 matmul; numpy)")
    assert "OPENBLAS_CORETYPE=Haswell removed from its environment" in lines[1]
    assert lines[2] == "jax    skipped: jax is not importable here"
    with pytest.raises(ValueError, match="no backend"):
        peak.fastest(results[2:])


def test_jax_can_be_hidden_by_an_environment_variable(peak):
    assert peak.jax_disabled({}) is None
    assert peak.jax_disabled({"BENCH_NO_JAX": "0"}) is None
    assert "BENCH_NO_JAX" in peak.jax_disabled({"BENCH_NO_JAX": "1"})


def test_a_hidden_jax_is_reported_as_skipped_without_starting_a_process(peak, monkeypatch):
    monkeypatch.setattr(peak, "measure_torch", lambda device, repeats: {
        "backend": "torch", "gflops": 1.0, "n": 8, "detail": "fake"})
    monkeypatch.setattr(peak, "run_backend", lambda *a, **k: pytest.fail("started a process"))
    results = peak.measure_all("cuda", environ={"BENCH_NO_JAX": "1"})
    assert results[1] == {"backend": "jax",
                          "skipped": "BENCH_NO_JAX is set: JAX treated as not installed"}


@pytest.mark.parametrize("repeats", ["0", "100001", "99999999999999999999999"])
def test_peak_refuses_a_repeat_count_out_of_range_in_one_line(peak, repeats, capsys):
    assert peak.main(["--repeats", repeats]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: argument --repeats: must be a whole number in [1, 100000], got "
                   f"{repeats}.\n")


def test_ratio_bookkeeping(ratios):
    assert ratios.steps_per_block(1e-3, 0.02) == 20
    assert ratios.steps_per_block(1.0, 0.02) == 1
    assert ratios.rotated(["a", "b", "c"], 4) == ["b", "c", "a"]
    torch_runs = [{"32": {"fused": {"median_s": 2.0}, "autograd": {"median_s": 4.0}}},
                  {"32": {"fused": {"median_s": 3.0}, "autograd": {"median_s": 3.0}}},
                  {"32": {"fused": {"median_s": 1.0}, "autograd": {"median_s": 4.0}}}]
    jax_runs = [{"32": {"jax": {"median_s": 1.0}}}, {"32": {"jax": {"median_s": 2.0}}},
                {"skipped": "no jax"}]
    within = ratios.paired_ratios(torch_runs, jax_runs, "fused", "autograd", [32])
    assert within == {"32": {"median": 0.5, "min": 0.25, "max": 1.0, "n": 3}}
    versus = ratios.paired_ratios(torch_runs, jax_runs, "fused", "jax", [32, 128])
    assert versus == {"32": {"median": 1.75, "min": 1.5, "max": 2.0, "n": 2}}
    summary = ratios.summarise(torch_runs, ["fused", "jax"], [32])
    assert summary == {"fused": {"32": {"median_s": 2.0, "best_s": 1.0,
                                          "per_process": [2.0, 3.0, 1.0]}}}


class FakeJax:
    """Stands in for the jax module: records the precision asked for; has only a CPU."""

    def __init__(self):
        self.asked = []

    def default_matmul_precision(self, value):
        self.asked.append(value)
        return value

    def devices(self, platform):
        if platform != "cpu":
            raise RuntimeError(f"Unknown backend {platform}")
        return ["cpu0"]


def test_jax_computes_true_float32_on_a_gpu_and_keeps_its_cpu_default():
    jax_step = load("jax_step")
    fake = FakeJax()
    jax_step.true_float32(fake, "gpu")
    jax_step.true_float32(fake, "cpu")
    assert fake.asked == ["highest", None]  # not TensorFloat32 on a GPU; untouched on a CPU


def test_jax_platforms_lists_every_backend_present_not_only_the_default():
    assert load("jax_step").platforms(FakeJax()) == ["cpu"]
