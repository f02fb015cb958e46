"""Shared fixtures and options: --device selects where device-aware tests run."""
import os

import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors through the interpreter. The flag
# is read when a kernel module is imported, so it is set before any test imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda"),
                     help="device for device-aware tests (cuda needs a GPU)")


@pytest.fixture
def device(request):
    dev = request.config.getoption("--device")
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device=cuda given but no CUDA GPU is visible to torch")
    return torch.device(dev)
