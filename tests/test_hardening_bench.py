"""benchmarks/ratios.py, peak.py and report.py under attack: signals while they start and while
they work, the processes they start, leftovers of a killed run, odd files, a full output."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import load_benchmark
from test_report import bench, write_run

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "benchmarks"
posix_only = pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
# /proc/PID/task/TID/children lists a process's children (Linux, CONFIG_PROC_CHILDREN).
HAS_CHILDREN_LIST = Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists()

# Runs a script as "python <script> ..." would, and sends this process a signal at a chosen
# moment: "import:NAME" as NAME starts importing (torch, matplotlib: the seconds a script
# spends starting), swallowing whatever the handler raises there, as C code inside an import
# can; "savefig" right after a picture's bytes went to its file, before it is renamed. The
# signals named in IGNORED_SIGNALS are ignored first, as a shell does for a job started
# with & (SIGINT) or nohup does (SIGHUP).
SIGNAL_AT = """
import os, runpy, signal, sys, time
when, number, script = sys.argv[1], getattr(signal, sys.argv[2]), sys.argv[3]
for name in os.environ.get("IGNORED_SIGNALS", "").split():
    signal.signal(getattr(signal, name), signal.SIG_IGN)
if when.startswith("import:"):
    class SignalAtImport:
        fired = False
        def find_spec(self, name, path=None, target=None):
            if name == when[len("import:"):] and not SignalAtImport.fired:
                SignalAtImport.fired = True
                try:
                    os.kill(os.getpid(), number)
                    time.sleep(0.2)
                except BaseException:
                    pass
            return None
    sys.meta_path.insert(0, SignalAtImport())
elif when == "savefig":
    import matplotlib
    matplotlib.use("Agg")
    from matplotlib.figure import Figure
    save = Figure.savefig
    def savefig(self, *args, **kwargs):
        save(self, *args, **kwargs)
        os.kill(os.getpid(), number)
        time.sleep(0.2)
    Figure.savefig = savefig
sys.argv = sys.argv[3:]
runpy.run_path(script, run_name="__main__")
"""


def run_with_signal(when, sig, script, *args, ignored=(), timeout=120, env=None):
    """The script run under SIGNAL_AT -> subprocess.CompletedProcess (text)."""
    env = dict(os.environ if env is None else env, IGNORED_SIGNALS=" ".join(ignored))
    return subprocess.run([sys.executable, "-c", SIGNAL_AT, when, sig, str(BENCH / script),
                           *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def saved_run(tmp_path, **extra):
    """A small saved run, as report.py reads it: three batches of two step implementations."""
    runs = [bench("step", impl, b, s * b, **extra) for b in (1, 32, 128)
            for impl, s in (("fused", 1e-5), ("autograd", 2e-5))]
    return write_run(tmp_path, runs)


def one_line(err):
    return err.count("\n") == 1 and "Traceback" not in err


# ----------------------------------------------------------------------------- ratios.py

def children_of(pid):
    """The PIDs of pid's child processes, as Linux lists them."""
    return {int(n) for task in Path(f"/proc/{pid}/task").glob("*/children")
            for n in task.read_text().split()}


def is_gone(pid):
    """Whether no process pid exists any more, not even a zombie waiting to be reaped."""
    return not Path(f"/proc/{pid}").exists()


def wait_for(condition, seconds, step=0.05):
    """condition()'s first true value within seconds, else None."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(step)
    return None


def measuring_child(pid):
    """pid's child that runs `ratios.py --child` (once it is exec'd, not merely forked)."""
    for child in children_of(pid):
        try:
            if b"--child" in Path(f"/proc/{child}/cmdline").read_bytes():
                return child
        except OSError:  # gone already
            continue
    return None


@pytest.mark.skipif(not HAS_CHILDREN_LIST, reason="needs Linux's /proc/PID/task/TID/children")
@pytest.mark.parametrize("sig, whole_group", [
    ("SIGTERM", False),  # `kill PID`: ratios.py alone, it must stop its child itself
    ("SIGINT", True),  # Ctrl-C in a terminal: the whole foreground group
    ("SIGHUP", True),  # the terminal closed
])
def test_ratios_interrupted_stops_and_reaps_its_measuring_process(sig, whole_group, tmp_path):
    out = tmp_path / "ratios.json"
    proc = subprocess.Popen(
        [sys.executable, str(BENCH / "ratios.py"), "--processes", "1", "--blocks", "1",
         "--batches", "1", "--no-peak", "--out", str(out)], cwd=ROOT,
        env=dict(os.environ, BENCH_NO_JAX="1"), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, start_new_session=whole_group)
    child = None
    try:
        child = wait_for(lambda: measuring_child(proc.pid), 90)
        assert child is not None, "no measuring process started"
        if whole_group:
            os.killpg(proc.pid, getattr(signal, sig))
        else:
            proc.send_signal(getattr(signal, sig))
        stdout, err = proc.communicate(timeout=60)
    finally:  # a failing run leaves nothing running either
        for pid in (proc.pid, child):
            if pid is not None and not is_gone(pid):
                os.kill(pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 130, err
    assert err == "interrupted.\n"
    assert stdout == "round 1/1: torch process ...\n"
    assert is_gone(child)  # stopped, and reaped by ratios.py itself: no orphan, no zombie
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing left behind


def test_a_jax_worker_interrupted_while_it_starts_is_killed_and_reaped(monkeypatch):
    ratios = load_benchmark("ratios")
    monkeypatch.delenv("BENCH_NO_JAX", raising=False)
    started = []

    def interrupted(self, *message):  # Ctrl-C while the worker imports jax (its "hello")
        started.append(self.process)
        raise KeyboardInterrupt("SIGINT")

    monkeypatch.setattr(ratios.JaxWorker, "ask", interrupted)
    try:
        ratios.JaxWorker()
    except ratios.Skip as err:  # jax is not installed here: no worker process is started
        pytest.skip(str(err))
    except KeyboardInterrupt:
        pass
    else:
        pytest.fail("the interruption was lost")
    assert started[0].returncode == -signal.SIGKILL  # killed, and waited for


@posix_only
def test_a_jax_worker_leaves_ctrl_c_to_the_process_that_started_it():
    # Ctrl-C at a terminal reaches the whole process group: the worker printed its own
    # traceback beside ratios.py's one line. It ignores SIGINT, and answers on.
    sys.path.insert(0, str(BENCH))
    import jax_step

    worker = subprocess.Popen([sys.executable, str(BENCH / "jax_step.py"), "--serve"],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
    try:
        time.sleep(0.5)  # into its imports
        worker.send_signal(signal.SIGINT)
        jax_step.send(worker.stdin, ("hello",))
        answer = jax_step.receive(worker.stdout)  # ("ok", ...) or ("error", "jax is not ...")
        assert answer is not None and answer[0] in ("ok", "error"), answer
        jax_step.send(worker.stdin, ("quit",))
        worker.stdin.close()
        assert worker.wait(timeout=60) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()
    assert b"Traceback" not in worker.stderr.read()


def test_ratios_removes_the_leftovers_of_its_out_file_and_only_those(tmp_path, monkeypatch,
                                                                     capsys):
    ratios = load_benchmark("ratios")
    out = tmp_path / "ratios.json"
    leftover = tmp_path / ".ratios.json.AbCd1234.tmp"  # what a SIGKILL in atomic_write leaves
    leftover.write_text("half a file")
    kept = [tmp_path / ".other.json.AbCd1234.tmp", tmp_path / "ratios.json.AbCd1234.tmp",
            tmp_path / ".ratios.json.notes.tmp", tmp_path / ".ratios.json.AbCd12345.tmp"]
    for path in kept:
        path.write_text("the user's")
    (tmp_path / ".ratios.json.ZyXw9876.tmp").mkdir()  # a folder is never a leftover of ours
    one = {"median_s": 1e-3, "best_s": 1e-3, "steps_per_block": 1, "first_call_s": None}
    monkeypatch.setattr(ratios, "run_torch_process", lambda *a: {
        "1": {"manual": one, "autograd": dict(one, median_s=2e-3), "skipped": {}}})
    monkeypatch.setenv("BENCH_NO_JAX", "1")
    assert ratios.common.run_main(ratios.main, ["--processes", "1", "--batches", "1",
                                                "--no-peak", "--out", str(out)]) == 0
    assert not leftover.exists()
    assert all(path.read_text() == "the user's" for path in kept)
    assert (tmp_path / ".ratios.json.ZyXw9876.tmp").is_dir()
    assert json.loads(out.read_text())["ratios"]["manual/autograd"]["1"]["median"] == 0.5
    assert "wrote" in capsys.readouterr().out


def test_a_failed_measuring_process_is_one_sentence(tmp_path, monkeypatch, capsys):
    ratios = load_benchmark("ratios")
    peak = ratios.peak  # where ratios.py runs its processes
    monkeypatch.setattr(peak, "run_captured", lambda *a, **k: (
        1, "", "Traceback (most recent call last):\n  ...\nRuntimeError: boom\n"))
    assert ratios.run_torch_process("cpu", [1], 1, "round 1") is None
    err = capsys.readouterr().err
    assert one_line(err) and err.startswith("error: the torch measuring process of round 1 "
                                            "failed (RuntimeError: boom)")
    for status, err, why in [(-signal.SIGKILL, "", "stopped by SIGKILL"),
                             (130, "interrupted while starting; nothing was written.\n",
                              "it was interrupted"),
                             (1, "error: ran out of memory; use a smaller batch\n",
                              "ran out of memory; use a smaller batch"),
                             (0, "", "its output ended without the measurements")]:
        monkeypatch.setattr(peak, "run_captured", lambda *a, s=status, e=err, **k: (s, "", e))
        assert ratios.run_torch_process("cpu", [1], 1, "round 2") is None
        said = capsys.readouterr().err
        assert one_line(said) and f"round 2 failed ({why}), so nothing was written" in said


@posix_only
@pytest.mark.parametrize("script", ["ratios", "peak"])
def test_an_interruption_whose_exception_was_lost_is_no_success(script, monkeypatch, capsys):
    module = load_benchmark(script)

    def swallowed(argv):  # as a __del__ or a C callback does with the handler's exception
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except KeyboardInterrupt:
            pass
        return 0

    monkeypatch.setattr(module, "main", swallowed)
    common = module.lessons_common() if script == "peak" else module.common
    before = signal.getsignal(signal.SIGTERM)
    assert common.run_main(module.main_interruptible) == 130
    assert capsys.readouterr().err == "interrupted.\n"
    assert signal.getsignal(signal.SIGTERM) is before  # the handlers are given back


# ----------------------------------------------------------------------------- starting

@posix_only
@pytest.mark.parametrize("script, args, module, sig", [
    ("ratios.py", ["--processes", "1", "--no-peak"], "torch", "SIGINT"),
    ("peak.py", ["--repeats", "1"], "torch", "SIGTERM"),
    ("report.py", [], "matplotlib", "SIGHUP"),
])
def test_a_signal_while_a_benchmark_script_starts_is_one_line_and_130(script, args, module,
                                                                       sig, tmp_path):
    extra = {"ratios.py": ["--out", tmp_path / "r.json"],
             "report.py": [saved_run(tmp_path), "--docs", tmp_path / "docs"]}.get(script, [])
    done = run_with_signal(f"import:{module}", sig, script, *args, *extra)
    assert done.returncode == 130, done.stderr
    assert one_line(done.stderr) and done.stderr.startswith("interrupted")
    assert done.stdout == ""
    assert not (tmp_path / "r.json").exists() and not (tmp_path / "docs").exists()


@posix_only
@pytest.mark.parametrize("script, args, module, sig, status", [
    ("ratios.py", ["--processes", "0"], "torch", "SIGINT", 2),  # a job started with &
    ("peak.py", ["--repeats", "0"], "torch", "SIGHUP", 2),  # under nohup
    ("report.py", [], "matplotlib", "SIGINT", 0),
])
def test_a_signal_ignored_when_a_script_starts_stays_ignored(script, args, module, sig, status,
                                                              tmp_path):
    extra = [saved_run(tmp_path), "--docs", tmp_path / "docs"] if script == "report.py" else []
    done = run_with_signal(f"import:{module}", sig, script, *args, *extra, ignored=[sig])
    assert done.returncode == status, done.stderr  # it went on to its end
    assert "interrupted" not in done.stderr and "Traceback" not in done.stderr
    if script == "report.py":
        assert (tmp_path / "docs" / "benchmark_cpu.png").is_file()


@posix_only
def test_a_signal_ignored_when_report_starts_stays_ignored_while_it_draws(tmp_path):
    done = run_with_signal("savefig", "SIGINT", "report.py", saved_run(tmp_path),
                           "--docs", tmp_path / "docs", ignored=["SIGINT"])
    assert done.returncode == 0, done.stderr
    assert sorted(p.name for p in (tmp_path / "docs").iterdir()) == ["benchmark_cpu.png"]


# ----------------------------------------------------------------------------- report.py

@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_report_to_a_full_output_is_one_sentence_and_status_1(tmp_path):
    with open("/dev/full", "w") as full:
        done = subprocess.run([sys.executable, str(BENCH / "report.py"), saved_run(tmp_path),
                               "--ratios", tmp_path / "none.json", "--no-plots"], cwd=ROOT,
                              stdout=full, stderr=subprocess.PIPE, text=True, timeout=60)
    assert done.returncode == 1, done.stderr
    assert one_line(done.stderr)
    assert done.stderr.startswith("error: could not write the report to its output (No space")


def mutated(entry, where, value):
    """A copy of a benchmark entry with one field (e.g. "extra_info.batch") set to value."""
    entry = json.loads(json.dumps(entry))
    part, field = where.split(".", 1)
    entry[part][field] = value
    return entry


@pytest.mark.parametrize("where, value", [
    ("extra_info.batch", "32"), ("extra_info.batch", True), ("extra_info.batch", None),
    ("extra_info.batch", [32]), ("extra_info.batch", 32.0), ("extra_info.threads", "2"),
    ("extra_info.flops", None), ("extra_info.params_count", 1.5),
    ("extra_info.gflops", "80"), ("extra_info.pct_of_peak", None),
    ("extra_info.peak_gflops", True), ("extra_info.first_call_s", "7"),
    ("extra_info.torch_matmul_gflops", [200.0]), ("extra_info.sizes", ["784", "512"]),
    ("extra_info.sizes", [784]), ("extra_info.peak_backends", {"numpy": "400"}),
    ("extra_info.impl", 3), ("extra_info.device_name", ["cpu"]), ("extra_info.torch", 2.1),
    ("stats.min", "0.001"), ("stats.min", None), ("stats.min", False), ("stats.median", [1]),
])
def test_report_refuses_a_number_that_is_not_a_number_naming_file_and_field(where, value,
                                                                           tmp_path, capsys):
    good = bench("step", "manual", 32, 0.8e-3, first_call_s=1.0)
    path = write_run(tmp_path, [good, mutated(good, where, value)])
    report = load_benchmark("report")
    assert report.main([str(path), "--ratios", str(tmp_path / "none.json"), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and err.startswith(f"error: {path} holds a benchmark entry this suite "
                                            f"did not write (its {where} is ")


def ratios_data():
    return {"device": "cpu", "device_name": "Test CPU", "threads": 2, "torch": "2.14.1",
            "jax": None, "processes": 3, "blocks": 15, "batches": [32],
            "peak": {"peak_gflops": 480.0, "peak_backend": "numpy"},
            "summary": {"fused": {"32": {"median_s": 4e-4}}},
            "ratios": {"fused/autograd": {"32": {"median": 0.6}}},
            "first_call_s": {"compiled": {"32": [7.0, None]}}}


@pytest.mark.parametrize("edit, words", [
    (lambda d: d.update(blocks="15"), 'its blocks is "15"'),
    (lambda d: d.update(processes=None), "its processes is null"),
    (lambda d: d.update(batches=["32"]), 'its batches is ["32"]'),
    (lambda d: d["peak"].update(peak_gflops="480"), 'its peak.peak_gflops is "480"'),
    (lambda d: d["summary"]["fused"]["32"].update(median_s="4e-4"),
     'its summary.fused.32.median_s is "4e-4"'),
    (lambda d: d["ratios"]["fused/autograd"].update({"32": {"median": True}}),
     "its ratios.fused/autograd.32.median is true"),
    (lambda d: d["first_call_s"]["compiled"].update({"32": ["7"]}), "its first_call_s is"),
    (lambda d: d.pop("device"), "its device is null, not a string"),
    (lambda d: d["peak"].pop("peak_backend"), "its peak.peak_backend is null, not a string"),
])
def test_report_refuses_a_ratios_file_whose_numbers_are_not_numbers(edit, words, tmp_path,
                                                                     capsys):
    report = load_benchmark("report")
    good = tmp_path / "good.json"
    good.write_text(json.dumps(ratios_data()))
    assert "batch 32 7.0 s" in report.ratios_section(report.load_ratios(good))  # null skipped
    data = ratios_data()
    edit(data)
    path = tmp_path / "ratios.json"
    path.write_text(json.dumps(data))
    run = write_run(tmp_path, [bench("step", "manual", 32, 0.8e-3)])
    assert report.main([str(run), "--ratios", str(path), "--no-plots"]) == 2
    err = capsys.readouterr().err
    assert one_line(err) and err.startswith(f"error: {path} is not a file that "
                                            f"benchmarks/ratios.py wrote ({words}")


def test_report_draws_names_with_mathtext_characters_as_written(tmp_path, capsys):
    report = load_benchmark("report")
    assert report.literal(r"$x^2_3\alpha$ a \$ b") == r"\$x^2_3\alpha\$ a \\$ b"
    run = saved_run(tmp_path, device_name=r"CPU $\frac^_$ x", peak_backend="$_")
    path = write_run(tmp_path, json.loads(run.read_text())["benchmarks"]
                     + [bench("step", r"my$\impl$", 32, 1e-3)])
    assert report.main([str(path), "--ratios", str(tmp_path / "none.json"),
                        "--docs", str(tmp_path / "docs")]) == 0, capsys.readouterr().err
    assert (tmp_path / "docs" / "benchmark_cpu.png").read_bytes()[:4] == b"\x89PNG"


@posix_only
@pytest.mark.parametrize("which", ["run", "ratios"])
def test_report_refuses_a_fifo_instead_of_waiting_on_it(which, tmp_path):
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)
    run = saved_run(tmp_path)
    args = [fifo, "--no-plots"] if which == "run" else [run, "--ratios", fifo, "--no-plots"]
    done = subprocess.run([sys.executable, str(BENCH / "report.py"), *map(str, args)],
                          cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, done.stderr
    assert one_line(done.stderr) and f"{fifo} is not a plain file" in done.stderr


@posix_only
def test_a_sigterm_while_report_writes_a_picture_leaves_no_temporary_file(tmp_path):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "benchmark_cpu.png").write_bytes(b"the old picture")
    done = run_with_signal("savefig", "SIGTERM", "report.py", saved_run(tmp_path),
                           "--ratios", tmp_path / "none.json", "--docs", docs)
    assert done.returncode == 130, done.stderr
    assert one_line(done.stderr) and done.stderr.startswith("interrupted")
    assert sorted(p.name for p in docs.iterdir()) == ["benchmark_cpu.png"]
    assert (docs / "benchmark_cpu.png").read_bytes() == b"the old picture"  # whole, not replaced


def test_report_removes_the_leftover_of_a_killed_picture_and_only_that(tmp_path):
    report = load_benchmark("report")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / ".benchmark_cpu.png.AbCd1234.tmp").write_bytes(b"half a picture")  # SIGKILL's
    (docs / ".notes.txt.AbCd1234.tmp").write_text("the user's")
    machine, runs = report.load_runs(saved_run(tmp_path))
    report.write_pictures(runs, machine, docs)
    assert sorted(p.name for p in docs.iterdir()) == [".notes.txt.AbCd1234.tmp",
                                                      "benchmark_cpu.png"]
    umask = os.umask(0)
    os.umask(umask)
    assert (docs / "benchmark_cpu.png").stat().st_mode & 0o777 == 0o666 & ~umask  # not 0600


def test_an_unknown_mplbackend_is_set_aside_with_one_note(tmp_path):
    docs = tmp_path / "docs"
    done = subprocess.run([sys.executable, str(BENCH / "report.py"), str(saved_run(tmp_path)),
                           "--ratios", str(tmp_path / "none.json"), "--docs", str(docs)],
                          cwd=ROOT, env=dict(os.environ, MPLBACKEND="bogus"),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ("note: MPLBACKEND='bogus' names no matplotlib backend; it is "
                           "ignored here, as report.py draws its pictures into files with Agg "
                           "whatever it says.\n")
    assert (docs / "benchmark_cpu.png").is_file()


@pytest.mark.parametrize("args, words", [
    (["--docs"], "--docs needs a path after it"),
    (["--ratios", "--no-plots"], "--ratios needs a path after it"),
    (["a.json", "b.json"], "unexpected argument 'b.json'"),
    (["--bogus"], "unexpected argument '--bogus'"),
])
def test_report_refuses_bad_arguments_in_one_sentence(args, words, capsys):
    assert load_benchmark("report").main(args) == 2
    err = capsys.readouterr().err
    assert one_line(err) and err.startswith(f"error: {words}; usage: ")


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("script", ["peak.py", "report.py", "ratios.py"])
def test_help_that_cannot_be_written_is_one_sentence_and_status_1(script):
    with open("/dev/full", "w") as full:
        proc = subprocess.run([sys.executable, str(BENCH / script), "--help"], stdout=full,
                              stderr=subprocess.PIPE, text=True, timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith("error: could not write") and proc.stderr.count("\n") == 1


def test_report_help_prints_its_introduction_and_usage():
    proc = subprocess.run([sys.executable, str(BENCH / "report.py"), "-h"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and proc.stderr == ""
    assert "usage: python benchmarks/report.py" in proc.stdout and "--docs" in proc.stdout


def test_a_saved_run_whose_cpu_record_is_not_an_object_still_reports(tmp_path, capsys):
    report = load_benchmark("report")
    run = write_run(tmp_path, [bench("step", "manual", 32, 0.8e-3)])
    data = json.loads(run.read_text())
    data["machine_info"] = {"cpu": "a string, not pytest-benchmark's object"}
    run.write_text(json.dumps(data))
    assert report.main([str(run), "--no-plots"]) == 0
    assert "| 32 |" in capsys.readouterr().out
