"""SHR and band statistics as Triton kernels on the rfft2 half spectrum (method §1-3).

Pipeline of ``shr`` (what is fused and what is not):

1. ``torch.fft.rfft2(x, norm="ortho")`` -> complex64 ``[B, C, H, W//2+1]`` (cuFFT on a
   GPU; no fftshift: the band is defined on signed frequencies, which are computed from
   indices, so the unshifted layout is used as is). ``torch.view_as_real`` gives the
   kernels a float32 ``[..., 2]`` view of the same memory: no copy.
2. ``_band_stats_kernel``: one program per (image, channel) plane. It loops over the
   plane in tiles of ``FREREC_TRITON_SHR_STATS_BLOCK`` coefficients, computing band
   membership and the Hermitian column weight from the row/column index (no mask tensor
   is read), and makes two passes: the weighted band mean, then the weighted mean
   absolute deviation around it. Writes ``mu, sigma [B*C]`` float32.
3. ``bank_targets`` (torch, ``[B, K, C] -> [B, C]``, float64): the neighbour statistics
   and noise into ``mu_hat, sigma_hat``. Tiny; not worth a kernel.
4. ``_shr_apply_kernel``: grid (plane, tile); rewrites the high-band coefficients of
   the half spectrum in place (AdaIN replacement, method §3); low-band coefficients are
   neither loaded nor stored.
5. ``torch.fft.irfft2(..., s=(H, W), norm="ortho")``.

Half spectrum and exact Hermitian weights: the full spectrum of a real image satisfies
``F[-u, -v] = conj(F[u, v])``, and the band is symmetric under ``f -> -f``. A stored
column ``v`` with ``0 < v < W/2`` stands for itself and its mirror column ``W - v``, so
its coefficients carry weight 2 in the band sums; column 0 and (W even) column W/2 are
their own mirrors (their rows pair up inside the stored column) and carry weight 1.
``Re(z)`` and ``|z - mu|`` (``mu`` real) and ``|z|`` are equal on ``z`` and ``conj(z)``,
so the weighted half-spectrum sums equal the full-spectrum sums exactly. The
replacement commutes with conjugation (``mu_s``, ``mu_hat``, ``scale`` are real), so the
edited half spectrum is still the half of a Hermitian spectrum and ``irfft2`` returns
what ``Re(ifft2)`` of the edited full spectrum would.

Band membership: the low band is ``|fu| < r*H/2 and |fv| < r*W/2``. For an integer
``a`` and real ``t``, ``a < t`` iff ``a < ceil(t)``, so the host passes the integer limits
``ceil(r*H/2)`` and ``ceil(r*W/2)`` (computed in float64 like the reference) and the
kernel compares integers: membership is exact, with no float rounding at the edge. In
the half spectrum ``|fv| == v`` for every stored column ``0 <= v <= W//2``.

Precision: coefficients are float32 (the rfft2 output); per-element work (``|z|``,
``|z - mu|``) is float32, and the band sums are accumulated in **float64** (one float64
accumulator per lane across tiles, then a tree sum), so the statistics carry only the
float32 spectrum's own error (relative ~1e-7) and no summation error growing with the
plane size (a float32 accumulation over a 512x257 plane could lose ~1e-5 relative in
the worst case). On an H100 the float64 adds cost nothing measurable: the kernel is
bound by memory traffic (about 8 bytes per coefficient per pass). Measured against the
float64 NumPy oracle (tests/ops/test_band_stats.py, test_shr.py): statistics within rtol 1e-5 / atol
1e-6 and outputs within atol 2e-5, the tolerances the torch and C++ backends meet.

Block sizes (environment variables, powers of two, read at import):

- ``FREREC_TRITON_SHR_STATS_BLOCK`` (default 1024): coefficients per tile of the
  statistics loop; ``FREREC_TRITON_SHR_STATS_WARPS`` (default 4) warps per program,
  i.e. 8 coefficients per thread per tile.
- ``FREREC_TRITON_SHR_APPLY_BLOCK`` (default 1024): coefficients per program of the
  replacement kernel; ``FREREC_TRITON_SHR_APPLY_WARPS`` (default 4).

Blocks are clipped to the plane size (next power of two), so tiny images do not pay
for empty lanes (this matters most in the CPU interpreter, whose cost grows with the
block).

GPU performance notes (not measurable in the interpreter): the statistics kernel has
one program per plane, so with fewer planes than SMs (e.g. 16 planes of 256x256 on 132
SMs) it runs at a fraction of the machine's bandwidth; a split-plane variant (partial
sums per (plane, chunk) then a second tiny reduction, or atomics in float64) is the
next step if profiling shows it matters next to the two FFTs. Loads are two stride-2
float32 streams (real, imaginary) over the same cache lines, so DRAM traffic is not
doubled; the second pass re-reads the plane, which for planes up to ~1 MiB (512x512)
mostly hits L2 when few planes are in flight.
"""
from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from frerec_fast.fast.registration import register_spectral_ops
from .utils import check_triton_device, env_pow2, pick_block

FREREC_TRITON_SHR_STATS_BLOCK = env_pow2("FREREC_TRITON_SHR_STATS_BLOCK", 1024, lo=16)
FREREC_TRITON_SHR_STATS_WARPS = env_pow2("FREREC_TRITON_SHR_STATS_WARPS", 4, hi=32)
FREREC_TRITON_SHR_APPLY_BLOCK = env_pow2("FREREC_TRITON_SHR_APPLY_BLOCK", 1024, lo=16)
FREREC_TRITON_SHR_APPLY_WARPS = env_pow2("FREREC_TRITON_SHR_APPLY_WARPS", 4, hi=32)


@triton.jit
def _band_position(offs, H, W, WH, LIM_U, LIM_V):
    """Flat index in an [H, WH] half-spectrum plane -> (high-band flag, Hermitian weight).

    offs: [BLOCK] int32 flat indices. Returns: high [BLOCK] bool (also False past the
    plane's end), weight [BLOCK] float32 (1 or 2 on the band, 0 elsewhere).
    """
    inside = offs < H * WH
    u = offs // WH
    v = offs - u * WH
    # Signed row frequency in FFT order: 0, 1, ..., then negative (method §1).
    fu = tl.where(u < (H + 1) // 2, u, u - H)
    # Low band: |fu| < LIM_U and v < LIM_V (integer limits, exact). High = not low.
    high = inside & ((tl.abs(fu) >= LIM_U) | (v >= LIM_V))
    # Column 0 and, for even W, column W/2 are their own mirrors: weight 1; others 2.
    self_mirror = (v == 0) | (2 * v == W)
    weight = tl.where(high, tl.where(self_mirror, 1.0, 2.0), 0.0)
    return high, weight


@triton.jit
def _band_stats_kernel(spec_ptr, mu_ptr, sigma_ptr, H, W, WH, LIM_U, LIM_V, COUNT,
                       AMPLITUDE: tl.constexpr, BLOCK: tl.constexpr):
    """High-band mean and mean absolute deviation of one plane per program.

    spec_ptr: [P, H, WH, 2] float32 (view_as_real of the complex64 half spectrum);
    mu_ptr, sigma_ptr: [P] float32 outputs; COUNT: number of band positions of the
    full H x W spectrum (sum of the weights). Grid: (P,).
    """
    plane = tl.program_id(0).to(tl.int64)
    n = H * WH
    base = spec_ptr + plane * n * 2
    lane = tl.arange(0, BLOCK)
    # No COUNT.to(): compiled Triton turns an int argument equal to 1 into a constexpr,
    # which has no .to() (the interpreter cannot show it). Dividing the float64 sums by
    # the integer promotes it to float64 exactly (COUNT < 2**53).
    count = COUNT

    # Pass 1: weighted band mean of Re(F) (complex) or |F| (amplitude).
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, n, BLOCK):
        offs = start + lane
        high, weight = _band_position(offs, H, W, WH, LIM_U, LIM_V)
        re = tl.load(base + 2 * offs, mask=high, other=0.0)
        if AMPLITUDE:
            im = tl.load(base + 2 * offs + 1, mask=high, other=0.0)
            val = tl.sqrt(re * re + im * im)
        else:
            # The band mean's imaginary part is zero by symmetry: only Re is needed.
            val = re
        acc += (weight * val).to(tl.float64)
    mu = tl.sum(acc, axis=0) / count
    mu32 = mu.to(tl.float32)

    # Pass 2: weighted mean of |F - mu| (mu real, so |F - mu| = hypot(Re F - mu, Im F)).
    acc = tl.zeros([BLOCK], dtype=tl.float64)
    for start in range(0, n, BLOCK):
        offs = start + lane
        high, weight = _band_position(offs, H, W, WH, LIM_U, LIM_V)
        re = tl.load(base + 2 * offs, mask=high, other=0.0)
        im = tl.load(base + 2 * offs + 1, mask=high, other=0.0)
        if AMPLITUDE:
            dev = tl.abs(tl.sqrt(re * re + im * im) - mu32)
        else:
            dr = re - mu32
            dev = tl.sqrt(dr * dr + im * im)
        # weight is 0 off the band, where dev = |0 - mu| would otherwise leak in.
        acc += (weight * dev).to(tl.float64)
    sigma = tl.sum(acc, axis=0) / count

    tl.store(mu_ptr + plane, mu32)
    tl.store(sigma_ptr + plane, sigma.to(tl.float32))


@triton.jit
def _shr_apply_kernel(spec_ptr, mu_s_ptr, sigma_s_ptr, mu_hat_ptr, sigma_hat_ptr,
                      H, W, WH, LIM_U, LIM_V,
                      AMPLITUDE: tl.constexpr, BLOCK: tl.constexpr):
    """AdaIN replacement of the high band, in place (method §3).

    spec_ptr: [P, H, WH, 2] float32, edited in place; mu_s, sigma_s (own statistics),
    mu_hat, sigma_hat (targets): [P] float32. Grid: (P, cdiv(H*WH, BLOCK)); each
    coefficient belongs to exactly one program, so the in-place edit has no race.
    """
    plane = tl.program_id(0).to(tl.int64)
    tile = tl.program_id(1)
    n = H * WH
    base = spec_ptr + plane * n * 2
    offs = tile * BLOCK + tl.arange(0, BLOCK)
    high, _ = _band_position(offs, H, W, WH, LIM_U, LIM_V)

    mu_s = tl.load(mu_s_ptr + plane)
    sigma_s = tl.load(sigma_s_ptr + plane)
    mu_hat = tl.load(mu_hat_ptr + plane)
    sigma_hat = tl.load(sigma_hat_ptr + plane)
    # sigma_s == 0 (flat band): the normalised band is 0, so the band becomes mu_hat.
    scale = tl.where(sigma_s > 0, sigma_hat / tl.where(sigma_s > 0, sigma_s, 1.0), 0.0)

    re = tl.load(base + 2 * offs, mask=high, other=0.0)
    im = tl.load(base + 2 * offs + 1, mask=high, other=0.0)
    if AMPLITUDE:
        amp = tl.sqrt(re * re + im * im)
        new_amp = tl.maximum((amp - mu_s) * scale + mu_hat, 0.0)
        nonzero = amp > 0
        factor = new_amp / tl.where(nonzero, amp, 1.0)
        # Keep the phase; an exactly-zero coefficient takes phase 0 (method §3).
        new_re = tl.where(nonzero, re * factor, new_amp)
        new_im = tl.where(nonzero, im * factor, 0.0)
    else:
        # mu_s and mu_hat are real: the real part shifts, both parts scale.
        new_re = (re - mu_s) * scale + mu_hat
        new_im = im * scale
    tl.store(base + 2 * offs, new_re, mask=high)
    tl.store(base + 2 * offs + 1, new_im, mask=high)


def _band_limits(h: int, w: int, ratio: float):
    """Integer limits of the low band: |fu| < lim_u and |fv| < lim_v (exact, see above)."""
    return math.ceil(ratio * h / 2.0), math.ceil(ratio * w / 2.0)


@functools.lru_cache(maxsize=256)
def _band_count(h: int, w: int, ratio: float) -> int:
    """Number of high-band positions of the full h x w spectrum."""
    lim_u, lim_v = _band_limits(h, w, ratio)
    low_rows = sum(1 for u in range(h) if abs(u if u < (h + 1) // 2 else u - h) < lim_u)
    low_cols = sum(1 for v in range(w) if abs(v if v < (w + 1) // 2 else v - w) < lim_v)
    return h * w - low_rows * low_cols


def _half_spectrum(x: torch.Tensor):
    """x: [B, C, H, W] -> (spec complex64 [B, C, H, W//2+1], its float32 view [..., 2])."""
    spec = torch.fft.rfft2(x.float(), norm="ortho")
    view = torch.view_as_real(spec)  # same storage: the kernels edit spec through it
    if not view.is_contiguous():  # rfft2 returns a fresh contiguous tensor; guard anyway
        raise RuntimeError("rfft2 returned a non-contiguous spectrum")
    return spec, view


def _stats_launch(view: torch.Tensor, h: int, w: int, ratio: float, amplitude: bool):
    """view: [B, C, H, WH, 2] float32. Returns: mu, sigma [B*C] float32."""
    count = _band_count(h, w, float(ratio))
    if count == 0:
        raise ValueError(f"the high band of a {h}x{w} image at ratio={ratio} is empty")
    planes, wh = view.shape[0] * view.shape[1], view.shape[3]
    lim_u, lim_v = _band_limits(h, w, float(ratio))
    mu = torch.empty(planes, dtype=torch.float32, device=view.device)
    sigma = torch.empty_like(mu)
    if planes:
        block = pick_block(h * wh, FREREC_TRITON_SHR_STATS_BLOCK, 16)
        _band_stats_kernel[(planes,)](view, mu, sigma, h, w, wh, lim_u, lim_v, count,
                                      AMPLITUDE=amplitude, BLOCK=block,
                                      num_warps=FREREC_TRITON_SHR_STATS_WARPS)
    return mu, sigma


def _stats(x: torch.Tensor, ratio: float, amplitude: bool):
    """x: [B, C, H, W] -> mu, sigma [B * C] float32."""
    h, w = x.shape[-2:]
    _, view = _half_spectrum(x)
    return _stats_launch(view, h, w, ratio, amplitude)


def _apply(x: torch.Tensor, mu_hat: torch.Tensor, sigma_hat: torch.Tensor, ratio: float,
           amplitude: bool) -> torch.Tensor:
    """x: [B, C, H, W]; mu_hat, sigma_hat: [B * C] float32. Returns: x_hat float32."""
    b, c, h, w = x.shape
    spec, view = _half_spectrum(x)
    mu_s, sigma_s = _stats_launch(view, h, w, ratio, amplitude)
    planes, wh = b * c, view.shape[3]
    if planes:
        lim_u, lim_v = _band_limits(h, w, float(ratio))
        block = pick_block(h * wh, FREREC_TRITON_SHR_APPLY_BLOCK, 16)
        grid = (planes, triton.cdiv(h * wh, block))
        _shr_apply_kernel[grid](view, mu_s, sigma_s, mu_hat, sigma_hat,
                                h, w, wh, lim_u, lim_v,
                                AMPLITUDE=amplitude, BLOCK=block,
                                num_warps=FREREC_TRITON_SHR_APPLY_WARPS)
    return torch.fft.irfft2(spec, s=(h, w), norm="ortho")


def _check_device(t: torch.Tensor, name: str) -> None:
    check_triton_device(t)


# Registered as frerec::band_stats_triton and frerec::shr_triton (fast/registration.py):
# band_stats(x [B, C, H, W]) -> mu, sigma [B, C] float32; shr(x, mu_bank, sigma_bank,
# eps_mu, eps_sigma) -> x_hat [B, C, H, W] float32, not clipped (method §2-3).
band_stats, shr = register_spectral_ops("triton", ("cpu", "cuda"), _stats, _apply,
                                        _check_device)

OPS = {"band_stats": band_stats, "shr": shr}
