"""The machine's measured float32 matmul peak: the fastest large matmul of every backend here.

    python benchmarks/peak.py                  # torch, numpy's BLAS and JAX (if installed), CPU
    python benchmarks/peak.py --device cuda    # torch and JAX on the GPU

Each backend multiplies square float32 matrices, (n, n) @ (n, n) = 2 n^3 FLOPs, and keeps its
best rate over a few sizes and repeats (the least disturbed by others on a shared machine), in
a process of its own (two thread pools in one process slow each other down). numpy's process
runs without OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE, which pin OpenBLAS to older kernels where
they are set; its line says so. The fastest backend is the machine's peak, by which "% of peak"
in the benchmark tables divides.
"""

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PINNING = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def products(backend, device):
    """-> (make(n): a function doing one float32 (n, n) @ (n, n) product and waiting for it,
    the backend in words). Imported here: each backend runs in its own process."""
    if backend == "torch":
        import torch

        sys.path.insert(0, os.path.dirname(HERE))
        from common import sync

        dev = torch.device(device)

        def make(n):
            a, b = torch.rand(n, n, device=dev), torch.rand(n, n, device=dev)
            return lambda: (a @ b, sync(dev))
        return make, f"torch {torch.__version__}, {torch.get_num_threads()} threads"
    if backend == "numpy":
        import numpy as np

        def make(n):
            a, b = (np.random.default_rng(0).random((n, n), dtype=np.float32) for _ in range(2))
            return lambda: a @ b
        return make, f"numpy {np.__version__}"
    sys.path.insert(0, HERE)
    import jax
    from jax_step import use_platform

    platform = "cpu" if device == "cpu" else "gpu"
    where, product = use_platform(jax, platform), jax.jit(lambda a, b: a @ b)

    def make(n):
        a, b = (jax.device_put(jax.random.uniform(jax.random.PRNGKey(k), (n, n)), where)
                for k in (0, 1))
        return lambda: product(a, b).block_until_ready()
    return make, f"jax {jax.__version__} (XLA), {platform}"


def measure(backend, device, repeats):
    """The best rate of one backend over a few sizes and repeats, in this process
    -> {"backend", "gflops", "n", "detail"}."""
    make, detail = products(backend, device)
    best = {"backend": backend, "gflops": 0.0, "n": None, "detail": detail}
    for n in (1024, 2048) if device == "cpu" else (4096, 8192):
        once = make(n)
        once(), once()  # warm up: thread pools, caches, compilation
        for _ in range(repeats):
            start = time.perf_counter()
            once()
            gflops = 2 * n**3 / (time.perf_counter() - start) / 1e9
            if gflops > best["gflops"]:
                best.update(gflops=gflops, n=n)
    return best


def run_backend(backend, device="cpu", repeats=20, timeout=300):
    """Measure one backend in a process of its own -> its measurement, or {"skipped": reason}."""
    env = dict(os.environ)
    unset = {k: env.pop(k) for k in PINNING if k in env and backend == "numpy"}
    if backend == "jax" and env.get("BENCH_NO_JAX", "") not in ("", "0"):
        return {"backend": backend, "skipped": "BENCH_NO_JAX is set"}
    command = [sys.executable, __file__, "--backend", backend, "--device", device,
               "--repeats", str(repeats)]
    try:
        done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"backend": backend, "skipped": f"no answer within {timeout} s"}
    if done.returncode != 0:
        return {"backend": backend, "skipped": (done.stderr.strip().splitlines() or ["?"])[-1]}
    result = json.loads(done.stdout.splitlines()[-1])
    result["detail"] += f"; run without {', '.join(unset)}" if unset else ""
    return result


def measure_all(device="cpu", repeats=20):
    """Every backend on device (numpy only on a CPU, JAX on a CPU or CUDA) -> [measurements]."""
    kind = device.split(":")[0]
    backends = ["torch"] + ["numpy"] * (kind == "cpu") + ["jax"] * (kind in ("cpu", "cuda"))
    return [run_backend(b, device, repeats) for b in backends]


def summary(results):
    """-> {"peak_gflops", "peak_backend", "peak_n", "torch_matmul_gflops", "peak_backends"}."""
    measured = [r for r in results if "skipped" not in r]
    if not measured:
        raise ValueError("no backend could be measured: " + "; ".join(
            f"{r['backend']}: {r['skipped']}" for r in results))
    best = max(measured, key=lambda r: r["gflops"])
    rates = {r["backend"]: r.get("gflops") for r in results}
    return {"peak_gflops": best["gflops"], "peak_backend": best["backend"], "peak_n": best["n"],
            "torch_matmul_gflops": rates.get("torch"), "peak_backends": rates}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N or mps")
    parser.add_argument("--repeats", type=int, default=20, help="products per size (default 20)")
    parser.add_argument("--backend", choices=("torch", "numpy", "jax"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.backend:  # one measuring process: one JSON line
        print(json.dumps(measure(args.backend, args.device, args.repeats)))
        return 0
    results = measure_all(args.device, args.repeats)
    for r in results:
        if "skipped" in r:
            print(f"{r['backend']:<6} skipped: {r['skipped']}")
            continue
        print(f"{r['backend']:<6} {r['gflops']:7.1f} GFLOP/s ({r['n']}x{r['n']} float32; "
              f"{r['detail']})")
    try:
        peak = summary(results)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"result: peak_gflops={peak['peak_gflops']:.1f} backend={peak['peak_backend']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
