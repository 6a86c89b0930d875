"""Each lesson runs end to end on a small slice and ends with its `result:` line."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import load_lesson

import common

ROOT = Path(__file__).resolve().parent.parent
LESSONS = ["01_logistic_regression", "02_mlp_forward", "03_mlp_backward", "04_train_mnist"]


def result_of(output):
    """The key=value pairs of the last line, which must start with 'result:'."""
    last = output.strip().splitlines()[-1]
    assert last.startswith("result: "), last
    return dict(pair.split("=", 1) for pair in last[len("result: "):].split())


def run(lesson, *args):
    """Run a lesson's main in this process -> (exit status, stdout, stderr) via run_main."""
    return common.run_main(load_lesson(lesson).main, list(args))


@pytest.mark.mnist
def test_01_trains_on_a_slice_and_reports_class_9_metrics(mnist, capsys):
    assert run("01_logistic_regression", "--limit", "3000", "--epochs", "2", "--no-progress") == 0
    out = capsys.readouterr().out
    result = result_of(out)
    assert set(result) >= {"test_accuracy", "precision", "recall", "f1", "baseline_accuracy", "ok"}
    assert float(result["test_accuracy"]) > float(result["baseline_accuracy"])
    assert result["ok"] == "true" and "epoch 2/2 | train loss" in out


@pytest.mark.mnist
def test_01_removes_the_picture_a_killed_run_left_half_written(mnist, tmp_path, capsys):
    (tmp_path / ".weights.png.k1ll3d00.tmp").write_bytes(b"half a png")  # SIGKILL mid-write
    (tmp_path / ".notes.abcdefgh.tmp").write_text("a user's own file")
    assert run("01_logistic_regression", "--limit", "1000", "--epochs", "1", "--no-progress",
               "--out", str(tmp_path)) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", ".notes.abcdefgh.tmp",
                                                          "weights.png"]


def test_01_refuses_a_bad_lock_before_it_trains(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("mine")
    try:
        (tmp_path / ".lock").hardlink_to(tmp_path / "notes.txt")
    except OSError as err:
        pytest.skip(f"no hard links here ({err})")
    assert run("01_logistic_regression", "--out", str(tmp_path), "--device", "cpu") == 2
    out, err = capsys.readouterr()
    assert out == "" and "is not a file of its own" in err  # no data loaded, no epoch run
    assert (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.mnist
def test_02_prints_shapes_parameter_count_and_initial_loss(mnist, capsys):
    assert run("02_mlp_forward", "--digits", "200", "--device", "cpu") == 0
    out = capsys.readouterr().out
    result = result_of(out)
    assert result["params"] == "468874" and result["ok"] == "true"
    assert abs(float(result["initial_loss"]) - 2.3026) < 1.0
    assert "784x512" in out and "ln 10 = 2.3026" in out


def test_03_checks_gradients_and_times_the_jacobian_route(capsys):
    assert run("03_mlp_backward", "--repeats", "2", "--device", "cpu") == 0
    out = capsys.readouterr().out
    result = result_of(out)
    assert result["ok"] == "true" and float(result["max_rel_error"]) < 1e-6
    assert float(result["jacobian_max_diff"]) < 1e-12
    assert "W4" in out and "verdict: every check passed" in out
    assert "delta_1           100x512" in out  # the shape walkthrough
    for key in ("delta_ratio_b32", "backward_ratio_b32", "backward_ratio_b512"):
        assert float(result[key]) > 0, key
    for part in ("batch 32, delta_n alone", "batch 32, whole backward pass",
                 "batch 512, delta_n alone", "batch 512, whole backward pass"):
        assert f"{part}: the notebook's route is " in out, part  # a verdict for each ratio


@pytest.mark.parametrize("lesson, args, words", [
    ("01_logistic_regression", ["--lr", "0"],
     "argument --lr: must be a finite number in (0, 3.4e+38]"),
    ("01_logistic_regression", ["--lr", "inf"], "argument --lr: must be a finite number"),
    ("01_logistic_regression", ["--epochs", "0"], "argument --epochs: must be a whole number"),
    ("01_logistic_regression", ["--limit", "0"], "argument --limit: must be a whole number"),
    ("01_logistic_regression", ["--limit", "-3"], "argument --limit: must be a whole number"),
    ("01_logistic_regression", ["--seed", "99999999999999999999999"], "argument --seed"),
    ("02_mlp_forward", ["--sizes", "784", "3000000000"], "argument --sizes: must be a whole"),
    ("02_mlp_forward", ["--sizes", "784", "60000", "60000"], "would need 3,647,040,000"),
    ("03_mlp_backward", ["--tolerance", "nan"], "argument --tolerance: must be a finite"),
    ("03_mlp_backward", ["--tolerance", "-1"], "argument --tolerance: must be a finite"),
    ("02_mlp_forward", ["--sizes", "784"], "--sizes must start with 784"),
    ("02_mlp_forward", ["--device", "tpu"], "unknown device 'tpu'"),
    ("03_mlp_backward", ["--repeats", "0"], "argument --repeats: must be a whole number"),
])
def test_bad_arguments_give_one_sentence_and_status_2(lesson, args, words, capsys):
    assert run(lesson, *args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1


@pytest.mark.parametrize("lesson", LESSONS[:3])
def test_cuda_asked_for_without_cuda_is_a_clear_error(lesson, capsys, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run(lesson, "--device", "cuda") == 2
    assert "sees no CUDA GPU; use --device cpu" in capsys.readouterr().err


def test_lessons_print_nothing_when_imported():
    code = f"import importlib\nfor n in {LESSONS!r}: importlib.import_module(n)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "" and done.stderr == ""


def test_lessons_never_mention_autograd():
    words = ("autograd", "requires_grad", ".backward(", ".grad ")
    for name in ["common"] + LESSONS:
        source = (ROOT / f"{name}.py").read_text()
        assert not [w for w in words if w in source], name


@pytest.mark.mnist
@pytest.mark.parametrize("lesson, args", [
    ("01_logistic_regression", ["--limit", "500", "--epochs", "1"]),
    ("02_mlp_forward", ["--digits", "20"]),
])
def test_lessons_run_as_scripts(mnist, lesson, args):
    done = subprocess.run([sys.executable, f"{lesson}.py", "--device", "cpu", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert result_of(done.stdout)["ok"] == "true"
