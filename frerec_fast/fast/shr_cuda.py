"""SHR and band statistics with the CUDA kernels of ``csrc/cuda/shr.cu``.

cuFFT (through torch) does the transforms; the kernels do the statistics and the
replacement on the half spectrum. They run from ``frerec_fast._C`` when it was
built with CUDA, else from the same source compiled by CuPy/NVRTC, on the
current torch stream either way. Registered as ``frerec::band_stats_cuda`` and
``frerec::shr_cuda``.
"""
from __future__ import annotations

import torch

from .. import _ext
from .registration import check_cuda, register_spectral_ops
from .shr_cpp import half_spectrum as _half_spectrum

_BLOCK = 256


def _spec_stats(spec: torch.Tensor, w: int, ratio: float, amp: bool):
    """spec: [B*C, H, Wh] complex64 CUDA. Returns: mu, sigma [B*C] float32."""
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


def _spec_apply(spec, w, ratio, amp, mu_s, sigma_s, mu_hat, sigma_hat) -> None:
    """Replaces spec's high band in place."""
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


_check_cuda = check_cuda  # a module name: the CUDA emulation tests replace it


def _stats(x: torch.Tensor, ratio: float, amplitude: bool):
    """x: [B, C, H, W] CUDA -> mu, sigma [B * C] float32."""
    return _spec_stats(_half_spectrum(x), x.shape[-1], ratio, amplitude)


def _apply(x: torch.Tensor, mu_hat: torch.Tensor, sigma_hat: torch.Tensor, ratio: float,
           amplitude: bool) -> torch.Tensor:
    """x: [B, C, H, W] CUDA; mu_hat, sigma_hat: [B * C] float32. Returns: x_hat float32."""
    b, c, h, w = x.shape
    spec = _half_spectrum(x)
    mu_s, sigma_s = _spec_stats(spec, w, ratio, amplitude)
    _spec_apply(spec, w, ratio, amplitude, mu_s, sigma_s, mu_hat, sigma_hat)
    return torch.fft.irfft2(spec.view(b, c, h, w // 2 + 1), s=(h, w), norm="ortho")


# Registered for every device type, and the device checked per call (by name, so
# that the CPU emulation of the kernels, tests/toolchain/test_cuda_emulated.py, can
# run them on CPU tensors); a CPU tensor gets _check_cuda's message.
band_stats, shr = register_spectral_ops("cuda", None, _stats, _apply,
                                        lambda t, name: _check_cuda(t, name))

OPS = {"band_stats": band_stats, "shr": shr}
