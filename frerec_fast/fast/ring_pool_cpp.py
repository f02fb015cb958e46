"""Ring/sector pooling of FESA (SPEC 5) through the C++ CPU extension (``csrc/cpu/ring_pool.cpp``).

Same three ops and signatures as ``frerec_fast/kernels/ring_pool.py`` (the Triton
version, whose docstring describes the maths): ``ring_pool``, ``ring_scatter`` and the
fused ``ring_pool_amplitude``, each an ``autograd.Function``. On CPU the torch reference
of the fused op writes the ``[B, C, H, Wh]`` amplitude (in four elementwise passes: the
squares, the where, the sqrt, the where) and the ``[B, H, Wh]`` channel mean before it
pools; here one OpenMP pass reads the spectrum once, through its strides (the ``.real`` /
``.imag`` views of a complex rfft2 output need no copy), and writes only ``[B, n_bins]``.

Deterministic, and independent of the thread count: pooling splits each image into
blocks of whole rows (a partition fixed by the shape), each block sums its positions in
ascending order into private double bins, and each image adds its blocks in order. The
scatter and the backward passes are gathers. Results are bit-identical run to run.

Dtypes: float32 and float64 run natively (float64 for gradcheck; sums are accumulated in
double either way); float16/bfloat16 are computed in float32 and cast back. The bin map
is passed as the host plan of ``fast/ring_plan.py`` (int32 index and offsets, cached per
map; it also checks the map's range once).
"""
from __future__ import annotations

import torch

from .. import _ext
from .ring_plan import (RingPlan, check_pool, check_pool_amplitude, check_scatter, native,
                        ring_autograd, ring_plan)


def _check_cpu(t: torch.Tensor, name: str) -> None:
    if t.device.type != "cpu":
        raise ValueError(f"{name}: the cpp backend needs CPU tensors, got {t.device} "
                         f"(use backend='cuda' or 'triton' on a GPU)")


def _pool(re: torch.Tensor, im: torch.Tensor, plan: RingPlan, amplitude: bool,
          mean: bool) -> torch.Tensor:
    """re, im: [B, C, H, Wh] float32/float64 CPU, any strides. Returns: [B, n_bins]."""
    return _ext.ext().ring_pool_cpu(re, im, plan.index, plan.offsets, plan.n_bins, amplitude,
                                    mean)


def _scatter(values: torch.Tensor, plan: RingPlan, div_count: bool) -> torch.Tensor:
    """values: [B, n_bins] float32/float64 CPU. Returns: [B, H, Wh]."""
    return _ext.ext().ring_scatter_cpu(values.contiguous(), plan.index, plan.offsets, plan.h,
                                       plan.wh, div_count)


def _amplitude_bwd(grad: torch.Tensor, re: torch.Tensor, im: torch.Tensor, plan: RingPlan):
    """grad: [B, n_bins]; re, im: [B, C, H, Wh] CPU (same dtype). Returns g_re, g_im."""
    return _ext.ext().ring_pool_amplitude_bwd_cpu(grad.contiguous(), re, im, plan.index,
                                                  plan.offsets)


_RingPool, _RingScatter, _RingPoolAmplitude = ring_autograd(_pool, _scatter, _amplitude_bwd)

def _grad_wanted(*tensors: torch.Tensor) -> bool:
    """Whether autograd must see the op; if not, the kernels are called directly (the
    autograd.Function costs several microseconds, as much as a small scatter)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def ring_pool(amplitude: torch.Tensor, index_map: torch.Tensor, n_bins: int) -> torch.Tensor:
    """See ``frerec_fast.model.ring_pool``. amplitude: [B, H, Wh] CPU -> [B, n_bins]."""
    check_pool(amplitude, index_map)
    _check_cpu(amplitude, "ring_pool")
    plan = ring_plan(index_map, n_bins)
    if _grad_wanted(amplitude):
        return _RingPool.apply(amplitude, plan)
    a4 = native(amplitude).unsqueeze(1)
    return _pool(a4, a4, plan, amplitude=False, mean=True).to(amplitude.dtype)


def ring_scatter(values: torch.Tensor, index_map: torch.Tensor) -> torch.Tensor:
    """See ``frerec_fast.model.ring_scatter``. values: [B, n_bins] CPU -> [B, H, Wh]."""
    check_scatter(values, index_map)
    _check_cpu(values, "ring_scatter")
    plan = ring_plan(index_map, values.shape[1])
    if _grad_wanted(values):
        return _RingScatter.apply(values, plan)
    return _scatter(native(values), plan, div_count=False).to(values.dtype)


def ring_pool_amplitude(re: torch.Tensor, im: torch.Tensor, index_map: torch.Tensor,
                        n_bins: int) -> torch.Tensor:
    """``ring_pool(|re + i im|.mean(1), index_map, n_bins)`` in one pass (C++ CPU).

    re, im: [B, C, H, Wh] real CPU (e.g. ``X.real``, ``X.imag`` of an rfft2 output; any
    strides); index_map: [H, Wh] int64. Returns: [B, n_bins], re's dtype. Differentiable
    in re and im (gradient 0 where X = 0).
    """
    check_pool_amplitude(re, im, index_map)
    _check_cpu(re, "ring_pool_amplitude")
    plan = ring_plan(index_map, n_bins)
    if _grad_wanted(re, im):
        return _RingPoolAmplitude.apply(re, im, plan)
    return _pool(native(re), native(im), plan, amplitude=True, mean=True).to(re.dtype)
