"""The torch reference of every op: the one definition the fast backends (C++ in
``csrc/``, Triton in ``kernels/``, CUDA) are tested against and must agree with.

| op                  | reference                         | method |
|---------------------|-----------------------------------|--------|
| band_stats          | ``spectral.band_stats``           | §1-2   |
| shr                 | ``spectral.shr``                  | §3     |
| ssim_matrix         | ``ssim.ssim_matrix``              | §4     |
| ssim_pairs          | ``ssim.ssim_pairs``               | §4     |
| ssim_topk           | ``ssim.ssim_topk``                | §4     |
| ring_pool           | ``rings.ring_pool``               | §5     |
| ring_scatter        | ``rings.ring_scatter``            | §5     |
| ring_pool_amplitude | ``rings.ring_pool_amplitude``     | §5     |

The argument checks every backend shares are public in ``checks``. Users call the ops
through ``frerec_fast.ops`` (which picks a backend); ``OPS`` maps op names to these
references for the dispatch table (``frerec_fast.backends``).
"""
from __future__ import annotations

from .rings import ring_pool, ring_pool_amplitude, ring_scatter, ring_sector_index
from .spectral import band_stats, high_band_mask, shr
from .ssim import ssim_matrix, ssim_pairs, ssim_topk

OPS = {
    "band_stats": band_stats,
    "shr": shr,
    "ssim_matrix": ssim_matrix,
    "ssim_pairs": ssim_pairs,
    "ssim_topk": ssim_topk,
    "ring_pool": ring_pool,
    "ring_scatter": ring_scatter,
    "ring_pool_amplitude": ring_pool_amplitude,
}

__all__ = ["OPS", "band_stats", "high_band_mask", "ring_pool", "ring_pool_amplitude",
           "ring_scatter", "ring_sector_index", "shr", "ssim_matrix", "ssim_pairs",
           "ssim_topk"]
