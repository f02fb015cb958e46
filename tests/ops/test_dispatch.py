"""Dispatch, across every op and backend: the reasons the op files skip with (a backend
of the other device type, a missing implementation), explicit requests that never fall
back, ``auto`` on CPU, and a backend's own functions refusing tensors of the wrong device
with a message that names the backends that run there. Needs no GPU."""
import pytest
import torch

import frerec_fast as ff
from frerec_fast import _ext, backends
from ssim_oracles import images

OPS = ("band_stats", "shr", "ssim_matrix", "ssim_topk", "ssim_pairs", "ring_pool",
       "ring_scatter", "ring_pool_amplitude")


@pytest.mark.parametrize("op", OPS)
def test_torch_reference_runs_on_every_device_type(op):
    for dev in ("cpu", "cuda"):
        assert backends.unavailable_reason(op, "torch", dev) is None
    assert "torch" in backends.available(op, "cpu")


@pytest.mark.parametrize("op", OPS)
def test_device_type_of_each_backend_is_named(op):
    # cpp runs on CPU tensors, cuda on CUDA tensors, whatever is installed.
    for backend, wrong in (("cpp", "cuda"), ("cuda", "cpu")):
        why = backends.unavailable_reason(op, backend, wrong)
        assert why is not None
        assert f"not {wrong}" in why or f"no '{backend}' implementation" in why, why
        with pytest.raises(backends.BackendUnavailable, match=backend):
            backends.resolve(op, backend, wrong)


def test_cuda_request_without_gpu_says_so():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: this checks the message on CPU-only machines")
    for op in OPS:
        if op != "ssim_pairs":
            why = backends.unavailable_reason(op, "cuda", "cuda")
            assert why == "no CUDA GPU is visible to torch", why


def test_explicit_backend_never_falls_back():
    db = images(3, 12, 12, 1)
    with pytest.raises(backends.BackendUnavailable, match="runs on cuda tensors"):
        ff.ssim_matrix(db, db, backend="cuda")
    with pytest.raises(backends.BackendUnavailable, match="runs on cuda tensors"):
        ff.ssim_topk(db, db, 1, backend="cuda")
    with pytest.raises(backends.BackendUnavailable, match="runs on cuda tensors"):
        ff.shr(db, torch.zeros(3, 1, 1), torch.zeros(3, 1, 1), torch.zeros(3, 1),
               torch.zeros(3, 1), backend="cuda")


@pytest.mark.parametrize("op", OPS)
def test_auto_on_cpu_is_cpp_else_torch(op):
    # Never the Triton interpreter, however it is set up.
    want = "cpp" if _ext.has_cpp() else "torch"
    assert backends.resolve_name(op, "auto", "cpu") == want
    assert backends.resolve_name(op, "torch", "cpu") == "torch"


@pytest.mark.parametrize("op", ["ssim_matrix", "ssim_topk", "shr", "band_stats", "ring_pool",
                                "ring_scatter", "ring_pool_amplitude"])
def test_cuda_functions_refuse_cpu_tensors(op):
    # Called directly (past the dispatch table), after the shape checks.
    fn = backends.implementations("cuda")[op]
    db = images(3, 12, 12, 1)
    idx = torch.zeros(8, 5, dtype=torch.int64)
    args = {
        "ssim_matrix": (db, db), "ssim_topk": (db, db, 1), "band_stats": (db,),
        "shr": (db, torch.zeros(3, 1, 1), torch.zeros(3, 1, 1), torch.zeros(3, 1),
                torch.zeros(3, 1)),
        "ring_pool": (torch.rand(2, 8, 5), idx, 4), "ring_scatter": (torch.rand(2, 4), idx),
        "ring_pool_amplitude": (torch.rand(1, 2, 8, 5), torch.rand(1, 2, 8, 5), idx, 4),
    }[op]
    with pytest.raises(ValueError, match=r"needs CUDA tensors, got cpu \(use backend='"):
        fn(*args)


def test_cuda_ssim_shape_errors_come_first():
    fn = backends.implementations("cuda")
    with pytest.raises(ValueError, match="at least 11x11"):
        fn["ssim_matrix"](torch.rand(1, 1, 8, 8), torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="one size"):
        fn["ssim_topk"](images(3, 12, 12, 1), torch.rand(2, 1, 13, 12), 1)
