"""SHR and band statistics through the C++ CPU extension: torch's rfft2 (pocketfft)
for the transforms, one OpenMP pass over the half spectrum for the statistics and
one for the replacement. No fftshift, no mask tensor, no full spectrum. Registered as
the custom ops ``frerec::band_stats_cpp`` and ``frerec::shr_cpp``."""
from __future__ import annotations

import torch

from .. import _ext
from .registration import check_cpu, register_spectral_ops


def half_spectrum(x: torch.Tensor):
    """x: [B, C, H, W] -> contiguous complex64 [B*C, H, W//2+1]."""
    b, c, h, w = x.shape
    spec = torch.fft.rfft2(x.float(), norm="ortho")
    return spec.reshape(b * c, h, w // 2 + 1).contiguous()


def _stats(x: torch.Tensor, ratio: float, amplitude: bool):
    """x: [B, C, H, W] -> mu, sigma [B * C] float32."""
    return _ext.ext().band_stats_half(half_spectrum(x), x.shape[-1], ratio, amplitude)


def _apply(x: torch.Tensor, mu_hat: torch.Tensor, sigma_hat: torch.Tensor, ratio: float,
           amplitude: bool) -> torch.Tensor:
    """x: [B, C, H, W]; mu_hat, sigma_hat: [B * C] float32. Returns: [B, C, H, W] float32."""
    C = _ext.ext()
    b, c, h, w = x.shape
    spec = half_spectrum(x)
    mu_s, sigma_s = C.band_stats_half(spec, w, ratio, amplitude)
    C.shr_apply_half_(spec, w, ratio, amplitude, mu_s, sigma_s, mu_hat, sigma_hat)
    return torch.fft.irfft2(spec.view(b, c, h, w // 2 + 1), s=(h, w), norm="ortho")


band_stats, shr = register_spectral_ops("cpp", ("cpu",), _stats, _apply, check_cpu)

OPS = {"band_stats": band_stats, "shr": shr}
