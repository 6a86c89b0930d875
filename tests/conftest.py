"""Fixtures shared by the tests: the lessons as modules, and the real MNIST when asked for."""

import importlib
import importlib.util
from pathlib import Path

import pytest
import torch

import common


def load_lesson(name):
    """Import a lesson whose file name starts with a digit, e.g. load_lesson("02_mlp_forward")."""
    return importlib.import_module(name)


def load_benchmark(name):
    """Import benchmarks/<name>.py by its path (benchmarks/ is not a package)."""
    path = Path(__file__).resolve().parent.parent / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def mnist():
    """The real MNIST on the CPU (fetched into data/ on first use)."""
    return common.load_mnist()


@pytest.fixture(params=["cpu", "cuda"])
def device(request):
    """Each device test runs on the CPU and, where a GPU is present, on CUDA."""
    if request.param == "cuda" and not torch.cuda.is_available():
        pytest.skip("CUDA is not available on this machine (torch.cuda.is_available() is False)")
    return torch.device(request.param)
