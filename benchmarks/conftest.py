"""Fixtures for the benchmarks: devices, the machine's measured matmul peak, the JAX worker.

    python -m pytest benchmarks                    # every device present (cpu, cuda, mps)
    python -m pytest benchmarks --device mps       # one device (auto: cuda, else mps, else cpu)
"""

import peak as peak_module
import pytest
import torch
from contenders import JaxWorker, Skip, seconds_from_env

DEVICES = ("cpu", "cuda", "mps")


def pytest_addoption(parser):
    parser.addoption("--device", default="all",
                     help="benchmark devices: all (default; absent ones are skipped with the "
                          "reason), auto (cuda, else mps, else cpu), or a comma list of "
                          "cpu, cuda, mps")


def pytest_configure(config):
    try:
        seconds_from_env("BENCH_MAX_TIME", 2.0)  # read by the benchmarks as they are collected
    except ValueError as err:
        raise pytest.UsageError(str(err)) from None


def mps_available():
    return hasattr(torch.backends, "mps") and torch.backends.mps.is_available()


def chosen_devices(option):
    """--device's value -> the device names to parametrize over."""
    if option == "all":
        return list(DEVICES)
    if option == "auto":
        return ["cuda" if torch.cuda.is_available() else "mps" if mps_available() else "cpu"]
    names = [name.strip() for name in option.split(",") if name.strip()]
    unknown = [n for n in names if n.split(":")[0] not in DEVICES]
    if unknown or not names:
        raise pytest.UsageError(f"--device {option!r}: use all, auto, or a comma list of "
                                f"{', '.join(DEVICES)}")
    return names


def pytest_generate_tests(metafunc):
    if "device" in metafunc.fixturenames:
        metafunc.parametrize("device", chosen_devices(metafunc.config.getoption("--device")),
                             indirect=True)


def absent_reason(name):
    """Why the device name cannot run here, or None when it can."""
    kind = name.split(":")[0]
    if kind == "cuda" and not torch.cuda.is_available():
        return ("no CUDA GPU here (torch.cuda.is_available() is False): the same code runs "
                "on one unchanged")
    if kind == "mps" and not mps_available():
        return ("no Apple MPS device here (torch.backends.mps.is_available() is False): "
                "the same code runs on one unchanged")
    return None


@pytest.fixture
def device(request):
    reason = absent_reason(request.param)
    if reason:
        pytest.skip(reason)
    return torch.device(request.param)


@pytest.fixture(scope="session")
def matmul_peak():
    """device -> the machine's measured float32 matmul peak there (benchmarks/peak.py's), once.

    {"peak_gflops", "peak_backend", "peak_n", "torch_matmul_gflops", "backends"}: every
    backend present on that device (numpy and JAX in processes of their own), the fastest
    named; torch's own matmul kept beside it.
    """
    measured = {}

    def peak(device):
        key = str(device)
        if key not in measured:
            measured[key] = peak_module.summary(peak_module.measure_all(key))
        return measured[key]

    return peak


@pytest.fixture(scope="session")
def jax_worker():
    """A jax_step.py worker process for the session, or the reason there is none."""
    try:
        worker = JaxWorker()
    except Skip as err:
        yield str(err)
        return
    yield worker
    worker.close()
