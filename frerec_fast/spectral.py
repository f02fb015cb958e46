"""Spectral diagnostics (method §4 luma, §8): the azimuthal log power profile, the
frequency gap between two sets' profiles, and PSNR. The band split, band statistics
and SHR themselves are ops, with their torch reference in ``frerec_fast.reference``.
"""
from __future__ import annotations

import math

import torch

from .reference.checks import check_ratio, require_finite
from .reference.spectral import signed_freqs


def luma(x: torch.Tensor) -> torch.Tensor:
    """Luma of an image batch (method §4).

    x: [B, C, H, W] with C in {1, 3}. Returns: [B, 1, H, W], same dtype.
    """
    if x.shape[1] == 1:
        return x
    if x.shape[1] != 3:
        raise ValueError(f"expected 1 or 3 channels, got {x.shape[1]}")
    wts = torch.tensor([0.299, 0.587, 0.114], dtype=x.dtype, device=x.device)
    return (x * wts[None, :, None, None]).sum(1, keepdim=True)


def radial_index(h: int, w: int, device=None) -> torch.Tensor:
    """Integer radius ``round(sqrt(fu^2 + fv^2))`` of each unshifted fft2 position.

    Returns: [h, w] int64.
    """
    fu = signed_freqs(h, device).double()
    fv = signed_freqs(w, device).double()
    r = torch.sqrt(fu[:, None] ** 2 + fv[None, :] ** 2)
    # Round half away from zero, like C's round(), rather than torch's half-to-even.
    return torch.floor(r + 0.5).long()


def spectral_profile(x: torch.Tensor, per_image: bool = False) -> torch.Tensor:
    """Azimuthally averaged log10 power spectrum of the luma (method §8, Durall et al.).

    x: [B, C, H, W] float in [0, 1], finite (NaN or inf: ValueError).
    Returns: [R] float64, the mean over images of per-image log10 profiles,
    R = floor(min(H, W)/2) + 1; or [B, R] with per_image=True ([0, R] for B = 0;
    the mean of no image is a ValueError).
    """
    if x.dim() != 4 or min(x.shape[-2:]) < 1:
        raise ValueError(f"x must be [B, C, H, W] with H, W >= 1, got shape {tuple(x.shape)}")
    require_finite(x=x)
    h, w = x.shape[-2:]
    n_r = min(h, w) // 2 + 1
    if x.shape[0] == 0:
        if per_image:
            return torch.zeros(0, n_r, dtype=torch.float64, device=x.device)
        raise ValueError("spectral_profile of no image: x has B = 0")
    y = luma(x.double())[:, 0]
    power = torch.fft.fft2(y, norm="ortho").abs().pow(2).reshape(y.shape[0], -1)
    rad = radial_index(h, w, y.device).reshape(-1)
    keep = rad < n_r
    rad, power = rad[keep], power[:, keep]
    sums = torch.zeros(y.shape[0], n_r, dtype=torch.float64, device=y.device)
    sums.index_add_(1, rad, power)
    counts = torch.bincount(rad, minlength=n_r).double()
    # A zero-power ring (constant image) would give -inf; floor at a tiny power.
    prof = torch.log10((sums / counts).clamp_min(1e-30))
    return prof if per_image else prof.mean(0)


def frequency_gap(profile_a: torch.Tensor, profile_b: torch.Tensor, ratio: float = 0.5):
    """Mean absolute difference of two set profiles (method §8).

    profile_a, profile_b: [R] from ``spectral_profile`` of images of one size, finite;
    ratio in [0, 1]. Returns: (high_band, all_radii) floats; the high band is radii
    >= ceil(ratio * (R - 1)).
    """
    check_ratio(ratio)
    a, b = torch.as_tensor(profile_a).double(), torch.as_tensor(profile_b).double()
    if a.shape != b.shape or a.dim() != 1 or a.shape[0] == 0:
        raise ValueError(f"profiles must be 1-D of one length (one image size) and not "
                         f"empty, got {tuple(a.shape)} and {tuple(b.shape)}")
    require_finite(profile_a=a, profile_b=b)
    start = math.ceil(ratio * (a.shape[0] - 1))
    diff = (a - b).abs()
    return float(diff[start:].mean()), float(diff.mean())


def psnr(a: torch.Tensor, b: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """Peak signal-to-noise ratio per image.

    a, b: [B, C, H, W]. Returns: [B] float64 in dB (inf where a == b).
    """
    mse = (a.double() - b.double()).pow(2).flatten(1).mean(1)
    return 10.0 * torch.log10(data_range ** 2 / mse)
