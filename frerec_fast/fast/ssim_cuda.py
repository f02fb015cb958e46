"""All-pairs SSIM and exact SSIM top-K with the CUDA kernels of ``csrc/cuda/ssim_topk.cu``
(method §4). Same signatures, validation and results as the torch reference
(``frerec_fast.reference.ssim``); the kernels' design is described at the top of the ``.cu`` file.

What runs where:

1. Host (torch ops on q's device): each image set is copied once to a pixel-major
   layout ``[h*w, N]`` (image index fastest), which makes the kernels' loads coalesced.
2. ``frerec_ssim_stats``: per image, the maps ``M = mu``, ``A = mu^2 + C1/2`` and
   ``V = var + C2/2`` (``[3, h'*w', N]``), once per image.
3. ``frerec_ssim_pairs``: the mean SSIM of every pair of a 32-query x 32-image tile, the
   cross term ``E[x*y]`` filtered in shared memory and registers (no product images).
4. Top-K: the database is scored in chunks of ``db_chunk`` images, so only one
   ``[Q, chunk]`` score block exists at a time, and each block is merged into the running
   per-query selection by ``frerec_fast.reference.ssim.chunked_topk`` (torch ops on the GPU: a
   stable sort, so ties go to the lower index; self-exclusion by masking to -inf). The
   merge is deliberately not a kernel of its own: it is the reference's own code, so tie
   and exclusion semantics are those of every other backend, and it costs a sort of
   ``Q x (k + chunk)`` per chunk against ``Q x chunk x h'x w' x ~25`` flops of scoring
   (well under 1% at 64x64).

Exact duplicates score bit-identically wherever they sit (tile, grid, chunk), and an
image against itself scores exactly 1.0 (see the ``.cu`` file's notes on rounding).

The kernels run from ``frerec_fast._C`` when it was built with CUDA, else from the same
source compiled by CuPy/NVRTC, on the current torch stream either way.
"""
from __future__ import annotations

import torch

from .. import _ext
from ..reference.checks import WIN
from ..reference.ssim import chunked_topk, gaussian_window
from .registration import check_cuda, register_ssim_ops


# Launch geometry of ssim_topk.cu (its FREREC_SSIM_* macros), for the CuPy path.
_TQ = 32            # FREREC_SSIM_TQ: queries per pair block
_TN = 32            # FREREC_SSIM_TN: database images per pair block
_THREADS = 256      # FREREC_SSIM_THREADS: threads per pair block (2 x 2 pairs each)
_STATS_BLOCK = 128  # FREREC_SSIM_STATS_BLOCK: images per statistics block
_MAX_GRID_Y = 65535  # FREREC_SSIM_MAX_GRID_Y: query blocks per pair launch
_INT32_MAX = 2 ** 31 - 1


def _native():
    """The compiled extension when it carries these kernels, else None (CuPy path)."""
    if _ext.has_cuda_ext() and hasattr(_ext.ext(), "ssim_pairs_cuda"):
        return _ext.ext()
    return None


def _taps(device) -> torch.Tensor:
    """[11] float32 Gaussian taps, the values the torch reference filters with."""
    return gaussian_window(dtype=torch.float32).to(device)


def _cupy_launch(device: torch.device, name: str, grid: tuple, block: tuple, args: tuple) -> None:
    import cupy as cp
    from .cuda_source import module

    with cp.cuda.Device(device.index or 0), \
            cp.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
        module("ssim_topk.cu").get_function(name)(grid, block, args)


def _ptr(t: torch.Tensor):
    import cupy as cp
    return cp.uint64(t.data_ptr())


def _stats(img: torch.Tensor, taps: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """img: [h*w, N] float32 contiguous. Returns maps [3, h'*w', N] float32 (M, A, V)."""
    native = _native()
    if native is not None:
        return native.ssim_stats_cuda(img, taps, h, w)
    import cupy as cp

    n = img.shape[1]
    maps = torch.empty(3, (h - WIN + 1) * (w - WIN + 1), n, dtype=torch.float32,
                       device=img.device)
    if n:
        _cupy_launch(img.device, "frerec_ssim_stats", (-(-n // _STATS_BLOCK),), (_STATS_BLOCK,),
                     (_ptr(img), _ptr(taps), _ptr(maps[0]), _ptr(maps[1]), _ptr(maps[2]),
                      cp.int32(n), cp.int32(h), cp.int32(w)))
    return maps


def _pairs(q_img, q_maps, d_img, d_maps, taps, h: int, w: int) -> torch.Tensor:
    """Mean SSIM of every pair. q_img: [h*w, Q], d_img: [h*w, N]; maps from ``_stats``.
    Returns: [Q, N] float32."""
    native = _native()
    if native is not None:
        return native.ssim_pairs_cuda(q_img, q_maps, d_img, d_maps, taps, h, w)
    import cupy as cp

    n_q, n_d = q_img.shape[1], d_img.shape[1]
    out = torch.empty(n_q, n_d, dtype=torch.float32, device=q_img.device)
    if n_q == 0 or n_d == 0:
        return out
    n_blocks, q_blocks = -(-n_d // _TN), -(-n_q // _TQ)
    for qb in range(0, q_blocks, _MAX_GRID_Y):
        _cupy_launch(q_img.device, "frerec_ssim_pairs", (n_blocks, min(_MAX_GRID_Y, q_blocks - qb)),
                     (_THREADS,),
                     (_ptr(q_img), _ptr(d_img), _ptr(q_maps[0]), _ptr(q_maps[1]), _ptr(q_maps[2]),
                      _ptr(d_maps[0]), _ptr(d_maps[1]), _ptr(d_maps[2]), _ptr(taps), _ptr(out),
                      cp.int64(n_d), cp.int32(n_q), cp.int32(n_d), cp.int32(h), cp.int32(w),
                      cp.int32(qb)))
    return out


def _prepare(x: torch.Tensor, device: torch.device, taps: torch.Tensor):
    """Pixel-major copy and statistic maps of an image set.

    x: [N, 1, h, w] (any device, dtype, strides). Returns: img [h*w, N] float32 and
    maps [3, h'*w', N] float32 on ``device``.
    """
    n, _, h, w = x.shape
    if n > _INT32_MAX or h * w > _INT32_MAX:
        raise ValueError(f"{n} images of {h}x{w} exceed the CUDA kernels' int32 sizes; "
                         f"split the call")
    img = x.to(device=device, dtype=torch.float32).reshape(n, h * w).t().contiguous()
    return img, _stats(img, taps, h, w)


_check_cuda = check_cuda  # a module name: the CUDA emulation tests replace it


def _matrix(q: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
    """q: [Q, 1, h, w] CUDA; db: [N, 1, h, w] (moved to q's device). Returns: [Q, N] float32."""
    h, w = q.shape[-2:]
    taps = _taps(q.device)
    q_img, q_maps = _prepare(q, q.device, taps)
    d_img, d_maps = _prepare(db, q.device, taps)
    return _pairs(q_img, q_maps, d_img, d_maps, taps, h, w)


def _topk(q: torch.Tensor, db: torch.Tensor, k: int, exclude: torch.Tensor | None,
          db_chunk: int):
    """CUDA scores + running merge. Peak extra memory: the query copies (image + 3 maps,
    [h*w or h'*w', Q] each), one chunk's copies, and one [Q, db_chunk] score block."""
    h, w = q.shape[-2:]
    dev = q.device
    taps = _taps(dev)
    q_img, q_maps = _prepare(q, dev, taps)

    def score_block(j0: int, j1: int) -> torch.Tensor:
        d_img, d_maps = _prepare(db[j0:j1], dev, taps)
        return _pairs(q_img, q_maps, d_img, d_maps, taps, h, w)

    return chunked_topk(score_block, q.shape[0], db.shape[0], k, exclude, db_chunk, dev)


# Registered for every device type, and the device checked per call (by name, so
# that the CPU emulation of the kernels, tests/toolchain/test_cuda_emulated.py, can
# run them on CPU tensors); a CPU tensor gets _check_cuda's message.
OPS = register_ssim_ops("cuda", None, _matrix, _topk, lambda t, name: _check_cuda(t, name))
ssim_matrix, ssim_topk = OPS["ssim_matrix"], OPS["ssim_topk"]
