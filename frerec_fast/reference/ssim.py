"""SSIM, all-pairs SSIM, SSIM of candidate pairs and exact SSIM top-K: the torch
reference of the retrieval ops (method §4).

SSIM: Gaussian window 11x11 (sigma 1.5), K1 = 0.01, K2 = 0.03, data range 1,
population covariance, mean over the valid region (windows fully inside the
image); equal to ``skimage.metrics.structural_similarity(a, b,
gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=1)``.

The Q x N matrix is computed in blocks whose size is bounded by
``max_block_elems`` (products held at once), and top-K keeps a running per-query
selection, so memory stays bounded however large the database.
"""
from __future__ import annotations

import functools
from typing import Callable

import torch

from .checks import WIN, check_luma, check_pair, clamp_k, require_finite

SIGMA = 1.5
K1, K2 = 0.01, 0.03
C1, C2 = (K1 * 1.0) ** 2, (K2 * 1.0) ** 2
DEFAULT_BLOCK_ELEMS = 1 << 25  # 32M floats = 128 MiB of pairwise products per block


def gaussian_window(size: int = WIN, sigma: float = SIGMA, dtype=torch.float32, device=None):
    """Normalised 1-D Gaussian taps. Returns: [size]."""
    x = torch.arange(size, dtype=torch.float64, device=device) - (size - 1) / 2.0
    g = torch.exp(-(x ** 2) / (2.0 * sigma ** 2))
    return (g / g.sum()).to(dtype)


@functools.lru_cache(maxsize=32)
def _band_matrix64(n: int) -> torch.Tensor:
    g = gaussian_window(dtype=torch.float64)
    m = torch.zeros(n - WIN + 1, n, dtype=torch.float64)
    for i in range(n - WIN + 1):
        m[i, i:i + WIN] = g
    return m


def band_matrix(n: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """The valid Gaussian filter along one axis as a matrix: row i holds the taps at
    columns i..i+10. Returns: [n - 10, n]."""
    return _band_matrix64(n).to(dtype=dtype, device=device)


def filter_valid(x: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian filter, valid region only, as two matrix products
    ``Gv @ x @ Gh^T`` (one small channel is far faster as a GEMM than as a conv2d).

    x: [N, 1, h, w]. Returns: [N, 1, h - 10, w - 10].
    """
    gv = band_matrix(x.shape[-2], x.dtype, x.device)
    gh = band_matrix(x.shape[-1], x.dtype, x.device)
    return torch.matmul(torch.matmul(gv, x), gh.t())


def ssim_map(mu_a, mu_b, var_a, var_b, cov):
    """SSIM at each position from local means, variances and covariance (any one shape)."""
    num = (2 * mu_a * mu_b + C1) * (2 * cov + C2)
    den = (mu_a * mu_a + mu_b * mu_b + C1) * (var_a + var_b + C2)
    return num / den


def ssim(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Paired SSIM.

    a, b: [B, 1, h, w] luma in [0, 1] (or [B, h, w]), finite (else ValueError).
    Returns: [B] float32.
    """
    if a.dim() == 3:
        a, b = a[:, None], b[:, None]
    check_luma("a", a)
    if a.shape != b.shape:
        raise ValueError(f"a {tuple(a.shape)} and b {tuple(b.shape)} must have one shape")
    require_finite(a=a, b=b)
    a, b = a.float(), b.float()
    mu_a, mu_b = filter_valid(a), filter_valid(b)
    var_a = filter_valid(a * a) - mu_a * mu_a
    var_b = filter_valid(b * b) - mu_b * mu_b
    cov = filter_valid(a * b) - mu_a * mu_b
    return ssim_map(mu_a, mu_b, var_a, var_b, cov).mean(dim=(1, 2, 3))


def local_stats(x: torch.Tensor):
    """Per-image local mean and variance maps, computed once per image.

    x: [N, 1, h, w]. Returns: mu [N, h', w'], var [N, h', w'] (h' = h - 10).
    """
    mu = filter_valid(x)
    var = filter_valid(x * x) - mu * mu
    return mu[:, 0], var[:, 0]


def _pair_block(q, mu_q, var_q, d, mu_d, var_d) -> torch.Tensor:
    """SSIM of every q against every d. q: [Qb, 1, h, w], d: [Nb, 1, h, w]. Returns [Qb, Nb]."""
    qb, nb = q.shape[0], d.shape[0]
    prod = (q[:, None] * d[None]).reshape(qb * nb, 1, *q.shape[-2:])
    exy = filter_valid(prod).view(qb, nb, *mu_q.shape[-2:])
    cov = exy - mu_q[:, None] * mu_d[None]
    m = ssim_map(mu_q[:, None], mu_d[None], var_q[:, None], var_d[None], cov)
    return m.mean(dim=(2, 3))


def _block_sizes(q: torch.Tensor, n_db: int, max_block_elems: int):
    hw = q.shape[-1] * q.shape[-2]
    pairs = max(1, max_block_elems // hw)
    qb = max(1, min(q.shape[0], int(pairs ** 0.5)))
    nb = max(1, min(n_db, pairs // qb))
    return qb, nb


def ssim_matrix(q: torch.Tensor, db: torch.Tensor,
                      max_block_elems: int = DEFAULT_BLOCK_ELEMS) -> torch.Tensor:
    """All-pairs SSIM, reference. q: [Q, 1, h, w], db: [N, 1, h, w]. Returns: [Q, N] float32."""
    check_pair(q, db)
    q, db = q.float(), db.to(q.device).float()
    mu_q, var_q = local_stats(q)
    out = torch.empty(q.shape[0], db.shape[0], dtype=torch.float32, device=q.device)
    qb, nb = _block_sizes(q, db.shape[0], max_block_elems)
    for j in range(0, db.shape[0], nb):
        d = db[j:j + nb]
        mu_d, var_d = local_stats(d)
        for i in range(0, q.shape[0], qb):
            out[i:i + qb, j:j + nb] = _pair_block(q[i:i + qb], mu_q[i:i + qb], var_q[i:i + qb],
                                                  d, mu_d, var_d)
    return out


def merge_topk(best_s, best_i, new_s, new_i, k: int):
    """Merge a running selection with new candidates; ties go to the lower index.

    best_*: [Q, k0] (sorted by score desc, then index asc), new_*: [Q, m] with indices
    all above those in best and ascending. Returns the merged [Q, min(k, k0 + m)].
    """
    s = torch.cat([best_s, new_s], 1)
    i = torch.cat([best_i, new_i], 1)
    # A stable descending sort keeps the earlier (lower-index) entry first among equals.
    s, order = torch.sort(s, dim=1, descending=True, stable=True)
    i = torch.gather(i, 1, order)
    return s[:, :k], i[:, :k]


def chunked_topk(score_block: Callable[[int, int], torch.Tensor], n_q: int, n_db: int, k: int,
                 exclude: torch.Tensor | None, chunk: int, device):
    """Running exact top-k over database chunks, shared by every backend.

    score_block(j0, j1) -> [Q, j1 - j0] scores of all queries against db[j0:j1].
    exclude: [Q] int64 database index to skip per query (-1: none) or None.
    Returns: scores [Q, k] float32 descending, idx [Q, k] int64 (ties: lower index).
    """
    k = clamp_k(k, n_db, exclude is not None)
    if exclude is not None:
        exclude = torch.as_tensor(exclude, dtype=torch.long, device=device).reshape(-1)
        if exclude.shape[0] != n_q:
            raise ValueError(f"exclude must be [Q={n_q}], got {tuple(exclude.shape)}")
    best_s = torch.empty(n_q, 0, dtype=torch.float32, device=device)
    best_i = torch.empty(n_q, 0, dtype=torch.long, device=device)
    chunk = max(int(chunk), k)
    for j in range(0, n_db, chunk):
        block = score_block(j, min(j + chunk, n_db)).to(device)
        idx = torch.arange(j, j + block.shape[1], device=device).expand(n_q, -1)
        if exclude is not None:
            block = block.masked_fill(idx == exclude[:, None], float("-inf"))
        best_s, best_i = merge_topk(best_s, best_i, block, idx, k)
    return best_s.contiguous(), best_i.contiguous()


def ssim_topk(q: torch.Tensor, db: torch.Tensor, k: int,
                    exclude: torch.Tensor | None = None,
                    max_block_elems: int = DEFAULT_BLOCK_ELEMS):
    """Exact top-k by SSIM, reference (see ``frerec_fast.ops.ssim_topk``).

    Returns: scores [Q, k] float32 descending, idx [Q, k] int64.
    """
    check_pair(q, db)
    _, nb = _block_sizes(q, db.shape[0], max_block_elems)
    return chunked_topk(lambda j0, j1: ssim_matrix(q, db[j0:j1], max_block_elems),
                        q.shape[0], db.shape[0], k, exclude, nb, q.device)


def ssim_pairs(q: torch.Tensor, db: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """Reference of the "ssim_pairs" op: out[a, c] = SSIM(q[a], db[cand[a, c]]).

    q: [Q, 1, h, w]; db: [N, 1, h, w]; cand: [Q, C] int64. Returns: [Q, C] float32.
    One query against its gathered candidates at a time (the prefilter's fast torch
    re-rank is ``prefilter.rerank``; this is the plain definition the other backends
    are tested against).
    """
    check_pair(q, db)
    out = torch.empty(cand.shape, dtype=torch.float32, device=q.device)
    for i in range(q.shape[0]):
        out[i] = ssim_matrix(q[i:i + 1], db[cand[i].to(db.device)].to(q.device))[0]
    return out
