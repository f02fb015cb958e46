"""Host-side plan shared by the fast ring/sector pooling backends (C++, Triton, CUDA).

The reference (``reference/rings.py``) pools with ``scatter_add``: on a GPU that is a
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


def native(t: torch.Tensor) -> torch.Tensor:
    """float32/float64 as is; half precisions computed in float32 (cast back by callers)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()
