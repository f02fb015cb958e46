"""rfft2 / irfft2 (ortho) as real matrix products, or through torch.fft, behind one interface.

Spectra are passed as (real, imag) pairs of real tensors, so that the matmul path never
creates a complex tensor: that is what lets the model export to ONNX with the legacy and
dynamo exporters at opsets 17-20 (no `DFT` op) and run 7-9x faster in onnxruntime (FACTS.md).

Matmul path, for x: [..., H, W] and Wh = W // 2 + 1 (all matrices carry 1/sqrt(n), ortho):
  forward:  A = x @ Cw, B = -(x @ Sw)                 (real DFT along W, [..., H, Wh])
            Re = Ch @ A + Sh @ B, Im = Ch @ B - Sh @ A  (complex DFT along H)
  inverse:  Yr = Ch @ Re - Sh @ Im, Yi = Ch @ Im + Sh @ Re   (inverse complex DFT along H)
            x = Yr @ Cw_inv - Yi @ Sw_inv             (C2R along W)
with Cw[w, v] = cos(2 pi w v / W), Ch[u, h] = cos(2 pi u h / H) (symmetric), S likewise with
sin, and Cw_inv[v, n] = c_v cos(2 pi v n / W), c_v = 1 for v = 0 and (even W) v = W/2, else 2.
The C2R step ignores the imaginary part of the v = 0 and Nyquist columns (their sine rows
are zero), exactly as torch.fft.irfft2 does for non-Hermitian input.
"""
from __future__ import annotations

import functools
import math

import numpy as np
import torch

from ..reference.constants import real_constant

MODES = ("fft", "matmul")


@functools.lru_cache(maxsize=32)
def _mats_numpy(h: int, w: int):
    wh = w // 2 + 1
    n_w, v = np.arange(w)[:, None], np.arange(wh)[None, :]
    ang_w = 2 * np.pi * ((n_w * v) % w) / w                           # reduce mod w: exact angles
    cw, sw = np.cos(ang_w) / math.sqrt(w), np.sin(ang_w) / math.sqrt(w)   # [W, Wh]
    c = np.full(wh, 2.0)
    c[0] = 1.0
    if w % 2 == 0:
        c[-1] = 1.0
    cw_inv, sw_inv = (cw * c[None, :]).T.copy(), (sw * c[None, :]).T.copy()  # [Wh, W]
    n_h = np.arange(h)
    ang_h = 2 * np.pi * ((n_h[:, None] * n_h[None, :]) % h) / h
    ch, sh = np.cos(ang_h) / math.sqrt(h), np.sin(ang_h) / math.sqrt(h)   # [H, H]
    return cw, sw, cw_inv, sw_inv, ch, sh


@functools.lru_cache(maxsize=64)
def dft_matrices(h: int, w: int, dtype: torch.dtype = torch.float32,
                 device: str = "cpu") -> tuple[torch.Tensor, ...]:
    """(Cw, Sw, Cw_inv, Sw_inv, Ch, Sh) for an [h, w] signal; built in float64, cast once, cached."""
    return tuple(real_constant(m, dtype, device) for m in _mats_numpy(h, w))


def _mats_for(x: torch.Tensor, h: int, w: int):
    return dft_matrices(int(h), int(w), x.dtype, str(x.device))


def rfft2(x: torch.Tensor, mode: str = "fft") -> tuple[torch.Tensor, torch.Tensor]:
    """Ortho rfft2 over the last two dims.

    x: [..., H, W] float32/float64. Returns (re, im), each [..., H, W // 2 + 1], x's dtype.
    """
    if mode == "fft":
        X = torch.fft.rfft2(x, norm="ortho")
        return X.real, X.imag
    if mode != "matmul":
        raise ValueError(f"dft mode must be one of {MODES}, got {mode!r}")
    h, w = x.shape[-2], x.shape[-1]
    cw, sw, _, _, ch, sh = _mats_for(x, h, w)
    a, b = x @ cw, -(x @ sw)
    return ch @ a + sh @ b, ch @ b - sh @ a


def irfft2(re: torch.Tensor, im: torch.Tensor, size: tuple[int, int],
           mode: str = "fft") -> torch.Tensor:
    """Ortho irfft2 to `size` = (H, W), the inverse of rfft2.

    re, im: [..., H, W // 2 + 1]. Returns: [..., H, W] real.
    """
    h, w = int(size[0]), int(size[1])
    if re.shape[-2] != h or re.shape[-1] != w // 2 + 1:
        raise ValueError(f"irfft2: spectrum {tuple(re.shape[-2:])} does not match size {(h, w)}")
    if mode == "fft":
        return torch.fft.irfft2(torch.complex(re, im), s=(h, w), norm="ortho")
    if mode != "matmul":
        raise ValueError(f"dft mode must be one of {MODES}, got {mode!r}")
    _, _, cw_inv, sw_inv, ch, sh = _mats_for(re, h, w)
    yr, yi = ch @ re - sh @ im, ch @ im + sh @ re
    return yr @ cw_inv - yi @ sw_inv
