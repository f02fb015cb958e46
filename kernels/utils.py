"""Helpers shared by the Triton kernel modules: block-size constants read from the
environment, and the check that a tensor can be handed to a Triton kernel here.

Block sizes are ``FREREC_TRITON_*`` environment variables read once at import, so a
GPU run can sweep them without code changes (``FREREC_TRITON_SHR_BLOCK=2048 pytest
benchmarks/...``). Each must be a power of two, because ``tl.arange`` needs one.
"""
from __future__ import annotations

import os

import torch


def env_pow2(name: str, default: int, lo: int = 1, hi: int = 1 << 16) -> int:
    """A power-of-two block size from environment variable ``name`` (else ``default``).

    Raises ValueError naming the variable when it is not a power of two in [lo, hi].
    """
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        val = int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None
    if val < lo or val > hi or val & (val - 1):
        raise ValueError(f"{name}={val} must be a power of two in [{lo}, {hi}]")
    return val


def next_pow2(n: int) -> int:
    """Smallest power of two >= max(n, 1)."""
    return 1 << max(int(n) - 1, 0).bit_length()


def pick_block(n: int, cap: int, floor: int = 1) -> int:
    """A power-of-two block covering ``n`` items but at most ``cap`` and at least
    ``floor``: small problems (and the CPU interpreter, whose cost grows with the
    block) do not pay for a block far larger than the data."""
    return max(floor, min(cap, next_pow2(n)))


def check_triton_device(*tensors: torch.Tensor) -> None:
    """Triton kernels run on CUDA tensors, or on CPU tensors under TRITON_INTERPRET=1.

    Raises RuntimeError with the fix when neither holds (the dispatch table checks the
    same, but these functions are also called directly).
    """
    for t in tensors:
        if t.device.type == "cuda":
            continue
        if t.device.type == "cpu" and os.environ.get("TRITON_INTERPRET") == "1":
            continue
        raise RuntimeError(
            f"Triton kernels need CUDA tensors, or CPU tensors with TRITON_INTERPRET=1 set "
            f"before triton is imported; got a {t.device.type} tensor")
