"""Exact SSIM matrix and top-K through the C++ CPU extension (OpenMP over pairs,
fused filtering of each pair's product; see csrc/cpu/ssim.cpp). Top-K runs over
database chunks so that only a [Q, chunk] block of scores exists at a time."""
from __future__ import annotations

import torch

from .. import _ext
from ..ssim import check_pair, chunked_topk

DB_CHUNK = 4096


def _planes(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0].float().contiguous()


def ssim_matrix(q: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
    """q: [Q, 1, h, w], db: [N, 1, h, w] CPU. Returns: [Q, N] float32."""
    check_pair(q, db)
    return _ext.ext().ssim_matrix(_planes(q), _planes(db))


def ssim_topk(q: torch.Tensor, db: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
              db_chunk: int = DB_CHUNK):
    """Exact top-k by SSIM (see ``frerec_fast.ssim_topk``). Returns scores, idx [Q, k]."""
    check_pair(q, db)
    C, qp = _ext.ext(), _planes(q)
    return chunked_topk(lambda j0, j1: C.ssim_matrix(qp, _planes(db[j0:j1])),
                        q.shape[0], db.shape[0], k, exclude, db_chunk, q.device)


def ssim_pairs(q: torch.Tensor, db: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """SSIM of chosen pairs: out[a, c] = SSIM(q[a], db[cand[a, c]]), each database image's
    statistics computed once however many queries short-listed it.

    q: [Q, 1, h, w], db: [N, 1, h, w] CPU; cand: [Q, C] int64 in [0, N). Returns [Q, C]
    float32, bit-identical to the matching ``ssim_matrix`` entries.
    """
    check_pair(q, db)
    return _ext.ext().ssim_pairs(_planes(q), _planes(db), cand.to(torch.int64).contiguous())
