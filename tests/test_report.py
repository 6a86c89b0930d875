"""benchmarks/report.py turns a saved pytest-benchmark run (and ratios.py's file) into tables
with the right ratios and "% of peak", and draws the pictures. Nothing here times anything."""

import json

import pytest
from conftest import load_benchmark

load = load_benchmark


def load_report():
    return load("report")


def bench(op, impl, batch, seconds, device="cpu", width=512, **extra):
    sizes = [784, width, 128, 10]
    flops = 2 * batch * 1_001_344
    info = {"op": op, "impl": impl, "batch": batch, "device": device, "device_name": "cpu",
            "threads": 2, "torch": "2.14.1", "peak_gflops": 400.0, "peak_backend": "numpy",
            "peak_matmul_n": 2048, "torch_matmul_gflops": 200.0,
            "peak_backends": {"torch": 200.0, "numpy": 400.0, "jax": None},
            "flops": flops, "sizes": sizes, "params_count": 1000 * width,
            "gflops": flops / seconds / 1e9, "pct_of_peak": 100 * flops / seconds / 1e9 / 400}
    info.update(extra)
    return {"extra_info": info, "stats": {"min": seconds, "median": seconds * 1.1}}


def write_run(tmp_path, runs):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "Test CPU"}},
                                "benchmarks": runs}))
    return path


def rows_of(text, batch=32):
    return {line.split("|")[2].strip(): line for line in text.splitlines()
            if line.startswith(f"| {batch} ") and line.count("|") > 8}


def test_report_tables_hold_the_time_ratios(tmp_path):
    runs = [bench("step", "manual", 32, 0.8e-3), bench("step", "fused", 32, 0.6e-3),
            bench("step", "autograd", 32, 1.0e-3), bench("step", "notebook", 32, 1.2e-3),
            bench("forward", "manual", 32, 2e-4), bench("forward", "autograd", 32, 4e-4)]
    text = load_report().report(write_run(tmp_path, runs), tmp_path / "no_ratios.json")
    assert "**cpu**: Test CPU, 2 threads" in text
    rows = rows_of(text)
    assert "| 800 us | 1.00 ms | 1.20 ms | 0.80x | 0.67x |" in rows["step (pure)"]
    assert "| 600 us | 1.00 ms | 1.20 ms | 0.60x | 0.50x |" in rows["step (fused)"]
    assert "| 200 us | 400 us | - | 0.50x | - |" in rows["forward"]
    assert "backward" not in rows


def test_times_keep_three_significant_figures():
    fmt = load_report().fmt_time
    assert [fmt(x) for x in (None, 3.12e-4, 1.7e-3, 5.428e-2, 0.36693, 2.14)] == [
        "-", "312 us", "1.70 ms", "54.3 ms", "367 ms", "2.1 s"]


def test_the_heading_names_the_cpu_the_benchmark_recorded(tmp_path):
    described = "AMD EPYC (family 25, model 1), AVX2, no AVX-512"
    runs = [bench("step", impl, 32, 1e-3, device_name=described)
            for impl in ("manual", "autograd")]
    text = load_report().report(write_run(tmp_path, runs), tmp_path / "no_ratios.json")
    assert f"**cpu**: {described}, 2 threads" in text


def test_percent_of_peak_divides_by_the_measured_peak_and_keeps_torchs_matmul(tmp_path):
    # 2 * 32 * 1,001,344 FLOPs in 0.8 ms = 80.1 GFLOP/s: 20 % of the 400 peak, 40 % of torch's.
    text = load_report().report(write_run(tmp_path, [bench("step", "manual", 32, 0.8e-3)]),
                                tmp_path / "none.json")
    assert ("measured float32 matmul peak 400 GFLOP/s (numpy, 2048x2048 matmul); "
            "torch's own matmul 200 GFLOP/s (torch 200, numpy 400)") in text
    assert rows_of(text)["step (pure)"].endswith("| 80 | 20 % | 40 % |")


def test_step_table_has_every_step_implementation_and_the_compile_time(tmp_path):
    runs = [bench("step", "fused", 32, 0.5e-3), bench("step", "jax", 32, 0.4e-3),
            bench("step", "compiled", 32, 0.45e-3, first_call_s=7.25),
            bench("step", "autograd", 32, 1.0e-3)]
    text = load_report().step_table("cpu", load_report().load_runs(write_run(tmp_path, runs))[1])
    header = next(line for line in text.splitlines() if line.startswith("| batch"))
    assert header.split("|")[2:6] == [" fused ", " compiled ", " jax ", " autograd "]
    row = next(line for line in text.splitlines() if line.startswith("| 32 "))
    # best torch (compiled, 450 us) / jax (400 us) = 1.12x; the first call shown apart
    assert "| 450 us (" in row and row.endswith("| 1.12x | 7.2 s |")


def test_scaling_table_orders_by_width_and_names_the_parameter_count(tmp_path):
    runs = [bench("scaling", impl, 128, s * w / 512, width=w)
            for w in (1024, 128) for impl, s in (("fused", 1e-3), ("autograd", 2e-3))]
    text = load_report().scaling_table("cpu", load_report().load_runs(write_run(tmp_path,
                                                                                 runs))[1])
    rows = [line for line in text.splitlines() if line.startswith("| 1")]
    assert [r.split("|")[1].strip() for r in rows] == ["128", "1024"]
    assert rows[0].startswith("| 128 | 128,000 | 250 us | 500 us |")
    # the main table ignores the scaling group entirely
    assert load_report().device_table("cpu", load_report().load_runs(
        write_run(tmp_path, runs))[1], {}) == ""


def ratios_file(tmp_path, compiled_jax, fused_autograd):
    def r(v):
        return {"median": v, "min": v, "max": v, "n": 3}
    data = {"device": "cpu", "device_name": "Test CPU", "threads": 2, "torch": "2.14.1",
            "jax": "0.10.2", "processes": 3, "blocks": 15, "batches": [1, 32, 128],
            "peak": {"peak_gflops": 480.0, "peak_backend": "numpy"},
            "summary": {"fused": {"32": {"median_s": 4e-4, "best_s": 3.9e-4,
                                           "per_process": [4e-4]}}},
            "ratios": {"compiled/jax": {str(b): r(v) for b, v in compiled_jax.items()},
                       "fused/autograd": {"32": r(fused_autograd)}},
            "first_call_s": {"compiled": {"32": [7.0, 8.0, 9.0]}}}
    path = tmp_path / "ratios_cpu.json"
    path.write_text(json.dumps(data))
    return path


JAX_TARGET = "fastest torch step (compiled or fused) <= 1.0x JAX at batch 1-128"


def test_ratio_section_states_each_target_as_measured(tmp_path):
    report = load_report()
    data = report.load_ratios(ratios_file(tmp_path, {1: 0.9, 32: 1.05, 128: 0.95}, 0.65))
    verdicts = {name: (verdict, text) for name, verdict, text in report.target_verdicts(data)}
    assert verdicts[JAX_TARGET] == (
        "not met", "1: 0.90x (compiled), 32: 1.05x (compiled), 128: 0.95x (compiled)")
    assert verdicts["eager fused step <= 0.7x autograd at batch 32"] == ("met", "32: 0.65x")
    assert verdicts["eager step (pure) <= 0.7x autograd at batch 32"][0] == "not measured"
    text = report.ratios_section(data)
    assert "median of 3 processes" in text and "measured peak 480 GFLOP/s (numpy)" in text
    assert "batch 32 8.0 s" in text  # the median compile time
    assert "| 32 | 400 us | 0.65x |" in text


def test_the_jax_target_takes_the_faster_torch_path_at_each_batch(tmp_path):
    report = load_report()
    path = ratios_file(tmp_path, {1: 1.2, 32: 0.9, 128: 1.05}, 0.65)
    data = json.loads(path.read_text())
    data["ratios"]["fused/jax"] = {"1": {"median": 0.95}, "32": {"median": 0.8}}
    path.write_text(json.dumps(data))
    verdicts = {name: (verdict, text) for name, verdict, text in
                report.target_verdicts(report.load_ratios(path))}
    assert verdicts[JAX_TARGET] == (
        "not met", "1: 0.95x (fused), 32: 0.80x (fused), 128: 1.05x (compiled)")
    data["ratios"]["fused/jax"]["128"] = {"median": 1.004}  # prints 3 decimals, not "1.00x"
    path.write_text(json.dumps(data))
    verdicts = {name: (verdict, text) for name, verdict, text in
                report.target_verdicts(report.load_ratios(path))}
    assert verdicts[JAX_TARGET] == (
        "not met", "1: 0.95x (fused), 32: 0.80x (fused), 128: 1.004x (fused)")
    data["ratios"]["fused/jax"]["128"] = {"median": 0.99}
    path.write_text(json.dumps(data))
    verdicts = {name: (verdict, text) for name, verdict, text in
                report.target_verdicts(report.load_ratios(path))}
    assert verdicts[JAX_TARGET] == (
        "met", "1: 0.95x (fused), 32: 0.80x (fused), 128: 0.99x (fused)")


def test_report_reads_the_ratios_file_beside_the_run(tmp_path):
    run = write_run(tmp_path, [bench("step", "manual", 32, 0.8e-3)])
    path = ratios_file(tmp_path, {1: 0.9, 32: 0.99, 128: 0.8}, 0.75)
    text = load_report().report(run, path)
    assert (f"| {JAX_TARGET} | 1: 0.90x (compiled), 32: 0.99x (compiled), 128: 0.80x "
            "(compiled) | met |") in text
    assert "| eager fused step <= 0.7x autograd at batch 32 | 32: 0.75x | not met |" in text


def test_pictures_are_written_per_device_with_the_peak_as_the_limit(tmp_path):
    report = load_report()
    runs = [bench("step", impl, b, s * b) for b in (1, 32, 128)
            for impl, s in (("fused", 1e-5), ("jax", 8e-6), ("autograd", 2e-5))]
    runs += [bench("scaling", "fused", 128, 1e-3 * w / 512, width=w) for w in (128, 512)]
    machine, loaded = report.load_runs(write_run(tmp_path, runs))[0:2]
    series, limit, _ = report.step_series("cpu", loaded)
    assert set(series) == {"fused", "jax", "autograd"}
    assert series["jax"][0] == (1, pytest.approx(8e-6))
    # the time per example that 400 GFLOP/s gives: 2 * 1,001,344 FLOPs / 400e9
    assert limit == pytest.approx(2 * 1_001_344 / 400e9)
    written = report.write_pictures(loaded, machine, docs=tmp_path / "docs")
    assert sorted(p.name for p in written) == ["benchmark_cpu.png", "scaling_cpu.png"]
    for p in written:
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list((tmp_path / "docs").glob("*.tmp.png"))


@pytest.mark.parametrize("content, words", [
    ("not json", "is not a pytest-benchmark JSON file"),
    (json.dumps({"benchmarks": [{"extra_info": {}, "stats": None}]}), "holds no timed MLP"),
    (json.dumps({"benchmarks": [1]}), "holds a benchmark entry this suite did not write"),
    (json.dumps({"benchmarks": [{"extra_info": {"op": "step"}, "stats": {"min": 1}}]}),
     "holds a benchmark entry this suite did not write"),
])
def test_report_refuses_files_it_cannot_read(tmp_path, capsys, content, words):
    path = tmp_path / "run.json"
    path.write_text(content)
    assert load_report().main([str(path), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1


def test_report_refuses_a_broken_ratios_file(tmp_path, capsys):
    run = write_run(tmp_path, [bench("step", "manual", 32, 0.8e-3)])
    broken = tmp_path / "ratios.json"
    broken.write_text("{}")
    assert load_report().main([str(run), "--ratios", str(broken), "--no-plots"]) == 2
    assert "is not a file that benchmarks/ratios.py wrote" in capsys.readouterr().err


def test_report_main_prints_tables_without_pictures_when_asked(tmp_path, capsys):
    run = write_run(tmp_path, [bench("step", "manual", 32, 0.8e-3)])
    assert load_report().main([str(run), "--ratios", str(tmp_path / "none.json"),
                               "--no-plots"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"from {run}") and "wrote" not in out


def test_step_variants_times_the_three_steps_and_states_the_ratios(capsys):
    variants = load("step_variants")
    assert variants.main(["--rounds", "2", "--examples", "1280"]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1] for line in out.splitlines()
            if line.startswith("  ")}
    assert rows == {"fused": "fused_train_step_", "inplace": "train_step_", "pure": "train_step"}
    result = dict(kv.split("=") for kv in out.strip().splitlines()[-1].split()[1:])
    assert float(result["inplace_over_fused"]) > 0 and float(result["pure_over_fused"]) > 0
    assert result["rounds"] == "2"


def test_step_variants_refuses_an_absent_device_in_one_sentence(capsys):
    variants = load("step_variants")
    if variants.torch.cuda.is_available():
        pytest.skip("a CUDA GPU is present here")
    assert variants.common.run_main(variants.main, ["--device", "cuda"]) == 2
    assert "sees no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("script, flags, words", [
    ("ratios", ["--processes", "0"], "--processes: must be a whole number between 1 and 100"),
    ("ratios", ["--blocks", "0"], "--blocks: must be a whole number between 1 and"),
    ("ratios", ["--batches", "-1"], "--batches: must be a whole number between 1 and"),
    ("ratios", ["--device", "bogus"], "unknown device 'bogus'"),
    ("profile_step", ["--batches", "-3"], "--batches: must be a whole number between 1 and"),
    ("profile_step", ["--steps", "0"], "--steps: must be a whole number between 1 and"),
    ("step_variants", ["--rounds", "x"], "--rounds: must be a whole number between 1 and"),
])
def test_benchmark_scripts_refuse_bad_flags_in_one_sentence(script, flags, words, capsys):
    module = load(script)
    assert module.common.run_main(module.main, flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1


def test_ratios_refuses_a_folder_as_out_before_measuring(tmp_path, capsys):
    ratios = load("ratios")
    assert ratios.common.run_main(ratios.main, ["--out", str(tmp_path), "--processes", "1"]) == 2
    assert f"--out {tmp_path} is a folder" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing measured, nothing written


@pytest.mark.parametrize("flags, words", [
    (["--repeats", "0"], "argument --repeats: must be a whole number in [1, 100000], got 0"),
    (["--repeats", "abc"], "argument --repeats: invalid int value: 'abc'"),
    (["--device"], "argument --device: expected one argument"),
    (["--device", "bogus"], "unknown device 'bogus'"),
])
def test_peak_refuses_bad_flags_in_one_sentence(flags, words, capsys):
    assert load("peak").main(flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1


@pytest.mark.parametrize("text", ["abc", "0", "-1", "nan", "inf"])
def test_bench_max_time_must_be_a_positive_number(text):
    contenders = load("contenders")
    with pytest.raises(ValueError, match=f"BENCH_MAX_TIME must be a positive number of seconds "
                                         f".*got '{text}'"):
        contenders.seconds_from_env("BENCH_MAX_TIME", 2.0, {"BENCH_MAX_TIME": text})
    assert contenders.seconds_from_env("BENCH_MAX_TIME", 2.0, {"BENCH_MAX_TIME": "0.5"}) == 0.5
    assert contenders.seconds_from_env("BENCH_MAX_TIME", 2.0, {}) == 2.0
    assert contenders.seconds_from_env("BENCH_MAX_TIME", 2.0, {"BENCH_MAX_TIME": ""}) == 2.0


def test_report_never_writes_a_picture_over_a_folder(tmp_path, capsys):
    report = load_report()
    _, runs = report.load_runs(write_run(tmp_path, [bench("step", "manual", 32, 0.8e-3),
                                                   bench("step", "manual", 64, 1.2e-3)]))
    (tmp_path / "docs" / "benchmark_cpu.png").mkdir(parents=True)
    with pytest.raises(ValueError, match="exists and is not a plain file"):
        report.write_pictures(runs, {}, tmp_path / "docs")
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["benchmark_cpu.png"]


@pytest.mark.parametrize("entry", [
    {"extra_info": {"op": "step", "device": "cpu", "impl": "manual", "batch": 32},
     "stats": {"min": 1e-3}},  # no "threads", no "sizes": the tables need them
    {"extra_info": {"op": "step", "device": "cpu", "impl": "manual", "batch": "64",
                    "sizes": [784, 512, 128, 10]}, "stats": {"min": 1e-3}},
    {"extra_info": {"op": "step", "device": "../../../tmp/evil", "impl": "manual", "batch": 64,
                    "sizes": [784, 512, 128, 10]}, "stats": {"min": 1e-3}},  # names a file
    {"extra_info": {"op": "step", "device": "cpu\n", "impl": "manual", "batch": 64,
                    "sizes": [784, 512, 128, 10]}, "stats": {"min": 1e-3}},  # a newline
    {"extra_info": {"op": "step", "device": "cpu", "impl": "manual", "batch": 0,
                    "sizes": [784, 512, 128, 10]}, "stats": {"min": 1e-3}},
    {"extra_info": {"op": "step", "device": "cpu", "impl": "manual", "batch": 64,
                    "sizes": [784, 512, 128, 10]}, "stats": {"min": 0}},
    {"extra_info": {"op": "step", "device": "cpu", "impl": "manual", "batch": 64,
                    "sizes": [784, 512, 128, 10]}, "stats": {"min": float("nan")}},
])
def test_report_refuses_entries_it_did_not_write_in_one_sentence(entry, tmp_path, capsys):
    good = json.loads(write_run(tmp_path, [bench("step", "manual", 32, 0.8e-3)]).read_text())
    good["benchmarks"].append(entry)
    path = tmp_path / "odd.json"
    path.write_text(json.dumps(good))
    assert load_report().main([str(path), "--ratios", str(tmp_path / "none.json"),
                               "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
