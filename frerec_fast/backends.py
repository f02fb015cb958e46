"""The one place that maps ``backend=`` names to implementations.

Each op has one torch reference (backend ``"torch"``, ``frerec_fast.reference``) and
fast implementations registered as ``torch.library`` custom ops by their backend's
modules (``fast/registration.py``). A backend's modules are imported the first time one
of its ops is asked for, so optional toolchains (Triton, CuPy, CUDA) are never touched
at import time. ``"auto"`` picks, for the tensor's device, the first available backend
in the op's preference order; an explicitly requested backend that is unavailable
raises ``BackendUnavailable`` with the reason and never falls back silently.
"""
from __future__ import annotations

import functools
import importlib
import os
from typing import Callable

import torch

from . import _ext, reference
from .errors import BackendUnavailable

__all__ = ["BACKENDS", "BackendUnavailable", "available", "implementations", "resolve",
           "resolve_name", "unavailable_reason"]

BACKENDS = ("torch", "cpp", "triton", "cuda")
OPS = tuple(reference.OPS)

_RING = ("ring_pool", "ring_scatter", "ring_pool_amplitude")
# What each backend implements (checked against its modules' OPS by a test), and the
# torch device types it accepts.
_COVERAGE: dict[str, tuple[str, ...]] = {
    "torch": OPS,
    "cpp": ("shr", "band_stats", "ssim_matrix", "ssim_pairs", "ssim_topk") + _RING,
    "triton": ("shr", "band_stats", "ssim_matrix", "ssim_topk") + _RING,
    "cuda": ("shr", "band_stats", "ssim_matrix", "ssim_topk") + _RING,
}
_DEVICES = {"torch": ("cpu", "cuda"), "cpp": ("cpu",), "triton": ("cpu", "cuda"),
            "cuda": ("cuda",)}

# What "auto" tries, in order, per device type. Triton on CPU (the interpreter) is
# a correctness tool, far slower than torch, so auto never picks it there.
_AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("cuda", "triton", "torch")}


def _triton_reason(device_type: str) -> str | None:
    try:
        importlib.import_module("triton")
    except ImportError:
        return "triton is not installed (pip install triton)"
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton kernels run on CPU tensors only under the interpreter (set TRITON_INTERPRET=1)"
    return None


def _cpp_reason(device_type: str) -> str | None:
    return None if _ext.has_cpp() else _ext.LOAD_ERROR


def _cuda_reason(device_type: str) -> str | None:
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible to torch"
    if _ext.has_cuda_ext():
        return None
    try:
        importlib.import_module("cupy")
    except ImportError:
        return ("the CUDA kernels are not built into frerec_fast._C and CuPy is not installed "
                "(install a CUDA torch and nvcc and reinstall, or pip install cupy-cuda12x)")
    return None


_REASONS: dict[str, Callable[[str], str | None]] = {
    "torch": lambda device_type: None,
    "cpp": _cpp_reason,
    "triton": _triton_reason,
    "cuda": _cuda_reason,
}


def _torch_ops() -> dict[str, Callable]:
    return dict(reference.OPS)


def _cpp_ops() -> dict[str, Callable]:
    from .fast import ring_pool_cpp, shr_cpp, ssim_cpp
    return {**shr_cpp.OPS, **ssim_cpp.OPS, **ring_pool_cpp.OPS}


def _triton_ops() -> dict[str, Callable]:
    from .kernels import ring_pool, shr, ssim_topk
    return {**shr.OPS, **ssim_topk.OPS, **ring_pool.OPS}


def _cuda_ops() -> dict[str, Callable]:
    from .fast import ring_pool_cuda, shr_cuda, ssim_cuda
    return {**shr_cuda.OPS, **ssim_cuda.OPS, **ring_pool_cuda.OPS}


_PROVIDERS: dict[str, Callable[[], dict[str, Callable]]] = {
    "torch": _torch_ops, "cpp": _cpp_ops, "triton": _triton_ops, "cuda": _cuda_ops}


@functools.lru_cache(maxsize=None)
def implementations(backend: str) -> dict[str, Callable]:
    """op name -> public function of ``backend`` (imports its modules, which register
    their custom ops). Raises ImportError when the backend's toolchain is missing."""
    return _PROVIDERS[backend]()


def unavailable_reason(op: str, backend: str, device_type: str = "cpu") -> str | None:
    """None if ``backend`` can run ``op`` on ``device_type`` here, else why not."""
    if op not in OPS:
        raise KeyError(f"unknown op {op!r}; known: {sorted(OPS)}")
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; choose one of {('auto',) + BACKENDS}"
    if op not in _COVERAGE[backend]:
        have = ", ".join(sorted(b for b in BACKENDS if op in _COVERAGE[b]))
        return f"op {op!r} has no {backend!r} implementation (available: {have})"
    if device_type not in _DEVICES[backend]:
        return (f"backend {backend!r} of op {op!r} runs on {'/'.join(_DEVICES[backend])} "
                f"tensors, not {device_type}")
    return _REASONS[backend](device_type)


def available(op: str, device_type: str = "cpu") -> list[str]:
    """Backends that can run ``op`` on ``device_type`` here, in ``BACKENDS`` order."""
    return [b for b in BACKENDS if unavailable_reason(op, b, device_type) is None]


def resolve_name(op: str, backend: str, device: torch.device | str) -> str:
    """The concrete backend name that ``backend`` (possibly ``"auto"``) means here."""
    device_type = torch.device(device).type
    if backend == "auto":
        for cand in _AUTO_ORDER.get(device_type, ("torch",)):
            if unavailable_reason(op, cand, device_type) is None:
                return cand
        raise BackendUnavailable(f"no backend of op {op!r} runs on {device_type} tensors")
    why = unavailable_reason(op, backend, device_type)
    if why is not None:
        raise BackendUnavailable(f"backend {backend!r} for {op}: {why}")
    return backend


def resolve(op: str, backend: str, device: torch.device | str) -> Callable:
    """The implementation of ``op`` for ``backend`` on ``device``."""
    return implementations(resolve_name(op, backend, device))[op]
