"""benchmarks/report.py turns a saved pytest-benchmark run into tables with the right ratios."""

import importlib.util
import json
from pathlib import Path

import pytest


def load_report():
    """Import benchmarks/report.py by its path (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / "report.py"
    spec = importlib.util.spec_from_file_location("report", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def bench(op, impl, batch, seconds, device="cpu"):
    info = {"op": op, "impl": impl, "batch": batch, "device": device, "device_name": "cpu",
            "threads": 2, "torch": "2.14.1", "peak_gflops": 100.0, "peak_matmul_n": 2048,
            "gflops": 1e-3 / seconds, "pct_of_peak": 50.0}
    return {"extra_info": info, "stats": {"min": seconds, "median": seconds * 1.1}}


def test_report_tables_hold_the_time_ratios(tmp_path):
    runs = [bench("step", "manual", 32, 0.8e-3), bench("step", "inplace", 32, 0.6e-3),
            bench("step", "autograd", 32, 1.0e-3), bench("step", "notebook", 32, 1.2e-3),
            bench("forward", "manual", 32, 2e-4), bench("forward", "autograd", 32, 4e-4)]
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"machine_info": {"cpu": {"brand_raw": "Test CPU"}},
                                "benchmarks": runs}))
    text = load_report().report(path)
    assert "**cpu**: Test CPU, 2 threads" in text
    rows = {line.split("|")[2].strip(): line for line in text.splitlines()
            if line.startswith("| 32 ")}
    assert "| 800 us | 1.00 ms | 1.20 ms | 0.80x | 0.67x |" in rows["step (pure)"]
    assert "| 600 us | 1.00 ms | 1.20 ms | 0.60x | 0.50x |" in rows["step (in place)"]
    assert "| 200 us | 400 us | - | 0.50x | - |" in rows["forward"]
    assert "backward" not in rows


@pytest.mark.parametrize("content, words", [
    ("not json", "is not a pytest-benchmark JSON file"),
    (json.dumps({"benchmarks": [{"extra_info": {}, "stats": None}]}), "holds no timed MLP"),
])
def test_report_refuses_files_it_cannot_read(tmp_path, capsys, content, words):
    path = tmp_path / "run.json"
    path.write_text(content)
    assert load_report().main([str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1
