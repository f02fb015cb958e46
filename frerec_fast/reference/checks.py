"""Argument checks of the ops, public so that every backend refuses the same inputs
with the same messages (the fast layers import them from here).

Shape and type checks cost nothing on the device. The value checks (``require_finite``
and ``ssim_topk``'s exclusion range) read back to the host; a caller whose inputs are
validated where they are made switches them off with ``inputs_checked_upstream()``.
"""
from __future__ import annotations

import contextlib
import contextvars

import torch

DOMAINS = ("complex", "amplitude")
WIN = 11  # SSIM window side (method §4); images smaller than this have no valid region


def check_domain(domain: str) -> None:
    if domain not in DOMAINS:
        raise ValueError(f"domain must be one of {DOMAINS}, got {domain!r}")


def check_ratio(ratio: float) -> None:
    if not 0.0 <= float(ratio) <= 1.0:
        raise ValueError(f"ratio must be in [0, 1], got {ratio!r}")


def band_is_empty(h: int, w: int, ratio: float) -> bool:
    """Whether the high band of an ``h`` x ``w`` image at ``ratio`` has no position
    (method §1: every frequency is in the low band, e.g. a 1x1 image at ratio 0.5). The
    largest |frequency| of an n-point DFT is n // 2."""
    return h // 2 < ratio * h / 2.0 and w // 2 < ratio * w / 2.0


def check_images(x: torch.Tensor, ratio: float) -> None:
    """x must be a non-empty-sided [B, C, H, W] whose high band at ``ratio`` is not empty."""
    if x.dim() != 4:
        raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
    h, w = x.shape[-2:]
    if h < 1 or w < 1 or x.shape[1] < 1:
        raise ValueError(f"x must have at least one channel and one pixel, got shape "
                         f"{tuple(x.shape)}")
    if band_is_empty(h, w, ratio):
        raise ValueError(f"the high band of a {h}x{w} image at ratio={ratio} is empty")


def check_shr_args(x, mu_bank, sigma_bank, eps_mu, eps_sigma, ratio, domain) -> None:
    """Shape checks shared by every SHR backend, with messages a user can act on."""
    check_domain(domain)
    check_ratio(ratio)
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


def check_luma(name: str, t: torch.Tensor) -> None:
    if t.dim() != 4 or t.shape[1] != 1:
        raise ValueError(f"{name} must be luma [N, 1, h, w], got shape {tuple(t.shape)}")
    if t.shape[-1] < WIN or t.shape[-2] < WIN:
        raise ValueError(f"{name}: SSIM needs images of at least {WIN}x{WIN}, got "
                         f"{t.shape[-2]}x{t.shape[-1]}")


def check_pair(q: torch.Tensor, db: torch.Tensor) -> None:
    """Queries and database must both be luma of one size (every backend checks this)."""
    check_luma("q", q)
    check_luma("db", db)
    if q.shape[-2:] != db.shape[-2:]:
        raise ValueError(f"queries are {tuple(q.shape[-2:])} but the database is "
                         f"{tuple(db.shape[-2:])}: SSIM needs one size")


def clamp_k(k: int, n_db: int, has_exclude: bool) -> int:
    """K clamped to the database size minus self (method §4)."""
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    limit = n_db - (1 if has_exclude else 0)
    if limit < 1:
        raise ValueError(f"the database has {n_db} image(s): no neighbour left after self-exclusion")
    return min(int(k), limit)


def check_index_map(x: torch.Tensor, index_map: torch.Tensor, name: str) -> None:
    """The polar bin map must be int64 and on x's device."""
    if index_map.dtype != torch.int64:
        raise TypeError(f"{name}: index_map must be int64, got {index_map.dtype}")
    if x.device != index_map.device:
        raise ValueError(f"{name}: tensor on {x.device} but index_map on {index_map.device}")


def check_pool(amplitude: torch.Tensor, index_map: torch.Tensor, name: str = "ring_pool") -> None:
    """amplitude: [B, H, Wh] float; index_map: [H, Wh] int64 on the same device."""
    check_index_map(amplitude, index_map, name)
    if amplitude.dim() != 3 or amplitude.shape[1:] != index_map.shape:
        raise ValueError(f"{name}: amplitude {tuple(amplitude.shape)} does not match "
                         f"index_map {tuple(index_map.shape)} as [B, H, Wh]")
    if not amplitude.is_floating_point():
        raise TypeError(f"{name}: amplitude must be a float tensor, got {amplitude.dtype}")


def check_scatter(values: torch.Tensor, index_map: torch.Tensor,
                  name: str = "ring_scatter") -> None:
    """values: [B, n_bins] float; index_map: [H, Wh] int64 on the same device."""
    check_index_map(values, index_map, name)
    if values.dim() != 2:
        raise ValueError(f"{name}: values must be [B, n_bins], got {tuple(values.shape)}")
    if not values.is_floating_point():
        raise TypeError(f"{name}: values must be a float tensor, got {values.dtype}")


def check_pool_amplitude(re: torch.Tensor, im: torch.Tensor, index_map: torch.Tensor,
                         name: str = "ring_pool_amplitude") -> None:
    """re, im: [B, C, H, Wh] real, same shape, dtype and device; index_map [H, Wh] int64."""
    check_index_map(re, index_map, name)
    if re.shape != im.shape or re.dtype != im.dtype or re.device != im.device:
        raise ValueError(f"{name}: re {tuple(re.shape)} {re.dtype} {re.device} and im "
                         f"{tuple(im.shape)} {im.dtype} {im.device} must agree")
    if re.dim() != 4 or re.shape[2:] != index_map.shape:
        raise ValueError(f"{name}: spectrum {tuple(re.shape)} does not match index_map "
                         f"{tuple(index_map.shape)} as [B, C, H, Wh]")
    if not re.is_floating_point():
        raise TypeError(f"{name}: re/im must be real float tensors, got {re.dtype}")


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
