"""Fixtures shared by the tests: the lessons as modules, and the real MNIST when asked for."""

import importlib

import pytest
import torch

import common


def load_lesson(name):
    """Import a lesson whose file name starts with a digit, e.g. load_lesson("02_mlp_forward")."""
    return importlib.import_module(name)


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
