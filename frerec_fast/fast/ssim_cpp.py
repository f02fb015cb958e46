"""Exact SSIM matrix and top-K through the C++ CPU extension (OpenMP over pairs,
fused filtering of each pair's product; see csrc/cpu/ssim.cpp). Top-K runs over
database chunks so that only a [Q, chunk] block of scores exists at a time. Registered
as the custom ops ``frerec::ssim_matrix_cpp``, ``ssim_topk_cpp`` and ``ssim_pairs_cpp``."""
from __future__ import annotations

import torch

from .. import _ext
from ..reference.ssim import chunked_topk
from .registration import check_cpu, register_ssim_ops

def _planes(x: torch.Tensor) -> torch.Tensor:
    return x[:, 0].float().contiguous()


def _matrix(q: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
    """q: [Q, 1, h, w], db: [N, 1, h, w] CPU. Returns: [Q, N] float32."""
    return _ext.ext().ssim_matrix(_planes(q), _planes(db))


def _topk(q: torch.Tensor, db: torch.Tensor, k: int, exclude: torch.Tensor | None,
          db_chunk: int):
    C, qp = _ext.ext(), _planes(q)
    return chunked_topk(lambda j0, j1: C.ssim_matrix(qp, _planes(db[j0:j1])),
                        q.shape[0], db.shape[0], k, exclude, db_chunk, q.device)


def _pairs(q: torch.Tensor, db: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
    """out[a, c] = SSIM(q[a], db[cand[a, c]]), each database image's statistics computed
    once however many queries short-listed it; bit-identical to the matching
    ``ssim_matrix`` entries. cand: [Q, C] int64 in [0, N). Returns: [Q, C] float32."""
    return _ext.ext().ssim_pairs(_planes(q), _planes(db), cand.contiguous())


OPS = register_ssim_ops("cpp", ("cpu",), _matrix, _topk, check_cpu, pairs=_pairs)
ssim_matrix, ssim_topk, ssim_pairs = OPS["ssim_matrix"], OPS["ssim_topk"], OPS["ssim_pairs"]
