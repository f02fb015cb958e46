"""The dispatch module: auto choice, clear errors, no silent fallback."""
import pytest
import torch

import frerec_fast as ff
from frerec_fast import backends
from marks import needs_cpp


def test_unknown_and_unavailable_backends_raise_clearly(monkeypatch):
    x = torch.rand(1, 1, 8, 8)
    with pytest.raises(ff.BackendUnavailable, match="unknown backend 'fast'"):
        ff.band_stats(x, backend="fast")
    with pytest.raises(ff.BackendUnavailable, match="runs on cuda tensors"):
        ff.band_stats(x, backend="cuda")
    with pytest.raises(ff.BackendUnavailable, match="runs on cuda tensors"):
        ff.ssim_matrix(torch.rand(1, 1, 16, 16), torch.rand(2, 1, 16, 16), backend="cuda")
    # An op with no implementation of a backend says so (ssim_pairs has torch and cpp only).
    with pytest.raises(ff.BackendUnavailable, match="no 'cuda' implementation"):
        backends.resolve("ssim_pairs", "cuda", torch.device("cpu"))


def test_triton_on_cpu_needs_interpreter(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    why = backends.unavailable_reason("shr", "triton", "cpu")
    assert why is not None and ("TRITON_INTERPRET" in why or "not installed" in why)


@needs_cpp
def test_auto_prefers_cpp_on_cpu():
    assert backends.resolve_name("shr", "auto", "cpu") == "cpp"
    assert backends.resolve_name("ssim_topk", "auto", "cpu") == "cpp"
    assert "cpp" in backends.available("band_stats", "cpu")


def test_cuda_request_without_gpu_is_explained():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: this checks the message on CPU-only machines")
    assert "no CUDA GPU" in backends.unavailable_reason("shr", "cuda", "cuda")
