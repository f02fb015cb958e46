"""SHR and band statistics through the C++ CPU extension: torch's rfft2 (pocketfft)
for the transforms, one OpenMP pass over the half spectrum for the statistics and
one for the replacement. No fftshift, no mask tensor, no full spectrum."""
from __future__ import annotations

import torch

from .. import _ext
from ..spectral import bank_targets, check_shr_args, _check_domain, _check_ratio


def _half_spectrum(x: torch.Tensor):
    """x: [B, C, H, W] -> contiguous complex64 [B*C, H, W//2+1]."""
    b, c, h, w = x.shape
    spec = torch.fft.rfft2(x.float(), norm="ortho")
    return spec.reshape(b * c, h, w // 2 + 1).contiguous()


def band_stats(x: torch.Tensor, ratio: float = 0.5, domain: str = "complex"):
    """See ``frerec_fast.band_stats``. x: [B, C, H, W]. Returns: mu, sigma [B, C] float32."""
    _check_domain(domain)
    _check_ratio(ratio)
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    b, c, h, w = x.shape
    mu, sigma = _ext.ext().band_stats_half(_half_spectrum(x), w, float(ratio), domain == "amplitude")
    return mu.view(b, c), sigma.view(b, c)


def shr(x, mu_bank, sigma_bank, eps_mu, eps_sigma, ratio: float = 0.5, domain: str = "complex"):
    """See ``frerec_fast.shr``. x: [B, C, H, W] -> x_hat [B, C, H, W] float32."""
    check_shr_args(x, mu_bank, sigma_bank, eps_mu, eps_sigma, ratio, domain)
    C = _ext.ext()
    b, c, h, w = x.shape
    amp = domain == "amplitude"
    spec = _half_spectrum(x)
    mu_s, sigma_s = C.band_stats_half(spec, w, float(ratio), amp)
    mu_hat, sigma_hat = bank_targets(mu_bank, sigma_bank, eps_mu, eps_sigma)
    C.shr_apply_half_(spec, w, float(ratio), amp, mu_s, sigma_s,
                      mu_hat.float().reshape(-1).contiguous(),
                      sigma_hat.float().reshape(-1).contiguous())
    return torch.fft.irfft2(spec.view(b, c, h, w // 2 + 1), s=(h, w), norm="ortho")
