"""Host-side plan shared by the fast ring/sector pooling backends (Triton, CUDA).

The reference (``model/ring_pool.py``) pools with ``scatter_add``: on a GPU that is a
float atomic add per element, whose summation order, and so whose float result, changes
from run to run. The fast backends pool without atomics instead, from the index map in
CSR form, bins -> the positions they hold:

- ``order``   [H*Wh] int32: the flat positions ``h * Wh + v`` sorted by bin, stably, so
  inside a bin they ascend (rows of an arc are read left to right, mostly coalesced);
- ``offsets`` [n_bins + 1] int32: bin ``k`` holds ``order[offsets[k]:offsets[k+1]]``, so
  its count is ``offsets[k+1] - offsets[k]`` (0 for an empty bin);
- ``index``   [H*Wh] int32: the map itself, flat (the scatter and backward kernels read
  it; int32 halves the bytes of the int64 map).

Each bin is then reduced by exactly one program (Triton) or one warp (CUDA) that walks
its positions in a fixed order and sums with a fixed tree: the float result is the same
on every run, and the backward passes are pure gathers (no atomics either).

Plans are cached per index-map tensor (by identity, checked against its version counter
so an in-place edit of the map is noticed, and dropped when the map is freed). The maps
of ``ring_sector_index`` are themselves cached per size and device, so in a model the
plan is built once per feature size, at the cost of one host sync (the range check).
"""
from __future__ import annotations

import weakref
from dataclasses import dataclass

import torch

from ..model.ring_pool import _check


@dataclass(frozen=True)
class RingPlan:
    h: int
    wh: int
    n_bins: int
    index: torch.Tensor    # [H*Wh] int32
    order: torch.Tensor    # [H*Wh] int32
    offsets: torch.Tensor  # [n_bins + 1] int32
    max_count: int         # largest bin


_CACHE: dict[tuple[int, int], tuple] = {}


def _version(t: torch.Tensor) -> int:
    try:
        return t._version
    except RuntimeError:  # inference tensors keep no version counter
        return -1


def _build(index_map: torch.Tensor, n_bins: int) -> RingPlan:
    h, wh = index_map.shape
    flat = index_map.reshape(-1)
    if n_bins < 0:
        raise ValueError(f"n_bins must be >= 0, got {n_bins}")
    if flat.numel():
        lo, hi = (int(v) for v in torch.aminmax(flat))
        if lo < 0 or hi >= n_bins:
            raise ValueError(f"index_map values span [{lo}, {hi}], outside [0, n_bins={n_bins})")
    if flat.numel() >= 2 ** 31:
        raise ValueError(f"index_map of {flat.numel()} entries is too large for int32 offsets")
    counts = torch.bincount(flat, minlength=n_bins)
    order = torch.sort(flat, stable=True).indices
    offsets = torch.zeros(n_bins + 1, dtype=torch.int64, device=flat.device)
    torch.cumsum(counts, 0, out=offsets[1:])
    max_count = int(counts.max()) if n_bins else 0
    return RingPlan(int(h), int(wh), int(n_bins), flat.to(torch.int32).contiguous(),
                    order.to(torch.int32).contiguous(), offsets.to(torch.int32).contiguous(),
                    max_count)


def ring_plan(index_map: torch.Tensor, n_bins: int) -> RingPlan:
    """The CSR plan of ``index_map`` ([H, Wh] int64, values in [0, n_bins)), cached.

    Raises TypeError for a non-int64 map and ValueError for a value outside [0, n_bins).
    """
    if index_map.dim() != 2:
        raise ValueError(f"index_map must be [H, Wh], got shape {tuple(index_map.shape)}")
    if index_map.dtype != torch.int64:
        raise TypeError(f"index_map must be int64, got {index_map.dtype}")
    key = (id(index_map), int(n_bins))
    hit = _CACHE.get(key)
    if hit is not None and hit[0]() is index_map and hit[1] == _version(index_map):
        return hit[2]
    with torch.inference_mode(False):  # cached: must outlive an inference-mode caller
        plan = _build(index_map, int(n_bins))
    _CACHE[key] = (weakref.ref(index_map, lambda _r, key=key: _CACHE.pop(key, None)),
                   _version(index_map), plan)
    return plan


def check_pool(amplitude: torch.Tensor, index_map: torch.Tensor, name: str = "ring_pool") -> None:
    """The reference's argument checks for ``ring_pool`` (same exceptions and messages)."""
    _check(amplitude, index_map, name)
    if amplitude.dim() != 3 or amplitude.shape[1:] != index_map.shape:
        raise ValueError(f"{name}: amplitude {tuple(amplitude.shape)} does not match "
                         f"index_map {tuple(index_map.shape)} as [B, H, Wh]")
    if not amplitude.is_floating_point():
        raise TypeError(f"{name}: amplitude must be a float tensor, got {amplitude.dtype}")


def check_scatter(values: torch.Tensor, index_map: torch.Tensor,
                  name: str = "ring_scatter") -> None:
    """The reference's argument checks for ``ring_scatter``."""
    _check(values, index_map, name)
    if values.dim() != 2:
        raise ValueError(f"{name}: values must be [B, n_bins], got {tuple(values.shape)}")
    if not values.is_floating_point():
        raise TypeError(f"{name}: values must be a float tensor, got {values.dtype}")


def check_pool_amplitude(re: torch.Tensor, im: torch.Tensor, index_map: torch.Tensor,
                         name: str = "ring_pool_amplitude") -> None:
    """re, im: [B, C, H, Wh] real, same shape, dtype and device; index_map [H, Wh] int64."""
    _check(re, index_map, name)
    if re.shape != im.shape or re.dtype != im.dtype or re.device != im.device:
        raise ValueError(f"{name}: re {tuple(re.shape)} {re.dtype} {re.device} and im "
                         f"{tuple(im.shape)} {im.dtype} {im.device} must agree")
    if re.dim() != 4 or re.shape[2:] != index_map.shape:
        raise ValueError(f"{name}: spectrum {tuple(re.shape)} does not match index_map "
                         f"{tuple(index_map.shape)} as [B, C, H, Wh]")
    if not re.is_floating_point():
        raise TypeError(f"{name}: re/im must be real float tensors, got {re.dtype}")


def native(t: torch.Tensor) -> torch.Tensor:
    """float32/float64 as is; half precisions computed in float32 (cast back by callers)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def ring_autograd(pool, scatter, amplitude_bwd):
    """The autograd Functions (RingPool, RingScatter, RingPoolAmplitude) of a compiled
    ring-pooling backend, from its three kernels; the C++ and CUDA backends share them.

    pool(re, im, plan, amplitude, mean) -> [B, n_bins]  (re, im: [B, C, H, Wh])
    scatter(values, plan, div_count) -> [B, H, Wh]
    amplitude_bwd(grad, re, im, plan) -> (g_re, g_im)
    All take float32/float64; half-precision inputs are computed in float32.
    """

    class RingPool(torch.autograd.Function):
        @staticmethod
        def forward(ctx, amplitude, plan):
            ctx.plan, ctx.in_dtype = plan, amplitude.dtype
            a4 = native(amplitude).unsqueeze(1)                     # [B, 1, H, Wh], a view
            return pool(a4, a4, plan, False, True).to(amplitude.dtype)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            return scatter(native(grad), ctx.plan, True).to(ctx.in_dtype), None

    class RingScatter(torch.autograd.Function):
        @staticmethod
        def forward(ctx, values, plan):
            ctx.plan, ctx.in_dtype = plan, values.dtype
            return scatter(native(values), plan, False).to(values.dtype)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            g4 = native(grad).unsqueeze(1)                           # [B, 1, H, Wh]
            return pool(g4, g4, ctx.plan, False, False).to(ctx.in_dtype), None

    class RingPoolAmplitude(torch.autograd.Function):
        @staticmethod
        def forward(ctx, re, im, plan):
            ctx.plan = plan
            ctx.save_for_backward(re, im)
            return pool(native(re), native(im), plan, True, True).to(re.dtype)

        @staticmethod
        @torch.autograd.function.once_differentiable
        def backward(ctx, grad):
            re, im = ctx.saved_tensors
            nre, nim = native(re), native(im)
            g_re, g_im = amplitude_bwd(grad.to(nre.dtype), nre, nim, ctx.plan)
            return g_re.to(re.dtype), g_im.to(im.dtype), None

    return RingPool, RingScatter, RingPoolAmplitude
