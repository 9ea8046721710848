"""pytest set-up: the in-tree package (python/) on the path; `gpu` tests skip without CUDA;
the `fw` fixture runs a test on numpy arrays and on torch tensors (skipped without torch)."""
import importlib.util
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "python"))


def cuda_available():
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if cuda_available():
        return
    skip = pytest.mark.skip(reason="no CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(params=["numpy", pytest.param("torch", marks=pytest.mark.skipif(
    importlib.util.find_spec("torch") is None, reason="torch not installed"))])
def fw(request):
    """The framework of a test's arrays: "numpy" or "torch"."""
    return request.param
