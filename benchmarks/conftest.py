"""Fixtures for the benchmarks: devices, and each device's measured matmul peak."""

import time

import pytest
import torch


def sync(device):
    """Wait for queued GPU work; nothing to wait for on a CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_matmul_peak(device, sizes=None, repeats=10):
    """Best GFLOP/s of square float32 matmuls (n, n) @ (n, n) on device: 2 n^3 FLOPs each.

    The ceiling the MLP kernels are measured against, since they are float32 matmuls too.
    The best of several sizes and repeats, so that a noisy moment does not lower it.
    """
    sizes = sizes or ((4096, 8192) if device.type == "cuda" else (1024, 2048))
    best = {"gflops": 0.0, "n": None}
    for n in sizes:
        a, b = torch.rand(n, n, device=device), torch.rand(n, n, device=device)
        for _ in range(2):
            a @ b  # warm up: thread pools, cuBLAS handles, caches
        for _ in range(repeats):
            sync(device)
            start = time.perf_counter()
            a @ b
            sync(device)
            gflops = 2 * n**3 / (time.perf_counter() - start) / 1e9
            if gflops > best["gflops"]:
                best = {"gflops": gflops, "n": n}
    return best


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here (torch.cuda.is_available() is False): the same code runs "
                    "on one unchanged")
    return torch.device(request.param)


@pytest.fixture(scope="session")
def matmul_peak():
    """device -> its measured float32 matmul peak, measured once per pytest run."""
    measured = {}

    def peak(device):
        if device not in measured:
            measured[device] = measure_matmul_peak(device)
        return measured[device]

    return peak
