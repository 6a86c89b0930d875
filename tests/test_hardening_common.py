"""Issue 10's hardening in common.py: the unpickler, verified data, locks, leftovers, run
folders, strict JSON, argument types, devices and signals. Each test names what it guards."""

import argparse
import ast
import errno
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import common

ROOT = Path(common.__file__).resolve().parent
POSIX = os.name == "posix"


def run_python(code, timeout=60, **kwargs):
    """Run code in a fresh interpreter from the repository root -> CompletedProcess."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], cwd=ROOT, text=True,
                          capture_output=True, timeout=timeout, **kwargs)


# ----------------------------------------------------------------------------- 1. unpickler

def op_global(module, name):
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def op_str(text):  # BINUNICODE
    data = text.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def op_bytes(data):  # BINBYTES (protocol 3)
    return b"B" + struct.pack("<I", len(data)) + data


def op_int(n):  # BININT
    return b"J" + struct.pack("<i", n)


DTYPE_STATE_F8 = (b"(" + op_int(3) + op_str("<") + b"NNN" + op_int(-1) + op_int(-1) + op_int(0)
                  + b"t")
DTYPE_STATE_REFS = (b"(" + op_int(3) + op_str("|") + b"NNN" + op_int(8) + op_int(8) + op_int(1)
                    + b"t")  # flags 1 = "holds object references": an object array over bytes


def dtype_ops(spec, state=DTYPE_STATE_F8):
    """numpy.dtype(spec, False, True), then BUILD with state; leaves the dtype in memo 0."""
    return (op_global("numpy", "dtype") + op_str(spec) + b"\x89\x88\x87R" + b"q\x00"
            + state + b"b")


def array_ops(n, raw, dtype_ref=b"h\x00"):
    """_reconstruct(ndarray, (0,), b'b'), then BUILD (1, (n,), dtype, False, raw); memo 1."""
    return (op_global("numpy._core.multiarray", "_reconstruct") + op_global("numpy", "ndarray")
            + b"K\x00\x85" + op_bytes(b"b") + b"\x87R" + b"q\x01"
            + b"(K\x01K" + bytes([n]) + b"\x85" + dtype_ref + b"\x89" + op_bytes(raw) + b"tb")


PROTO = b"\x80\x03"

# Each payload tries one way to get a non-numeric array (or any other object) out of the
# allow-listed names; every one must stop with UnpicklingError before numpy builds it.
PAYLOADS = {
    "object dtype": PROTO + dtype_ops("O8", b"(" + op_int(3) + op_str("|") + b"NNN" + op_int(-1)
                                      + op_int(-1) + op_int(63) + b"t") + b"0" + b".",
    "void dtype": PROTO + dtype_ops("V8", DTYPE_STATE_REFS) + b"0" + b".",
    "bytes dtype": PROTO + op_global("numpy", "dtype") + op_str("S8") + b"\x89\x88\x87R.",
    "unicode dtype": PROTO + op_global("numpy", "dtype") + op_str("U2") + b"\x89\x88\x87R.",
    "record dtype": PROTO + op_global("numpy", "dtype") + b"]" + op_str("a") + op_str("O")
                    + b"\x86a" + b"\x89\x88\x87R.",
    "float dtype given object flags": PROTO + dtype_ops("f8", DTYPE_STATE_REFS) + b"0"
                                      + array_ops(4, b"A" * 32) + b".",
    "dtype rebuilt after the array used it": PROTO + dtype_ops("f8") + b"0"
                                             + array_ops(4, b"A" * 32)
                                             + b"h\x00" + DTYPE_STATE_REFS + b"b0" + b".",
    "array built twice": PROTO + dtype_ops("f8") + b"0" + array_ops(4, b"A" * 32)
                         + b"h\x01(K\x01K\x01\x85h\x00\x89" + op_bytes(b"B" * 8) + b"tb.",
    "wrong buffer size": PROTO + dtype_ops("f8") + b"0" + array_ops(4, b"A" * 31) + b".",
    "array state with a list": PROTO + dtype_ops("f8") + b"0"
                               + op_global("numpy._core.multiarray", "_reconstruct")
                               + op_global("numpy", "ndarray") + b"K\x00\x85" + op_bytes(b"b")
                               + b"\x87R(K\x01K\x01\x85h\x00\x89]K\x01atb.",
    "numpy.ndarray called directly": PROTO + op_global("numpy", "ndarray") + b"K\x04\x85"
                                     + op_str("O") + op_bytes(b"A" * 32) + b"\x87R.",
    "foreign dtype in the array": PROTO + dtype_ops("f8") + b"0" + array_ops(
        4, b"A" * 32, dtype_ref=op_global("builtins", "float")) + b".",
    "builtins.eval": PROTO + op_global("builtins", "eval") + op_str("1") + b"\x85R.",
    "os.system": PROTO + op_global("os", "system") + op_str("true") + b"\x85R.",
    "_codecs.encode with another codec": PROTO + op_global("_codecs", "encode") + op_str("x")
                                         + op_str("rot13") + b"\x86R.",
}


def test_every_crafted_payload_is_refused_and_none_crashes_the_interpreter(tmp_path):
    # In a subprocess: if a payload got through to numpy it could segfault (exit 139).
    (tmp_path / "payloads.pkl").write_bytes(pickle.dumps(PAYLOADS))
    done = run_python(f"""
        import json, pickle, common
        payloads = pickle.load(open({str(tmp_path / "payloads.pkl")!r}, "rb"))
        verdicts = {{}}
        for name, raw in payloads.items():
            try:
                common.unpickle_arrays(raw)
                verdicts[name] = "loaded"
            except pickle.UnpicklingError as err:
                verdicts[name] = "refused: " + str(err)
        print(json.dumps(verdicts))
    """)
    assert done.returncode == 0, done.stderr  # never 139 (segfault) or a traceback
    verdicts = json.loads(done.stdout)
    assert sorted(verdicts) == sorted(PAYLOADS)
    loaded = [name for name, v in verdicts.items() if not v.startswith("refused")]
    assert loaded == []
    assert "refusing to load builtins.eval" in verdicts["builtins.eval"]
    assert "refusing to load numpy.dtype('O8')" in verdicts["object dtype"]
    assert "refusing to load numpy.dtype([('a', 'O')])" in verdicts["record dtype"]


def test_the_payloads_are_well_formed_pickles():
    # The refusals above must come from the checks, not from broken opcodes: the same
    # opcodes with a numeric dtype and the right buffer load with the real pickle module,
    # and so does the rest of a refused payload's opcodes.
    good = PROTO + dtype_ops("f8") + b"0" + array_ops(4, b"A" * 32) + b"."
    assert pickle.loads(good).shape == (4,)
    assert common.unpickle_arrays(good).tolist() == pickle.loads(good).tolist()


@pytest.mark.parametrize("dtype", common.NUMERIC_DTYPES)
@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_plain_numeric_arrays_load_in_every_dtype_and_protocol(dtype, protocol):
    array = (np.arange(24) % 2).astype(dtype).reshape(2, 3, 4)
    loaded = common.unpickle_arrays(pickle.dumps((array, (array[0].copy(), 7, "x")),
                                                 protocol=protocol))
    assert type(loaded[0]) is np.ndarray and loaded[0].dtype == array.dtype
    assert np.array_equal(loaded[0], array) and np.array_equal(loaded[1][0], array[0])
    assert loaded[1][1:] == (7, "x")


def test_a_python2_style_pickle_with_latin1_strings_loads():
    # mnist.pkl.gz was written by Python 2: the raw bytes arrive as a latin1 str.
    array = np.array([0.5, 0.25, 1.0, 255.0], dtype=np.float32)
    raw = array.tobytes().decode("latin1")
    state = (b"(K\x01K\x04\x85h\x00\x89" + b"X" + struct.pack("<I", len(raw.encode()))
             + raw.encode() + b"tb")
    payload = (b"\x80\x02" + op_global("numpy", "dtype") + op_str("f4") + b"K\x00K\x01\x87Rq\x00"
               + DTYPE_STATE_F8 + b"b0" + op_global("numpy.core.multiarray", "_reconstruct")
               + op_global("numpy", "ndarray") + b"K\x00\x85" + op_str("b") + b"\x87R" + state
               + b".")
    assert np.array_equal(common.unpickle_arrays(payload), array)


# ----------------------------------------------------------------------------- 2. verification

def write_files(folder, contents):
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in contents.items():
        (folder / name).write_bytes(data)
    return {name: common.hashlib.sha256(data).hexdigest() for name, data in contents.items()}


def counting_sha256(monkeypatch):
    calls = []
    real = common.sha256_file

    def counted(path):
        calls.append(Path(path).name)
        return real(path)

    monkeypatch.setattr(common, "sha256_file", counted)
    return calls


def test_verdicts_are_cached_by_size_mtime_and_inode(tmp_path, monkeypatch):
    expected = write_files(tmp_path, {"a": b"first", "b": b"second"})
    calls = counting_sha256(monkeypatch)
    assert common.verify_files(tmp_path, expected) == ["a", "b"]
    cache = json.loads((tmp_path / common.VERIFIED_CACHE).read_text())
    assert sorted(cache) == ["a", "b"] and cache["a"]["sha256"] == expected["a"]
    assert common.verify_files(tmp_path, expected) == []  # cached: nothing hashed
    os.utime(tmp_path / "b", ns=(1, 1))  # touched: hashed again, still fine
    assert common.verify_files(tmp_path, expected) == ["b"]
    assert calls == ["a", "b", "b"]
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_changed_file_is_named_with_what_to_do(tmp_path):
    expected = write_files(tmp_path, {"a": b"first", "b": b"second"})
    common.verify_files(tmp_path, expected)
    (tmp_path / "b").write_bytes(b"SECOND")  # same size, new content (and mtime)
    with pytest.raises(ValueError) as err:
        common.verify_files(tmp_path, expected)
    message = str(err.value)
    assert str(tmp_path / "b") in message and "is not the original MNIST file" in message
    assert "MNIST_UNVERIFIED=1" in message and "\n" not in message


def test_swapped_files_of_the_same_size_and_mtime_are_caught_by_the_inode(tmp_path):
    expected = write_files(tmp_path, {"a": b"aaaa", "b": b"bbbb"})
    for name in "ab":
        os.utime(tmp_path / name, ns=(5, 5))
    common.verify_files(tmp_path, expected)
    os.replace(tmp_path / "a", tmp_path / "tmp")
    os.replace(tmp_path / "b", tmp_path / "a")
    os.replace(tmp_path / "tmp", tmp_path / "b")
    with pytest.raises(ValueError, match="is not the original MNIST file"):
        common.verify_files(tmp_path, expected)


@pytest.mark.parametrize("garbage", [b"", b"{not json", b"[1, 2]", b'{"a": 5}',
                                     b'{"a": {"key": "x", "sha256": 1}}'])
def test_a_corrupt_cache_is_ignored(tmp_path, monkeypatch, garbage):
    expected = write_files(tmp_path, {"a": b"first"})
    (tmp_path / common.VERIFIED_CACHE).write_bytes(garbage)
    calls = counting_sha256(monkeypatch)
    assert common.verify_files(tmp_path, expected) == ["a"] and calls == ["a"]
    assert json.loads((tmp_path / common.VERIFIED_CACHE).read_text())["a"]["sha256"]


def test_a_cache_entry_for_a_wrong_file_is_not_trusted(tmp_path):
    expected = write_files(tmp_path, {"a": b"first"})
    key = common.file_key(tmp_path / "a")
    forged = {"a": {"key": key, "sha256": "0" * 64}}  # a verdict for another checksum
    (tmp_path / common.VERIFIED_CACHE).write_text(json.dumps(forged))
    common.verify_files(tmp_path, expected)  # hashed again: the file is fine
    (tmp_path / common.VERIFIED_CACHE).write_text(json.dumps(forged))
    with pytest.raises(ValueError):
        common.verify_files(tmp_path, {"a": "0" * 63 + "1"})


def test_verification_switch_follows_argument_then_environment():
    assert common.verification_wanted(None, {}) is True
    assert common.verification_wanted(None, {"MNIST_UNVERIFIED": "1"}) is False
    assert common.verification_wanted(None, {"MNIST_UNVERIFIED": "0"}) is True
    assert common.verification_wanted(True, {"MNIST_UNVERIFIED": "1"}) is True
    assert common.verification_wanted(False, {}) is False


def link_mnist(tmp_path, names=None):
    """A root whose MNIST/raw holds symlinks to the real files (names: {link: target})."""
    real = common.mnist_raw_dir()
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for link, target in (names or {n: n for n in common.MNIST_SHA256}).items():
        (raw / link).symlink_to(real / target)
    return raw


SWAPPED = {"train-images-idx3-ubyte": "t10k-images-idx3-ubyte",
           "t10k-images-idx3-ubyte": "train-images-idx3-ubyte",
           "train-labels-idx1-ubyte": "t10k-labels-idx1-ubyte",
           "t10k-labels-idx1-ubyte": "train-labels-idx1-ubyte"}


@pytest.mark.mnist
@pytest.mark.skipif(not POSIX, reason="uses symlinks to the real files")
def test_swapped_train_and_test_files_are_refused_with_what_to_do(mnist, tmp_path, monkeypatch):
    monkeypatch.delenv("MNIST_UNVERIFIED", raising=False)
    raw = link_mnist(tmp_path, SWAPPED)
    with pytest.raises(ValueError) as err:
        common.load_mnist(root=tmp_path)
    message = str(err.value)
    assert str(raw / "train-images-idx3-ubyte") in message and "swapped" in message
    assert "holds 10,000 items but MNIST's train file holds 60,000" in message
    assert "MNIST_UNVERIFIED=1" in message and "\n" not in message
    monkeypatch.setenv("MNIST_UNVERIFIED", "1")  # on purpose: loads as they are
    assert common.load_mnist(root=tmp_path)[0].shape == (10000, 784)
    monkeypatch.delenv("MNIST_UNVERIFIED")
    assert common.load_mnist(root=tmp_path, verify=False)[2].shape == (60000, 784)


@pytest.mark.mnist
@pytest.mark.skipif(not POSIX, reason="uses symlinks to the real files")
def test_a_changed_label_with_the_right_counts_is_caught_by_the_checksum(mnist, tmp_path,
                                                                        monkeypatch):
    monkeypatch.delenv("MNIST_UNVERIFIED", raising=False)
    raw = link_mnist(tmp_path, {n: n for n in common.MNIST_SHA256 if "t10k-labels" not in n})
    data = bytearray((common.mnist_raw_dir() / "t10k-labels-idx1-ubyte").read_bytes())
    data[8] = (data[8] + 1) % 10  # one test label changed, still a digit
    (raw / "t10k-labels-idx1-ubyte").write_bytes(bytes(data))
    with pytest.raises(ValueError) as err:
        common.load_mnist(root=tmp_path)
    assert str(raw / "t10k-labels-idx1-ubyte") in str(err.value)
    assert "is not the original MNIST file" in str(err.value)


@pytest.mark.mnist
def test_a_normal_load_is_verified_from_the_cache_without_hashing(mnist, monkeypatch):
    monkeypatch.delenv("MNIST_UNVERIFIED", raising=False)
    common.load_mnist()  # writes the cache if needed
    calls = counting_sha256(monkeypatch)
    common.load_mnist()
    assert calls == []


# ----------------------------------------------------------------------------- 3. read_idx

def test_images_that_are_not_28x28_are_named_in_one_sentence(tmp_path):
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    from test_data import idx_file, write_tiny_mnist

    write_tiny_mnist(path.parent)
    idx_file(path, 0x803, (2, 27, 29), bytes(2 * 27 * 29))
    with pytest.raises(ValueError) as err:
        common.load_mnist(root=tmp_path, expected_sha256=None, sources=())
    message = str(err.value)
    assert message.startswith(str(path))
    assert "holds items of 27x29, but MNIST's are 28x28" in message
    assert "\n" not in message


@pytest.mark.parametrize("dims", [(2**31, 2**31, 4),            # int64 product wraps to 0
                                  (2**32 - 1, 2**32 - 1, 2**32 - 1),
                                  (3_000_000_000, 28, 28)])
def test_absurd_header_dimensions_are_refused_before_allocating(tmp_path, dims):
    path = tmp_path / "x"
    path.write_bytes(struct.pack(">I3I", 0x803, *dims))
    with pytest.raises(ValueError) as err:
        common.read_idx(path, common.IDX_IMAGES_MAGIC)
    assert str(path) in str(err.value) and "header promises" in str(err.value)


def test_read_idx_checks_item_shape_and_reads_an_empty_file(tmp_path):
    path = tmp_path / "x"
    path.write_bytes(struct.pack(">I3I", 0x803, 0, 28, 28))
    assert common.read_idx(path, common.IDX_IMAGES_MAGIC, (28, 28)).shape == (0, 28, 28)


# ----------------------------------------------------------------------------- 4. leftovers

def test_clean_leftovers_removes_only_our_own_patterns(tmp_path):
    ours = [".fetch-ab12_x9z", ".train-images-idx3-ubyte.k2j4_9aa.tmp",
            ".metrics.json.abcdefgh.tmp"]
    theirs = ["notes.tmp", ".fetch-keep", "fetch-abcdefgh", ".lock", "raw", "a.abcdefgh.tmp",
              ".fetch-abcdefgh.txt", ".x.abc.tmp", ".thesis.draft123.tmp"]
    (tmp_path / ours[0]).mkdir()
    (tmp_path / ours[0] / "train-images-idx3-ubyte").write_bytes(b"x" * 100)
    for name in ours[1:] + theirs:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "raw").unlink()
    (tmp_path / "raw").mkdir()
    (tmp_path / "raw" / ".y.abcdefgh.tmp").write_bytes(b"")  # not below the folder
    names = ("train-images-idx3-ubyte", "metrics.json", "y")
    assert common.clean_leftovers(tmp_path, names, fetch_folders=True) == sorted(ours)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(theirs)
    assert (tmp_path / "raw" / ".y.abcdefgh.tmp").exists()
    assert common.clean_leftovers(tmp_path / "missing", names) == []


def test_clean_leftovers_keeps_look_alikes_it_was_not_told_about(tmp_path):
    # A user's own files in a run folder that merely match the patterns: a staging-like
    # folder with their work in it, and a temporary-like file of a name no run writes.
    (tmp_path / ".fetch-Ab12Cd34").mkdir()
    (tmp_path / ".fetch-Ab12Cd34" / "important.txt").write_text("keep")
    (tmp_path / ".thesis.draft123.tmp").write_text("keep")
    (tmp_path / ".checkpoint.pt.abcdefgh.tmp").write_bytes(b"")  # a run's own: removed
    assert common.clean_leftovers(tmp_path, ("checkpoint.pt", "metrics.json")) == [
        ".checkpoint.pt.abcdefgh.tmp"]
    assert (tmp_path / ".fetch-Ab12Cd34" / "important.txt").read_text() == "keep"
    assert (tmp_path / ".thesis.draft123.tmp").read_text() == "keep"


def test_load_mnist_cleans_a_killed_fetch(tmp_path):
    from test_data import write_tiny_mnist

    raw = tmp_path / "MNIST" / "raw"
    write_tiny_mnist(raw)
    (tmp_path / "MNIST" / ".fetch-k1ll3d00").mkdir()
    (tmp_path / "MNIST" / ".fetch-k1ll3d00" / "big").write_bytes(b"x" * 1000)
    (raw / "..verified.json.abcd1234.tmp").write_bytes(b"{")
    common.load_mnist(root=tmp_path, sources=(), expected_sha256=None)
    assert sorted(p.name for p in (tmp_path / "MNIST").iterdir()) == [".lock", "raw"]
    assert not (raw / "..verified.json.abcd1234.tmp").exists()


HOLDER = """
    import os, sys, common
    from pathlib import Path
    lock = common.lock_folder(sys.argv[1])
    if len(sys.argv) > 2:
        (Path(sys.argv[1]) / sys.argv[2]).mkdir()  # a live staging folder
    print(os.getpid(), flush=True)
    sys.stdin.read()  # hold the lock until the test closes stdin (or kills us)
"""


def hold_lock(folder, *extra):
    proc = subprocess.Popen([sys.executable, "-c", textwrap.dedent(HOLDER), str(folder), *extra],
                            cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    pid = int(proc.stdout.readline())
    return proc, pid


@pytest.mark.skipif(not POSIX, reason="the other process is driven with POSIX signals")
def test_a_concurrent_load_waits_and_never_removes_a_live_fetch_folder(tmp_path, capfd):
    from test_data import write_tiny_mnist

    write_tiny_mnist(tmp_path / "MNIST" / "raw")
    proc, _ = hold_lock(tmp_path / "MNIST", ".fetch-l1vel1ve")
    try:
        done = []
        loader = threading.Thread(target=lambda: done.append(common.load_mnist(
            root=tmp_path, sources=(), expected_sha256=None)))
        loader.start()
        time.sleep(0.5)
        assert loader.is_alive() and not done  # waiting for the lock
        assert (tmp_path / "MNIST" / ".fetch-l1vel1ve").is_dir()  # untouched while live
    finally:
        proc.kill()  # the holder dies mid-fetch: its folder is now a leftover
        proc.wait()
    loader.join(timeout=30)
    assert done and done[0][0].shape == (6, 784)
    assert not (tmp_path / "MNIST" / ".fetch-l1vel1ve").exists()
    lock = tmp_path / "MNIST" / ".lock"
    assert capfd.readouterr().err == f"MNIST: waiting for another process that holds {lock}\n"


# ----------------------------------------------------------------------------- 5. lock_folder

def test_lock_folder_is_a_handle_and_a_context_manager(tmp_path):
    handle = common.lock_folder(tmp_path)
    assert handle.path == tmp_path / ".lock" and handle.pid == os.getpid()
    assert (tmp_path / ".lock").read_text().strip() == str(os.getpid())
    with pytest.raises(ValueError, match="already locked by this same run"):
        common.lock_folder(tmp_path, wait=True)  # refused: it would wait for itself, for ever
    handle.close()
    handle.close()  # twice is harmless
    with common.lock_folder(tmp_path) as again:
        assert again.path.exists()
    common.lock_folder(tmp_path).close()


@pytest.mark.skipif(not POSIX, reason="symbolic links need privileges on Windows")
def test_lock_folder_refuses_a_link_as_its_lock_and_leaves_the_target_alone(tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / ".lock").symlink_to(notes)
    with pytest.raises(ValueError, match="is not a plain file"):
        common.lock_folder(tmp_path / "run")
    assert notes.read_text() == "precious"


def test_lock_folder_refuses_a_hard_link_as_its_lock_and_leaves_the_file_alone(tmp_path):
    # Taking the lock empties .lock and writes a PID: through a hard link, that would be the
    # user's file.
    notes = tmp_path / "notes.txt"
    notes.write_text("precious")
    (tmp_path / "run").mkdir()
    os.link(notes, tmp_path / "run" / ".lock")
    with pytest.raises(ValueError, match="is not a file of its own"):
        common.lock_folder(tmp_path / "run")
    assert notes.read_text() == "precious"


def test_lock_folder_in_a_missing_folder_is_an_os_error(tmp_path):
    with pytest.raises(OSError):
        common.lock_folder(tmp_path / "missing")


@pytest.mark.skipif(not POSIX, reason="SIGKILL is POSIX")
def test_a_second_process_is_refused_with_the_holder_pid_until_it_is_killed(tmp_path):
    proc, pid = hold_lock(tmp_path)
    try:
        with pytest.raises(ValueError) as err:
            common.lock_folder(tmp_path)
        message = str(err.value)
        assert f"{tmp_path} is in use by another run (process {pid})" in message
        assert "\n" not in message and message.endswith(".")
        other = run_python(f"import common; common.lock_folder({str(tmp_path)!r})")
        assert other.returncode != 0 and f"process {pid}" in other.stderr
    finally:
        proc.send_signal(signal.SIGKILL)  # no cleanup runs: the kernel frees the lock
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    with common.lock_folder(tmp_path) as handle:  # no stale lock
        assert handle.pid == os.getpid()


def test_wait_true_waits_for_the_holder(tmp_path):
    proc, _ = hold_lock(tmp_path)
    got = []
    waiter = threading.Thread(target=lambda: got.append(common.lock_folder(tmp_path, wait=True)))
    waiter.start()
    time.sleep(0.3)
    assert not got
    proc.stdin.close()  # the holder exits normally
    proc.wait()
    waiter.join(timeout=30)
    assert got
    got[0].close()


# ----------------------------------------------------------------------------- 6. run folders

def test_check_writable_dir_creates_the_folder_and_leaves_no_probe(tmp_path):
    folder = common.check_writable_dir(tmp_path / "a" / "b")
    assert folder == tmp_path / "a" / "b" and folder.is_dir()
    assert list(folder.iterdir()) == []


def test_a_killed_runs_probe_file_is_a_leftover_the_next_run_removes(tmp_path):
    (tmp_path / ".write-probe.k1ll3d_0.tmp").write_bytes(b"probe")  # SIGKILL mid-probe
    assert common.clean_leftovers(tmp_path) == [".write-probe.k1ll3d_0.tmp"]
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_at_the_probe_is_the_no_space_sentence_not_a_bad_folder(
        tmp_path, monkeypatch, capsys):
    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(common.os, "write", full)
    assert common.run_main(lambda argv: common.check_writable_dir(tmp_path / "out"), []) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: could not write {tmp_path / 'out'} (No space left")
    assert err.count("\n") == 1 and "cannot be written to" not in err
    assert list((tmp_path / "out").iterdir()) == []  # the probe is gone


def test_a_misspelt_mplbackend_does_not_stop_the_pictures(tmp_path):
    # The pictures are files drawn with Agg; MPLBACKEND=bogus made matplotlib's import fail,
    # after a whole training run.
    done = run_python(f"""
        import os, common
        plt = common.pyplot()
        fig = plt.figure()
        common.save_figure({str(tmp_path / "a.png")!r}, fig)
        print(plt.get_backend().lower(), os.environ["MPLBACKEND"])
    """, env={**os.environ, "MPLBACKEND": "bogus"})
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["agg", "bogus"]  # Agg used, the variable given back
    assert (tmp_path / "a.png").read_bytes().startswith(b"\x89PNG")


@pytest.mark.parametrize("value", ["", None, "   "])
def test_check_writable_dir_refuses_an_empty_path(value):
    with pytest.raises(ValueError, match="--out is empty; give the folder"):
        common.check_writable_dir(value)


@pytest.mark.skipif(not POSIX, reason="symbolic links need privileges on Windows")
def test_check_writable_dir_names_a_link_to_nothing(tmp_path):
    (tmp_path / "link").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="is a link to nothing"):
        common.check_writable_dir(tmp_path / "link")
    assert not (tmp_path / "nowhere").exists()


def test_an_mnist_root_that_is_a_file_is_one_sentence(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(OSError, match=r"cannot make or lock the MNIST folder .*afile.*MNIST_ROOT"):
        common.load_mnist(root=tmp_path / "afile")


@pytest.mark.skipif(not POSIX, reason="a shell pipe into head")
def test_a_closed_output_pipe_stops_a_lesson_with_one_sentence():
    script = ("import sys, common\n"
              "def main(argv):\n"
              "    for _ in range(100_000):\n"
              "        print('a line of output', flush=True)\n"
              "    return 0\n"
              "sys.exit(common.run_main(main))\n")
    done = subprocess.run(f"{sys.executable} -c \"{script}\" | head -1", shell=True,
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stdout == "a line of output\n"
    assert done.stderr.startswith("error: the program reading this output stopped"), done.stderr
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    # Without flush=True the lines wait in Python's buffer; the break shows when it is
    # written out, which run_main does before it returns (not Python, at exit).
    quiet = script.replace(", flush=True", "")
    done = subprocess.run(f"{sys.executable} -c \"{quiet}\" | head -1", shell=True,
                          capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.stderr.startswith("error: the program reading this output stopped"), done.stderr
    assert "Exception ignored" not in done.stderr


def test_check_writable_dir_refuses_a_file_and_a_path_under_a_file(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ValueError, match="is a file, not a folder"):
        common.check_writable_dir(tmp_path / "f")
    with pytest.raises(ValueError) as err:
        common.check_writable_dir(tmp_path / "f" / "run", flag="--out")
    assert f"--out {tmp_path / 'f' / 'run'} cannot be written to" in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs Linux's /proc")
@pytest.mark.parametrize("path", ["/proc", "/proc/run", "/proc/self/run"])
def test_check_writable_dir_refuses_proc(path):
    with pytest.raises(ValueError, match="cannot be written to"):
        common.check_writable_dir(path)


@pytest.mark.skipif(not POSIX or os.geteuid() == 0,
                    reason="root may write into a read-only folder")
def test_check_writable_dir_refuses_a_read_only_folder(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro").chmod(0o555)
    try:
        with pytest.raises(ValueError, match="cannot be written to"):
            common.check_writable_dir(tmp_path / "ro")
    finally:
        (tmp_path / "ro").chmod(0o755)


def strict_loads(data):
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")

    return json.loads(data, parse_constant=refuse)


def test_strict_json_never_writes_nan_or_infinity(tmp_path):
    data = {"loss": float("nan"), "history": [{"val": float("inf")}, (1.5, -float("inf"))],
            "ok": True, "n": 3, "name": "x", "none": None}
    text = common.strict_json_bytes(data)
    assert text.endswith(b"\n") and b"NaN" not in text and b"Infinity" not in text
    assert strict_loads(text) == {"loss": None, "history": [{"val": None}, [1.5, None]],
                                  "ok": True, "n": 3, "name": "x", "none": None}
    path = common.save_json(tmp_path / "metrics.json", data)
    assert strict_loads(path.read_bytes())["loss"] is None
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]


# ----------------------------------------------------------------------------- 7. arguments

def run_parser(argv, **kwargs):
    parser = argparse.ArgumentParser(exit_on_error=False)
    common.add_run_args(parser, **kwargs)
    parser.add_argument("--lr", type=common.float_in(0, None, lo_open=True))
    parser.add_argument("--momentum", type=common.float_in(0, 1, hi_open=True))
    parser.add_argument("--hidden", type=common.int_in(1, 100_000), nargs="+")
    return common.parse_args(parser, argv)


@pytest.mark.parametrize("argv, message", [
    (["--seed", "99999999999999999999999"],
     "argument --seed: must be a whole number between 0 and 9223372036854775807, got "
     "99999999999999999999999; see --help."),
    (["--seed", "-1"], "argument --seed: must be a whole number between 0 and "),
    (["--seed", "1.5"], "argument --seed: must be a whole number between 0 and"),
    (["--limit", "0"], "argument --limit: must be a whole number at least 1, got 0; see --help."),
    (["--limit", "-3"], "argument --limit: must be a whole number at least 1, got -3"),
    (["--hidden", "512", "2000000000"], "argument --hidden: must be a whole number between 1 and "
                                        "100000, got 2000000000"),
    (["--hidden", "9" * 5000], "argument --hidden: must be a whole number between 1 and 100000, "
                               "got '999"),
    (["--lr", "0"], "argument --lr: must be a finite number above 0, got 0"),
    (["--lr", "nan"], "argument --lr: must be a finite number above 0, got nan"),
    (["--lr", "inf"], "argument --lr: must be a finite number above 0, got inf"),
    (["--lr", "fast"], "argument --lr: must be a finite number above 0, got 'fast'"),
    (["--momentum", "1"], "argument --momentum: must be a finite number in [0, 1), got 1"),
    (["--lr", "1" + "0" * 400], "argument --lr: must be a finite number above 0, got "
                                "1000000000000000000000000000000000000..."),
])
def test_argument_types_name_the_flag_in_one_sentence(argv, message):
    with pytest.raises(ValueError) as err:
        run_parser(argv)
    assert str(err.value).startswith(message) and "\n" not in str(err.value)
    assert len(str(err.value)) < 200


def test_argument_types_accept_good_values():
    args = run_parser(["--seed", str(2**63 - 1), "--limit", "1", "--lr", "1e-3", "--momentum",
                       "0", "--hidden", "1", "100000"])
    assert (args.seed, args.limit, args.lr, args.momentum, args.hidden) == (
        2**63 - 1, 1, 1e-3, 0.0, [1, 100000])
    assert common.make_generator(args.seed).initial_seed() == 2**63 - 1
    assert run_parser([], seed=None).seed is None  # a None default is not parsed
    assert common.float_in(0, None, finite=False)("inf") == float("inf")


def test_load_mnist_limited_checks_the_limit_against_the_data(monkeypatch):
    data = (torch.zeros(6, 784), torch.zeros(6, dtype=torch.int64), torch.zeros(4, 784),
            torch.zeros(4, dtype=torch.int64))
    monkeypatch.setattr(common, "load_mnist", lambda device: data)
    assert [len(t) for t in common.load_mnist_limited("cpu", 5)] == [5, 5, 4, 4]
    assert common.load_mnist_limited("cpu") is data
    for bad in (7, 0, -3):
        with pytest.raises(ValueError) as err:
            common.load_mnist_limited("cpu", bad)
        assert str(err.value) == (f"--limit must be between 1 and the 6 training digits there "
                                  f"are, got {bad}; leave --limit out to use them all.")


# ----------------------------------------------------------------------------- 8. devices

def test_mps_asked_for_but_absent_says_what_to_do(monkeypatch):
    monkeypatch.setattr(common, "mps_available", lambda: False)
    with pytest.raises(ValueError) as err:
        common.pick_device("mps")
    assert "sees no Apple MPS backend" in str(err.value) and "--device cpu" in str(err.value)


def test_auto_picks_cuda_then_mps_then_cpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(common, "mps_available", lambda: True)
    assert common.pick_device("auto") == torch.device("mps")
    assert common.pick_device("mps") == torch.device("mps")
    monkeypatch.setattr(common, "mps_available", lambda: False)
    assert common.pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert common.pick_device("auto") == torch.device("cuda")


def test_unknown_devices_list_the_choices():
    with pytest.raises(ValueError, match="unknown device 'tpu'; use auto, cpu, cuda or mps"):
        common.pick_device("tpu")


@pytest.mark.skipif(not common.mps_available(),
                    reason="Apple's MPS backend is not available on this machine")
def test_mps_really_runs_when_present():
    device = common.pick_device("mps")
    assert (torch.ones(3, device=device) * 2).sum().item() == 6


# ----------------------------------------------------------------------------- 9. signals

SIGNAL_SCRIPT = """
    import os, signal, sys, time, common
    record = common.install_interrupt_handlers()
    assert common.install_interrupt_handlers() is record  # idempotent
    {body}
"""


@pytest.mark.skipif(not POSIX, reason="sends POSIX signals")
def test_sigterm_becomes_keyboard_interrupt_and_is_recorded():
    done = run_python(SIGNAL_SCRIPT.format(body="""
    try:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)
        print("not interrupted")
    except KeyboardInterrupt:
        print("interrupted", record["received"] == [signal.SIGTERM])
    common.restore_interrupt_handlers(record)
    print(signal.getsignal(signal.SIGTERM) == signal.SIG_DFL)
    """))
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["interrupted", "True", "True"]


@pytest.mark.skipif(not POSIX, reason="sends POSIX signals")
def test_a_signal_ignored_at_start_stays_ignored():
    # SIGINT in a job started with & from a script, SIGHUP under nohup: not for this run.
    code = textwrap.dedent("""
        import os, signal, time
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        import common
        record = common.install_interrupt_handlers()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
        assert signal.SIGINT not in record["previous"] and signal.SIGTERM in record["previous"]
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.1)
        print("still running", record["received"])
    """)
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["still", "running", "[]"]


@pytest.mark.skipif(not POSIX, reason="sends POSIX signals")
def test_a_signal_swallowed_in_a_finaliser_is_still_recorded():
    # A KeyboardInterrupt raised inside __del__ (as in a GC callback while plotting) only
    # prints "Exception ignored"; the record lets the run still end with 130.
    done = run_python(SIGNAL_SCRIPT.format(body="""
    class Finaliser:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            for _ in range(10000):
                pass
    Finaliser()
    time.sleep(0.1)
    sys.exit(130 if record["received"] else 0)
    """))
    assert done.returncode == 130, done.stderr
    assert "KeyboardInterrupt" in done.stderr


@pytest.mark.skipif(not POSIX, reason="sends POSIX signals")
def test_an_early_minimal_handler_is_replaced_and_sigterm_from_outside_exits_130():
    code = textwrap.dedent("""
        import signal, sys
        def early(signum, frame):  # what a script installs before its heavy imports
            raise KeyboardInterrupt
        signal.signal(signal.SIGTERM, early)
        import time, common
        record = common.install_interrupt_handlers()
        assert record["previous"][signal.SIGTERM] is early
        def main(argv):
            print("ready", flush=True)
            time.sleep(30)
            return 0
        sys.exit(common.run_main(main))
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130 and err == "interrupted.\n"


def test_outside_the_main_thread_nothing_is_installed():
    got = []
    worker = threading.Thread(target=lambda: got.append(common.install_interrupt_handlers()))
    worker.start()
    worker.join()
    assert got == [{"received": [], "previous": {}}]


# ----------------------------------------------------------------------------- Needs lines

def test_every_public_function_declares_what_it_needs():
    tree = ast.parse((ROOT / "common.py").read_text())
    missing = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)
               and not node.name.startswith("_")
               and "\n    Needs: " not in "\n    " + (ast.get_docstring(node, clean=False) or "")]
    assert missing == []


def test_declared_repository_functions_are_the_ones_called():
    # The repository names each public function mentions in its Needs line must cover the
    # module-level functions of common.py its body calls (the issue-9 checker is stricter).
    source = (ROOT / "common.py").read_text()
    tree = ast.parse(source)
    functions = {n.name for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
    constants = [(t.id, n.value) for n in tree.body if isinstance(n, ast.Assign)
                 for t in n.targets if isinstance(t, ast.Name)]
    for node in tree.body:
        if not isinstance(node, ast.FunctionDef) or node.name.startswith("_"):
            continue
        doc = ast.get_docstring(node)
        needs = doc.split("Needs:", 1)[1].replace("\n", " ")
        declared = {w.strip(" ,.()") for w in needs.replace(",", " ").split()}
        called = {n.func.id for n in ast.walk(node) if isinstance(n, ast.Call)
                  and isinstance(n.func, ast.Name) and n.func.id in functions}
        used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name) and n.id in functions}
        assert called | used <= declared | {node.name}, node.name
        # ... and a declared function is used by the body, or by a constant the body reads
        # (MNIST_SOURCES holds the fetchers: the Needs line lists them for the copy-out).
        names = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        through = {n.id for c in constants if c[0] in names for n in ast.walk(c[1])
                   if isinstance(n, ast.Name) and n.id in functions}
        assert (declared & functions) <= used | through | {node.name}, node.name
