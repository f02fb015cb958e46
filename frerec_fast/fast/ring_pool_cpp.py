"""Ring/sector pooling of FESA (method §5) through the C++ CPU extension (``csrc/cpu/ring_pool.cpp``).

Same three ops and signatures as the reference (``frerec_fast/reference/rings.py``):
``ring_pool``, ``ring_scatter`` and the fused ``ring_pool_amplitude``, registered as
``torch.library`` custom ops ``frerec::ring_*_cpp`` with autograd (``ring_plan.py``). On CPU the torch reference
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
from .registration import check_cpu, register_ring_ops
from .ring_plan import RingPlan


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


ring_pool, ring_scatter, ring_pool_amplitude = register_ring_ops(
    "cpp", ("cpu",), _pool, _scatter, _amplitude_bwd, check_cpu)

OPS = {"ring_pool": ring_pool, "ring_scatter": ring_scatter,
       "ring_pool_amplitude": ring_pool_amplitude}
