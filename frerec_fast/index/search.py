"""Top-K by SSIM over an index held in shards (method §4), one shard at a time.

**Exact.** Each shard is searched on its own with the exact op (``ops.ssim_topk``, any
backend) and the shard's answer is merged into a running selection with method §4's
merge (``reference.ssim.merge_topk``: a stable descending sort after the running
selection). Global position = shard order, then position in the shard; the shards are
walked in order and each returns its ties low-first, so among equal scores the lower
global position stays first: the result is the unsharded result exactly (the same
indices; the same score bits where the same backend scores a pair, since every backend
scores a pair independently of the rest of the database). Self-exclusion: a shard that
holds a query's excluded position is asked for one neighbour more, the excluded one is
set to -inf and falls out in the merge (top k of the rest are within the shard's top
k + 1), so a shard never loses a neighbour to another shard's exclusion.

**Prefilter.** Stage 1 runs the embedding GEMM shard by shard over each shard's stored
embeddings (chunks of ``prefilter.DEFAULT_DB_CHUNK`` inside a shard, as the single-file
prefilter does), selects each shard's best ``candidates`` in linear time (``top_c``:
the set and order a stable sort gives) and merges them into one short list per query:
the same short list as over the whole database. Stage 2 gathers the short-listed
thumbnails from their shards (in ascending global position, so ties still go low) and
re-ranks them by exact SSIM (``prefilter.rerank_with``). The recall is therefore that
of the unsharded prefilter on the same images (measured in
``benchmarks/test_bench_index_scale.py``).

Memory: one shard's scores at a time (the op's own bounds) plus the [Q, k] selection;
the prefilter holds the [Q, candidates] short list and the gathered thumbnails
(Q x candidates x h x w x 2 bytes at most).
"""
from __future__ import annotations

from typing import Callable, Iterable

import torch

from .. import prefilter
from ..ops import ssim_topk
from ..reference.checks import clamp_k
from ..reference.ssim import merge_topk


def check_exclude(exclude, n_q: int, n_db: int, device) -> torch.Tensor | None:
    """[Q] int64 on ``device`` with every value -1 or a position in 0..n_db-1."""
    if exclude is None:
        return None
    ex = torch.as_tensor(exclude, dtype=torch.long, device=device).reshape(-1)
    if ex.shape[0] != n_q:
        raise ValueError(f"exclude must be [Q={n_q}], got {tuple(ex.shape)}")
    if ex.numel():
        lo, hi = torch.stack(torch.aminmax(ex)).tolist()
        if lo < -1 or hi >= n_db:
            raise ValueError(f"exclude holds database positions from {lo} to {hi}; each must "
                             f"be -1 (none) or in 0..{n_db - 1}")
    return ex


def _empty(n_q: int, device):
    return (torch.empty(n_q, 0, dtype=torch.float32, device=device),
            torch.empty(n_q, 0, dtype=torch.long, device=device))


def exact_topk(q: torch.Tensor, parts: Iterable[tuple[int, torch.Tensor]], n_db: int, k: int,
               exclude: torch.Tensor | None = None, backend: str = "auto"):
    """Exact top-k over shards (module docstring).

    q: [Q, 1, h, w] float32; parts: (global start, thumbnails [n, 1, h, w] on q's
    device) per shard in global order (a generator: shards load as they are reached);
    n_db: total images; exclude: checked [Q] int64 or None.
    Returns: scores [Q, k'] float32 descending, idx [Q, k'] int64 global positions,
    k' = clamp_k(k, n_db, exclude given).
    """
    k = clamp_k(k, n_db, exclude is not None)
    best_s, best_i = _empty(q.shape[0], q.device)
    for start, thumbs in parts:
        n = thumbs.shape[0]
        if n == 0:
            continue
        hit = None
        if exclude is not None:
            hit = (exclude >= start) & (exclude < start + n)
        extra = 1 if hit is not None and bool(hit.any()) else 0
        s, i = ssim_topk(q, thumbs, min(k + extra, n), backend=backend)
        i = i + start
        if extra:
            s = s.masked_fill(i == exclude[:, None], float("-inf"))
        best_s, best_i = merge_topk(best_s, best_i, s, i, k)
    return best_s.contiguous(), best_i.contiguous()


def top_c(scores: torch.Tensor, c: int, offset: int = 0):
    """The c best of each row of ``scores`` [Q, n] by (score descending, position
    ascending): what a stable descending sort keeps, in linear time per row plus a sort
    of c. ``torch.topk`` finds the c-th largest value v; every score above v is kept, and
    of those equal to v the lowest positions, up to c.
    Returns: scores [Q, c'] descending, positions [Q, c'] int64 (+ offset), c' = min(c, n).
    """
    n = scores.shape[1]
    if c >= n:
        s, order = torch.sort(scores, dim=1, descending=True, stable=True)
        return s, order + offset
    v = torch.topk(scores, c, dim=1, sorted=False).values.amin(dim=1, keepdim=True)
    above, tied = scores > v, scores == v
    keep = above | (tied & (tied.cumsum(1) <= c - above.sum(1, keepdim=True)))
    pos = keep.nonzero()[:, 1].view(-1, c)                     # ascending in each row
    s, order = torch.sort(scores.gather(1, pos), dim=1, descending=True, stable=True)
    return s, pos.gather(1, order) + offset


def prefilter_topk(q: torch.Tensor, parts: Iterable[tuple[int, torch.Tensor]],
                   gather: Callable[[torch.Tensor], torch.Tensor], n_db: int, k: int,
                   exclude: torch.Tensor | None = None, candidates: int | None = None,
                   backend: str = "auto", db_chunk: int = prefilter.DEFAULT_DB_CHUNK):
    """Prefilter top-k over shards (module docstring).

    parts: (global start, embeddings [n, t * t] on q's device) per shard in global
    order; gather(ids [U] ascending global positions, on CPU) -> thumbnails [U, 1, h, w];
    candidates: short list per query (default ``prefilter.default_candidates``).
    Per shard: the embedding products in chunks of ``db_chunk`` (the GEMM shapes of the
    single-file prefilter, so the same score bits), the shard's best ``candidates`` by
    ``top_c``, merged into the running short list.
    Returns: as ``exact_topk`` (approximate; exact when candidates >= n_db).
    """
    dev, n_q = q.device, q.shape[0]
    k = clamp_k(k, n_db, exclude is not None)
    c = prefilter.default_candidates(k, n_db) if candidates is None else int(candidates)
    c = min(max(c, k), n_db)
    eq = prefilter.embed(q, prefilter.DEFAULT_THUMB)
    best_s, best_i = _empty(n_q, dev)
    for start, emb in parts:
        n = emb.shape[0]
        block = torch.empty(n_q, n, dtype=torch.float32, device=dev)
        for j in range(0, n, db_chunk):
            block[:, j:j + db_chunk] = eq @ emb[j:j + db_chunk].to(dev).t()
        if exclude is not None:
            rows = ((exclude >= start) & (exclude < start + n)).nonzero()[:, 0]
            block[rows, exclude[rows] - start] = float("-inf")
        s, i = top_c(block, c, start)
        best_s, best_i = merge_topk(best_s, best_i, s, i, c)
    # Stage 2 on the short-listed images only, in ascending global order.
    uniq = torch.unique(best_i.cpu())
    db = gather(uniq).to(dev)
    uniq = uniq.to(dev)
    cand = torch.searchsorted(uniq, best_i.contiguous())
    local_ex = None
    if exclude is not None:
        pos = torch.searchsorted(uniq, exclude).clamp(max=uniq.numel() - 1)
        local_ex = torch.where(uniq[pos] == exclude, pos, torch.full_like(pos, -1))
    s, i = prefilter.rerank_with(q, db, cand, k, local_ex, backend)
    return s, uniq[i]
