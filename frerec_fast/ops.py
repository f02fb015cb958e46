"""Public ops with ``backend=`` dispatch (SPEC 9). Each forwards to the
implementation ``backends.resolve`` picks for the input's device."""
from __future__ import annotations

import torch

from . import backends


def band_stats(x: torch.Tensor, ratio: float = 0.5, domain: str = "complex",
               backend: str = "auto"):
    """High-band statistics per image and channel (SPEC 2).

    x: [B, C, H, W] float in [0, 1]. Returns: mu [B, C] float32, sigma [B, C] float32.
    """
    return backends.resolve("band_stats", backend, x.device)(x, ratio=ratio, domain=domain)


def shr(x: torch.Tensor, mu_bank: torch.Tensor, sigma_bank: torch.Tensor,
        eps_mu: torch.Tensor, eps_sigma: torch.Tensor, ratio: float = 0.5,
        domain: str = "complex", backend: str = "auto") -> torch.Tensor:
    """Statistic High-frequency Replacement (SPEC 3).

    x: [B, C, H, W]; mu_bank, sigma_bank: [B, K, C]; eps_mu, eps_sigma: [B, C].
    Returns: x_hat [B, C, H, W] float32, not clipped.
    """
    fn = backends.resolve("shr", backend, x.device)
    return fn(x, mu_bank, sigma_bank, eps_mu, eps_sigma, ratio=ratio, domain=domain)


def ssim_matrix(q: torch.Tensor, db: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """SSIM of every query against every database image (SPEC 4).

    q: [Q, 1, h, w], db: [N, 1, h, w] luma in [0, 1]. Returns: [Q, N] float32.
    """
    return backends.resolve("ssim_matrix", backend, q.device)(q, db)


def ssim_topk(q: torch.Tensor, db: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
              mode: str = "exact", backend: str = "auto", candidates: int | None = None,
              db_embedding: torch.Tensor | None = None):
    """Top-k database images by SSIM per query, ties to the lower index (SPEC 4).

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
    if mode == "prefilter":
        from .prefilter import ssim_topk_prefilter
        # The candidate stage is one matmul (torch); backend picks the re-rank's SSIM.
        return ssim_topk_prefilter(q, db, k, exclude=exclude, candidates=candidates,
                                   backend=backend, db_embedding=db_embedding)
    if mode != "exact":
        raise ValueError(f"mode {mode!r} is not available; use mode='exact' or 'prefilter'")
    return backends.resolve("ssim_topk", backend, q.device)(q, db, k, exclude=exclude)
