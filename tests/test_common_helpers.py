"""common.py's helpers: minibatches, the validation split, devices, accuracy, the CLI glue."""

import argparse
import errno
import io
import os
import sys

import pytest
import torch

import common


def numbered(n, device="cpu"):
    """X row i holds the value i, y[i] = i: every batch tells which examples it holds."""
    X = torch.arange(n, dtype=torch.float32, device=device).repeat(3, 1).T  # (n, 3)
    return X, torch.arange(n, device=device)


@pytest.mark.parametrize("n, batch", [(10, 3), (12, 4), (7, 10), (1, 1)])
@pytest.mark.parametrize("shuffled", [True, False])
def test_minibatches_cover_every_example_exactly_once(n, batch, shuffled):
    X, y = numbered(n)
    generator = common.make_generator(0) if shuffled else None
    seen = torch.cat([yb for _, yb in common.minibatches(X, y, batch, generator)])
    assert sorted(seen.tolist()) == list(range(n))


@pytest.mark.parametrize("n, batch", [(10, 3), (12, 4), (7, 10)])
def test_drop_last_keeps_only_full_batches_of_distinct_examples(n, batch):
    X, y = numbered(n)
    batches = list(common.minibatches(X, y, batch, common.make_generator(1), drop_last=True))
    assert len(batches) == n // batch
    assert all(len(yb) == batch for _, yb in batches)
    seen = torch.cat([yb for _, yb in batches]).tolist() if batches else []
    assert len(set(seen)) == len(seen) == (n // batch) * batch


def test_batches_keep_rows_and_labels_together():
    X, y = numbered(50)
    for xb, yb in common.minibatches(X, y, 8, common.make_generator(3)):
        assert torch.equal(xb[:, 0].long(), yb)


def test_the_same_seed_gives_the_same_order_and_another_seed_another():
    X, y = numbered(100)

    def order(seed):
        return [yb.tolist() for _, yb in common.minibatches(X, y, 16, common.make_generator(seed))]

    assert order(7) == order(7)
    assert order(7) != order(8)
    assert order(7) != [list(range(i, min(i + 16, 100))) for i in range(0, 100, 16)]


def test_each_epoch_draws_a_fresh_order_from_the_same_generator():
    X, y = numbered(100)
    g = common.make_generator(0)
    first = [yb.tolist() for _, yb in common.minibatches(X, y, 10, g)]
    second = [yb.tolist() for _, yb in common.minibatches(X, y, 10, g)]
    assert first != second


def test_batches_live_on_the_device_of_the_data(device):
    X, y = numbered(20, device)
    for generator in (None, common.make_generator(0)):
        for xb, yb in common.minibatches(X, y, 6, generator):
            assert xb.device.type == device.type and yb.device.type == device.type


def test_split_is_disjoint_complete_and_deterministic():
    X, y = numbered(100)
    X_tr, y_tr, X_val, y_val = common.train_val_split(X, y, 20, common.make_generator(5))
    assert len(y_val) == 20 and len(y_tr) == 80
    assert set(y_tr.tolist()).isdisjoint(y_val.tolist())
    assert sorted(y_tr.tolist() + y_val.tolist()) == list(range(100))
    assert torch.equal(X_tr[:, 0].long(), y_tr)
    again = common.train_val_split(X, y, 20, common.make_generator(5))
    assert torch.equal(again[3], y_val)
    other = common.train_val_split(X, y, 20, common.make_generator(6))
    assert not torch.equal(other[3], y_val)


def test_split_rejects_a_validation_set_as_large_as_the_data():
    X, y = numbered(10)
    with pytest.raises(ValueError, match="val_size must be between 0 and 9"):
        common.train_val_split(X, y, 10, common.make_generator(0))


def test_pick_device_without_cuda_says_what_to_do(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(common, "mps_available", lambda: False)  # auto would pick a Mac's MPS
    with pytest.raises(ValueError) as err:
        common.pick_device("cuda")
    assert "sees no CUDA GPU" in str(err.value) and "--device cpu" in str(err.value)
    assert common.pick_device("auto") == torch.device("cpu")
    assert common.pick_device("cpu") == torch.device("cpu")


def cpuinfo(flags, family="25", name="AMD EPYC"):
    """/proc/cpuinfo for two processors; only the first one's lines may be read."""
    one = f"processor\t: {{}}\nmodel name\t: {name}\ncpu family\t: {family}\nmodel\t\t: 1\n"
    return (one.format(0) + f"flags\t\t: fpu sse4_2 {flags}\n\n" +
            one.format(1).replace(name, "other") + "flags\t\t: avx512f\n")


@pytest.mark.parametrize("flags, widest", [
    ("avx avx2 fma avx512f avx512bw", "AVX-512"),
    ("avx avx2 fma", "AVX2, no AVX-512"),
    ("avx", "AVX, no AVX-512"),
    ("", "no AVX"),
])
def test_cpu_description_names_the_widest_vector_instructions(flags, widest):
    described = common.cpu_description(cpuinfo(flags, "26"))
    assert described == f"AMD EPYC (family 26, model 1), {widest}"


def test_cpu_description_without_cpuinfo_falls_back_to_the_platform(monkeypatch):
    monkeypatch.setattr(common.platform, "processor", lambda: "arm")
    assert common.cpu_description("") == "arm"
    monkeypatch.setattr(common.platform, "processor", lambda: "")
    arm = "processor\t: 0\nBogoMIPS\t: 50.00\nFeatures\t: fp asimd sve\n"  # ARM Linux
    monkeypatch.setattr(common.platform, "machine", lambda: "aarch64")
    assert common.cpu_description(arm) == "aarch64"
    monkeypatch.setattr(common.platform, "machine", lambda: "")
    assert common.cpu_description("") == "unknown CPU"
    assert common.cpu_description("model name\t: Some CPU\n") == "Some CPU"


def test_device_description_names_the_cpu_and_other_devices_by_type():
    assert common.device_description(torch.device("cpu")) == common.cpu_description()
    assert common.device_description(torch.device("mps")) == "mps"


def test_pick_device_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        common.pick_device("tpu")


def test_accuracy_counts_argmax_hits():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [5.0, -1.0], [0.1, 0.2]])
    assert common.accuracy(logits, torch.tensor([0, 1, 1, 0])) == pytest.approx(0.5)


def test_result_line_formats_floats_booleans_and_ints():
    line = common.result_line(test_accuracy=0.96612, ok=True, epochs=8, err=3.2e-10)
    assert line == "result: test_accuracy=0.9661 ok=true epochs=8 err=3.2e-10"


def test_run_main_turns_user_errors_into_one_line_and_status_2(capsys):
    def main(argv):
        raise ValueError("--lr must be positive, got -1.")

    assert common.run_main(main, []) == 2
    assert capsys.readouterr().err == "error: --lr must be positive, got -1.\n"


CPU_OOM = ("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't "
           "allocate memory: you tried to allocate 131072000 bytes. Error code 12")


@pytest.mark.parametrize("err, expected", [
    (RuntimeError(CPU_OOM), True),
    (MemoryError(), True),
    (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB."), True),
    (RuntimeError("MPS backend out of memory (MPS allocated: 9 GB)"), True),
    (RuntimeError("mat1 and mat2 shapes cannot be multiplied (2x3 and 4x5)"), False),
    (ValueError("out of memory"), False),  # not a RuntimeError: a user's mistake, status 2
])
def test_is_out_of_memory(err, expected):
    assert common.is_out_of_memory(err) is expected


def test_out_of_memory_message_gives_the_size_when_torch_said_it():
    assert "(125 MiB more were asked for)" in common.out_of_memory_message(RuntimeError(CPU_OOM))
    cuda = torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 ...")
    assert "(20.00 GiB more were asked for)" in common.out_of_memory_message(cuda)
    assert common.out_of_memory_message(MemoryError()).startswith("ran out of memory; use a")


def test_run_main_turns_running_out_of_memory_into_one_line_and_status_1(capsys):
    def main(argv):
        raise RuntimeError(CPU_OOM)

    assert common.run_main(main, []) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ran out of memory (125 MiB more")
    assert "smaller batch or narrower layers (--help names this script" in err


def test_run_main_lets_other_runtime_errors_through():
    def main(argv):
        raise RuntimeError("a bug, not the user's input")

    with pytest.raises(RuntimeError, match="a bug"):
        common.run_main(main, [])


def test_a_full_disk_under_torch_save_is_one_sentence_naming_the_file(tmp_path, capsys):
    (tmp_path / "checkpoint.pt").write_bytes(b"the earlier one")

    def write(f):  # what torch.save does when the disk fills: an OSError, then its own error
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos")  # noqa: B904

    def main(argv):
        common.atomic_write(tmp_path / "checkpoint.pt", write)

    assert common.run_main(main, []) == 1  # a runtime failure, not a bad argument
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"error: could not write {tmp_path / 'checkpoint.pt'} (No space left")
    assert "free some space or write somewhere else" in err
    assert (tmp_path / "checkpoint.pt").read_bytes() == b"the earlier one"
    assert [p.name for p in tmp_path.iterdir()] == ["checkpoint.pt"]  # no temporary file left


def test_atomic_write_never_replaces_what_is_not_a_plain_file(tmp_path):
    (tmp_path / "folder").mkdir()
    targets = [tmp_path / "folder"]
    if hasattr(os, "mkfifo"):  # a FIFO stands in for a device such as /dev/null
        os.mkfifo(tmp_path / "fifo")
        targets.append(tmp_path / "fifo")
    for target in targets:
        with pytest.raises(ValueError, match="exists and is not a plain file"):
            common.atomic_write(target, lambda f: f.write(b"x"))
    assert (tmp_path / "folder").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(t.name for t in targets)


def test_help_that_cannot_be_written_is_not_a_success(monkeypatch, capsys):
    # argparse's own --help ignores a failed write: > /dev/full ended in status 0, no text.
    class FullDisk(io.StringIO):
        def write(self, text):
            raise OSError(errno.ENOSPC, "No space left on device")

    def main(argv):
        parser = argparse.ArgumentParser(description="a lesson", exit_on_error=False)
        common.parse_args(parser, argv)
        return 0

    assert common.run_main(main, ["--help"]) == 0  # a terminal: the text, status 0
    assert "a lesson" in capsys.readouterr().out
    monkeypatch.setattr(sys, "stdout", FullDisk())
    assert common.run_main(main, ["--help"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: could not write the output (No space left")
    assert err.count("\n") == 1


def test_run_main_with_stdout_closed_does_not_fail_at_the_end(monkeypatch):
    monkeypatch.setattr(sys, "stdout", None)  # python started with >&-
    assert common.run_main(lambda argv: 0, []) == 0


def test_show_progress_needs_a_terminal():
    pipe = io.StringIO()  # a stand-in for a redirected stderr: isatty() is False
    assert common.show_progress(False, pipe) is False
    assert common.show_progress(True, pipe) is False


def test_add_run_args_defaults():
    args = common.add_run_args(argparse.ArgumentParser(), seed=3).parse_args([])
    assert (args.device, args.seed, args.limit, args.no_progress) == ("auto", 3, None, False)


def test_add_run_args_types_refuse_a_bad_seed_and_limit_naming_the_flag():
    parser = common.add_run_args(argparse.ArgumentParser(exit_on_error=False))
    for argv, flag in ((["--seed", "-1"], "--seed"), (["--limit", "0"], "--limit")):
        with pytest.raises(ValueError, match=f"^argument {flag}: must be a whole number"):
            common.parse_args(parser, argv)


def test_parse_args_turns_an_ambiguous_abbreviation_into_one_sentence():
    parser = argparse.ArgumentParser(exit_on_error=False)
    parser.add_argument("--epochs", type=int)
    parser.add_argument("--eval")
    with pytest.raises(ValueError, match="^ambiguous option: --e could match --epochs, --eval"):
        common.parse_args(parser, ["--e", "3"])  # argparse would print usage and exit
    assert common.parse_args(parser, ["--ep", "3"]).epochs == 3  # unambiguous: still fine
