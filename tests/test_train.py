"""Lesson 04's promises: resume continues bit-identically after a kill, divergence and Ctrl-C
leave the last good checkpoint and say so, a busy folder and bad flags are refused at once,
and checkpoints load safely or are refused in one sentence."""

import json
import signal
import subprocess
import sys
import time
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from conftest import load_lesson

import common

L4 = load_lesson("04_train_mnist")
ROOT = Path(__file__).resolve().parent.parent
SMALL = ["--device", "cpu", "--limit", "3000", "--val-size", "500", "--hidden", "32",
         "--epochs", "4"]


def main(*argv):
    return common.run_main(L4.main, [*SMALL, *argv])


def params_of(folder):
    return torch.load(folder / "checkpoint.pt", weights_only=True)["params"]


def status(folder):
    return json.loads((folder / "metrics.json").read_text())


@pytest.mark.mnist
def test_resume_after_a_kill_at_any_moment_is_bit_identical(tmp_path):
    run = subprocess.Popen([sys.executable, str(ROOT / "04_train_mnist.py"), *SMALL, "--out",
                            str(tmp_path / "killed")], stdout=subprocess.DEVNULL)
    while not (tmp_path / "killed" / "checkpoint.pt").exists() and run.poll() is None:
        time.sleep(0.01)
    run.send_signal(signal.SIGKILL)  # in the middle of epoch 2, most likely
    run.wait()
    assert common.run_main(L4.main, ["--resume", "--out", str(tmp_path / "killed")]) == 0
    config = torch.load(tmp_path / "killed" / "checkpoint.pt", weights_only=True)["config"]
    data = [t[:3000] for t in common.load_mnist()]
    generator = common.make_generator(config["seed"])
    split = common.train_val_split(data[0], data[1], 500, generator)
    straight = L4.fit(config, split, generator, log=lambda line: None)[0]  # never stopped
    resumed = params_of(tmp_path / "killed")
    assert all(torch.equal(a, b) for a, b in zip(straight, resumed, strict=True))
    assert status(tmp_path / "killed")["status"] == "finished"


@pytest.mark.mnist
@pytest.mark.parametrize("bad_call", [5, 23 * 2])  # in epoch 1; the last step of epoch 2
def test_divergence_exits_1_and_keeps_the_last_good_epoch(tmp_path, monkeypatch, capsys, bad_call):
    step, calls = L4.train_step, []

    def diverging(params, *args):  # 23 steps an epoch here: 2,500 digits in batches of 128
        calls.append(1)
        new, velocity, loss = step(params, *args)
        if len(calls) == bad_call:
            new = (new[0] * float("inf"), *new[1:])
        return new, velocity, loss
    monkeypatch.setattr(L4, "train_step", diverging)
    assert main("--out", str(tmp_path)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the loss or the weights stopped being finite in epoch")
    record = status(tmp_path)
    assert record["status"] == "diverged" and len(record["history"]) == bad_call // 23
    assert (tmp_path / "checkpoint.pt").is_file() == (bad_call > 23)
    if bad_call > 23:
        assert all(p.isfinite().all() for p in params_of(tmp_path))


@pytest.mark.mnist
def test_ctrl_c_is_one_line_with_the_resume_command(tmp_path, monkeypatch, capsys):
    step, calls = L4.train_step, []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 30:  # in epoch 2
            raise KeyboardInterrupt
        return step(*args)
    monkeypatch.setattr(L4, "train_step", interrupted)
    assert main("--out", str(tmp_path)) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"interrupted; to go on from the last finished epoch: python "
                   f"04_train_mnist.py --resume --out {tmp_path}"]
    assert status(tmp_path)["status"] == "interrupted" and len(status(tmp_path)["history"]) == 1


def test_a_busy_folder_is_refused_in_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(common, "load_mnist", lambda **kw: pytest.fail("data loaded"))
    with common.lock_folder(tmp_path):
        assert main("--out", str(tmp_path)) == 1
    assert capsys.readouterr().err == (f"error: {tmp_path} is in use by another run; wait for "
                                       "it to end or give another --out.\n")


@pytest.mark.parametrize("argv", [["--hidden", "2000000000"], ["--seed", str(2**63)],
                                  ["--lr", "inf"], ["--lr", "nan"], ["--limit", "0"],
                                  ["--batch-size", "0"], ["--val-size", "59999", "--limit", "100"],
                                  ["--epochs", "1.5"], ["--out", "/dev/null/x"],
                                  ["--resume", "--lr", "0.1"], ["--device", "cuda:7"]])
def test_bad_flags_are_refused_before_any_data_loads(argv, capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(common, "load_mnist", lambda **kw: pytest.fail("data loaded"))
    (tmp_path / "checkpoint.pt").write_bytes(b"")
    with pytest.raises(SystemExit) as done:
        L4.main(["--out", str(tmp_path), *argv] if "--out" not in argv else argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert done.value.code == 2 and len(err) == 2 and err[0].startswith("usage: ")


def test_checkpoints_of_another_format_or_network_are_refused_in_one_sentence(tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"format": "something else"}, path)
    with pytest.raises(ValueError, match="is not a backprop-mnist-checkpoint/3 file"):
        L4.load_checkpoint(path)
    params = L4.init_params([784, 32, 10], torch.Generator())
    config = dict(L4.PRESETS["default"], hidden=[64])  # says 64 units; holds 32
    L4.save_checkpoint(path, params, params, config, torch.Generator(), [])
    with pytest.raises(ValueError, match="not a finite 784-64-10 network"):
        L4.load_checkpoint(path)
    torch.save({"format": L4.FORMAT, "payload": Fraction(1, 3)}, path)  # weights_only refuses
    with pytest.raises(ValueError, match="not a checkpoint that torch can read safely"):
        L4.load_checkpoint(path)


@pytest.mark.mnist
def test_eval_scores_a_checkpoint(tmp_path, capsys):
    params = L4.init_params([784, 32, 10], torch.Generator().manual_seed(0))
    L4.save_checkpoint(tmp_path / "c.pt", params, params, dict(L4.PRESETS["default"], hidden=[32],
                       preset="default"), torch.Generator(), [])
    assert common.run_main(L4.main, ["--eval", str(tmp_path / "c.pt")]) == 0
    assert "result: test_accuracy=0." in capsys.readouterr().out


@pytest.mark.mnist
def test_the_diagnostics_are_recorded_per_epoch_and_layer(tmp_path):
    assert main("--out", str(tmp_path), "--epochs", "2") == 0
    record = status(tmp_path)
    d = record["history"][-1]["diagnostics"]
    assert len(d["update_ratio"]) == 2 and len(d["dead"]) == len(d["rms"]) == 1
    assert -6 < d["update_ratio"][0] < 0 and 0 <= d["dead"][0] < 0.5 and d["rms"][0] > 0
