"""The machine's measured float32 matmul peak: the fastest large matmul of every backend here.

    python benchmarks/peak.py                  # torch, numpy's BLAS, JAX (when installed); CPU
    python benchmarks/peak.py --device cuda    # torch on the GPU (and JAX's GPU backend, if any)

Each backend multiplies square float32 matrices (n, n) @ (n, n), 2 n^3 FLOPs, and keeps its
best rate over a few sizes and repeats (the least disturbed by other work on a shared machine).
torch runs in this process; numpy and JAX each run in a process of their own (two thread
pools in one process slow each other down). numpy's process runs without OPENBLAS_CORETYPE
and OPENBLAS_L2_SIZE: where they are set they pin OpenBLAS to older, slower kernels, and the
line says so. Nothing here changes the environment of anything else.

The fastest backend's rate is the machine's "peak": what the hardware does with a float32
matmul. The benchmark report divides by it for its "% of peak" (and shows torch's own
matmul beside it). The last line reads, e.g.

    result: peak_gflops=483.2 backend=numpy
"""

import os
import signal
import sys

# Before any heavy import (torch through common.py, numpy, jax: seconds), so that Ctrl-C,
# SIGTERM or SIGHUP while they load prints one line instead of a traceback (as in
# 04_train_mnist.py). This file imports them inside functions: the whole measurement runs
# under main's own handlers, installed once torch is in, and a process measuring one backend
# (--backend, started by this one) keeps this handler for its whole life: it writes nothing.
if __name__ == "__main__":
    if os.path.dirname(os.path.abspath(__file__)) not in sys.path:  # early_signals sits here
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import early_signals

    _phase, _ = early_signals.install("interrupted; nothing was measured.")

import argparse  # noqa: E402 (after the early signal handlers, on purpose)
import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
PINNING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")  # set on some machines; slower kernels
CPU_SIZES, GPU_SIZES = (1024, 2048), (4096, 8192)
LINE_PREFIX = "peak:"  # what a backend's process prints: peak: {"backend": ..., "gflops": ...}


def best_rate(matmul, sync, sizes, repeats):
    """-> {"gflops", "n"}: the best rate of matmul(n) over sizes and repeats (2 n^3 FLOPs each).

    matmul(n) returns a function that does one (n, n) @ (n, n) product; sync() waits for it.
    """
    best = {"gflops": 0.0, "n": None}
    for n in sizes:
        once = matmul(n)
        for _ in range(2):
            once()  # warm up: thread pools, caches, compilation
        sync()
        for _ in range(repeats):
            start = time.perf_counter()
            once()
            sync()
            gflops = 2 * n**3 / (time.perf_counter() - start) / 1e9
            if gflops > best["gflops"]:
                best = {"gflops": gflops, "n": n}
    return best


def lessons_common():
    """The lessons' common.py, imported only when needed: it imports torch, which the numpy
    and JAX measuring processes must not."""
    root = os.path.dirname(HERE)
    if root not in sys.path:
        sys.path.insert(0, root)
    import common

    return common


def device_words(device):
    """common.device_description: a GPU's name, or the CPU with its widest vector instructions,
    e.g. "AMD EPYC (family 25, model 1), AVX2, no AVX-512" (one model name can hide a 2x gap)."""
    return lessons_common().device_description(device)


def measure_torch(device="cpu", sizes=None, repeats=10):
    """torch's float32 `a @ b` on device (its bundled BLAS on a CPU, cuBLAS on CUDA)."""
    import torch

    device = torch.device(device)
    sizes = sizes or (GPU_SIZES if device.type in ("cuda", "mps") else CPU_SIZES)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elif device.type == "mps":
            torch.mps.synchronize()

    def matmul(n):
        a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
        return lambda: a @ b

    label = f"cpu: {device_words(device)}" if device.type == "cpu" else device_words(device)
    return dict(best_rate(matmul, sync, sizes, repeats), backend="torch",
                detail=f"torch {torch.__version__} on {label}, {torch.get_num_threads()} threads")


def measure_numpy(sizes=CPU_SIZES, repeats=10):
    """numpy's float32 `a @ b` (its BLAS: OpenBLAS in the PyPI wheels), on the CPU."""
    import numpy as np

    def matmul(n):
        rng = np.random.default_rng(0)
        a, b = (rng.random((n, n), dtype=np.float32) for _ in range(2))
        return lambda: a @ b

    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]["name"]
    except Exception:  # older numpy has no "dicts" mode; the name is only a label
        blas = "its BLAS"
    return dict(best_rate(matmul, lambda: None, sizes, repeats), backend="numpy",
                detail=f"numpy {np.__version__} ({blas})")


def measure_jax(platform="cpu", sizes=None, repeats=10):
    """JAX's jit-compiled float32 `a @ b` (XLA) on its platform ("cpu" or "gpu"), in true
    float32 as torch computes it (jax_step.true_float32: not TensorFloat32 on a GPU)."""
    if HERE not in sys.path:
        sys.path.insert(0, HERE)
    from jax_step import import_jax, true_float32

    jax = import_jax()
    jnp = jax.numpy

    device = jax.devices(platform)[0]
    sizes = sizes or (CPU_SIZES if platform == "cpu" else GPU_SIZES)
    product = jax.jit(lambda a, b: a @ b)
    result = [None]

    def matmul(n):
        key_a, key_b = jax.random.split(jax.random.PRNGKey(0))
        a = jax.device_put(jax.random.uniform(key_a, (n, n), jnp.float32), device)
        b = jax.device_put(jax.random.uniform(key_b, (n, n), jnp.float32), device)

        def once():
            with true_float32(jax, platform):
                result[0] = product(a, b)
        return once

    def sync():
        if result[0] is not None:
            result[0].block_until_ready()

    return dict(best_rate(matmul, sync, sizes, repeats), backend="jax",
                detail=f"jax {jax.__version__} (XLA) on {device.platform}")


# ----------------------------------------------------------------------------- processes

def clean_environment(environ, remove=PINNING):
    """-> (a copy of environ without the variables in remove, {name: value} of those removed)."""
    removed = {k: environ[k] for k in remove if k in environ}
    return {k: v for k, v in environ.items() if k not in removed}, removed


def jax_disabled(environ=os.environ):
    """A reason string when JAX must be treated as absent (BENCH_NO_JAX=1), else None."""
    if environ.get("BENCH_NO_JAX", "") not in ("", "0"):
        return "BENCH_NO_JAX is set: JAX treated as not installed"
    return None


def parse_backend_output(text):
    """A backend process's stdout -> its measurement dict (the last `peak:` line), or None."""
    found = None
    for line in text.splitlines():
        if line.startswith(LINE_PREFIX):
            try:
                value = json.loads(line[len(LINE_PREFIX):])
            except ValueError:
                continue
            if isinstance(value, dict) and "backend" in value and "gflops" in value:
                found = value
    return found


def stop_process(process):
    """Kill a child process (a subprocess.Popen) if it still runs, and wait for it: no orphan
    goes on measuring, and no zombie is left to reap. None is fine."""
    if process is None:
        return
    if process.poll() is None:
        process.kill()
    process.wait()


def run_captured(command, env=None, timeout=None):
    """Run command, its stdout and stderr captured as text -> (status, stdout, stderr).

    Whatever ends the wait early (timeout: subprocess.TimeoutExpired; Ctrl-C or SIGTERM: a
    KeyboardInterrupt) kills the process and waits for it before it goes on up.
    """
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        out, err = process.communicate(timeout=timeout)
    except BaseException:
        stop_process(process)
        raise
    return process.returncode, out, err


def run_backend(backend, device="cpu", repeats=10, environ=None, timeout=300):
    """Measure one backend in a process of its own -> its measurement, or {"skipped": reason}."""
    environ = dict(os.environ if environ is None else environ)
    removed = {}
    if backend == "numpy":
        environ, removed = clean_environment(environ)
    command = [sys.executable, os.path.join(HERE, "peak.py"), "--backend", backend,
               "--device", device, "--repeats", str(repeats)]
    try:
        _, out, err = run_captured(command, env=environ, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"backend": backend, "skipped": f"no answer within {timeout} s"}
    found = parse_backend_output(out)
    if found is None:
        last = (err.strip().splitlines() or ["no output"])[-1]
        return {"backend": backend, "skipped": last}
    if removed:
        found["unset"] = removed
    return found


def measure_all(device="cpu", repeats=10, environ=None, torch_here=True):
    """Every backend present on device -> list of measurement dicts (or {"skipped": reason})."""
    device_type = device.split(":")[0]
    results = [measure_torch(device, repeats=repeats) if torch_here
               else run_backend("torch", device, repeats, environ)]
    if device_type == "cpu":
        results.append(run_backend("numpy", device, repeats, environ))
    if device_type in ("cpu", "cuda"):
        reason = jax_disabled(os.environ if environ is None else environ)
        results.append({"backend": "jax", "skipped": reason} if reason
                       else run_backend("jax", device, repeats, environ))
    return results


def fastest(results):
    """The measurement with the highest GFLOP/s among those not skipped."""
    measured = [r for r in results if "skipped" not in r]
    if not measured:
        raise ValueError("no backend could be measured")
    return max(measured, key=lambda r: r["gflops"])


def summary(results):
    """-> {"peak_gflops", "peak_backend", "peak_n", "torch_matmul_gflops", "backends"}."""
    best = fastest(results)
    torch_rate = next((r["gflops"] for r in results
                       if r["backend"] == "torch" and "skipped" not in r), None)
    return {"peak_gflops": best["gflops"], "peak_backend": best["backend"], "peak_n": best["n"],
            "torch_matmul_gflops": torch_rate,
            "backends": {r["backend"]: r.get("gflops") for r in results}}


def describe(result):
    """One line for one backend's measurement."""
    if "skipped" in result:
        return f"{result['backend']:<6} skipped: {result['skipped']}"
    line = (f"{result['backend']:<6} {result['gflops']:7.1f} GFLOP/s  "
            f"({result['n']}x{result['n']} float32 matmul; {result['detail']})")
    if result.get("unset"):
        names = ", ".join(f"{k}={v}" for k, v in result["unset"].items())
        line += f"; measured with {names} removed from its environment (they pin older kernels)"
    return line


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, exit_on_error=False,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, mps or auto")
    parser.add_argument("--repeats", type=int, default=10, help="products per size")
    parser.add_argument("--backend", choices=("torch", "numpy", "jax"),
                        help=argparse.SUPPRESS)  # internal: measure one backend, print one line
    def refuse(message):  # the mistakes argparse reports through error() even so
        raise argparse.ArgumentError(None, message)

    def print_help(file=None):  # argparse's own ignores a failed write (> /dev/full)
        (file or sys.stdout).write(parser.format_help())
        (file or sys.stdout).flush()
    parser.error, parser.print_help = refuse, print_help
    try:
        args = parser.parse_args(argv)
    except argparse.ArgumentError as err:
        print(f"error: {err}; see --help.", file=sys.stderr)
        return 2
    if not 1 <= args.repeats <= 100_000:
        print(f"error: argument --repeats: must be a whole number in [1, 100000], got "
              f"{args.repeats}.", file=sys.stderr)
        return 2
    if not args.backend:
        try:
            args.device = str(lessons_common().pick_device(args.device))  # "auto" resolved
        except ValueError as err:
            print(f"error: {err}", file=sys.stderr)
            return 2
    if args.backend:
        platform = "gpu" if args.device.startswith("cuda") else "cpu"
        if args.backend == "jax" and jax_disabled():
            print(jax_disabled(), file=sys.stderr)
            return 1
        measure = {"torch": lambda: measure_torch(args.device, repeats=args.repeats),
                   "numpy": lambda: measure_numpy(repeats=args.repeats),
                   "jax": lambda: measure_jax(platform, repeats=args.repeats)}[args.backend]
        try:
            result = measure()
        except ImportError as err:
            print(f"{args.backend} is not importable here ({err})", file=sys.stderr)
            return 1
        except RuntimeError as err:  # e.g. JAX without a GPU backend
            print(f"{args.backend} failed: {str(err).splitlines()[0]}", file=sys.stderr)
            return 1
        print(LINE_PREFIX + json.dumps(result), flush=True)
        return 0
    results = measure_all(args.device, args.repeats)
    for result in results:
        print(describe(result), flush=True)
    best = fastest(results)
    print(f"fastest: {best['backend']} ({best['detail']})")
    print(f"result: peak_gflops={best['gflops']:.1f} backend={best['backend']}")
    return 0


def interruptible(main, argv=None):
    """main(argv) with Ctrl-C, SIGTERM and SIGHUP raising KeyboardInterrupt -> exit status.

    Under common.run_main that is one line and status 130, and on the way out a measuring
    process still running is stopped and waited for (run_captured). A signal whose
    KeyboardInterrupt was lost (raised where Python only prints "Exception ignored") still
    counts: such a run did not finish as asked. ratios.py runs its main this way too.
    """
    common = lessons_common()
    signals = common.install_interrupt_handlers()
    try:
        status = main(argv)
        if status == 0 and signals["received"]:  # not a success: it was asked to stop
            raise KeyboardInterrupt(signal.Signals(signals["received"][0]).name)
        return status
    finally:
        common.restore_interrupt_handlers(signals)


def main_interruptible(argv=None):
    """main, as interruptible runs it."""
    return interruptible(main, argv)


if __name__ == "__main__":
    if "--backend" in sys.argv[1:]:  # a process measuring one backend: no torch imported here
        sys.exit(main())
    # The whole measurement: Ctrl-C, SIGTERM or a closed pipe end in one line, and a
    # measuring process still running is stopped with it. torch loads first (common.py),
    # under the early handler.
    run_main = lessons_common().run_main
    _phase[0] = "running"
    status = run_main(main_interruptible)
    early_signals.finish(_phase)
    sys.exit(status)
