"""Fixtures for the benchmarks: devices, the machine's measured matmul peak, the JAX worker.

    python -m pytest benchmarks                    # every device (absent ones skipped, with why)
    python -m pytest benchmarks -k cuda            # one device
"""

import functools

import peak as peak_module
import pytest
import torch
from contenders import JaxWorker, Skip, common


def pytest_configure(config):
    common.keep_freed_memory()  # as lesson 04 does before it trains


@pytest.fixture(params=["cpu", "cuda", "mps"])
def device(request):
    kind = request.param
    if kind == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU here (torch.cuda.is_available() is False); the same code runs "
                    "on one unchanged")
    if kind == "mps" and not torch.backends.mps.is_available():
        pytest.skip("no Apple MPS device here; the same code runs on one unchanged")
    return torch.device(request.param)


@pytest.fixture(scope="session")
def matmul_peak():
    """device -> the machine's measured float32 matmul peak there (peak.py's summary), once."""
    return functools.cache(lambda device: peak_module.summary(peak_module.measure_all(str(device))))


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
