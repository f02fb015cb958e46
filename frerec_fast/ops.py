"""Public ops with ``backend=`` dispatch (method §9). Each forwards to the
implementation ``backends.resolve`` picks for the input's device.

The checks every backend shares are made here, once, so that all backends refuse the
same inputs with the same message: NaN or infinite values (ValueError naming the
argument: a NaN would otherwise come out as NaN statistics and images, or as a top-K
ranked on NaN scores), an empty high band (a 1x1 image at ratio 0.5), and images with a
zero-size side. An empty batch (B = 0) gives empty results."""
from __future__ import annotations

import torch

from . import backends
from . import prefilter
from .reference.spectral import bank_targets
from .reference.checks import (check_domain, check_images, check_ratio, check_shr_args,
                               checks_skipped, require_finite)


def band_stats(x: torch.Tensor, ratio: float = 0.5, domain: str = "complex",
               backend: str = "auto"):
    """High-band statistics per image and channel (method §2).

    x: [B, C, H, W] float in [0, 1]. Returns: mu [B, C] float32, sigma [B, C] float32.
    """
    check_domain(domain)
    check_ratio(ratio)
    check_images(x, ratio)
    fn = backends.resolve("band_stats", backend, x.device)
    require_finite(x=x)
    if x.shape[0] == 0:
        empty = torch.zeros(x.shape[:2], dtype=torch.float32, device=x.device)
        return empty, empty.clone()
    return fn(x, ratio=ratio, domain=domain)


def shr(x: torch.Tensor, mu_bank: torch.Tensor, sigma_bank: torch.Tensor,
        eps_mu: torch.Tensor, eps_sigma: torch.Tensor, ratio: float = 0.5,
        domain: str = "complex", backend: str = "auto") -> torch.Tensor:
    """Statistic High-frequency Replacement (method §3).

    x: [B, C, H, W]; mu_bank, sigma_bank: [B, K, C]; eps_mu, eps_sigma: [B, C].
    Returns: x_hat [B, C, H, W] float32, not clipped.
    """
    check_shr_args(x, mu_bank, sigma_bank, eps_mu, eps_sigma, ratio, domain)
    check_images(x, ratio)
    fn = backends.resolve("shr", backend, x.device)
    require_finite(x=x, mu_bank=mu_bank, sigma_bank=sigma_bank, eps_mu=eps_mu,
                   eps_sigma=eps_sigma)
    if x.shape[0] == 0:
        return torch.zeros(x.shape, dtype=torch.float32, device=x.device)
    return fn(x, mu_bank, sigma_bank, eps_mu, eps_sigma, ratio=ratio, domain=domain)


def restat(y: torch.Tensor, mu_bank: torch.Tensor, sigma_bank: torch.Tensor,
           eps_mu: torch.Tensor, eps_sigma: torch.Tensor, ratio: float = 0.5,
           domain: str = "complex", backend: str = "auto") -> torch.Tensor:
    """Give y's high band the target statistics that SHR sampled from the same bank and
    noise (method §3, Eq. 2): ``shr(y, ...)`` with a bank of one entry holding
    (mu_hat, sigma_hat) and zero noise, so every SHR backend computes it.

    Used on the RHM's output (``CalibrateConfig.rhm_stats="shr"``): the RHM may reshape
    the band, but its statistics stay the real neighbours' ones SHR chose, which a
    network trained on few real images otherwise moves back towards the input's
    (docs/rhm_quality.md).
    y: [B, C, H, W]; mu_bank, sigma_bank: [B, K, C]; eps_mu, eps_sigma: [B, C].
    Returns: [B, C, H, W] float32, not clipped.
    """
    check_shr_args(y, mu_bank, sigma_bank, eps_mu, eps_sigma, ratio, domain)
    mu_hat, sigma_hat = bank_targets(mu_bank, sigma_bank, eps_mu, eps_sigma)
    zero = torch.zeros_like(eps_mu)
    # With K = 1 and zero noise, Eq. 2 gives back the single entry exactly.
    return shr(y, mu_hat.float()[:, None], sigma_hat.float()[:, None], zero, zero,
               ratio=ratio, domain=domain, backend=backend)


def ssim_matrix(q: torch.Tensor, db: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """SSIM of every query against every database image (method §4).

    q: [Q, 1, h, w], db: [N, 1, h, w] luma in [0, 1]. Returns: [Q, N] float32.
    """
    fn = backends.resolve("ssim_matrix", backend, q.device)
    require_finite(q=q, db=db)
    return fn(q, db)


def ssim_topk(q: torch.Tensor, db: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
              mode: str = "exact", backend: str = "auto", candidates: int | None = None,
              db_embedding: torch.Tensor | None = None):
    """Top-k database images by SSIM per query, ties to the lower index (method §4).

    q: [Q, 1, h, w], db: [N, 1, h, w]; exclude: optional [Q] int64 database index to
    skip per query (-1: none). k is clamped to N (N - 1 when exclude is given).
    mode: "exact" (default) scores every pair; "prefilter" short-lists ``candidates``
    per query (default max(4k, 1024)) by the inner product of local-structure
    embeddings of 16x16 thumbnails (one GEMM; ``db_embedding``: the database's,
    precomputed with ``prefilter.embed_db``) and re-ranks them by exact SSIM
    (``backend``'s op): approximate, see ``frerec_fast.prefilter.measure_recall`` for
    its recall@k against exact mode.
    Returns: scores [Q, k] float32 (descending), idx [Q, k] int64.
    """
    require_finite(q=q, db=db)
    ex = None if exclude is None or checks_skipped() else torch.as_tensor(exclude)
    if ex is not None and ex.numel():
        lo, hi = torch.stack(torch.aminmax(ex.long())).tolist()  # one host sync
        if lo < -1 or hi >= db.shape[0]:
            raise ValueError(f"exclude holds database positions from {lo} to {hi}; each must "
                             f"be -1 (none) or in 0..{db.shape[0] - 1}")
    if mode == "prefilter":
        # The candidate stage is one matmul (torch); backend picks the re-rank's SSIM.
        return prefilter.ssim_topk_prefilter(q, db, k, exclude=exclude, candidates=candidates,
                                   backend=backend, db_embedding=db_embedding)
    if mode != "exact":
        raise ValueError(f"mode {mode!r} is not available; use mode='exact' or 'prefilter'")
    return backends.resolve("ssim_topk", backend, q.device)(q, db, k, exclude=exclude)
