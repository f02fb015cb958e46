"""The one place that maps ``backend=`` names to implementations.

Each op has one torch reference (backend ``"torch"``) and any number of fast
implementations. An implementation is named here by ``"module:function"`` and
imported only when first used, so optional toolchains (Triton, CuPy, CUDA) are
never touched at import time. ``"auto"`` picks, for the tensor's device, the
first available backend in the op's preference order; an explicitly requested
backend that is unavailable raises ``BackendUnavailable`` with the reason and
never falls back silently.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from typing import Callable

import torch

BACKENDS = ("torch", "cpp", "triton", "cuda")


class BackendUnavailable(RuntimeError):
    """A backend was asked for that cannot run here; the message says why."""


@dataclass(frozen=True)
class Impl:
    target: str                 # "module:function", relative to this package
    devices: tuple[str, ...]    # torch device types it accepts


def _triton_reason(device_type: str) -> str | None:
    try:
        importlib.import_module("triton")
    except ImportError:
        return "triton is not installed (pip install triton)"
    if device_type == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        return "Triton kernels run on CPU tensors only under the interpreter (set TRITON_INTERPRET=1)"
    return None


def _cpp_reason(device_type: str) -> str | None:
    from . import _ext
    return None if _ext.has_cpp() else _ext.LOAD_ERROR


def _cuda_reason(device_type: str) -> str | None:
    from . import _ext
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

# op -> backend -> implementation. The torch entry is the op's single reference.
_TABLE: dict[str, dict[str, Impl]] = {
    "shr": {
        "torch": Impl("spectral:shr", ("cpu", "cuda")),
        "cpp": Impl("fast.shr_cpp:shr", ("cpu",)),
        "cuda": Impl("fast.shr_cuda:shr", ("cuda",)),
        "triton": Impl("kernels.shr:shr", ("cpu", "cuda")),
    },
    "band_stats": {
        "torch": Impl("spectral:band_stats", ("cpu", "cuda")),
        "cpp": Impl("fast.shr_cpp:band_stats", ("cpu",)),
        "cuda": Impl("fast.shr_cuda:band_stats", ("cuda",)),
        "triton": Impl("kernels.shr:band_stats", ("cpu", "cuda")),
    },
    "ssim_matrix": {
        "torch": Impl("ssim:ssim_matrix_torch", ("cpu", "cuda")),
        "cpp": Impl("fast.ssim_cpp:ssim_matrix", ("cpu",)),
        "triton": Impl("kernels.ssim_topk:ssim_matrix", ("cpu", "cuda")),
        "cuda": Impl("fast.ssim_cuda:ssim_matrix", ("cuda",)),
    },
    "ssim_pairs": {
        "torch": Impl("prefilter:ssim_pairs_torch", ("cpu", "cuda")),
        "cpp": Impl("fast.ssim_cpp:ssim_pairs", ("cpu",)),
    },
    "ssim_topk": {
        "torch": Impl("ssim:ssim_topk_torch", ("cpu", "cuda")),
        "cpp": Impl("fast.ssim_cpp:ssim_topk", ("cpu",)),
        "triton": Impl("kernels.ssim_topk:ssim_topk", ("cpu", "cuda")),
        "cuda": Impl("fast.ssim_cuda:ssim_topk", ("cuda",)),
    },
    # FESA's polar pooling (SPEC 5). The C++ (CPU), Triton and CUDA versions are
    # atomics-free and deterministic (csrc/cpu/ring_pool.cpp, kernels/ring_pool.py,
    # csrc/cuda/ring_pool.cu); ring_pool_amplitude is the fused |X| + channel mean + pool
    # that FrequencyBranch calls. On CPU, auto takes cpp (benchmarks/test_bench_ring_pool.py).
    "ring_pool": {
        "torch": Impl("model.ring_pool:ring_pool", ("cpu", "cuda")),
        "cpp": Impl("fast.ring_pool_cpp:ring_pool", ("cpu",)),
        "cuda": Impl("fast.ring_pool_cuda:ring_pool", ("cuda",)),
        "triton": Impl("kernels.ring_pool:ring_pool", ("cpu", "cuda")),
    },
    "ring_scatter": {
        "torch": Impl("model.ring_pool:ring_scatter", ("cpu", "cuda")),
        "cpp": Impl("fast.ring_pool_cpp:ring_scatter", ("cpu",)),
        "cuda": Impl("fast.ring_pool_cuda:ring_scatter", ("cuda",)),
        "triton": Impl("kernels.ring_pool:ring_scatter", ("cpu", "cuda")),
    },
    "ring_pool_amplitude": {
        "torch": Impl("model.fesa:ring_pool_amplitude", ("cpu", "cuda")),
        "cpp": Impl("fast.ring_pool_cpp:ring_pool_amplitude", ("cpu",)),
        "cuda": Impl("fast.ring_pool_cuda:ring_pool_amplitude", ("cuda",)),
        "triton": Impl("kernels.ring_pool:ring_pool_amplitude", ("cpu", "cuda")),
    },
}

# What "auto" tries, in order, per device type. Triton on CPU (the interpreter) is
# a correctness tool, far slower than torch, so auto never picks it there.
_AUTO_ORDER = {"cpu": ("cpp", "torch"), "cuda": ("cuda", "triton", "torch")}


def _load(impl: Impl) -> Callable:
    mod, fn = impl.target.split(":")
    return getattr(importlib.import_module(f"{__package__}.{mod}"), fn)


def unavailable_reason(op: str, backend: str, device_type: str = "cpu") -> str | None:
    """None if ``backend`` can run ``op`` on ``device_type`` here, else why not."""
    if op not in _TABLE:
        raise KeyError(f"unknown op {op!r}; known: {sorted(_TABLE)}")
    if backend not in BACKENDS:
        return f"unknown backend {backend!r}; choose one of {('auto',) + BACKENDS}"
    impl = _TABLE[op].get(backend)
    if impl is None:
        have = ", ".join(sorted(_TABLE[op]))
        return f"op {op!r} has no {backend!r} implementation (available: {have})"
    if device_type not in impl.devices:
        return (f"backend {backend!r} of op {op!r} runs on {'/'.join(impl.devices)} tensors, "
                f"not {device_type}")
    return _REASONS[backend](device_type)


def available(op: str, device_type: str = "cpu") -> list[str]:
    """Backends that can run ``op`` on ``device_type`` here, in table order."""
    return [b for b in _TABLE[op] if unavailable_reason(op, b, device_type) is None]


def resolve_name(op: str, backend: str, device: torch.device | str) -> str:
    """The concrete backend name that ``backend`` (possibly ``"auto"``) means here."""
    device_type = torch.device(device).type
    if backend == "auto":
        for cand in _AUTO_ORDER.get(device_type, ("torch",)):
            if cand in _TABLE[op] and unavailable_reason(op, cand, device_type) is None:
                return cand
        raise BackendUnavailable(f"no backend of op {op!r} runs on {device_type} tensors")
    why = unavailable_reason(op, backend, device_type)
    if why is not None:
        raise BackendUnavailable(f"backend {backend!r} for {op}: {why}")
    return backend


def resolve(op: str, backend: str, device: torch.device | str) -> Callable:
    """The implementation of ``op`` for ``backend`` on ``device``."""
    return _load(_TABLE[op][resolve_name(op, backend, device)])
