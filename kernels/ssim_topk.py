"""All-pairs SSIM and exact SSIM top-K as Triton kernels (method §4).

SSIM as in ``frerec_fast.reference.ssim``: Gaussian window 11x11 (sigma 1.5, the float32 taps
of ``ssim.gaussian_window``), valid region, population covariance, C1 = 0.01^2,
C2 = 0.03^2, data range 1, mean of the SSIM map.

Two kernels: ``_local_stats_kernel`` (per image, the local mean and variance maps, on a
pixel-major ``[h*w, N]`` copy) and ``_ssim_pairs_kernel`` (per tile of ``BQ`` queries x
``BN`` database images, the windowed cross term filtered in registers, never writing a
product image, reduced to the tile's mean SSIM). Top-K scores database chunks and merges
them on the host with the reference's ``chunked_topk`` (ties to the lower index). Why
this layout, the precision argument and the GPU performance notes: docs/architecture.md
section 5.2.

Block sizes (environment variables, powers of two, read at import):

- ``FREREC_TRITON_SSIM_BLOCK_Q`` (default 32) queries and ``FREREC_TRITON_SSIM_BLOCK_N``
  (default 32) database images per program, ``FREREC_TRITON_SSIM_WARPS`` (default 4).
- ``FREREC_TRITON_SSIM_STATS_BLOCK`` (default 128) images per statistics program.
- ``FREREC_TRITON_SSIM_DB_CHUNK`` (default 4096) database images per top-K chunk.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from frerec_fast.fast.registration import register_ssim_ops
from frerec_fast.reference.checks import WIN
from frerec_fast.reference.ssim import C1, C2, chunked_topk, gaussian_window
from .utils import check_triton_device, env_pow2, pick_block

FREREC_TRITON_SSIM_BLOCK_Q = env_pow2("FREREC_TRITON_SSIM_BLOCK_Q", 32, hi=256)
FREREC_TRITON_SSIM_BLOCK_N = env_pow2("FREREC_TRITON_SSIM_BLOCK_N", 32, hi=256)
FREREC_TRITON_SSIM_WARPS = env_pow2("FREREC_TRITON_SSIM_WARPS", 4, hi=32)
FREREC_TRITON_SSIM_STATS_BLOCK = env_pow2("FREREC_TRITON_SSIM_STATS_BLOCK", 128, hi=4096)
FREREC_TRITON_SSIM_DB_CHUNK = env_pow2("FREREC_TRITON_SSIM_DB_CHUNK", 4096, hi=1 << 24)

assert WIN == 11, "the kernels hard-code the 11-tap window of method §4"


# ---------------------------------------------------------------------------------
# Per-image statistics: lanes are images, layout [h*w, N] in, [h'*w', N] out.
# ---------------------------------------------------------------------------------

@triton.jit
def _tap1(y_ptr, pix, N, offs, mask, g):
    """One horizontal tap for a block of images: (g*y, g*y*y). y_ptr: [h*w, N]."""
    y = tl.load(y_ptr + pix * N + offs, mask=mask, other=0.0)
    gy = g * y
    return gy, gy * y


@triton.jit
def _hrow1(y_ptr, pix, N, offs, mask, t0, t1, t2, t3, t4, t5):
    """Horizontal 11-tap sums of y and y^2 starting at pixel index ``pix`` (int64).
    The window is symmetric: tap b and tap 10-b are both t_min(b, 10-b)."""
    s, ss = _tap1(y_ptr, pix, N, offs, mask, t0)
    a, b = _tap1(y_ptr, pix + 1, N, offs, mask, t1)
    s += a
    ss += b
    a, b = _tap1(y_ptr, pix + 2, N, offs, mask, t2)
    s += a
    ss += b
    a, b = _tap1(y_ptr, pix + 3, N, offs, mask, t3)
    s += a
    ss += b
    a, b = _tap1(y_ptr, pix + 4, N, offs, mask, t4)
    s += a
    ss += b
    a, b = _tap1(y_ptr, pix + 5, N, offs, mask, t5)
    s += a
    ss += b
    a, b = _tap1(y_ptr, pix + 6, N, offs, mask, t4)
    s += a
    ss += b
    a, b = _tap1(y_ptr, pix + 7, N, offs, mask, t3)
    s += a
    ss += b
    a, b = _tap1(y_ptr, pix + 8, N, offs, mask, t2)
    s += a
    ss += b
    a, b = _tap1(y_ptr, pix + 9, N, offs, mask, t1)
    s += a
    ss += b
    a, b = _tap1(y_ptr, pix + 10, N, offs, mask, t0)
    s += a
    ss += b
    return s, ss


@triton.jit
def _local_stats_kernel(y_ptr, m_ptr, a_ptr, v_ptr, g_ptr, N, W, H, WO, HO,
                        C1: tl.constexpr, C2: tl.constexpr, BLOCK: tl.constexpr):
    """Local mean/variance maps of a block of images.

    y_ptr: [H*W, N] float32 (pixel-major); m_ptr, a_ptr, v_ptr: [HO*WO, N] float32
    outputs (M = mu, A = mu^2 + C1/2, V = var + C2/2). g_ptr: [11] float32 taps.
    Grid: (cdiv(N, BLOCK),).

    Rolling vertical window: at input row r, accumulator k holds output row r-10+k and
    receives tap g[10-k] = g[k] (symmetric window); accumulator 0 is then complete.
    """
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < N
    t0 = tl.load(g_ptr + 0)
    t1 = tl.load(g_ptr + 1)
    t2 = tl.load(g_ptr + 2)
    t3 = tl.load(g_ptr + 3)
    t4 = tl.load(g_ptr + 4)
    t5 = tl.load(g_ptr + 5)
    zero = tl.zeros([BLOCK], dtype=tl.float32)
    for j in range(0, WO):
        # Rolling accumulators of the mean (m*) and the second moment (q*).
        m0 = zero
        m1 = zero
        m2 = zero
        m3 = zero
        m4 = zero
        m5 = zero
        m6 = zero
        m7 = zero
        m8 = zero
        m9 = zero
        m10 = zero
        q0 = zero
        q1 = zero
        q2 = zero
        q3 = zero
        q4 = zero
        q5 = zero
        q6 = zero
        q7 = zero
        q8 = zero
        q9 = zero
        q10 = zero
        for r in range(0, H):
            pix = (r * W + j).to(tl.int64)
            hs, hq = _hrow1(y_ptr, pix, N, offs, mask, t0, t1, t2, t3, t4, t5)
            m0 += t0 * hs
            m1 += t1 * hs
            m2 += t2 * hs
            m3 += t3 * hs
            m4 += t4 * hs
            m5 += t5 * hs
            m6 += t4 * hs
            m7 += t3 * hs
            m8 += t2 * hs
            m9 += t1 * hs
            m10 += t0 * hs
            q0 += t0 * hq
            q1 += t1 * hq
            q2 += t2 * hq
            q3 += t3 * hq
            q4 += t4 * hq
            q5 += t5 * hq
            q6 += t4 * hq
            q7 += t3 * hq
            q8 += t2 * hq
            q9 += t1 * hq
            q10 += t0 * hq
            # Output row r-10 is complete once r >= 10; earlier rows are off the image.
            out = ((r - 10) * WO + j).to(tl.int64) * N + offs
            emit = mask & (r >= 10)
            mu = m0
            tl.store(m_ptr + out, mu, mask=emit)
            # Each image carries HALF of each constant: a pair's denominator adds two
            # images' A and V, so A_q + A_n = mu_q^2 + mu_n^2 + C1 and
            # V_q + V_n = var_q + var_n + C2 (a full C2 here would count it twice).
            tl.store(a_ptr + out, mu * mu + C1 * 0.5, mask=emit)
            tl.store(v_ptr + out, (q0 - mu * mu) + C2 * 0.5, mask=emit)
            m0 = m1
            m1 = m2
            m2 = m3
            m3 = m4
            m4 = m5
            m5 = m6
            m6 = m7
            m7 = m8
            m8 = m9
            m9 = m10
            m10 = zero
            q0 = q1
            q1 = q2
            q2 = q3
            q3 = q4
            q4 = q5
            q5 = q6
            q6 = q7
            q7 = q8
            q8 = q9
            q9 = q10
            q10 = zero


# ---------------------------------------------------------------------------------
# Pairs: a [BQ, BN] tile of (query, database image) pairs per program.
# ---------------------------------------------------------------------------------

@triton.jit
def _tap2(x_ptr, y_ptr, pix, Q, N, offs_q, offs_n, mask_q, mask_n, g):
    """One horizontal tap for a tile of pairs: (g * x[pix, q]) * y[pix, n] -> [BQ, BN]."""
    x = tl.load(x_ptr + pix * Q + offs_q, mask=mask_q, other=0.0)
    y = tl.load(y_ptr + pix * N + offs_n, mask=mask_n, other=0.0)
    return (g * x)[:, None] * y[None, :]


@triton.jit
def _hrow2(x_ptr, y_ptr, pix, Q, N, offs_q, offs_n, mask_q, mask_n, t0, t1, t2, t3, t4, t5):
    """Horizontal 11-tap sum of x*y for every pair of the tile, from pixel ``pix``."""
    h = _tap2(x_ptr, y_ptr, pix, Q, N, offs_q, offs_n, mask_q, mask_n, t0)
    h += _tap2(x_ptr, y_ptr, pix + 1, Q, N, offs_q, offs_n, mask_q, mask_n, t1)
    h += _tap2(x_ptr, y_ptr, pix + 2, Q, N, offs_q, offs_n, mask_q, mask_n, t2)
    h += _tap2(x_ptr, y_ptr, pix + 3, Q, N, offs_q, offs_n, mask_q, mask_n, t3)
    h += _tap2(x_ptr, y_ptr, pix + 4, Q, N, offs_q, offs_n, mask_q, mask_n, t4)
    h += _tap2(x_ptr, y_ptr, pix + 5, Q, N, offs_q, offs_n, mask_q, mask_n, t5)
    h += _tap2(x_ptr, y_ptr, pix + 6, Q, N, offs_q, offs_n, mask_q, mask_n, t4)
    h += _tap2(x_ptr, y_ptr, pix + 7, Q, N, offs_q, offs_n, mask_q, mask_n, t3)
    h += _tap2(x_ptr, y_ptr, pix + 8, Q, N, offs_q, offs_n, mask_q, mask_n, t2)
    h += _tap2(x_ptr, y_ptr, pix + 9, Q, N, offs_q, offs_n, mask_q, mask_n, t1)
    h += _tap2(x_ptr, y_ptr, pix + 10, Q, N, offs_q, offs_n, mask_q, mask_n, t0)
    return h


@triton.jit
def _ssim_map_row(e_xy, mq_ptr, aq_ptr, vq_ptr, md_ptr, ad_ptr, vd_ptr, p, Q, N,
                  offs_q, offs_n, mask_q, mask_n, C1: tl.constexpr, C2: tl.constexpr):
    """SSIM map values at output position ``p`` (int64 flat index) for the tile.

    e_xy: [BQ, BN] windowed E[x*y]. Returns: [BQ, BN] float32.
    """
    mu_q = tl.load(mq_ptr + p * Q + offs_q, mask=mask_q, other=0.0)
    a_q = tl.load(aq_ptr + p * Q + offs_q, mask=mask_q, other=0.0)
    v_q = tl.load(vq_ptr + p * Q + offs_q, mask=mask_q, other=0.0)
    mu_n = tl.load(md_ptr + p * N + offs_n, mask=mask_n, other=0.0)
    a_n = tl.load(ad_ptr + p * N + offs_n, mask=mask_n, other=0.0)
    v_n = tl.load(vd_ptr + p * N + offs_n, mask=mask_n, other=0.0)
    mm = mu_q[:, None] * mu_n[None, :]
    num = (2.0 * mm + C1) * (2.0 * (e_xy - mm) + C2)
    # Masked lanes load 0: den = (0 + 0) * (0 + 0) would be 0; A, V hold C1/2, C2/2 only
    # on real lanes, so guard the division (masked results are never stored).
    den = (a_q[:, None] + a_n[None, :]) * (v_q[:, None] + v_n[None, :])
    return num / tl.where(den != 0.0, den, 1.0)


@triton.jit
def _ssim_pairs_kernel(x_ptr, y_ptr, mq_ptr, aq_ptr, vq_ptr, md_ptr, ad_ptr, vd_ptr,
                       g_ptr, out_ptr, stride_out, Q, N, W, H, WO, HO,
                       C1: tl.constexpr, C2: tl.constexpr,
                       BQ: tl.constexpr, BN: tl.constexpr):
    """Mean SSIM of every (query, database image) pair of a [BQ, BN] tile.

    x_ptr: [H*W, Q], y_ptr: [H*W, N] float32 pixel-major images; mq/aq/vq: [HO*WO, Q],
    md/ad/vd: [HO*WO, N] float32 statistic maps (see _local_stats_kernel); g_ptr: [11]
    taps; out_ptr: [Q, N'] float32 with row stride ``stride_out``, columns 0..N-1
    written. Grid: (cdiv(N, BN), cdiv(Q, BQ)): database blocks vary fastest, so the
    programs resident at one time share a query block, which stays in L2.
    """
    offs_n = tl.program_id(0) * BN + tl.arange(0, BN)
    offs_q = tl.program_id(1) * BQ + tl.arange(0, BQ)
    mask_n = offs_n < N
    mask_q = offs_q < Q
    t0 = tl.load(g_ptr + 0)
    t1 = tl.load(g_ptr + 1)
    t2 = tl.load(g_ptr + 2)
    t3 = tl.load(g_ptr + 3)
    t4 = tl.load(g_ptr + 4)
    t5 = tl.load(g_ptr + 5)
    zero = tl.zeros([BQ, BN], dtype=tl.float32)
    total = zero
    for j in range(0, WO):
        col = zero
        e0 = zero
        e1 = zero
        e2 = zero
        e3 = zero
        e4 = zero
        e5 = zero
        e6 = zero
        e7 = zero
        e8 = zero
        e9 = zero
        e10 = zero
        # Rows 0..9 only fill the window: no output row is complete yet.
        for r in range(0, 10):
            pix = (r * W + j).to(tl.int64)
            h = _hrow2(x_ptr, y_ptr, pix, Q, N, offs_q, offs_n, mask_q, mask_n,
                       t0, t1, t2, t3, t4, t5)
            e0 += t0 * h
            e1 += t1 * h
            e2 += t2 * h
            e3 += t3 * h
            e4 += t4 * h
            e5 += t5 * h
            e6 += t4 * h
            e7 += t3 * h
            e8 += t2 * h
            e9 += t1 * h
            e10 += t0 * h
            e0 = e1
            e1 = e2
            e2 = e3
            e3 = e4
            e4 = e5
            e5 = e6
            e6 = e7
            e7 = e8
            e8 = e9
            e9 = e10
            e10 = zero
        # Row r completes output row r-10 (accumulator e0).
        for r in range(10, H):
            pix = (r * W + j).to(tl.int64)
            h = _hrow2(x_ptr, y_ptr, pix, Q, N, offs_q, offs_n, mask_q, mask_n,
                       t0, t1, t2, t3, t4, t5)
            e0 += t0 * h
            e1 += t1 * h
            e2 += t2 * h
            e3 += t3 * h
            e4 += t4 * h
            e5 += t5 * h
            e6 += t4 * h
            e7 += t3 * h
            e8 += t2 * h
            e9 += t1 * h
            e10 += t0 * h
            p = ((r - 10) * WO + j).to(tl.int64)
            col += _ssim_map_row(e0, mq_ptr, aq_ptr, vq_ptr, md_ptr, ad_ptr, vd_ptr, p, Q, N,
                                 offs_q, offs_n, mask_q, mask_n, C1, C2)
            e0 = e1
            e1 = e2
            e2 = e3
            e3 = e4
            e4 = e5
            e5 = e6
            e6 = e7
            e7 = e8
            e8 = e9
            e9 = e10
            e10 = zero
        # Two-level sum (per column, then over columns) bounds the rounding growth.
        total += col
    # Not ``(HO * WO).to(tl.float32)``: compiled Triton passes an int argument equal to
    # 1 as a constexpr (11x11 images have HO = WO = 1), which has no ``.to``; the
    # product with 1.0 is a float32 scalar in both cases.
    mean = total / (HO * WO * 1.0)
    out = offs_q[:, None].to(tl.int64) * stride_out + offs_n[None, :]
    tl.store(out_ptr + out, mean, mask=mask_q[:, None] & mask_n[None, :])


# ---------------------------------------------------------------------------------
# Host wrappers
# ---------------------------------------------------------------------------------

def _taps(device) -> torch.Tensor:
    """[11] float32 Gaussian taps, the same values the torch reference filters with."""
    return gaussian_window(dtype=torch.float32).to(device)


def _prepare(x: torch.Tensor, device, taps: torch.Tensor):
    """Pixel-major copy and statistic maps of an image set.

    x: [N, 1, h, w]. Returns: img [h*w, N] float32 and (M, A, V) each [h'*w', N] float32.
    """
    n, _, h, w = x.shape
    img = x.to(device=device, dtype=torch.float32).reshape(n, h * w).t().contiguous()
    ho, wo = h - WIN + 1, w - WIN + 1
    maps = torch.empty(3, ho * wo, n, dtype=torch.float32, device=device)
    if n:
        block = pick_block(n, FREREC_TRITON_SSIM_STATS_BLOCK, 16)
        _local_stats_kernel[(triton.cdiv(n, block),)](
            img, maps[0], maps[1], maps[2], taps, n, w, h, wo, ho,
            C1=C1, C2=C2, BLOCK=block, num_warps=4)
    return img, maps


def _pair_scores(q_img, q_maps, d_img, d_maps, h: int, w: int, taps, out: torch.Tensor):
    """Launch the pair kernel: out[Q, N] <- mean SSIM of every pair."""
    n_q, n_d = q_img.shape[1], d_img.shape[1]
    if n_q == 0 or n_d == 0:
        return out
    bq = pick_block(n_q, FREREC_TRITON_SSIM_BLOCK_Q, 16)
    bn = pick_block(n_d, FREREC_TRITON_SSIM_BLOCK_N, 16)
    grid = (triton.cdiv(n_d, bn), triton.cdiv(n_q, bq))
    if grid[1] > 65535:
        raise ValueError(f"{n_q} queries exceed the kernel's grid limit; split the queries")
    _ssim_pairs_kernel[grid](q_img, d_img, q_maps[0], q_maps[1], q_maps[2],
                             d_maps[0], d_maps[1], d_maps[2], taps, out, out.stride(0),
                             n_q, n_d, w, h, w - WIN + 1, h - WIN + 1,
                             C1=C1, C2=C2, BQ=bq, BN=bn, num_warps=FREREC_TRITON_SSIM_WARPS)
    return out


def _matrix(q: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
    """q: [Q, 1, h, w]; db: [N, 1, h, w] (moved to q's device). Returns: [Q, N] float32."""
    h, w = q.shape[-2:]
    taps = _taps(q.device)
    q_img, q_maps = _prepare(q, q.device, taps)
    d_img, d_maps = _prepare(db, q.device, taps)
    out = torch.empty(q.shape[0], db.shape[0], dtype=torch.float32, device=q.device)
    return _pair_scores(q_img, q_maps, d_img, d_maps, h, w, taps, out)


def _topk(q: torch.Tensor, db: torch.Tensor, k: int, exclude: torch.Tensor | None,
          db_chunk: int):
    """Triton scores + host merge. Peak extra memory: the query copies (4 maps of
    [h*w or h'*w', Q]), one chunk's copies, and one [Q, db_chunk] score block."""
    h, w = q.shape[-2:]
    dev = q.device
    taps = _taps(dev)
    q_img, q_maps = _prepare(q, dev, taps)

    def score_block(j0: int, j1: int) -> torch.Tensor:
        d_img, d_maps = _prepare(db[j0:j1], dev, taps)
        out = torch.empty(q.shape[0], j1 - j0, dtype=torch.float32, device=dev)
        return _pair_scores(q_img, q_maps, d_img, d_maps, h, w, taps, out)

    return chunked_topk(score_block, q.shape[0], db.shape[0], k, exclude, db_chunk, dev)


def _check_device(t: torch.Tensor, name: str) -> None:
    check_triton_device(t)


# Registered as frerec::ssim_matrix_triton and frerec::ssim_topk_triton
# (fast/registration.py), with the reference's signatures and checks.
OPS = register_ssim_ops("triton", ("cpu", "cuda"), _matrix, _topk, _check_device,
                        db_chunk=FREREC_TRITON_SSIM_DB_CHUNK)
ssim_matrix, ssim_topk = OPS["ssim_matrix"], OPS["ssim_topk"]
