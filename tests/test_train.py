"""Lesson 04: updates, training, presets, files, faults, resume and determinism."""

import json
import os
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch
from conftest import load_lesson

import common

train = load_lesson("04_train_mnist")
fwd = load_lesson("02_mlp_forward")
ROOT = Path(__file__).resolve().parent.parent

# A small, quick run on the real digits: 2,000 training digits, 400 of them for validation.
SMALL = ["--limit", "2000", "--val-size", "400", "--epochs", "3", "--batch-size", "50",
         "--hidden", "64", "32", "--no-progress", "--device", "cpu"]


def run(*args):
    return common.run_main(train.main, [str(a) for a in args])


def metrics(out):
    """metrics.json, refusing NaN and Infinity (not JSON)."""
    def no_constants(name):
        raise ValueError(f"metrics.json holds {name}")
    return json.loads((out / "metrics.json").read_text(), parse_constant=no_constants)


def random_problem(sizes=(12, 9, 7, 4), B=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    params = fwd.init_params(list(sizes), g)
    params = tuple(p + 0.1 * torch.randn(p.shape, generator=g) for p in params)  # b != 0
    x, y = torch.rand(B, sizes[0], generator=g), torch.randint(0, sizes[-1], (B,), generator=g)
    return params, x, y


# ----------------------------------------------------------------------------- updates

def test_momentum_step_matches_its_formula_by_hand():
    p, v, g = torch.tensor([1.0, -2.0]), torch.tensor([0.5, 0.0]), torch.tensor([2.0, 1.0])
    (new_p,), (new_v,) = train.momentum_step((p,), (v,), (g,), lr=0.1, momentum=0.9)
    # v' = 0.9 * v + g = (0.45 + 2, 0 + 1) = (2.45, 1);  p' = p - 0.1 * v' = (0.755, -2.1)
    torch.testing.assert_close(new_v, torch.tensor([2.45, 1.0]))
    torch.testing.assert_close(new_p, torch.tensor([0.755, -2.1]))


def test_update_functions_are_pure():
    params, x, y = random_problem()
    velocity = tuple(torch.randn_like(p) for p in params)
    grads = tuple(torch.randn_like(p) for p in params)
    before = [t.clone() for t in (*params, *velocity, *grads, x, y)]
    new_p, new_v = train.momentum_step(params, velocity, grads, 0.1, 0.9)
    new_p2, new_v2, loss = train.train_step(params, velocity, x, y, 0.1, 0.9, 1e-3)
    train.add_weight_decay(grads, params, 0.1)
    for old, now in zip(before, (*params, *velocity, *grads, x, y)):
        assert torch.equal(old, now)  # nothing passed in was changed
    assert all(a is not b for a, b in zip(new_p, params))
    assert isinstance(new_p2, tuple) and len(new_v2) == len(params) and loss.dim() == 0


@pytest.mark.parametrize("momentum, weight_decay, smoothing", [
    (0.0, 0.0, 0.0), (0.9, 0.0, 0.0), (0.9, 5e-3, 0.0), (0.0, 5e-3, 0.0), (0.9, 5e-3, 0.1)])
@pytest.mark.parametrize("step", ["train_step_", "fused_train_step_"])
def test_in_place_steps_equal_the_pure_step(step, momentum, weight_decay, smoothing):
    params, x, y = random_problem(seed=3)
    params = tuple(p.double() for p in params)
    x = x.double()
    velocity = train.init_velocity(params)
    pure_p, pure_v = params, velocity
    mine_p, mine_v = [p.clone() for p in params], [v.clone() for v in velocity]
    for _ in range(4):  # a few steps, so the velocity matters
        pure_p, pure_v, pure_loss = train.train_step(pure_p, pure_v, x, y, 0.1, momentum,
                                                     weight_decay, smoothing)
        loss = getattr(train, step)(mine_p, mine_v, x, y, 0.1, momentum, weight_decay,
                                    smoothing)
        assert abs(pure_loss.item() - loss.item()) < 1e-12
    for a, b in zip((*pure_p, *pure_v), (*mine_p, *mine_v)):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.5])
def test_smoothed_cross_entropy_backward_matches_autograd(smoothing):
    g = torch.Generator().manual_seed(4)
    logits = 3 * torch.randn(7, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 5, (7,), generator=g)
    z = logits.clone().requires_grad_(True)
    (ref,) = torch.autograd.grad(train.smoothed_cross_entropy(z, y, smoothing), z)
    ours = train.smoothed_cross_entropy_backward(logits, y, smoothing)
    assert ((ours - ref).abs().max() / ref.abs().max()).item() < 1e-12
    torch_loss = torch.nn.functional.cross_entropy(logits, y, label_smoothing=smoothing)
    ours_loss = train.smoothed_cross_entropy(logits, y, smoothing)
    assert abs(ours_loss.item() - torch_loss.item()) < 1e-12


def test_init_velocity_is_zeros_shaped_like_the_parameters():
    params, _, _ = random_problem()
    velocity = train.init_velocity(params)
    assert all(v.shape == p.shape and v.dtype == p.dtype and not v.any()
               for v, p in zip(velocity, params))


def test_updates_refuse_a_gradient_of_another_dtype():
    params, _, _ = random_problem()
    grads = tuple(g.double() for g in params)
    with pytest.raises(ValueError, match="gradient 0 is torch.float64"):
        train.momentum_step(params, train.init_velocity(params), grads, 0.1, 0.9)
    with pytest.raises(ValueError, match="gradient 0 is torch.float64"):
        train.momentum_step_(list(params), train.init_velocity(params), grads, 0.1, 0.9)


def test_training_steps_build_no_graph_under_inference_mode():
    params, x, y = random_problem()
    velocity = tuple(torch.zeros_like(p) for p in params)
    with torch.inference_mode():
        new_p, new_v, loss = train.train_step(params, velocity, x, y, 0.1, 0.9)
        fused = [p.clone() for p in params]
        loss_ = train.train_step_(fused, [v.clone() for v in velocity], x, y, 0.1, 0.9)
    for t in (*new_p, *new_v, loss, *fused, loss_):
        assert not t.requires_grad and t.grad_fn is None


def test_random_shift_moves_each_image_by_at_most_the_shift():
    x = torch.zeros(64, 784)
    x[:, 14 * 28 + 14] = 1.0  # one bright pixel in the middle of each image
    g = torch.Generator().manual_seed(0)
    shifted = train.random_shift(x, 2, g)
    assert shifted.shape == (64, 784) and torch.equal(shifted.sum(1), torch.ones(64))
    where = shifted.nonzero()[:, 1]  # the bright pixel's flat position in each image
    rows, cols = where // 28, where % 28
    assert (rows - 14).abs().max() <= 2 and (cols - 14).abs().max() <= 2
    assert len(set(zip(rows.tolist(), cols.tolist()))) > 10  # images get their own offsets
    assert torch.equal(train.random_shift(x, 0, g), x)


def test_learning_rate_schedules():
    config = {"lr": 0.1, "schedule": "linear"}
    assert train.learning_rate(config, 0, 100) == pytest.approx(0.1)
    assert train.learning_rate(config, 50, 100) == pytest.approx(0.05)
    assert train.learning_rate(dict(config, schedule="constant"), 99, 100) == 0.1


# ----------------------------------------------------------------------------- presets

def test_notebook_preset_is_the_notebook():
    args = common.parse_args(train.build_parser(), ["--preset", "notebook"])
    config = train.resolve_config(args)
    assert config["hidden"] == [512, 128] and config["lr"] == 0.01
    assert config["batch_size"] == 32 and config["epochs"] == 8
    assert config["momentum"] == 0 and config["schedule"] == "constant"
    assert config["weight_decay"] == 0 and config["shift"] == 0 and config["rotate"] == 0
    assert config["scale"] == 0 and config["elastic"] == 0
    assert config["val_size"] == 0  # the notebook trained on all 60,000 digits
    W1 = fwd.init_params([784, *config["hidden"], 10], torch.Generator().manual_seed(0))[0]
    assert abs(W1.std().item() - (2 / 784) ** 0.5) < 0.002  # He init


def test_flags_override_the_preset():
    args = common.parse_args(train.build_parser(),
                             ["--preset", "notebook", "--lr", "0.5", "--hidden", "32"])
    config = train.resolve_config(args)
    assert config["lr"] == 0.5 and config["hidden"] == [32] and config["batch_size"] == 32


# ----------------------------------------------------------------------------- bad input

BAD = [
    (["--lr", "0"], "argument --lr: must be a finite number in (0, 3.4e+38], got 0"),
    (["--lr", "-1"], "argument --lr: must be a finite number"),
    (["--lr", "inf"], "argument --lr: must be a finite number"),
    (["--batch-size", "0"], "argument --batch-size: must be a whole number"),
    (["--batch-size", "60000"], "--batch-size 60000 is larger than the 55000 training digits"),
    (["--epochs", "0"], "argument --epochs: must be a whole number"),
    (["--hidden", "512", "0"], "argument --hidden: must be a whole number"),
    (["--hidden", "2000000000"], "argument --hidden: must be a whole number"),
    (["--hidden", "99999999999999999999"], "argument --hidden: must be a whole number"),
    (["--hidden", "60000", "60000"], "would need 3,647,640,000 weights"),
    (["--seed", "99999999999999999999999"], "argument --seed: must be a whole number"),
    (["--preset", "fast"], "unknown preset 'fast'; choose one of: notebook, default, best"),
    (["--preset", "seed"], "the notebook's recipe is --preset notebook"),
    (["--momentum", "1"], "argument --momentum: must be a finite number"),
    (["--val-size", "60000"], "argument --val-size: must be a whole number"),
    (["--schedule", "cosine"], "--schedule must be linear or constant"),
    (["--step", "fast"], "--step must be one of inplace, pure, fused"),
    (["--resume", "--lr", "0.1"], "--resume continues with the checkpoint's own settings"),
    (["--lr", "fast"], "argument --lr: must be a finite number"),
    (["--limit", "0"], "argument --limit: must be a whole number"),
    (["--limit", "-3"], "argument --limit: must be a whole number"),
    (["--bogus"], "unrecognised arguments: --bogus"),
    (["--eval", "x.pt", "--lr", "-5"], "argument --lr"),
    (["--eval", "x.pt", "--lr", "0.5"], "--eval only reads a checkpoint; drop --lr"),
    (["--eval", "x.pt", "--limit", "0"], "argument --limit: must be a whole number"),
    (["--ablation", "--epochs", "3"], "--ablation trains its own fixed ladder; drop --epochs"),
]


@pytest.mark.parametrize("args, words", BAD)
def test_bad_arguments_stop_before_any_work(args, words, tmp_path, capsys, monkeypatch):
    def no_data(*a, **k):
        raise AssertionError("data was loaded before the arguments were checked")

    monkeypatch.setattr(common, "load_mnist", no_data)
    assert run(*args, "--out", tmp_path / "out", "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("out, words", [("", "empty"), ("/proc/nope", "/proc/nope"),
                                        ("FILE/sub", "under a file")])
def test_an_unusable_output_folder_is_refused_before_any_work(out, words, tmp_path, capsys,
                                                               monkeypatch):
    monkeypatch.setattr(common, "load_mnist", lambda *a, **k: 1 / 0)
    (tmp_path / "FILE").write_text("keep me")
    out = out.replace("FILE", str(tmp_path / "FILE"))
    assert run("--out", out, "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1
    assert (tmp_path / "FILE").read_text() == "keep me"


def test_cuda_asked_for_without_cuda(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert run("--device", "cuda", "--out", tmp_path) == 2
    assert "sees no CUDA GPU; use --device cpu" in capsys.readouterr().err


@pytest.mark.parametrize("content", [None, b"not a checkpoint", "a foreign torch file"])
def test_eval_of_a_missing_or_foreign_file(content, tmp_path, capsys):
    path = tmp_path / "model.pt"
    if content == "a foreign torch file":
        torch.save({"weights": [torch.ones(2)]}, path)  # a real torch file, but not ours
    elif content is not None:
        path.write_bytes(content)
    assert run("--eval", path, "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(path) in err and err.count("\n") == 1


def test_an_output_path_that_is_a_file_is_refused(tmp_path, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    assert run("--out", tmp_path / "notes.txt", "--device", "cpu") == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert (tmp_path / "notes.txt").read_text() == "keep me"


def test_resume_without_a_checkpoint(tmp_path, capsys):
    assert run("--resume", "--out", tmp_path, "--device", "cpu") == 2
    assert "no checkpoint at" in capsys.readouterr().err


# ----------------------------------------------------------------------------- real runs

@pytest.mark.mnist
def test_a_short_run_learns_and_writes_every_file(mnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(*SMALL, "--out", out) == 0
    stdout = capsys.readouterr().out
    assert "epoch 3/3 | loss " in stdout and "| val " in stdout
    m = metrics(out)
    assert m["status"] == "finished" and len(m["history"]) == 3
    first, last = m["history"][0], m["history"][-1]
    assert last["loss"] < first["loss"] and last["val_loss"] < first["val_loss"]
    assert last["val_accuracy"] > first["val_accuracy"]
    assert m["test_accuracy"] > 0.8 and m["config"]["hidden"] == [64, 32]
    assert {"train_accuracy", "total_seconds", "torch", "device"} <= set(m)
    assert m["device"] == "cpu" and m["device_name"] == common.cpu_description()  # e.g. AVX2
    result = stdout.strip().splitlines()[-1]
    assert result.startswith("result: test_accuracy=") and "epochs=3" in result
    for png in ("curves.png", "predictions.png", "weights.png", "confusion.png"):
        data = (out / png).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["epoch"] == 3 and [tuple(p.shape) for p in state["params"]] == [
        (784, 64), (64,), (64, 32), (32,), (32, 10), (10,)]
    assert run("--eval", out / "checkpoint.pt", "--limit", "2000", "--device", "cpu") == 0
    evaluated = capsys.readouterr().out.strip().splitlines()[-1]
    assert f"test_accuracy={m['test_accuracy']:.4f}" in evaluated


@pytest.mark.mnist
def test_the_same_seed_gives_the_same_metrics(mnist, tmp_path):
    for name in ("a", "b"):
        assert run(*SMALL, "--epochs", "2", "--out", tmp_path / name) == 0
    a, b = metrics(tmp_path / "a"), metrics(tmp_path / "b")
    for key in ("loss", "val_loss", "val_accuracy"):
        assert [h[key] for h in a["history"]] == [h[key] for h in b["history"]]
    assert a["test_accuracy"] == b["test_accuracy"]


@pytest.mark.mnist
@pytest.mark.parametrize("step", ["inplace", "pure"])
def test_resume_reaches_the_same_result_as_an_uninterrupted_run(mnist, tmp_path, monkeypatch,
                                                                 step):
    assert run(*SMALL, "--step", step, "--out", tmp_path / "whole") == 0
    real_save, saves = train.save_checkpoint, []

    def save_then_interrupt(*args):
        real_save(*args)
        saves.append(1)
        if len(saves) == 1:
            raise KeyboardInterrupt  # Ctrl-C right after the first epoch's checkpoint

    monkeypatch.setattr(train, "save_checkpoint", save_then_interrupt)
    assert run(*SMALL, "--step", step, "--out", tmp_path / "cut") == 130
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 1
    assert run("--resume", "--out", tmp_path / "cut", "--no-progress", "--device", "cpu") == 0
    whole = torch.load(tmp_path / "whole" / "checkpoint.pt", weights_only=True)
    cut = torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)
    assert all(torch.equal(a, b) for a, b in zip(whole["params"], cut["params"]))
    assert metrics(tmp_path / "whole")["test_accuracy"] == metrics(tmp_path / "cut")[
        "test_accuracy"]


@pytest.mark.mnist
def test_divergence_stops_at_once_and_keeps_the_earlier_checkpoint(mnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(*SMALL, "--epochs", "1", "--out", out) == 0
    good = (out / "checkpoint.pt").read_bytes()
    good_metrics = (out / "metrics.json").read_bytes()
    capsys.readouterr()
    assert run(*SMALL, "--lr", "1000", "--out", out) == 1
    err = capsys.readouterr().err
    assert "at epoch 1, step" in err and "try a lower --lr" in err
    assert err.startswith("error: the loss became")
    assert (out / "checkpoint.pt").read_bytes() == good
    assert (out / "metrics.json").read_bytes() == good_metrics


@pytest.mark.mnist
def test_an_interrupted_checkpoint_write_keeps_the_previous_file(mnist, tmp_path, monkeypatch):
    out = tmp_path / "run"
    assert run(*SMALL, "--epochs", "1", "--out", out) == 0
    good = (out / "checkpoint.pt").read_bytes()
    real_save = torch.save

    def half_written(obj, f):
        real_save(obj, f)
        f.truncate(100)  # a torn write...
        raise KeyboardInterrupt  # ...cut short by Ctrl-C

    monkeypatch.setattr(torch, "save", half_written)
    assert run(*SMALL, "--out", out) == 130
    assert (out / "checkpoint.pt").read_bytes() == good
    assert sorted(p.name for p in out.iterdir()) == [".lock", "checkpoint.pt", "confusion.png",
                                                     "curves.png", "metrics.json",
                                                     "predictions.png", "weights.png"]


@pytest.mark.mnist
def test_the_training_path_runs_under_inference_mode(mnist, tmp_path, monkeypatch):
    seen, real_forward = [], train.mlp_forward

    def watching_forward(params, x):
        seen.append((torch.is_inference_mode_enabled(), any(p.requires_grad for p in params)))
        return real_forward(params, x)

    monkeypatch.setattr(train, "mlp_forward", watching_forward)
    assert run(*SMALL, "--epochs", "1", "--out", tmp_path) == 0
    assert len(seen) > 30 and set(seen) == {(True, False)}


@pytest.mark.mnist
@pytest.mark.skipif(sys.platform == "win32", reason="SIGTERM is a POSIX signal")
def test_sigterm_leaves_a_complete_checkpoint_and_resume_finishes(mnist, tmp_path):
    out = tmp_path / "run"
    args = [*SMALL, "--epochs", "40", "--out", str(out)]  # the last --epochs wins
    proc = subprocess.Popen([sys.executable, "04_train_mnist.py", *args],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)  # let it get into a later epoch
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "interrupted:" in stderr and "--resume" in stderr and "Traceback" not in stderr
    state = torch.load(out / "checkpoint.pt", weights_only=True)  # complete, loadable
    assert 1 <= state["epoch"] < 40
    assert not [p for p in os.listdir(out) if p.endswith(".tmp")]


# ----------------------------------------------------------------------------- the velocity

def small_net(dtype=torch.float64):
    return load_lesson("02_mlp_forward").init_params([5, 4, 3], torch.Generator().manual_seed(0),
                                                     dtype=dtype)


def grads_like(params, seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params)


def velocity_cases(params):
    """A velocity that is too short, and one of another dtype (it would promote the params)."""
    return {"short": train.init_velocity(params)[:2],
            "float32": tuple(v.float() for v in train.init_velocity(params))}


@pytest.mark.parametrize("case", ["short", "float32"])
def test_every_momentum_update_refuses_a_velocity_unlike_the_parameters(case):
    params = small_net()
    velocity = velocity_cases(params)[case]
    x = torch.rand(6, 5, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    calls = {
        "momentum_step": lambda: train.momentum_step(params, velocity, grads_like(params), 0.1,
                                                     0.9),
        "momentum_step_": lambda: train.momentum_step_([p.clone() for p in params], velocity,
                                                       grads_like(params), 0.1, 0.9),
        "train_step": lambda: train.train_step(params, velocity, x, y, 0.1, 0.9),
        "train_step_": lambda: train.train_step_([p.clone() for p in params], velocity, x, y,
                                                 0.1, 0.9),
        "fused_train_step_": lambda: train.fused_train_step_([p.clone() for p in params],
                                                             velocity, x, y, 0.1, 0.9),
    }
    for name, call in calls.items():
        with pytest.raises(ValueError, match="init_velocity"):
            call()
            pytest.fail(f"{name} accepted a {case} velocity")


def test_plain_sgd_in_place_needs_no_velocity_and_still_updates_every_parameter():
    params = [p.clone() for p in small_net()]
    grads = grads_like(params)
    expected = [torch.add(p, g, alpha=-0.1) for p, g in zip(params, grads)]
    train.momentum_step_(params, (), grads, 0.1, 0.0)  # momentum 0: velocity unused
    assert all(torch.equal(p, e) for p, e in zip(params, expected))


def test_momentum_step_in_place_uses_the_gradients_as_scratch_only_with_weight_decay():
    params = [p.clone() for p in small_net()]
    grads = grads_like(params)
    kept = [g.clone() for g in grads]
    train.momentum_step_(params, list(train.init_velocity(params)), grads, 0.1, 0.9)
    assert all(torch.equal(g, k) for g, k in zip(grads, kept))  # no weight decay: untouched
    train.momentum_step_(params, list(train.init_velocity(params)), grads, 0.1, 0.9, 0.5)
    changed = [not torch.equal(g, k) for g, k in zip(grads, kept)]
    assert changed == [p.dim() == 2 for p in params]  # as its docstring says: weights only


def test_linear_decay_refuses_steps_it_cannot_place():
    logreg = load_lesson("01_logistic_regression")
    assert logreg.linear_decay(0.1, 10, 10) == 0.0 and logreg.linear_decay(0.1, 50, 10) == 0.0
    for step, total in [(0, 0), (-5, 10)]:
        with pytest.raises(ValueError, match="total_steps >= 1 and step >= 0"):
            logreg.linear_decay(0.1, step, total)


def test_logistic_regression_refuses_a_single_unbatched_sample():
    logreg = load_lesson("01_logistic_regression")
    w, b = torch.zeros(5, dtype=torch.float64), torch.zeros(1, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"x\[None\]"):
        logreg.logreg_forward((w, b), torch.rand(5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"x\[None\]"):
        logreg.logreg_backward(torch.rand(5, dtype=torch.float64), torch.zeros(1),
                               torch.tensor([1]))


@pytest.mark.parametrize("loss", [0.0, 0.25])
def test_the_curves_picture_draws_any_finite_loss_without_a_warning(tmp_path, loss):
    """A run that learnt a tiny training set exactly logs a loss of 0.0; a log axis cannot
    draw it, so the picture must fall back to a linear axis rather than warn."""
    history = [{"epoch": e, "loss": loss / e, "val_loss": loss, "val_accuracy": 1.0,
                "seconds": 1.0} for e in (1, 2)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train.plot_curves(history, tmp_path / "curves.png", "a title")
    assert (tmp_path / "curves.png").stat().st_size > 0
