"""Torch reference of the spectral maths (SPEC sections 1-3 and 8).

Everything here is the oracle that fast backends (C++, Triton, CUDA) are tested
against, so it is written for clarity: full ``fft2`` spectra, explicit masks,
float32 in and out with float64 only where SPEC's statistics need it.

The band split is done on the *unshifted* spectrum: ``fftshift`` is a
permutation, and band statistics and the replacement are position-wise, so
shifting, editing and shifting back equals editing in place.
"""
from __future__ import annotations

import contextlib
import contextvars
import math

import torch

DOMAINS = ("complex", "amplitude")


def _check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")


def _check_ratio(ratio: float) -> None:
    if not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio!r}")


def band_is_empty(h: int, w: int, ratio: float) -> bool:
    """Whether the high band of an ``h`` x ``w`` image at ``ratio`` has no position
    (SPEC 1: every frequency is in the low band, e.g. a 1x1 image at ratio 0.5). The
    largest |frequency| of an n-point DFT is n // 2."""
    return h // 2 < ratio * h / 2.0 and w // 2 < ratio * w / 2.0


_CHECKED_UPSTREAM: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "frerec_inputs_checked_upstream", default=False)


@contextlib.contextmanager
def inputs_checked_upstream():
    """Skip the public ops' value checks (``require_finite``, ``ssim_topk``'s exclusion
    range) in this thread, for a caller whose inputs are validated where they are made:
    the calibrator (pixels checked at decode, the index at load, results per tile).
    Those checks read a value back to the host, which on CUDA would wait for every
    queued kernel and undo the calibrator's overlap of host and GPU work."""
    token = _CHECKED_UPSTREAM.set(True)
    try:
        yield
    finally:
        _CHECKED_UPSTREAM.reset(token)


def checks_skipped() -> bool:
    """True inside ``inputs_checked_upstream()``."""
    return _CHECKED_UPSTREAM.get()


def require_finite(**tensors: torch.Tensor) -> None:
    """ValueError naming the first floating-point tensor that holds NaN or +-inf.

    ``aminmax`` per tensor (NaN propagates through min and max; many times cheaper than
    ``isfinite(x).all()``), one host sync for all of them; empty and integer tensors pass.
    Nothing is checked inside ``inputs_checked_upstream()``."""
    if _CHECKED_UPSTREAM.get():
        return
    ends = {}
    for name, t in tensors.items():
        if (t.is_floating_point() or t.is_complex()) and t.numel():
            lo, hi = torch.aminmax(t.abs() if t.is_complex() else t)
            ends[name] = torch.stack([lo, hi]).double()
    if not ends:
        return
    dev = next(iter(ends.values())).device
    good = torch.isfinite(torch.stack([e.to(dev) for e in ends.values()])).all(1).tolist()
    for (name, t), ok in zip(((n, tensors[n]) for n in ends), good):
        if not ok:
            raise ValueError(f"{name} contains NaN or infinite values (shape "
                             f"{tuple(t.shape)}); the inputs must be finite")


def signed_freqs(n: int, device=None) -> torch.Tensor:
    """Integer frequencies of an ``n``-point DFT in FFT order: ``fftfreq(n) * n``.

    Returns: [n] int64, e.g. n=4 -> [0, 1, -2, -1].
    """
    k = torch.arange(n, device=device)
    return torch.where(k < (n + 1) // 2, k, k - n)


def high_band_mask(h: int, w: int, ratio: float = 0.5, device=None) -> torch.Tensor:
    """High-band membership on the unshifted ``fft2`` grid (SPEC 1).

    The low band is ``|fu| < ratio*h/2 and |fv| < ratio*w/2``; the high band is the rest.

    Returns: [h, w] bool, True on the high band.
    """
    _check_ratio(ratio)
    fu = signed_freqs(h, device).abs().double()
    fv = signed_freqs(w, device).abs().double()
    low = (fu[:, None] < ratio * h / 2.0) & (fv[None, :] < ratio * w / 2.0)
    return ~low


def _band_values(spec: torch.Tensor, domain: str) -> torch.Tensor:
    return spec.abs() if domain == "amplitude" else spec


def band_stats(x: torch.Tensor, ratio: float = 0.5, domain: str = "complex"):
    """High-band statistics of each image and channel (SPEC 2, paper Eq. 1).

    x: [B, C, H, W] float, values in [0, 1].
    Returns: mu [B, C] float32 (real part of the band mean) and
    sigma [B, C] float32 (mean absolute deviation from mu over the band).
    """
    _check_domain(domain)
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
    """Sampled target statistics from the neighbours' statistics (SPEC 3, Eq. 2).

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


def check_shr_args(x, mu_bank, sigma_bank, eps_mu, eps_sigma, ratio, domain) -> None:
    """Shape and value checks shared by every SHR backend, with messages a user can act on."""
    _check_domain(domain)
    _check_ratio(ratio)
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    b, c = x.shape[:2]
    for name, t in (("mu_bank", mu_bank), ("sigma_bank", sigma_bank)):
        if t.dim() != 3 or t.shape[0] != b or t.shape[2] != c or t.shape[1] < 1:
            raise ValueError(f"{name} must be [B={b}, K>=1, C={c}], got {tuple(t.shape)}")
    if mu_bank.shape != sigma_bank.shape:
        raise ValueError(f"mu_bank {tuple(mu_bank.shape)} and sigma_bank "
                         f"{tuple(sigma_bank.shape)} must have one shape")
    for name, t in (("eps_mu", eps_mu), ("eps_sigma", eps_sigma)):
        if tuple(t.shape) != (b, c):
            raise ValueError(f"{name} must be [B={b}, C={c}], got {tuple(t.shape)}")


def shr(x: torch.Tensor, mu_bank: torch.Tensor, sigma_bank: torch.Tensor,
        eps_mu: torch.Tensor, eps_sigma: torch.Tensor,
        ratio: float = 0.5, domain: str = "complex") -> torch.Tensor:
    """Statistic High-frequency Replacement, AdaIN form (SPEC 3), torch reference.

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
    # sigma_s == 0: the normalised band is defined as 0 (SPEC 3).
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


def luma(x: torch.Tensor) -> torch.Tensor:
    """Luma of an image batch (SPEC 4).

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
    """Azimuthally averaged log10 power spectrum of the luma (SPEC 8, Durall et al.).

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
    """Mean absolute difference of two set profiles (SPEC 8).

    profile_a, profile_b: [R] from ``spectral_profile`` of images of one size, finite;
    ratio in [0, 1]. Returns: (high_band, all_radii) floats; the high band is radii
    >= ceil(ratio * (R - 1)).
    """
    _check_ratio(ratio)
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
