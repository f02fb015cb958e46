"""Ring/sector pooling of FESA's frequency branch (method §5) as Triton kernels.

Three ops, registered as ``torch.library`` custom ops ``frerec::ring_*_triton`` with
autograd (so training and ``torch.compile`` can use them; ``fast/ring_plan.py``), behind
functions with the reference's signatures (``frerec_fast/reference/rings.py``):

- ``ring_pool(amplitude [B, H, Wh], index_map [H, Wh], n_bins) -> [B, n_bins]``: mean
  per bin (empty bins 0). Backward: ``grad_amp[b, p] = grad[b, bin(p)] / count(bin(p))``,
  a scatter.
- ``ring_scatter(values [B, n_bins], index_map) -> [B, H, Wh]``: each frequency takes its
  bin's value. Backward: ``grad_values[b, k] = sum of grad over bin k``, a pool-sum.
- ``ring_pool_amplitude(re, im [B, C, H, Wh], index_map, n_bins) -> [B, n_bins]``: the
  fused form FESA uses, equal to ``ring_pool(|re + i im|.mean(1), index_map, n_bins)``.
  ``|X|`` and the channel mean are computed inside the pooling pass, so the
  ``[B, C, H, Wh]`` amplitude and the ``[B, H, Wh]`` mean are never written: the spectrum
  is read once and only ``[B, n_bins]`` is written. ``re`` and ``im`` are read through
  their strides, so the ``.real`` / ``.imag`` views of a complex rfft2 output need no
  copy. Backward: ``grad_re = grad[b, bin] / (C count) * re / |X|`` (0 where X = 0, as
  ``reference.rings.amplitude`` defines it), likewise ``grad_im``; one elementwise pass.

Determinism (no atomics anywhere). The host builds, once per index map, its CSR form
(``frerec_fast/fast/ring_plan.py``: positions sorted by bin, and bin offsets). The pool
kernel's grid is (image, block of ``BINS`` consecutive bins); a program holds a
``[BINS, LANES]`` tile, walks the positions of its bins in chunks of ``LANES`` (up to the
largest count in the block) and, per position, over the channels; each lane
accumulates in a fixed order and ``tl.sum`` reduces the lanes with a fixed tree. Every
sum is thus computed by one program in one order: results are bit-identical run to run
(and the backward passes are gathers, deterministic by construction).

Precision: the launchers get float32 or float64 tensors (float64 accumulates in float64,
so gradcheck works); float16/bfloat16 inputs are computed in float32 and cast back by the
registered op (``fast/registration.py``), as in the C++ and CUDA backends.

Block sizes (environment variables, powers of two, read at import):

- ``FREREC_TRITON_RING_BINS`` (default 8): bins per pooling program.
- ``FREREC_TRITON_RING_LANES`` (default 32): positions per bin per step; clipped to the
  largest bin (next power of two), so tiny maps do not pay for empty lanes.
- ``FREREC_TRITON_RING_WARPS`` (default 4): warps per pooling program.
- ``FREREC_TRITON_RING_SCATTER_BLOCK`` (default 1024) and ``..._SCATTER_WARPS`` (4):
  positions per program of the scatter and backward kernels.

GPU performance notes (not measurable in the CPU interpreter): consecutive bins are
one sector's rings, whose counts grow with the radius, so a ``[BINS, LANES]`` tile runs
partly masked (about half, for the default 16 x 32 polar grid); channels, looped inside
each program, reuse one gathered address computation. Positions are gathered, but
inside a bin they ascend, so a ring's arc is read as short contiguous row runs, and a
whole ``[C, H, Wh]`` spectrum of one image (at most a few MiB) stays in L2 while the
programs of that image run.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from frerec_fast.fast.registration import register_ring_ops
from frerec_fast.fast.ring_plan import RingPlan
from .utils import check_triton_device, env_pow2, pick_block

FREREC_TRITON_RING_BINS = env_pow2("FREREC_TRITON_RING_BINS", 8, hi=1024)
FREREC_TRITON_RING_LANES = env_pow2("FREREC_TRITON_RING_LANES", 32, hi=4096)
FREREC_TRITON_RING_WARPS = env_pow2("FREREC_TRITON_RING_WARPS", 4, hi=32)
FREREC_TRITON_RING_SCATTER_BLOCK = env_pow2("FREREC_TRITON_RING_SCATTER_BLOCK", 1024, lo=16)
FREREC_TRITON_RING_SCATTER_WARPS = env_pow2("FREREC_TRITON_RING_SCATTER_WARPS", 4, hi=32)


@triton.jit
def _pool_kernel(re_ptr, im_ptr, order_ptr, offsets_ptr, out_ptr,
                 n_bins, C, WH,
                 r_sb, r_sc, r_sh, r_sw, i_sb, i_sc, i_sh, i_sw,
                 AMPLITUDE: tl.constexpr, MEAN: tl.constexpr, ACC_F64: tl.constexpr,
                 BINS: tl.constexpr, LANES: tl.constexpr):
    """Per-bin sum (or mean) of one image, for a block of BINS bins.

    re_ptr: [B, C, H, WH] through strides r_s* (elements); im_ptr likewise (read only when
    AMPLITUDE, the value then being sqrt(re^2 + im^2)); order_ptr [H*WH] int32 and
    offsets_ptr [n_bins + 1] int32: the CSR plan; out_ptr: [B, n_bins] contiguous.
    MEAN divides by C * count (empty bins give 0). Grid: (B, cdiv(n_bins, BINS)).
    """
    b = tl.program_id(0).to(tl.int64)
    bins = tl.program_id(1) * BINS + tl.arange(0, BINS)
    in_range = bins < n_bins
    start = tl.load(offsets_ptr + bins, mask=in_range, other=0)
    count = tl.load(offsets_ptr + bins + 1, mask=in_range, other=0) - start
    longest = tl.max(count, axis=0)
    lane = tl.arange(0, LANES)
    if ACC_F64:
        acc = tl.zeros([BINS, LANES], dtype=tl.float64)
    else:
        acc = tl.zeros([BINS, LANES], dtype=tl.float32)
    re_base = re_ptr + b * r_sb
    im_base = im_ptr + b * i_sb
    for k in range(0, longest, LANES):
        j = k + lane[None, :]                                     # [1, LANES]
        live = j < count[:, None]                                 # [BINS, LANES]
        pos = tl.load(order_ptr + start[:, None] + j, mask=live, other=0)
        row = (pos // WH).to(tl.int64)
        col = (pos - (pos // WH) * WH).to(tl.int64)
        r_off = row * r_sh + col * r_sw
        i_off = row * i_sh + col * i_sw
        for c in range(C):
            x = tl.load(re_base + c * r_sc + r_off, mask=live, other=0.0).to(acc.dtype)
            if AMPLITUDE:
                y = tl.load(im_base + c * i_sc + i_off, mask=live, other=0.0).to(acc.dtype)
                x = tl.sqrt(x * x + y * y)
            acc += x
    total = tl.sum(acc, axis=1)                                   # [BINS]
    if MEAN:
        denom = (tl.maximum(count, 1) * C).to(acc.dtype)
        total = total / denom
    tl.store(out_ptr + b * n_bins + bins, total, mask=in_range)


@triton.jit
def _scatter_kernel(val_ptr, index_ptr, offsets_ptr, out_ptr, HW, n_bins,
                    DIV_COUNT: tl.constexpr, BLOCK: tl.constexpr):
    """out[b, p] = val[b, index[p]] (divided by the bin's count when DIV_COUNT).

    val_ptr: [B, n_bins] contiguous; index_ptr: [HW] int32; out_ptr: [B, HW] contiguous.
    Grid: (B, cdiv(HW, BLOCK)).
    """
    b = tl.program_id(0).to(tl.int64)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < HW
    k = tl.load(index_ptr + offs, mask=m, other=0)
    v = tl.load(val_ptr + b * n_bins + k, mask=m, other=0.0)
    if DIV_COUNT:
        # The bin of a stored position holds at least that position: count >= 1.
        count = (tl.load(offsets_ptr + k + 1, mask=m, other=1)
                 - tl.load(offsets_ptr + k, mask=m, other=0))
        v = v / count.to(v.dtype)
    tl.store(out_ptr + b * HW + offs, v, mask=m)


@triton.jit
def _amplitude_bwd_kernel(g_ptr, re_ptr, im_ptr, index_ptr, offsets_ptr, gre_ptr, gim_ptr,
                          C, HW, WH, n_bins,
                          r_sb, r_sc, r_sh, r_sw, i_sb, i_sc, i_sh, i_sw,
                          BLOCK: tl.constexpr):
    """Gradient of ring_pool_amplitude w.r.t. re and im.

    g_ptr: [B, n_bins] contiguous; re/im through strides; gre_ptr, gim_ptr: [B, C, HW]
    contiguous outputs. Grid: (B * C, cdiv(HW, BLOCK)).
    """
    plane = tl.program_id(0).to(tl.int64)
    b = plane // C
    c = plane - b * C
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    m = offs < HW
    k = tl.load(index_ptr + offs, mask=m, other=0)
    count = (tl.load(offsets_ptr + k + 1, mask=m, other=1)
             - tl.load(offsets_ptr + k, mask=m, other=0))
    g = tl.load(g_ptr + b * n_bins + k, mask=m, other=0.0)
    row = (offs // WH).to(tl.int64)
    col = (offs - (offs // WH) * WH).to(tl.int64)
    re = tl.load(re_ptr + b * r_sb + c * r_sc + row * r_sh + col * r_sw, mask=m, other=0.0)
    im = tl.load(im_ptr + b * i_sb + c * i_sc + row * i_sh + col * i_sw, mask=m, other=0.0)
    re = re.to(g.dtype)
    im = im.to(g.dtype)
    sq = re * re + im * im
    nz = sq > 0
    # d|X|/d re = re / |X|; 0 at X = 0 (the double where of reference.rings.amplitude).
    scale = tl.where(nz, g / ((count * C).to(g.dtype) * tl.sqrt(tl.where(nz, sq, 1.0))), 0.0)
    tl.store(gre_ptr + plane * HW + offs, re * scale, mask=m)
    tl.store(gim_ptr + plane * HW + offs, im * scale, mask=m)


# ---------------------------------------------------------------- launches


def _acc_f64(dtype: torch.dtype) -> bool:
    return dtype == torch.float64


def _pool_launch(re: torch.Tensor, im: torch.Tensor, plan: RingPlan, amplitude: bool,
                 mean: bool, out_dtype: torch.dtype) -> torch.Tensor:
    """re, im: [B, C, H, Wh] (any strides). Returns: [B, n_bins] out_dtype."""
    b, c = re.shape[0], re.shape[1]
    out = torch.empty(b, plan.n_bins, dtype=out_dtype, device=re.device)
    if b == 0 or plan.n_bins == 0:
        return out
    if c == 0 or plan.h * plan.wh == 0:
        return out.zero_()
    bins = pick_block(plan.n_bins, FREREC_TRITON_RING_BINS)
    lanes = pick_block(plan.max_count, FREREC_TRITON_RING_LANES)
    grid = (b, triton.cdiv(plan.n_bins, bins))
    _pool_kernel[grid](re, im, plan.order, plan.offsets, out, plan.n_bins, c, plan.wh,
                       *re.stride(), *im.stride(),
                       AMPLITUDE=amplitude, MEAN=mean, ACC_F64=_acc_f64(re.dtype),
                       BINS=bins, LANES=lanes, num_warps=FREREC_TRITON_RING_WARPS)
    return out


def _scatter_launch(values: torch.Tensor, plan: RingPlan, div_count: bool) -> torch.Tensor:
    """values: [B, n_bins]. Returns: [B, H, Wh] values' dtype."""
    values = values.contiguous()
    b, hw = values.shape[0], plan.h * plan.wh
    out = torch.empty(b, plan.h, plan.wh, dtype=values.dtype, device=values.device)
    if b and hw:
        block = pick_block(hw, FREREC_TRITON_RING_SCATTER_BLOCK, 16)
        _scatter_kernel[(b, triton.cdiv(hw, block))](values, plan.index, plan.offsets, out, hw,
                                                     plan.n_bins, DIV_COUNT=div_count, BLOCK=block,
                                                     num_warps=FREREC_TRITON_RING_SCATTER_WARPS)
    return out


def _amplitude_bwd_launch(g: torch.Tensor, re: torch.Tensor, im: torch.Tensor, plan: RingPlan):
    # The maths runs in float32 (float64 stays float64): Triton's sqrt and division take
    # no fp16/bf16 operands, and a half-precision |X| would lose the gradient's scale.
    g = (g if g.dtype == torch.float64 else g.float()).contiguous()
    b, c, hw = re.shape[0], re.shape[1], plan.h * plan.wh
    gre = torch.empty(re.shape, dtype=g.dtype, device=re.device)
    gim = torch.empty_like(gre)
    if b and c and hw:
        block = pick_block(hw, FREREC_TRITON_RING_SCATTER_BLOCK, 16)
        _amplitude_bwd_kernel[(b * c, triton.cdiv(hw, block))](
            g, re, im, plan.index, plan.offsets, gre, gim, c, hw, plan.wh, plan.n_bins,
            *re.stride(), *im.stride(), BLOCK=block, num_warps=FREREC_TRITON_RING_SCATTER_WARPS)
    return gre.to(re.dtype), gim.to(im.dtype)


# ---------------------------------------------------------------- registration


def _pool(re: torch.Tensor, im: torch.Tensor, plan: RingPlan, amplitude: bool,
          mean: bool) -> torch.Tensor:
    return _pool_launch(re, im, plan, amplitude, mean, re.dtype)


ring_pool, ring_scatter, ring_pool_amplitude = register_ring_ops(
    "triton", ("cpu", "cuda"), _pool, _scatter_launch, _amplitude_bwd_launch,
    lambda t, name: check_triton_device(t))

OPS = {"ring_pool": ring_pool, "ring_scatter": ring_scatter,
       "ring_pool_amplitude": ring_pool_amplitude}
