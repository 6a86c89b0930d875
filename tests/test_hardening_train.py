"""Lesson 04 under attack: divergence, a busy folder, crafted checkpoints, signals, leftovers."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import load_lesson

import common

train = load_lesson("04_train_mnist")
ROOT = Path(__file__).resolve().parent.parent
TINY = ["--limit", "1000", "--val-size", "200", "--epochs", "1", "--batch-size", "100",
        "--hidden", "16", "--no-progress", "--device", "cpu"]
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals and fcntl locks")


def run(*args):
    return common.run_main(train.main, [str(a) for a in args])


def strict_json(path):
    """metrics.json parsed by a strict parser: NaN and Infinity are not JSON."""
    def refuse(name):
        raise ValueError(f"{path} holds {name}")
    return json.loads(Path(path).read_text(), parse_constant=refuse)


@pytest.mark.mnist
def test_a_divergence_on_the_last_update_of_an_epoch_is_caught(mnist, tmp_path, capsys):
    out = tmp_path / "run"
    args = ["--limit", "1000", "--val-size", "0", "--batch-size", "1000", "--no-progress",
            "--device", "cpu", "--out", out]
    assert run(*args, "--epochs", "1", "--lr", "0.01") == 0  # a good first run
    good = (out / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    # One step per epoch: its loss is computed before the update, so only the parameters
    # can show that the update itself blew up.
    assert run(*args, "--epochs", "2", "--lr", "1e38") == 1
    err = capsys.readouterr().err
    assert err.startswith("error: the ") and "infinite or NaN" in err and "--lr" in err
    assert (out / "checkpoint.pt").read_bytes() == good
    assert strict_json(out / "metrics.json")["status"] == "finished"  # the good run's file


def test_metrics_are_strict_json_even_with_non_finite_numbers(tmp_path):
    common.save_json(tmp_path / "m.json", {"a": float("nan"), "b": [float("inf"), 1.0]})
    assert strict_json(tmp_path / "m.json") == {"a": None, "b": [None, 1.0]}


@posix_only
def test_a_second_run_into_a_busy_folder_stops_at_once_naming_the_other(tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import common, sys, time\nh = common.lock_folder(sys.argv[1])\n"
         "print('held', flush=True)\ntime.sleep(60)", str(out)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert run(*TINY, "--out", out) == 2
        err = capsys.readouterr().err
        assert f"process {holder.pid}" in err and err.count("\n") == 1
        assert not (out / "checkpoint.pt").exists()
    finally:
        holder.kill()
        holder.wait()


@pytest.mark.mnist
@posix_only
def test_resume_after_sigkill_works_and_leftovers_are_cleaned(mnist, tmp_path):
    out = tmp_path / "run"
    args = [*TINY, "--epochs", "60", "--out", str(out)]
    proc = subprocess.Popen([sys.executable, "04_train_mnist.py", *args], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not (out / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    (out / ".checkpoint.pt.ab12CD34.tmp").write_bytes(b"half a file")  # what a kill can leave
    assert run("--resume", "--out", out, "--no-progress", "--device", "cpu") == 0
    assert not (out / ".checkpoint.pt.ab12CD34.tmp").exists()
    assert torch.load(out / "checkpoint.pt", weights_only=True)["epoch"] == 60


@pytest.mark.mnist
def test_resume_refuses_another_preset_than_the_runs(mnist, tmp_path, capsys):
    out = tmp_path / "run"
    assert run(*TINY, "--out", out) == 0
    capsys.readouterr()
    assert run("--resume", "--preset", "best", "--out", out, "--device", "cpu") == 2
    assert "holds a run of preset 'default', not 'best'" in capsys.readouterr().err


def nested(depth):
    """[[[...]]], depth lists deep."""
    x = []
    for _ in range(depth):
        x = [x]
    return x


def crafted(tmp_path, edit):
    """A real checkpoint of a tiny network, changed by edit(state) and saved."""
    sizes = [784, 4, 10]
    params = load_lesson("02_mlp_forward").init_params(sizes, torch.Generator().manual_seed(0))
    config = dict(train.PRESETS["default"], hidden=[4], epochs=1, seed=0, limit=None,
                  step="inplace", preset="default")
    state = {"format": train.CHECKPOINT_FORMAT, "params": list(params),
             "velocity": [torch.zeros_like(p) for p in params], "config": config, "epoch": 1,
             "generator_state": torch.Generator().get_state(),
             "history": [{"epoch": 1, "loss": 1.0, "val_loss": 0.5, "val_accuracy": 0.9,
                          "seconds": 1.0}]}
    edit(state)
    torch.save(state, tmp_path / "c.pt")
    return tmp_path / "c.pt"


@pytest.mark.parametrize("edit, words", [
    (lambda s: s.pop("velocity"), "it lacks velocity"),
    (lambda s: s.pop("config"), "it lacks config"),
    (lambda s: s.update(params=[p.double() for p in s["params"]]), "not dense float32 tensors"),
    (lambda s: s["config"].pop("hidden"), "its config lacks hidden"),
    (lambda s: s["config"].pop("momentum"), "its config lacks momentum"),
    (lambda s: s.update(epoch=5), "do not agree"),
    (lambda s: s["config"].update(hidden=[2_000_000_000]), "its config's hidden"),
    (lambda s: s["config"].update(hidden=512), "its config's hidden is not a list"),
    (lambda s: s["config"].update(batch_size=0), "its config's batch_size = 0 does not hold"),
    (lambda s: s["config"].update(epochs=7.5), "its config's epochs = 7.5 does not hold"),
    (lambda s: s["config"].update(momentum="x"), "its config's momentum = x does not hold"),
    (lambda s: s["config"].update(seed=2**70), "its config's seed"),
    (lambda s: s["config"].update(val_size=-5), "its config's val_size = -5 does not hold"),
    (lambda s: s["config"].update(step="bogus"), "--step must be one of"),
    (lambda s: s["config"].update(preset="nope"), "its config's preset 'nope' is unknown"),
    (lambda s: s.update(generator_state=torch.zeros(7, dtype=torch.uint8)),
     "its generator state is not one"),
    (lambda s: s.update(history=[0]), "do not agree"),
    (lambda s: s.update(history=[{}]), "do not agree"),
    (lambda s: s["history"][0].update(seconds="1"), "do not agree"),
    (lambda s: s["history"][0].update(seconds=10**400), "do not agree"),
    (lambda s: s["history"][0].update(loss=float("nan")), "do not agree"),
    (lambda s: s["config"].update(preset=["default"]), "its config's preset \"['default']\""),
    (lambda s: s["params"].__setitem__(0, s["params"][0].to_sparse()), "not dense float32"),
    (lambda s: s["params"][0].__setitem__((0, 0), float("nan")), "its params hold NaN"),
    (lambda s: s["velocity"][1].__setitem__(0, float("inf")), "its velocity hold NaN"),
    # junk a run never writes, which once ended in a TypeError (or a RecursionError) at the
    # first write of metrics.json
    (lambda s: s["config"].update(junk=torch.zeros(2)), "its config holds keys no run writes"),
    (lambda s: s["config"].update({3: nested(200)}), "its config holds keys no run writes"),
    (lambda s: s["history"][0].update(junk=torch.zeros(2)), "do not agree"),
    (lambda s: s.update(epoch=True), "do not agree"),
    (lambda s: s["history"][0].update(epoch=True), "do not agree"),
    (lambda s: s["history"][0].update(seconds=-5.0), "do not agree"),
    (lambda s: s["history"][0].update(seconds=10**300), "do not agree"),  # an int, not a float
    (lambda s: s["history"][0].update(val_accuracy=1), "do not agree"),
    (lambda s: (s["config"].update(epochs=2), s.update(epoch=2),  # their sum overflows
                s["history"].append(dict(s["history"][0], epoch=2)),
                [h.update(seconds=1e308) for h in s["history"]]), "do not agree"),
    (lambda s: s["history"][0].update(val_accuracy=None), "do not agree"),  # val_size 5000
    (lambda s: s["history"][0].update(val_accuracy=1.5), "do not agree"),
    (lambda s: (s["config"].update(val_size=0), s["history"][0].update(val_loss=0.3,
                                                                       val_accuracy=None)),
     "do not agree"),
    (lambda s: s["params"].__setitem__(1, torch.empty(4, device="meta")), "not dense float32"),
])
@pytest.mark.parametrize("mode", ["--eval", "--resume"])
def test_crafted_checkpoints_are_refused_in_one_sentence(edit, words, mode, tmp_path, capsys):
    assert train.load_checkpoint(crafted(tmp_path, lambda s: None))["epoch"] == 1  # base: fine
    path = crafted(tmp_path, edit)
    if mode == "--eval":
        assert run("--eval", path, "--device", "cpu") == 2
    else:
        path.rename(tmp_path / "checkpoint.pt")
        assert run("--resume", "--out", tmp_path, "--device", "cpu") == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and words in err and err.count("\n") == 1
    assert "is damaged" in err and "train again or use another checkpoint" in err


@pytest.mark.parametrize("edit", [
    lambda s: s["params"].__setitem__(1, torch.zeros(1).expand(4)),  # one element for four
    lambda s: s["velocity"].__setitem__(1, s["params"][1]),  # a velocity that is a parameter
    lambda s: s["params"].__setitem__(1, torch.zeros(4, requires_grad=True)),
])
def test_a_checkpoint_is_loaded_into_fresh_memory(edit, tmp_path):
    # Crafted memory layouts that the in-place updates would refuse (a stride of 0) or that
    # would make one update move two tensors; a run saves none of them.
    state = train.load_checkpoint(crafted(tmp_path, edit))
    tensors = state["params"] + state["velocity"]
    assert all(t.is_contiguous() and not t.requires_grad for t in tensors)
    assert len({t.untyped_storage().data_ptr() for t in tensors}) == len(tensors)
    params, velocity = state["params"], state["velocity"]
    x, y = torch.rand(8, 784), torch.arange(8)
    train.train_step_(params, velocity, x, y, lr=0.1, momentum=0.9)  # runs, in place
    assert not torch.equal(params[1], velocity[1])


def test_eval_of_parameters_too_large_to_score_is_one_sentence(tmp_path, capsys):
    path = crafted(tmp_path, lambda s: s["params"].__setitem__(0, torch.full((784, 4), 1e38)))
    assert run("--eval", path, "--device", "cpu", "--limit", "100") == 2
    out, err = capsys.readouterr()
    assert err.startswith("error: ") and err.count("\n") == 1
    assert "too large to score" in err and "result:" not in out


@posix_only
def test_sigterm_during_the_imports_is_a_clean_interruption():
    proc = subprocess.Popen([sys.executable, "04_train_mnist.py", "--device", "cpu"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)  # python is up, torch is still importing
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.startswith("interrupted") and "Traceback" not in err  # no blank line in a log


@posix_only
@pytest.mark.parametrize("lesson", ["01_logistic_regression.py", "02_mlp_forward.py",
                                    "03_mlp_backward.py", "04_train_mnist.py"])
def test_ctrl_c_pressed_again_and_again_while_starting_gives_one_line(lesson):
    proc = subprocess.Popen([sys.executable, lesson, "--device", "cpu"], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(0.4)  # python is up, torch is still importing
    for sig in (signal.SIGINT, signal.SIGINT, signal.SIGTERM):
        if proc.poll() is None:
            proc.send_signal(sig)
        time.sleep(0.01)
    _, err = proc.communicate(timeout=60)
    # 130 from the handler; or, when a later signal lands after Python's shutdown has given
    # the signals back to the OS, killed by that signal (-2, -15): the message came first.
    assert proc.returncode in (130, -signal.SIGINT, -signal.SIGTERM), err
    assert err.count("interrupted") == 1 and "Traceback" not in err, err


@posix_only
@pytest.mark.parametrize("lesson", ["02_mlp_forward.py", "04_train_mnist.py"])
def test_a_lesson_started_with_sigint_ignored_is_not_stopped_by_it(lesson, tmp_path):
    # As a job started with & from a script: Ctrl-C at the terminal is not for it.
    out = tmp_path / "run"
    args = ["--epochs", "1", "--limit", "600", "--val-size", "100", "--out", str(out),
            "--no-progress"] if lesson.startswith("04") else []
    proc = subprocess.Popen([sys.executable, lesson, "--device", "cpu", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    time.sleep(0.4)  # python is up, torch is still importing
    proc.send_signal(signal.SIGINT)
    out_text, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "interrupted" not in err and "result:" in out_text


# Runs a script as "python <script> ..." would; when it exits, says how SIGINT, SIGTERM and
# SIGHUP are handled then, as Python starts to shut down.
AT_EXIT = """
import runpy, signal, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
finally:
    print("ignored at exit:", all(signal.getsignal(getattr(signal, n)) is signal.SIG_IGN
                                  for n in ("SIGINT", "SIGTERM", "SIGHUP")))
"""


@posix_only
@pytest.mark.parametrize("script, args", [
    ("02_mlp_forward.py", ["--device", "cpu"]),
    ("benchmarks/report.py", ["--no-plots", "missing.json"]),
])
def test_a_finished_script_ignores_signals_while_python_shuts_down(script, args):
    # Python puts back the default handlers as it shuts down (a second or so, with torch
    # loaded): a SIGTERM then ended a finished run with status 143 and no word.
    proc = subprocess.run([sys.executable, "-c", AT_EXIT, script, *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.stdout.strip().endswith("ignored at exit: True"), proc.stdout + proc.stderr


# Runs a lesson as "python <lesson> ..." would, but the first "import torch" sends this
# process SIGTERM and then swallows whatever the handler raises, as C code inside an import
# (numpy's, say) can: the lesson must stop there all the same, having written nothing.
SWALLOWING_IMPORT = """
import os, runpy, signal, sys, time
class Swallow:
    fired = False
    def find_spec(self, name, path=None, target=None):
        if name == "torch" and not Swallow.fired:
            Swallow.fired = True
            try:
                os.kill(os.getpid(), signal.SIGTERM)
                time.sleep(0.05)
            except BaseException:
                pass
        return None
sys.meta_path.insert(0, Swallow())
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


@posix_only
@pytest.mark.parametrize("lesson", ["01_logistic_regression.py", "02_mlp_forward.py",
                                    "03_mlp_backward.py", "04_train_mnist.py"])
def test_a_signal_while_torch_loads_stops_the_lesson_even_if_the_import_swallows_it(
        lesson, tmp_path):
    out = tmp_path / "run"
    extra = ["--out", str(out)] if lesson.startswith(("01", "04")) else []
    proc = subprocess.run([sys.executable, "-c", SWALLOWING_IMPORT, lesson, "--device", "cpu",
                           *extra], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.count("interrupted") == 1 and "Traceback" not in proc.stderr
    assert proc.stdout == "" and not out.exists()  # it stopped before doing anything


def test_an_interruption_before_the_first_checkpoint_does_not_suggest_resume(tmp_path):
    import argparse

    message = train.interrupted_message(argparse.Namespace(preset=None, out=tmp_path), tmp_path)
    assert "--resume" not in message and "run the same command again" in message
    (tmp_path / "checkpoint.pt").write_bytes(b"x")
    message = train.interrupted_message(argparse.Namespace(preset=None, out=tmp_path), tmp_path)
    assert f"to continue, run:\n    python 04_train_mnist.py --resume --out={tmp_path}" in message
    spaced = argparse.Namespace(preset="notebook", out=tmp_path / "my run", resume=True)
    (tmp_path / "my run").mkdir()
    (tmp_path / "my run" / "checkpoint.pt").write_bytes(b"x")
    message = train.interrupted_message(spaced, tmp_path / "my run")
    assert message.endswith(f"--resume --preset notebook --out='{tmp_path / 'my run'}'")
    dashed = argparse.Namespace(preset=None, out="-dash", resume=True)  # --out=-dash, typed so
    message = train.interrupted_message(dashed, tmp_path / "my run")
    assert message.endswith("--resume --out=-dash")  # "--out -dash" would read as a flag
    assert train.parse_args(train.build_parser(), ["--resume", "--out=-dash"]).out == "-dash"
    on_cpu = argparse.Namespace(preset=None, out=None, resume=True, device="cpu")
    message = train.interrupted_message(on_cpu, tmp_path / "my run")
    assert message.endswith("--resume --device cpu")  # auto might pick a GPU the run never used


def test_a_new_run_interrupted_before_its_first_epoch_does_not_send_you_to_an_older_run(tmp_path):
    import argparse

    new_run = argparse.Namespace(preset=None, out=tmp_path, resume=False)
    (tmp_path / "checkpoint.pt").write_bytes(b"an earlier run's epochs")
    earlier = train.file_identity(tmp_path / "checkpoint.pt")
    message = train.interrupted_message(new_run, tmp_path, earlier)
    assert "--resume" not in message and "still the earlier run's" in message
    # Once this run has saved an epoch (a new file renamed over the old one), --resume is right.
    (tmp_path / "new").write_bytes(b"this run's first epoch")
    os.replace(tmp_path / "new", tmp_path / "checkpoint.pt")
    assert "to continue, run:" in train.interrupted_message(new_run, tmp_path, earlier)
    # Resuming, the checkpoint this run started from is the right one to go on from.
    resumed = argparse.Namespace(preset=None, out=tmp_path, resume=True)
    earlier = train.file_identity(tmp_path / "checkpoint.pt")
    assert "to continue, run:" in train.interrupted_message(resumed, tmp_path, earlier)


class _SignalOnCollect:
    """An object whose __del__ sends this process SIGTERM: the handler's KeyboardInterrupt
    is raised where Python can only print "Exception ignored" and go on."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)


@pytest.mark.mnist
@posix_only
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the point
def test_a_sigterm_swallowed_while_plotting_is_never_reported_as_success(mnist, tmp_path,
                                                                          monkeypatch, capsys):
    real = train.plot_confusion

    def plot_and_get_signalled(*args):
        real(*args)
        _SignalOnCollect()  # collected at once: the signal arrives inside __del__

    monkeypatch.setattr(train, "plot_confusion", plot_and_get_signalled)
    out = tmp_path / "run"
    assert run(*TINY, "--out", out) == 130
    captured = capsys.readouterr()
    assert "interrupted:" in captured.err and "wrote" not in captured.out
    assert strict_json(out / "metrics.json")["status"] == "interrupted"  # not "running"


@pytest.mark.parametrize("name", ["curves.png", "checkpoint.pt", "metrics.json", ".lock"])
def test_a_folder_where_the_run_writes_a_file_stops_it_before_any_work(name, tmp_path, capsys):
    (tmp_path / "run" / name).mkdir(parents=True)
    assert run(*TINY, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'run' / name} is a folder, where this run writes a file" in err
    assert err.count("\n") == 1
    assert name == "metrics.json" or not (tmp_path / "run" / "metrics.json").exists()


def test_a_stopped_run_says_so_in_metrics_json_and_a_finished_one_stays_finished(tmp_path):
    path = tmp_path / "metrics.json"
    common.save_json(path, {"status": "running", "history": [{"epoch": 1}]})
    train.mark_stopped(path, "diverged")
    assert strict_json(path) == {"status": "diverged", "history": [{"epoch": 1}]}
    common.save_json(path, {"status": "finished"})
    train.mark_stopped(path, "interrupted")
    assert strict_json(path)["status"] == "finished"
    train.mark_stopped(tmp_path / "absent.json", "interrupted")  # nothing there: nothing done
    assert not (tmp_path / "absent.json").exists()


@pytest.mark.mnist
def test_a_resumed_run_that_diverges_does_not_suggest_a_flag_resume_refuses(mnist, tmp_path,
                                                                           capsys, monkeypatch):
    out = tmp_path / "run"
    assert run(*TINY, "--out", out) == 0
    capsys.readouterr()

    def diverge(*args, **kwargs):
        raise FloatingPointError("the loss became nan at epoch 2, step 3 of 8 (lr 0.1); training "
                                 "stopped and no checkpoint was written for this epoch: try a "
                                 "lower --lr (e.g. a tenth).")
    monkeypatch.setattr(train, "train", diverge)
    assert run("--resume", "--out", out, "--device", "cpu", "--no-progress") == 1
    err = capsys.readouterr().err
    assert "start a new run (a new --out, no --resume) with a lower --lr" in err


@posix_only
@pytest.mark.mnist
@pytest.mark.parametrize("resume", [False, True])
def test_a_fifo_where_a_run_writes_is_refused_before_it_blocks(mnist, tmp_path, capsys, resume):
    out = tmp_path / "run"
    assert run(*TINY, "--out", out) == 0
    (out / "metrics.json").unlink()
    os.mkfifo(out / "metrics.json")  # opening it to read would wait for a writer, for ever
    capsys.readouterr()
    args = ["--resume", "--out", out, "--device", "cpu", "--no-progress"] if resume else [
        *TINY, "--out", out]
    assert run(*args) == 2
    err = capsys.readouterr().err
    assert "metrics.json is not a plain file (a FIFO or a device, say)" in err
    assert err.count("\n") == 1


@pytest.mark.mnist
def test_resuming_a_finished_run_and_interrupting_it_keeps_its_results(mnist, tmp_path, capsys,
                                                                       monkeypatch):
    out = tmp_path / "run"
    assert run(*TINY, "--out", out) == 0
    before = (out / "metrics.json").read_bytes()
    capsys.readouterr()

    def stopped_while_drawing(*args, **kwargs):
        raise KeyboardInterrupt("SIGTERM")
    monkeypatch.setattr(train, "plot_curves", stopped_while_drawing)
    assert run("--resume", "--out", out, "--device", "cpu", "--no-progress") == 130
    captured = capsys.readouterr()
    assert "its one epoch is done, so it is only scored and drawn again" in captured.out
    assert "holds a run that had finished all its epochs" in captured.err
    assert "--resume" not in captured.err
    assert (out / "metrics.json").read_bytes() == before  # status and accuracies kept
    assert strict_json(out / "metrics.json")["status"] == "finished"
    monkeypatch.undo()  # scored again, to the end: the record says it was only scored again
    assert run("--resume", "--out", out, "--device", "cpu", "--no-progress") == 0
    again, first = strict_json(out / "metrics.json"), json.loads(before)
    assert again["rescored"] is True and "rescored" not in first
    assert again["test_accuracy"] == first["test_accuracy"]
    assert again["history"] == first["history"]


@pytest.mark.mnist
@pytest.mark.parametrize("inside", ["", "raw", "raw/run"])
def test_the_mnist_folder_or_one_in_it_as_out_is_refused(mnist, capsys, inside):
    data_folder = common.mnist_raw_dir().parent  # its .lock guards the data while it loads
    before = sorted(str(p.relative_to(data_folder)) for p in data_folder.rglob("*"))
    assert run(*TINY, "--out", data_folder / inside) == 2
    err = capsys.readouterr().err
    assert f"is in the MNIST data folder {data_folder.resolve()}" in err
    assert err.count("\n") == 1
    assert sorted(str(p.relative_to(data_folder)) for p in data_folder.rglob("*")) == before


@pytest.mark.mnist
def test_running_out_of_memory_is_one_sentence_and_keeps_the_last_epoch(mnist, tmp_path, capsys,
                                                                        monkeypatch):
    out = tmp_path / "run"
    real_epoch, saved = train.train_epoch, {}

    def second_epoch_fails(*args, **kwargs):  # epoch 2 fails as torch's CPU allocator does
        if (out / "checkpoint.pt").exists():
            saved["checkpoint"] = (out / "checkpoint.pt").read_bytes()
            raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                               "allocate 131072000 bytes. Error code 12 (Cannot allocate memory)")
        return real_epoch(*args, **kwargs)
    monkeypatch.setattr(train, "train_epoch", second_epoch_fails)
    assert run("--limit", "1000", "--val-size", "200", "--epochs", "2", "--batch-size", "100",
               "--hidden", "16", "--no-progress", "--device", "cpu", "--out", out) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ran out of memory (125 MiB more") and err.count("\n") == 1
    assert (out / "checkpoint.pt").read_bytes() == saved["checkpoint"]  # epoch 1's, untouched
    metrics = strict_json(out / "metrics.json")
    assert metrics["status"] == "out of memory" and len(metrics["history"]) == 1


@pytest.mark.parametrize("flags, words", [
    (["--step", "bogus"], "--step must be one of"),
    (["--limit", "2000"], "give --limit 5128 or more, or none"),
])
def test_the_ablation_checks_every_rung_before_any_work(flags, words, tmp_path, capsys):
    assert run("--ablation", "--seeds", "1", "--device", "cpu", "--out", tmp_path, *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --ablation, rung ") and words in err and err.count("\n") == 1
    assert not (tmp_path / "ablation.json").exists()


@pytest.mark.parametrize("text", ['{"runs": [1]}', "not json", '{"rungs": []}',
                                  '{"runs": [{"rung": "0"}]}'])
def test_an_unreadable_ablation_file_is_moved_aside_never_overwritten(text, tmp_path, capsys):
    path = tmp_path / "ablation.json"
    path.write_text(text)
    assert train.read_ablation_runs(path) == []
    assert (tmp_path / "ablation.unreadable.json").read_text() == text and not path.exists()
    assert "moved it to ablation.unreadable.json" in capsys.readouterr().err


@pytest.mark.mnist
def test_a_new_run_into_a_folder_holding_a_run_says_it_will_replace_it(mnist, tmp_path, capsys):
    assert run(*TINY, "--out", tmp_path) == 0
    assert "holds an earlier run" not in capsys.readouterr().out
    assert run(*TINY, "--out", tmp_path) == 0
    assert f"note: {tmp_path} holds an earlier run; this one replaces" in capsys.readouterr().out
    assert run("--resume", "--out", tmp_path, "--device", "cpu", "--no-progress") == 0
    assert "holds an earlier run" not in capsys.readouterr().out  # resuming continues it


def test_resume_names_a_folder_where_the_checkpoint_should_be(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").mkdir()
    assert run("--resume", "--out", tmp_path, "--device", "cpu") == 2
    assert "checkpoint.pt is a folder, not a checkpoint" in capsys.readouterr().err


def test_an_ablation_keeps_the_runs_of_other_plans_in_its_file(tmp_path, monkeypatch, capsys):
    other = {"rung": 0, "seed": 7, "label": "another plan's", "config": {"seed": 7},
             "val_accuracy": 0.9, "test_accuracy": 0.9, "train_seconds": 1.0}
    (tmp_path / "ablation.json").write_text(json.dumps({"runs": [other]}))
    monkeypatch.setattr(train, "load_mnist_limited", lambda device, limit: None)

    def one_run_then_stop(config, data, generator, **kwargs):  # stands in for a whole run
        if "other_runs" in json.loads((tmp_path / "ablation.json").read_text()):
            raise KeyboardInterrupt  # the ablation has saved one run: stop it there
        return None, None, [{"val_accuracy": 0.5, "seconds": 1.0}]
    monkeypatch.setattr(train, "prepare_data", lambda config, device: ([None] * 6, None))
    monkeypatch.setattr(train, "fit", one_run_then_stop)
    monkeypatch.setattr(train, "evaluate", lambda params, X, y: (0.0, 0.5))
    assert run("--ablation", "--seeds", "1", "--device", "cpu", "--no-progress",
               "--out", tmp_path) == 130
    saved = json.loads((tmp_path / "ablation.json").read_text())
    assert len(saved["runs"]) == 1 and saved["other_runs"] == [other]  # kept, apart
    assert other in train.read_ablation_runs(tmp_path / "ablation.json")


def test_unreadably_nested_json_is_treated_as_unreadable(tmp_path, capsys):
    (tmp_path / "ablation.json").write_text("[" * 200_000)
    assert train.read_ablation_runs(tmp_path / "ablation.json") == []
    assert (tmp_path / "ablation.unreadable.json").exists()
    (tmp_path / "metrics.json").write_text("[" * 200_000)
    train.mark_stopped(tmp_path / "metrics.json", "interrupted")  # left alone, no crash
    assert (tmp_path / "metrics.json").read_text() == "[" * 200_000


def test_seeds_without_ablation_is_refused(capsys):
    assert run("--seeds", "5", "--epochs", "1") == 2
    err = capsys.readouterr().err
    assert "--seeds sets how many seeds each rung of --ablation trains" in err


@pytest.mark.mnist
def test_eval_counts_its_limit_in_test_digits(mnist, tmp_path, capsys):
    assert run(*TINY, "--out", tmp_path) == 0
    capsys.readouterr()
    assert run("--eval", tmp_path / "checkpoint.pt", "--limit", "20000") == 2
    assert "give 1 to 10,000, got 20000" in capsys.readouterr().err
    assert run("--eval", tmp_path / "checkpoint.pt", "--limit", "300") == 0
    out = capsys.readouterr().out
    assert "trained 1 epoch\n" in out and "on 300 digits" in out


def test_a_second_unreadable_ablation_file_does_not_replace_the_first(tmp_path):
    path = tmp_path / "ablation.json"
    for text in ("FIRST", "SECOND", "THIRD"):
        path.write_text(text)
        assert train.read_ablation_runs(path) == []
    assert [(tmp_path / name).read_text() for name in ("ablation.unreadable.json",
            "ablation.unreadable.1.json", "ablation.unreadable.2.json")] == ["FIRST", "SECOND",
                                                                             "THIRD"]


@pytest.mark.mnist
def test_an_ablation_limit_beyond_the_data_is_refused_before_its_file_is_touched(mnist, tmp_path,
                                                                                capsys):
    (tmp_path / "ablation.json").write_text("not an ablation")
    assert run("--ablation", "--seeds", "1", "--limit", "70000", "--device", "cpu",
               "--out", tmp_path) == 2
    assert "--limit must be between 1 and the 60,000" in capsys.readouterr().err
    assert (tmp_path / "ablation.json").read_text() == "not an ablation"
    assert not (tmp_path / "ablation.unreadable.json").exists()


def test_a_limit_below_the_presets_validation_digits_says_which_flag_to_give(tmp_path, capsys):
    # --limit 5000 with the default preset's 5,000 validation digits leaves none to train on;
    # the sentence must name --val-size, which the learner never typed (refused before data).
    assert run("--epochs", "1", "--limit", "5000", "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert "held out for validation" in err and "--val-size 500" in err
    assert "Traceback" not in err and not (tmp_path / "run").exists()


@pytest.mark.parametrize("lesson, args", [
    ("04_train_mnist", ["--lr", "1e39"]),  # past float32: torch could not even take it
    ("01_logistic_regression", ["--lr", "1.7e308"]),
    ("04_train_mnist", ["--preset", ""]),  # not silently the default
    ("03_mlp_backward", ["--tolerance", "1e-12"]),  # below what central differences reach
])
def test_arguments_no_run_could_honour_are_refused_in_one_sentence(lesson, args, tmp_path,
                                                                   capsys):
    status = common.run_main(load_lesson(lesson).main, args + ["--out", str(tmp_path / "o")]
                             if lesson != "03_mlp_backward" else args)
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("error: ") and "Traceback" not in err, err
    assert not (tmp_path / "o").exists()


@pytest.mark.mnist
def test_lesson_01_stops_on_a_diverged_loss_and_keeps_the_old_picture(mnist, tmp_path, capsys):
    (tmp_path / "weights.png").write_bytes(b"the picture of an earlier run")
    status = common.run_main(load_lesson("01_logistic_regression").main,
                             ["--lr", "3.4e38", "--limit", "2000", "--epochs", "1",
                              "--no-progress", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert status == 1 and "train loss became nan" in err and "lower --lr" in err, err
    assert (tmp_path / "weights.png").read_bytes() == b"the picture of an earlier run"


@pytest.mark.mnist
@pytest.mark.parametrize("flags, why", [
    (["--limit", "5", "--batch-size", "1"], "the 5 test digits hold no 9"),
    (["--limit", "2000", "--lr", "1e-30"], "does not beat always answering 'not 9'"),
])
def test_lesson_01_says_which_check_failed(flags, why, mnist, tmp_path, capsys):
    status = common.run_main(load_lesson("01_logistic_regression").main,
                             [*flags, "--epochs", "1", "--no-progress", "--out", str(tmp_path)])
    out, err = capsys.readouterr()
    assert status == 1 and "ok=false" in out
    assert err.startswith("check failed: ") and why in err and err.count("\n") == 1


@pytest.mark.mnist
def test_lesson_02_says_which_check_failed(mnist, capsys):
    status = common.run_main(load_lesson("02_mlp_forward").main,
                             ["--sizes", "784", "1", "10", "--digits", "10", "--device", "cpu"])
    err = capsys.readouterr().err
    assert status == 1 and err.startswith("check failed: the untrained loss 3.6")
    assert "is not within 1 of ln 10 = 2.3026" in err and err.count("\n") == 1


def test_lesson_02_layer_table_keeps_wide_layers_columns_apart():
    sizes = [784, 65536, 10]
    params = tuple(torch.empty(*shape, device="meta") for a, b in zip(sizes[:-1], sizes[1:])
                   for shape in ((a, b), (b,)))  # shapes only, no memory
    header, first, last = load_lesson("02_mlp_forward").describe(params, sizes).splitlines()
    assert first.split() == ["1", "relu", "784x65536", "65536", "51,445,760"]
    assert last.split() == ["2", "logits", "65536x10", "10", "655,370"]
    assert len(header) == len(first) == len(last)  # right-aligned columns line up


def test_lesson_02_refuses_fewer_logits_than_digit_classes(capsys):
    status = common.run_main(load_lesson("02_mlp_forward").main, ["--sizes", "784", "128", "9"])
    err = capsys.readouterr().err
    assert status == 2 and "at least 10 units" in err and "Traceback" not in err, err


def test_ablation_blames_limit_only_when_limit_is_at_fault(tmp_path, capsys):
    assert run("--ablation", "--limit", "10000", "--step", "foo", "--out", tmp_path / "a") == 2
    err = capsys.readouterr().err
    assert "--step must be one of" in err and "give --limit 5128" not in err, err
