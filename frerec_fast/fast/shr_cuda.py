"""SHR and band statistics with the CUDA kernels of ``csrc/cuda/shr.cu``.

cuFFT (through torch) does the transforms; the kernels do the statistics and the
replacement on the half spectrum. They run from ``frerec_fast._C`` when it was
built with CUDA, else from the same source compiled by CuPy/NVRTC, on the
current torch stream either way.
"""
from __future__ import annotations

import torch

from .. import _ext
from ..spectral import _check_domain, _check_ratio, bank_targets, check_shr_args
from .shr_cpp import _half_spectrum

_BLOCK = 256


def _stats(spec: torch.Tensor, w: int, ratio: float, amp: bool):
    if _ext.has_cuda_ext():
        return _ext.ext().band_stats_half_cuda(spec, w, ratio, amp)
    import cupy as cp
    from .cuda_source import module

    planes, h = spec.shape[0], spec.shape[1]
    mu = torch.empty(planes, device=spec.device)
    sigma = torch.empty_like(mu)
    if planes:
        with cp.cuda.ExternalStream(torch.cuda.current_stream(spec.device).cuda_stream):
            module("shr.cu").get_function("frerec_band_stats_half")(
                (planes,), (_BLOCK,),
                (cp.asarray(spec), cp.int32(h), cp.int32(w), cp.float64(ratio), cp.int32(amp),
                 cp.asarray(mu), cp.asarray(sigma)))
    return mu, sigma


def _apply(spec, w, ratio, amp, mu_s, sigma_s, mu_hat, sigma_hat) -> None:
    if _ext.has_cuda_ext():
        _ext.ext().shr_apply_half_cuda_(spec, w, ratio, amp, mu_s, sigma_s, mu_hat, sigma_hat)
        return
    import cupy as cp
    from .cuda_source import module

    total = spec.numel()
    if total:
        with cp.cuda.ExternalStream(torch.cuda.current_stream(spec.device).cuda_stream):
            module("shr.cu").get_function("frerec_shr_apply_half")(
                ((total + _BLOCK - 1) // _BLOCK,), (_BLOCK,),
                (cp.asarray(spec), cp.int64(spec.shape[0]), cp.int32(spec.shape[1]), cp.int32(w),
                 cp.float64(ratio), cp.int32(amp), cp.asarray(mu_s), cp.asarray(sigma_s),
                 cp.asarray(mu_hat), cp.asarray(sigma_hat)))


def band_stats(x: torch.Tensor, ratio: float = 0.5, domain: str = "complex"):
    """See ``frerec_fast.band_stats``. x: [B, C, H, W] CUDA. Returns mu, sigma [B, C] float32."""
    _check_domain(domain)
    _check_ratio(ratio)
    b, c, h, w = x.shape
    mu, sigma = _stats(_half_spectrum(x), w, float(ratio), domain == "amplitude")
    return mu.view(b, c), sigma.view(b, c)


def shr(x, mu_bank, sigma_bank, eps_mu, eps_sigma, ratio: float = 0.5, domain: str = "complex"):
    """See ``frerec_fast.shr``. x: [B, C, H, W] CUDA -> x_hat [B, C, H, W] float32."""
    check_shr_args(x, mu_bank, sigma_bank, eps_mu, eps_sigma, ratio, domain)
    b, c, h, w = x.shape
    amp = domain == "amplitude"
    spec = _half_spectrum(x)
    mu_s, sigma_s = _stats(spec, w, float(ratio), amp)
    mu_hat, sigma_hat = bank_targets(mu_bank.to(x.device), sigma_bank.to(x.device),
                                     eps_mu.to(x.device), eps_sigma.to(x.device))
    _apply(spec, w, float(ratio), amp, mu_s, sigma_s,
           mu_hat.float().reshape(-1).contiguous(), sigma_hat.float().reshape(-1).contiguous())
    return torch.fft.irfft2(spec.view(b, c, h, w // 2 + 1), s=(h, w), norm="ortho")
