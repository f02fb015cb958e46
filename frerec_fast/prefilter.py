"""Approximate SSIM top-K: a GEMM-shaped candidate stage, then exact SSIM re-rank (method §4).

Exact top-K scores every (query, database image) pair with SSIM, which costs a full
11x11 windowed filter of the pair's product image: ~2 * h' * h * w multiply-adds per
pair (~0.45 M at 64x64). This mode spends that only on a short list:

1. Candidates (FAISS-style flat inner-product search): every image becomes a small
   embedding (``embed``): its luma area-pooled to ``thumb x thumb`` (default 16x16),
   then each pixel's deviation from its Gaussian-window local mean divided by the
   local standard deviation (SSIM's structure term, ``(x - mu) / sqrt(var + C2/2)``,
   on the thumbnail), L2-normalised. The inner product of two embeddings is then a
   local, contrast-normalised correlation: a cheap proxy for SSIM's mean structure
   term. One ``[Q, t^2] @ [t^2, chunk]`` matmul per database chunk (256 multiply-adds
   per pair at t = 16, ~1/1700 of a pair's SSIM at 64x64); a running per-query
   selection keeps the best ``candidates``. Self-exclusion masks the excluded
   position to -inf here, so it is never a candidate. The database side can be
   embedded once (``embed_db``) and passed in, as ``RealIndex`` does.
2. Re-rank: exact SSIM of each query against its own candidates only, with the same
   formulas as the torch reference (``frerec_fast.reference.ssim``), then the top ``k`` of those,
   ties to the lower index. The excluded position is masked again in this stage, which
   is what makes ``candidates >= N`` equal to exact top-K (then every image is a
   candidate, the excluded one included, at -inf).

SSIM work falls from ``Q * N`` pairs to ``Q * candidates`` (the default
``max(4 * k, 1024)``: a 2x cut at N = 2048, ~100x at N = 100k). The answer is
approximate: an image with high SSIM but a low embedding correlation can be missed.
Measured recall@200 (32 DCGAN queries against the shipped real slices grown to
N = 131072 by augmentation, as in benchmarks/test_bench_ssim.py), at 1/100 of the
exact SSIM work (1310 candidates): 0.997 with this embedding, 0.920 with the plain
Pearson correlation of the 16x16 thumbnails that it replaced (0.966 at 32x32); at
1/50: 1.000 and 0.968.
method §4 asks approximate modes to report recall@K against the exact answer:
``recall_at_k`` computes it, ``measure_recall`` runs both modes on a query sample.

Memory is bounded whatever N: the candidate stage holds one ``[Q, db_chunk]`` block
of inner products and the ``[Q, candidates]`` selection; the re-rank holds the query
statistics (2 x Q x h' x w' floats, as the exact reference), one database chunk with
its statistics (~3 x db_chunk x h x w floats) and the temporaries of one batch of
pairs (~8 x ``max_block_elems`` floats).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from . import backends
from .reference.checks import check_pair, clamp_k, require_finite
from .reference.ssim import filter_valid, local_stats, merge_topk, ssim_map

DEFAULT_THUMB = 16
# Local statistics of the embedding: Gaussian window of this sigma, in thumbnail pixels
# (4 image pixels at 64x64), and SSIM's C2 / 2 with L = 1. Sigma 1.0 gave recall@200
# 0.997 at 1/100 of the work on the set above; 1.5: 0.976, 2.0: 0.962.
EMBED_SIGMA = 1.0
EMBED_C = 0.03 ** 2 / 2
DEFAULT_DB_CHUNK = 4096  # database images per step of either stage
# Pair-product elements per re-rank batch, by device. The SSIM map is a dozen
# memory-bound element-wise passes, so on CPU a batch whose temporaries stay in cache
# wins: 512K floats (2 MiB each, 128 pairs at 64x64) ran 2-5x faster per pair than
# 32M (reference.ssim.DEFAULT_BLOCK_ELEMS) and as fast per pair as the exact reference at the
# same size (one thread of the 2-core CI-size box). A GPU launch wants more work: 4M
# (not measured).
PAIR_ELEMS = {"cpu": 1 << 19, "cuda": 1 << 22}
MIN_CANDIDATES = 1024
FLAT_RMS = 1e-5  # thumbnails with a smaller RMS deviation (intensity in [0, 1]) are flat


def default_candidates(k: int, n_db: int) -> int:
    """Short-list length per query: ``max(4 * k, 1024)`` clamped to ``n_db``.

    k: the (already clamped) number of neighbours wanted. 4x headroom over K keeps
    recall high when the thumbnail order and the SSIM order disagree locally; the floor
    of 1024 keeps small K from leaning entirely on a coarse proxy.
    """
    return min(n_db, max(4 * int(k), MIN_CANDIDATES))


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian filter, radius ceil(3 sigma), edges replicated.
    x: [N, 1, h, w] float32 -> same shape."""
    r = max(1, math.ceil(3 * sigma))
    g = torch.exp(-torch.arange(-r, r + 1, dtype=torch.float32, device=x.device) ** 2
                  / (2 * sigma * sigma))
    g = g / g.sum()
    x = F.conv2d(F.pad(x, (r, r, 0, 0), mode="replicate"), g.view(1, 1, 1, -1))
    return F.conv2d(F.pad(x, (0, 0, r, r), mode="replicate"), g.view(1, 1, -1, 1))


def embed(x: torch.Tensor, thumb: int = DEFAULT_THUMB) -> torch.Tensor:
    """Candidate-stage embeddings of luma images (module docstring, stage 1).

    x: [N, 1, h, w] (any float dtype; index thumbnails are float16). thumb: side of the
    pooled thumbnail, clamped to the image so pooling never upsamples.
    Returns: [N, t * t] float32, L2-normalised local structure
    ``(t - mu) / sqrt(var + EMBED_C)`` of the thumbnail t (mu, var: Gaussian window of
    EMBED_SIGMA); an image whose thumbnail is flat gets the zero vector (inner product
    0 with everything) rather than NaN.
    """
    t_h, t_w = min(thumb, x.shape[-2]), min(thumb, x.shape[-1])
    # Area pooling (= F.interpolate(mode="area"), the resampling method §4 uses for thumbs).
    t = F.adaptive_avg_pool2d(x.float(), (t_h, t_w))                  # [N, 1, t_h, t_w]
    mu = _blur(t, EMBED_SIGMA)
    var = (_blur(t * t, EMBED_SIGMA) - mu * mu).clamp_min(0.0)
    e = ((t - mu) / (var + EMBED_C).sqrt()).flatten(1)
    # A flat thumbnail leaves float32 rounding residue (~1e-8 per pixel) in t - mu;
    # normalising that would invent a direction, so a thumbnail whose RMS deviation
    # from its own mean is below FLAT_RMS counts as flat and maps to zero.
    flat_t = t.flatten(1)
    flat = (flat_t - flat_t.mean(dim=1, keepdim=True)).norm(dim=1, keepdim=True) \
        <= FLAT_RMS * flat_t.shape[1] ** 0.5
    norm = e.norm(dim=1, keepdim=True)
    return torch.where(flat | (norm == 0), torch.zeros_like(e), e / norm.clamp_min(1e-30))


def embed_db(db: torch.Tensor, thumb: int = DEFAULT_THUMB, device=None,
             db_chunk: int = DEFAULT_DB_CHUNK) -> torch.Tensor:
    """``embed`` of a whole database, chunk by chunk on ``device`` (default db's).

    db: [N, 1, h, w]. Returns: [N, t * t] float32 on ``device``: pass it as
    ``db_embedding`` to skip re-embedding the database on every query batch.
    """
    dev = torch.device(device) if device is not None else db.device
    parts = [embed(db[j:j + db_chunk].to(dev), thumb) for j in range(0, db.shape[0], db_chunk)]
    return torch.cat(parts) if parts else torch.empty(0, 0, device=dev)


def _check_exclude(exclude, n_q: int, device):
    if exclude is None:
        return None
    exclude = torch.as_tensor(exclude, dtype=torch.long, device=device).reshape(-1)
    if exclude.shape[0] != n_q:
        raise ValueError(f"exclude must be [Q={n_q}], got {tuple(exclude.shape)}")
    return exclude


def candidate_topk(q: torch.Tensor, db: torch.Tensor, candidates: int,
                   exclude: torch.Tensor | None = None, thumb: int = DEFAULT_THUMB,
                   db_chunk: int = DEFAULT_DB_CHUNK, db_embedding: torch.Tensor | None = None):
    """Stage 1: the ``candidates`` database images of highest embedding correlation.

    q: [Q, 1, h, w]; db: [N, 1, h, w] (chunks are moved to q's device as they are
    embedded), or db_embedding: [N, t * t] from ``embed_db`` with the same thumb
    (then db is not read); exclude: [Q] int64 or None (-1: none); candidates in [1, N].
    Returns: scores [Q, C] float32 (descending; the excluded position, if it is kept
    at all, holds -inf), idx [Q, C] int64, C = candidates; ties to the lower index.
    """
    dev, n_q, n_db = q.device, q.shape[0], db.shape[0]
    if not 1 <= candidates <= n_db:
        raise ValueError(f"candidates must be in [1, {n_db}], got {candidates}")
    exclude = _check_exclude(exclude, n_q, dev)
    eq = embed(q.to(dev), thumb)                                      # [Q, t^2]
    best_s = torch.empty(n_q, 0, dtype=torch.float32, device=dev)
    best_i = torch.empty(n_q, 0, dtype=torch.long, device=dev)
    if db_embedding is not None and tuple(db_embedding.shape) != (n_db, eq.shape[1]):
        raise ValueError(f"db_embedding must be [{n_db}, {eq.shape[1]}] (embed_db with "
                         f"thumb={thumb}), got {tuple(db_embedding.shape)}")
    for j in range(0, n_db, db_chunk):
        if db_embedding is not None:
            ed = db_embedding[j:j + db_chunk].to(dev)                 # [n, t^2]
        else:
            ed = embed(db[j:j + db_chunk].to(dev), thumb)             # [n, t^2]
        block = eq @ ed.t()                                           # [Q, n]
        idx = torch.arange(j, j + ed.shape[0], device=dev).expand(n_q, -1)
        if exclude is not None:
            block = block.masked_fill(idx == exclude[:, None], float("-inf"))
        best_s, best_i = merge_topk(best_s, best_i, block, idx, candidates)
    return best_s, best_i


def rerank(q: torch.Tensor, db: torch.Tensor, cand: torch.Tensor, k: int,
           exclude: torch.Tensor | None = None, db_chunk: int = DEFAULT_DB_CHUNK,
           max_block_elems: int | None = None):
    """Stage 2: exact SSIM of each query against its own candidates, then top-k.

    q: [Q, 1, h, w]; db: [N, 1, h, w]; cand: [Q, C] int64 database positions (a row
    may not repeat a position); k <= C; exclude: [Q] int64 or None (-1: none).
    Returns: scores [Q, k] float32 descending, idx [Q, k] int64, ties to the lower index.

    SSIM is computed as the torch reference does (``ssim._pair_block``: per-image
    local statistics, and the windowed mean of each pair's product; measured
    bit-identical on CPU), in the same database-major order: the database is walked in
    chunks of ``db_chunk`` images, each chunk's statistics are computed once (skipped if
    no query short-listed one of its images), and each query is scored against its
    candidates inside the chunk, a contiguous run of its sorted row. The query side is
    broadcast, not gathered; the database side is a slice when the run is a range of
    positions (as when every image is a candidate), else a gather. Work: 2 filters per
    database image (as exact) plus one per candidate pair (exact: one per pair of all N).
    Peak memory: one chunk with its statistics (~3 * db_chunk * h * w floats) and the
    temporaries of one batch of pairs (~8 * max_block_elems floats; default
    ``PAIR_ELEMS`` of q's device type).
    """
    dev = q.device
    n_q, n_c = cand.shape
    h, w = q.shape[-2:]
    exclude = _check_exclude(exclude, n_q, dev)
    # Ascending positions per row: each chunk's candidates are one run per row, and
    # the stable sort at the end breaks ties low-first.
    cand = torch.sort(cand.to(dev), dim=1).values
    qf = q.to(dev).float()
    mu_q, var_q = local_stats(qf)                                     # [Q, h', w']
    if max_block_elems is None:
        max_block_elems = PAIR_ELEMS.get(dev.type, PAIR_ELEMS["cuda"])
    pairs_per_batch = max(1, max_block_elems // (h * w))
    scores = torch.empty(n_q, n_c, dtype=torch.float32, device=dev)
    for j0 in range(0, db.shape[0], db_chunk):
        j1 = min(j0 + db_chunk, db.shape[0])
        lo = torch.searchsorted(cand, torch.full((n_q, 1), j0, device=dev))[:, 0]
        hi = torch.searchsorted(cand, torch.full((n_q, 1), j1, device=dev))[:, 0]
        if not bool((hi > lo).any()):
            continue  # nobody short-listed an image of this chunk: skip its statistics
        # A run is a range when its last position minus its first equals its length - 1.
        first = cand.gather(1, lo.clamp(max=n_c - 1)[:, None])[:, 0]
        last = cand.gather(1, (hi - 1).clamp(min=0)[:, None])[:, 0]
        is_range = (last - first) == (hi - lo - 1)
        d = db[j0:j1].to(dev).float()                                 # [n, 1, h, w]
        mu_d, var_d = local_stats(d)                                  # [n, h', w']
        runs = zip(lo.tolist(), hi.tolist(), first.tolist(), is_range.tolist())
        for i, (a, b, f, rng) in enumerate(runs):
            for a0 in range(a, b, pairs_per_batch):
                a1 = min(a0 + pairs_per_batch, b)
                if rng:
                    t0 = f + (a0 - a) - j0
                    sel = slice(t0, t0 + a1 - a0)                     # a view, no copy
                else:
                    sel = cand[i, a0:a1] - j0                         # [P] gather
                md = mu_d[sel]                                        # [P, h', w']
                exy = filter_valid(qf[i] * d[sel])[:, 0]              # [P, h', w']
                cov = exy - mu_q[i] * md
                m = ssim_map(mu_q[i], md, var_q[i], var_d[sel], cov)
                scores[i, a0:a1] = m.mean(dim=(1, 2))
    if exclude is not None:
        scores = scores.masked_fill(cand == exclude[:, None], float("-inf"))
    s, order = torch.sort(scores, dim=1, descending=True, stable=True)
    return s[:, :k], torch.gather(cand, 1, order[:, :k])


def rerank_pairs(pairs_fn, q: torch.Tensor, db: torch.Tensor, cand: torch.Tensor, k: int,
                 exclude: torch.Tensor | None = None):
    """Stage 2 through an "ssim_pairs" backend (e.g. the C++ op, which computes each
    short-listed image's statistics once). Same contract as ``rerank``."""
    dev = q.device
    exclude = _check_exclude(exclude, q.shape[0], dev)
    cand = torch.sort(cand.to(dev), dim=1).values           # ties low-first, as rerank
    scores = pairs_fn(q, db, cand)
    if exclude is not None:
        scores = scores.masked_fill(cand == exclude[:, None], float("-inf"))
    s, order = torch.sort(scores, dim=1, descending=True, stable=True)
    return s[:, :k], torch.gather(cand, 1, order[:, :k])


def ssim_topk_prefilter(q: torch.Tensor, db: torch.Tensor, k: int,
                        exclude: torch.Tensor | None = None, candidates: int | None = None,
                        thumb: int = DEFAULT_THUMB, db_chunk: int = DEFAULT_DB_CHUNK,
                        max_block_elems: int | None = None, backend: str = "torch",
                        db_embedding: torch.Tensor | None = None):
    """Approximate top-k by SSIM: embedding-correlation short-list, exact SSIM re-rank.

    q: [Q, 1, h, w], db: [N, 1, h, w] luma in [0, 1] (db may be float16 or on another
    device; chunks are moved to q's device). exclude: optional [Q] int64 database
    position to skip per query (-1: none). k is clamped with ``reference.checks.clamp_k`` (to N,
    or N - 1 with exclude). candidates: short-list length per query, default
    ``default_candidates(k, N)``; raised to k if smaller, capped at N. With
    candidates = N the result equals exact top-K (same indices; scores to float32
    rounding of the torch reference).
    backend: the backend of the re-rank's "ssim_pairs" op ("auto" picks the fastest for
    q's device, e.g. the C++ op on CPU; "torch" is the chunked reference path above).
    db_embedding: optional ``embed_db(db, thumb)``, reused across calls.
    Returns: scores [Q, k] float32 descending (exact SSIM), idx [Q, k] int64, ties to
    the lower index.
    """
    check_pair(q, db)
    n_db = db.shape[0]
    k = clamp_k(k, n_db, exclude is not None)
    if candidates is None:
        candidates = default_candidates(k, n_db)
    candidates = min(max(int(candidates), k), n_db)
    exclude = _check_exclude(exclude, q.shape[0], q.device)
    _, cand = candidate_topk(q, db, candidates, exclude, thumb, db_chunk, db_embedding)
    return rerank_with(q, db, cand, k, exclude, backend, db_chunk, max_block_elems)


def rerank_with(q: torch.Tensor, db: torch.Tensor, cand: torch.Tensor, k: int,
                exclude: torch.Tensor | None = None, backend: str = "auto",
                db_chunk: int = DEFAULT_DB_CHUNK, max_block_elems: int | None = None):
    """Stage 2 through ``backend``'s "ssim_pairs" op: the chunked torch ``rerank`` for
    "torch" (faster than the op's plain reference), else ``rerank_pairs``. Same contract
    as ``rerank`` (also the re-rank of the sharded index, ``frerec_fast.index.search``)."""
    name = backends.resolve_name("ssim_pairs", backend, q.device)
    if name == "torch":
        return rerank(q, db, cand, k, exclude, db_chunk, max_block_elems)
    return rerank_pairs(backends.resolve("ssim_pairs", name, q.device), q, db, cand, k, exclude)


def recall_at_k(approx_idx: torch.Tensor, exact_idx: torch.Tensor) -> float:
    """Mean over queries of |approx top-K  intersect  exact top-K| / K.

    approx_idx, exact_idx: [Q, K] int64 database positions (one query per row; order
    within a row does not matter). Returns: float in [0, 1]; 1.0 for Q = 0.
    """
    if approx_idx.shape != exact_idx.shape or approx_idx.dim() != 2:
        raise ValueError(f"need two [Q, K] index tensors of one shape, got "
                         f"{tuple(approx_idx.shape)} and {tuple(exact_idx.shape)}")
    n_q, k = exact_idx.shape
    if n_q == 0 or k == 0:
        return 1.0
    a, e = approx_idx.cpu(), exact_idx.cpu()
    # [Q, K, K] membership test: rows hold distinct positions, so hits count each once.
    hits = (a[:, :, None] == e[:, None, :]).any(dim=2).sum()
    return hits.item() / (n_q * k)


def measure_recall(q: torch.Tensor, db: torch.Tensor, k: int,
                   exclude: torch.Tensor | None = None, candidates: int | None = None,
                   thumb: int = DEFAULT_THUMB, backend: str = "auto") -> dict:
    """Run exact and prefilter top-k on the same queries and report recall@K (method §4).

    q: [Q, 1, h, w] (a sample of queries is enough), db: [N, 1, h, w]; backend: of the
    exact reference (``frerec_fast.ssim_topk``). Returns: dict with recall, k,
    candidates, n_db and ssim_pair_fraction (SSIM pairs scored, relative to exact).
    """
    n_db = db.shape[0]
    kk = clamp_k(k, n_db, exclude is not None)
    c = candidates if candidates is not None else default_candidates(kk, n_db)
    c = min(max(int(c), kk), n_db)
    _, exact = backends.resolve("ssim_topk", backend, q.device)(q, db, kk, exclude=exclude)
    _, approx = ssim_topk_prefilter(q, db, kk, exclude=exclude, candidates=c, thumb=thumb)
    return {"recall": recall_at_k(approx, exact.to(approx.device)), "k": kk,
            "candidates": c, "n_db": n_db, "ssim_pair_fraction": c / n_db}
