"""Each lesson end to end on a small slice of the real MNIST, as a learner runs it."""

import pytest
from conftest import load_lesson

import common

pytestmark = pytest.mark.mnist


def run(name, *argv):
    return common.run_main(load_lesson(name).main, ["--device", "cpu", *argv])


def test_lesson_01_finds_the_nines_and_shows_why_cross_entropy(capsys, tmp_path):
    assert run("01_logistic_regression", "--limit", "3000", "--epochs", "2", "--out",
               str(tmp_path)) == 0
    out = capsys.readouterr().out
    assert (tmp_path / "weights.png").is_file() and "2. why cross-entropy" in out
    rows = [line.replace("%", "").split() for line in out.splitlines()
            if len(line.split()) == 7 and line.split()[0].isdigit()]
    assert len(rows) == 4 and float(rows[-1][3]) > float(rows[-1][6])  # CE finds more 9s
    assert out.strip().splitlines()[-1].startswith("result: test_accuracy=")


def test_lesson_02_builds_the_network_and_keeps_the_scale(capsys):
    assert run("02_mlp_forward", "--digits", "200") == 0
    out = capsys.readouterr().out
    assert "468,874 parameters" in out and out.strip().endswith("ok=true")


def test_lesson_03_checks_walks_and_runs_backprop_on_a_graph(capsys):
    assert run("03_mlp_backward") == 0
    out = capsys.readouterr().out
    assert out.count(" ok\n") == 5 and "delta_1           100x512" in out
    assert "central differences agree: 2.000, 3.000, 1.000" in out


def test_lesson_04_trains_a_small_run_and_writes_its_files(capsys, tmp_path):
    assert run("04_train_mnist", "--limit", "3000", "--val-size", "500", "--epochs", "2",
               "--hidden", "64", "--out", str(tmp_path)) == 0
    assert {p.name for p in tmp_path.iterdir()} >= {
        "checkpoint.pt", "metrics.json", "curves.png", "diagnostics.png", "predictions.png"}
    assert "result: test_accuracy=" in capsys.readouterr().out


def test_lesson_04_overfits_one_batch(capsys):
    assert run("04_train_mnist", "--overfit-batch", "--batch-size", "32", "--hidden", "64") == 0
    assert "fitted one batch of 32" in capsys.readouterr().out


@pytest.mark.parametrize("name, argv, words", [
    ("01_logistic_regression", ["--lr", "-1"], "argument --lr"),
    ("02_mlp_forward", ["--sizes", "784", "10", "5"], "argument --sizes"),
    ("03_mlp_backward", ["--bug", "typo"], "argument --bug"),
    ("04_train_mnist", ["--preset", "seed"], "argument --preset")])
def test_a_bad_flag_is_the_usage_line_and_one_error_line(name, argv, words, capsys):
    with pytest.raises(SystemExit) as done:
        load_lesson(name).main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 2
    assert err[0].startswith("usage: ") and words in err[1]
