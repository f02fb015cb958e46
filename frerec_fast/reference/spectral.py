"""Torch reference of the band split, band statistics and SHR (method §1-3): the
oracle of the fast backends (C++, Triton, CUDA), written for clarity: full ``fft2``
spectra, explicit masks, float32 in and out, float64 where the statistics need it.

The band split is done on the *unshifted* spectrum: ``fftshift`` is a permutation, and
band statistics and the replacement are position-wise, so shifting, editing and
shifting back equals editing in place.
"""
from __future__ import annotations

import torch

from .checks import check_domain, check_ratio, check_shr_args


def signed_freqs(n: int, device=None) -> torch.Tensor:
    """Integer frequencies of an ``n``-point DFT in FFT order: ``fftfreq(n) * n``.

    Returns: [n] int64, e.g. n=4 -> [0, 1, -2, -1].
    """
    k = torch.arange(n, device=device)
    return torch.where(k < (n + 1) // 2, k, k - n)


def high_band_mask(h: int, w: int, ratio: float = 0.5, device=None) -> torch.Tensor:
    """High-band membership on the unshifted ``fft2`` grid (method §1).

    The low band is ``|fu| < ratio*h/2 and |fv| < ratio*w/2``; the high band is the rest.

    Returns: [h, w] bool, True on the high band.
    """
    check_ratio(ratio)
    fu = signed_freqs(h, device).abs().double()
    fv = signed_freqs(w, device).abs().double()
    low = (fu[:, None] < ratio * h / 2.0) & (fv[None, :] < ratio * w / 2.0)
    return ~low


def _band_values(spec: torch.Tensor, domain: str) -> torch.Tensor:
    return spec.abs() if domain == "amplitude" else spec


def band_stats(x: torch.Tensor, ratio: float = 0.5, domain: str = "complex"):
    """High-band statistics of each image and channel (method §2, paper Eq. 1).

    x: [B, C, H, W] float, values in [0, 1].
    Returns: mu [B, C] float32 (real part of the band mean) and
    sigma [B, C] float32 (mean absolute deviation from mu over the band).
    """
    check_domain(domain)
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    mask = high_band_mask(h, w, ratio, x.device)
    spec = torch.fft.fft2(x.double(), norm="ortho")
    vals = _band_values(spec, domain)[..., mask]  # [B, C, n_band]
    if vals.shape[-1] == 0:
        raise ValueError(f"the high band of a {h}x{w} image at ratio={ratio} is empty")
    mu = vals.mean(-1).real if vals.is_complex() else vals.mean(-1)
    sigma = (vals - mu[..., None]).abs().mean(-1)
    return mu.float(), sigma.float()


def bank_targets(mu_bank: torch.Tensor, sigma_bank: torch.Tensor,
                 eps_mu: torch.Tensor, eps_sigma: torch.Tensor):
    """Sampled target statistics from the neighbours' statistics (method §3, Eq. 2).

    mu_bank, sigma_bank: [B, K, C]; eps_mu, eps_sigma: [B, C].
    Returns: mu_hat [B, C], sigma_hat [B, C] (float64, sigma_hat >= 0).
    """
    mu_bank, sigma_bank = mu_bank.double(), sigma_bank.double()
    e_mu, e_sig = mu_bank.mean(1), sigma_bank.mean(1)
    s_mu = (mu_bank - e_mu[:, None]).pow(2).mean(1).sqrt()
    s_sig = (sigma_bank - e_sig[:, None]).pow(2).mean(1).sqrt()
    mu_hat = e_mu + eps_mu.double() * s_mu
    sigma_hat = (e_sig + eps_sigma.double() * s_sig).clamp_min(0.0)
    return mu_hat, sigma_hat


def shr(x: torch.Tensor, mu_bank: torch.Tensor, sigma_bank: torch.Tensor,
        eps_mu: torch.Tensor, eps_sigma: torch.Tensor,
        ratio: float = 0.5, domain: str = "complex") -> torch.Tensor:
    """Statistic High-frequency Replacement, AdaIN form (method §3), torch reference.

    x: [B, C, H, W] float; mu_bank, sigma_bank: [B, K, C] neighbour statistics;
    eps_mu, eps_sigma: [B, C] standard normal draws.
    Returns: x_hat [B, C, H, W] float32, not clipped.
    """
    check_shr_args(x, mu_bank, sigma_bank, eps_mu, eps_sigma, ratio, domain)
    h, w = x.shape[-2:]
    mask = high_band_mask(h, w, ratio, x.device)
    mu_s, sigma_s = band_stats(x, ratio, domain)
    mu_hat, sigma_hat = bank_targets(mu_bank, sigma_bank, eps_mu, eps_sigma)
    mu_s, sigma_s = mu_s.double()[..., None, None], sigma_s.double()[..., None, None]
    mu_hat, sigma_hat = mu_hat[..., None, None], sigma_hat[..., None, None]
    # sigma_s == 0: the normalised band is defined as 0 (method §3).
    scale = torch.where(sigma_s > 0, sigma_hat / sigma_s.clamp_min(1e-300),
                        torch.zeros_like(sigma_s))

    spec = torch.fft.fft2(x.double(), norm="ortho")
    if domain == "complex":
        new = (spec - mu_s) * scale + mu_hat
    else:
        amp = spec.abs()
        new_amp = ((amp - mu_s) * scale + mu_hat).clamp_min(0.0)
        # The phase of an exactly-zero coefficient is taken as 0.
        phase = torch.where(amp > 0, spec / amp.clamp_min(1e-300), torch.ones_like(spec))
        new = new_amp * phase
    out = torch.where(mask, new, spec)
    return torch.fft.ifft2(out, norm="ortho").real.float()
