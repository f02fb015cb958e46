"""Ring/sector pooling on the rfft2 half-spectrum: the torch reference of FESA's polar
pooling ops (method §5), ``ring_pool``, ``ring_scatter`` and the fused
``ring_pool_amplitude``.

The fast backends (C++, Triton, CUDA) replace them behind the same signatures; the bin map is an *input* to both, built once per size on the host by
`ring_sector_index`, so kernels never recompute angles or radii (and never disagree on ties).

Bin map definition, for a feature map of size [h, w] whose rfft2 grid is [h, w_half],
w_half = w // 2 + 1:
- Frequencies: rows fu = fftfreq(h) * h (signed integers, 0, 1, .., -1), columns
  fv = 0 .. w_half - 1. Radius r = sqrt(fu^2 + fv^2); R = max r over the grid,
  i.e. R^2 = (h // 2)^2 + (w_half - 1)^2.
- Ring: ring = min(floor(n_rings * r / R), n_rings - 1), i.e. rings of width d = R / n_rings.
  Computed exactly in integers (r^2 and R^2 are integers), so a frequency lying exactly on a
  ring boundary (r = k*d, e.g. on the diagonal of a square grid) goes to the outer ring k.
  R = 0 (a 1x1 map) puts everything in ring 0.
- Sector: the *axial* angle phi = atan2(fu, fv) mod pi, in [0, pi); sector =
  min(floor(n_sectors * phi / pi + 1e-9), n_sectors - 1) in float64. The 1e-9 sends exact
  ties (phi = k*pi/n_sectors, e.g. the diagonal) to the upper sector on every platform.
  Why mod pi and not [0, 2pi): the half-spectrum only holds fv >= 0, so atan2 lies in
  [-pi/2, pi/2] and a [0, 2pi) binning would leave half the sectors empty for ever. The
  amplitude of a real signal's spectrum is symmetric, |X(-f)| = |X(f)|, so binning the
  axial angle over [0, pi) equals binning the full fft2 spectrum over [0, 2pi) with each
  sector merged with its opposite. It also gives conjugate pairs of the fv = 0 column
  (fu and -fu) the same bin, so the mask built from it keeps that column Hermitian.
  For an even width the last column (fv = W/2) is self-mirrored too: given ``w``,
  its frequencies are binned by the angle of (|fu|, W/2), keeping it Hermitian as well.
  DC (0, 0) has phi = 0: sector 0, ring 0.
- bin = sector * n_rings + ring, so the pooled vector reshapes to [n_sectors, n_rings].
"""
from __future__ import annotations

import functools

import numpy as np
import torch

from .checks import check_pool, check_pool_amplitude, check_scatter
from .constants import real_constant

_TIE_EPS = 1e-9


@functools.lru_cache(maxsize=64)
def _index_numpy(h: int, w_half: int, n_rings: int, n_sectors: int,
                 nyquist: bool = False) -> np.ndarray:
    fu = (np.fft.fftfreq(h) * h).round().astype(np.int64)[:, None]       # [h, 1]
    fv = np.arange(w_half, dtype=np.int64)[None, :]                       # [1, w_half]
    r2 = fu * fu + fv * fv                                                # [h, w_half] exact
    big_r2 = (h // 2) ** 2 + (w_half - 1) ** 2
    if big_r2 == 0:
        ring = np.zeros_like(r2)
    else:
        # floor(n * r / R) = isqrt(floor(n^2 r^2 / R^2)): exact, no float rounding at ties.
        q = (n_rings * n_rings * r2) // big_r2
        ring = np.floor(np.sqrt(q.astype(np.float64))).astype(np.int64)
        ring -= ring * ring > q                   # one integer correction step each way
        ring += (ring + 1) * (ring + 1) <= q
        ring = np.minimum(ring, n_rings - 1)
    fu_angle = np.broadcast_to(fu, r2.shape).astype(np.float64)
    if nyquist:
        # Even W: the stored column W/2 is its own mirror, (fu, W/2) ~ (-fu, -W/2), so its
        # conjugate pairs (fu, W/2) and (-fu, W/2) must share a bin for the mask to stay
        # Hermitian; |fu| gives both the axial angle of (|fu|, W/2).
        fu_angle = fu_angle.copy()
        fu_angle[:, -1] = np.abs(fu_angle[:, -1])
    phi = np.mod(np.arctan2(fu_angle, np.broadcast_to(fv, r2.shape).astype(np.float64)), np.pi)
    sector = np.floor(n_sectors * phi / np.pi + _TIE_EPS).astype(np.int64)
    sector = np.clip(sector, 0, n_sectors - 1)
    out = sector * n_rings + ring
    out.setflags(write=False)
    return out


def ring_sector_index(h: int, w_half: int, n_rings: int = 16, n_sectors: int = 32,
                      device: torch.device | str | None = None, *,
                      w: int | None = None) -> torch.Tensor:
    """Bin id of each rfft2 frequency (definition in the module docstring).

    w: the signal's width, when known (FESA passes it). For an even w the last stored
    column (W/2) bins each frequency by its |fu|, so that conjugate pairs in that column
    share a bin, as they do in column 0. Without w (or for odd w) the plain definition.
    Returns: [h, w_half] int64, values in [0, n_sectors * n_rings). Cached per size and
    device, so callers may use it every forward; do not modify it in place.
    """
    if h < 1 or w_half < 1 or n_rings < 1 or n_sectors < 1:
        raise ValueError(f"bad ring_sector_index sizes h={h} w_half={w_half} "
                         f"n_rings={n_rings} n_sectors={n_sectors}")
    if w is not None and w // 2 + 1 != w_half:
        raise ValueError(f"ring_sector_index: w={w} does not give w_half={w_half}")
    nyquist = w is not None and w % 2 == 0 and w >= 2
    return _index_torch(int(h), int(w_half), int(n_rings), int(n_sectors),
                        str(torch.device(device or "cpu")), nyquist)


@functools.lru_cache(maxsize=128)
def _index_torch(h: int, w_half: int, n_rings: int, n_sectors: int, device: str,
                 nyquist: bool = False) -> torch.Tensor:
    return real_constant(_index_numpy(h, w_half, n_rings, n_sectors, nyquist), torch.int64, device)


def ring_pool(amplitude: torch.Tensor, index_map: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Mean of `amplitude` over each bin of `index_map`; empty bins give 0.

    amplitude: [B, H, Wh] float; index_map: [H, Wh] int64 in [0, n_bins).
    Returns: [B, n_bins], same dtype. Differentiable in `amplitude`.
    """
    check_pool(amplitude, index_map)
    b = amplitude.shape[0]
    flat_idx = index_map.reshape(1, -1)                                    # [1, H*Wh]
    vals = amplitude.reshape(b, flat_idx.shape[1])                         # [B, H*Wh], B may be 0
    sums = vals.new_zeros(b, n_bins).scatter_add(1, flat_idx.expand(b, -1), vals)
    counts = vals.new_zeros(1, n_bins).scatter_add(1, flat_idx, torch.ones_like(flat_idx, dtype=vals.dtype))
    return sums / counts.clamp(min=1)                                      # empty: 0 / 1


def ring_scatter(values: torch.Tensor, index_map: torch.Tensor) -> torch.Tensor:
    """Each frequency takes the value of its bin: the adjoint-shaped inverse of ring_pool.

    values: [B, n_bins] float; index_map: [H, Wh] int64. Returns: [B, H, Wh].
    """
    check_scatter(values, index_map)
    b = values.shape[0]
    return values.index_select(1, index_map.reshape(-1)).reshape(b, *index_map.shape)


def amplitude(re: torch.Tensor, im: torch.Tensor) -> torch.Tensor:
    """|X| with a finite gradient (0) where X = 0; plain sqrt would give NaN there.

    The double `where` keeps sqrt's infinite derivative at 0 out of the graph, and exports
    to ONNX as Where/Sqrt.
    """
    sq = re * re + im * im
    pos = sq > 0
    return torch.where(pos, torch.sqrt(torch.where(pos, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def ring_pool_amplitude(re: torch.Tensor, im: torch.Tensor, index_map: torch.Tensor,
                        n_bins: int) -> torch.Tensor:
    """Channel-mean amplitude pooled per ring/sector bin: the reference of the fused op.

    re, im: [B, C, H, Wh] real; index_map: [H, Wh] int64. Returns: [B, n_bins].
    """
    check_pool_amplitude(re, im, index_map)
    return ring_pool(amplitude(re, im).mean(dim=1), index_map, n_bins)
