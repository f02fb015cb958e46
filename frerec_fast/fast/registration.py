"""Registration of the fast ops as ``torch.library`` custom ops, one registrar per op
family, shared by the C++, Triton and CUDA backends.

A registered op (``frerec::<op>_<backend>``) has a fake implementation, so
``torch.compile`` and ``torch.export`` can trace through a model or function that calls
it instead of falling back to the torch reference; the ring ops also have autograd.
Each registrar returns the backend's public functions, which make the reference's
argument checks (``frerec_fast.reference.checks``) and then call the op: the same
inputs are refused with the same messages by every backend. ``device_types`` None
registers an op for every device (its ``check_device`` then refuses the wrong one).
"""
from __future__ import annotations

from typing import Callable

import torch

from ..reference.checks import (check_domain, check_pair, check_pool, check_pool_amplitude,
                                check_ratio, check_scatter, check_shr_args, clamp_k)
from ..reference.spectral import bank_targets
from .ring_plan import native, ring_plan

CheckDevice = Callable[[torch.Tensor, str], None]


def check_cpu(t: torch.Tensor, name: str) -> None:
    """The C++ backend's device check."""
    if t.device.type != "cpu":
        raise ValueError(f"{name}: the cpp backend needs CPU tensors, got {t.device} "
                         f"(use backend='cuda' or 'triton' on a GPU)")


def check_cuda(t: torch.Tensor, name: str) -> None:
    """The CUDA backend's device check."""
    if t.device.type != "cuda":
        raise ValueError(f"{name}: the CUDA backend needs CUDA tensors, got {t.device} "
                         f"(use backend='cpp' or 'torch' on CPU)")


def register_spectral_ops(backend: str, device_types: tuple[str, ...] | None, stats, apply,
                          check_device: CheckDevice):
    """``frerec::band_stats_<backend>`` and ``frerec::shr_<backend>``.

    stats(x, ratio, amplitude) -> (mu, sigma) [B, C] float32   (x: [B, C, H, W])
    apply(x, mu_hat, sigma_hat, ratio, amplitude) -> x_hat [B, C, H, W] float32
    (mu_hat, sigma_hat: [B * C] float32 contiguous, the sampled targets). Returns the
    public ``(band_stats, shr)``.
    """
    @torch.library.custom_op(f"frerec::band_stats_{backend}", mutates_args=(),
                             device_types=device_types)
    def stats_op(x: torch.Tensor, ratio: float, domain: str) -> tuple[torch.Tensor, torch.Tensor]:
        b, c = x.shape[:2]
        mu, sigma = stats(x, ratio, domain == "amplitude")
        return mu.reshape(b, c).clone(), sigma.reshape(b, c).clone()

    @stats_op.register_fake
    def _(x, ratio, domain):
        return (x.new_empty(x.shape[:2], dtype=torch.float32),
                x.new_empty(x.shape[:2], dtype=torch.float32))

    @torch.library.custom_op(f"frerec::shr_{backend}", mutates_args=(), device_types=device_types)
    def shr_op(x: torch.Tensor, mu_hat: torch.Tensor, sigma_hat: torch.Tensor, ratio: float,
               domain: str) -> torch.Tensor:
        return apply(x, mu_hat.float().reshape(-1).contiguous(),
                     sigma_hat.float().reshape(-1).contiguous(), ratio, domain == "amplitude")

    @shr_op.register_fake
    def _(x, mu_hat, sigma_hat, ratio, domain):
        return x.new_empty(x.shape, dtype=torch.float32)

    def band_stats(x: torch.Tensor, ratio: float = 0.5, domain: str = "complex"):
        """See ``frerec_fast.reference.band_stats``. x: [B, C, H, W].
        Returns: mu, sigma [B, C] float32."""
        check_domain(domain)
        check_ratio(ratio)
        if x.dim() != 4:
            raise ValueError(f"x must be [B, C, H, W], got shape {tuple(x.shape)}")
        check_device(x, "band_stats")
        return stats_op(x, float(ratio), domain)

    def shr(x: torch.Tensor, mu_bank: torch.Tensor, sigma_bank: torch.Tensor,
            eps_mu: torch.Tensor, eps_sigma: torch.Tensor, ratio: float = 0.5,
            domain: str = "complex") -> torch.Tensor:
        """See ``frerec_fast.reference.shr``. x: [B, C, H, W]; mu_bank, sigma_bank:
        [B, K, C]; eps_mu, eps_sigma: [B, C] (any device: moved to x's).
        Returns: x_hat [B, C, H, W] float32. The targets (a [B, K, C] -> [B, C]
        reduction) come from the reference's ``bank_targets``; the op makes the passes
        over the spectrum."""
        check_shr_args(x, mu_bank, sigma_bank, eps_mu, eps_sigma, ratio, domain)
        check_device(x, "shr")
        dev = x.device
        mu_hat, sigma_hat = bank_targets(mu_bank.to(dev), sigma_bank.to(dev),
                                         eps_mu.to(dev), eps_sigma.to(dev))
        return shr_op(x, mu_hat.float(), sigma_hat.float(), float(ratio), domain)

    return band_stats, shr


def register_ssim_ops(backend: str, device_types: tuple[str, ...] | None, matrix, topk,
                      check_device: CheckDevice, pairs=None, db_chunk: int = 4096):
    """``frerec::ssim_matrix_<backend>``, ``frerec::ssim_topk_<backend>`` and, when
    ``pairs`` is given, ``frerec::ssim_pairs_<backend>``.

    matrix(q, db) -> [Q, N] float32
    topk(q, db, k, exclude, db_chunk) -> (scores [Q, k'] float32, idx [Q, k'] int64)
    pairs(q, db, cand) -> [Q, C] float32
    db_chunk: the public ``ssim_topk``'s default number of database images per step.
    Returns the public ``{"ssim_matrix": ..., "ssim_topk": ..., ["ssim_pairs": ...]}``.
    """
    @torch.library.custom_op(f"frerec::ssim_matrix_{backend}", mutates_args=(),
                             device_types=device_types)
    def matrix_op(q: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
        return matrix(q, db)

    @matrix_op.register_fake
    def _(q, db):
        return q.new_empty(q.shape[0], db.shape[0], dtype=torch.float32)

    @torch.library.custom_op(f"frerec::ssim_topk_{backend}", mutates_args=(),
                             device_types=device_types)
    def topk_op(q: torch.Tensor, db: torch.Tensor, k: int, exclude: torch.Tensor | None,
                db_chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
        s, i = topk(q, db, k, exclude, db_chunk)
        return s.contiguous(), i.contiguous()

    @topk_op.register_fake
    def _(q, db, k, exclude, db_chunk):
        kk = clamp_k(k, db.shape[0], exclude is not None)
        return (q.new_empty(q.shape[0], kk, dtype=torch.float32),
                q.new_empty(q.shape[0], kk, dtype=torch.int64))

    def ssim_matrix(q: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
        """All-pairs SSIM (see ``frerec_fast.reference.ssim_matrix``).

        q: [Q, 1, h, w] luma; db: [N, 1, h, w]. Returns: [Q, N] float32."""
        check_pair(q, db)
        check_device(q, "ssim_matrix")
        return matrix_op(q, db)

    default_chunk = db_chunk

    def ssim_topk(q: torch.Tensor, db: torch.Tensor, k: int,
                  exclude: torch.Tensor | None = None, db_chunk: int = default_chunk):
        """Exact top-k by SSIM (see ``frerec_fast.ops.ssim_topk``); db may live on another
        device (each chunk of ``db_chunk`` images is moved to q's as it is scored).
        Returns: scores [Q, k] float32 descending, idx [Q, k] int64 (ties: lower index)."""
        check_pair(q, db)
        check_device(q, "ssim_topk")
        clamp_k(k, db.shape[0], exclude is not None)  # fail before any work
        if exclude is not None:
            exclude = torch.as_tensor(exclude, dtype=torch.long, device=q.device).reshape(-1)
        return topk_op(q, db, int(k), exclude, int(db_chunk))

    ops = {"ssim_matrix": ssim_matrix, "ssim_topk": ssim_topk}
    if pairs is None:
        return ops

    @torch.library.custom_op(f"frerec::ssim_pairs_{backend}", mutates_args=(),
                             device_types=device_types)
    def pairs_op(q: torch.Tensor, db: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        return pairs(q, db, cand)

    @pairs_op.register_fake
    def _(q, db, cand):
        return q.new_empty(cand.shape, dtype=torch.float32)

    def ssim_pairs(q: torch.Tensor, db: torch.Tensor, cand: torch.Tensor) -> torch.Tensor:
        """SSIM of chosen pairs: out[a, c] = SSIM(q[a], db[cand[a, c]]).

        q: [Q, 1, h, w]; db: [N, 1, h, w]; cand: [Q, C] int64 in [0, N).
        Returns: [Q, C] float32."""
        check_pair(q, db)
        check_device(q, "ssim_pairs")
        return pairs_op(q, db, cand.to(torch.int64))

    ops["ssim_pairs"] = ssim_pairs
    return ops


def register_ring_ops(backend: str, device_types: tuple[str, ...] | None, pool, scatter,
                      amplitude_bwd, check_device):
    """Register a backend's ring/sector pooling kernels as ``torch.library`` custom ops
    (``frerec::ring_pool_<backend>``, ``..._scatter_...``, ``..._pool_amplitude_...`` and
    their three backward ops), with fake (meta) implementations for ``torch.compile`` and
    export, and autograd; returns the public ``(ring_pool, ring_scatter,
    ring_pool_amplitude)`` with the reference's signatures and checks.

    pool(re, im, plan, amplitude, mean) -> [B, n_bins]   (re, im: [B, C, H, Wh])
    scatter(values, plan, div_count) -> [B, H, Wh]
    amplitude_bwd(grad, re, im, plan) -> (g_re, g_im)
    The kernels take float32/float64; half precisions are computed in float32 and cast
    back (more accurate than half-precision sums, and one code path per kernel).
    check_device(t, name) refuses tensors the backend cannot run on.
    """
    lib = f"frerec::ring_{{}}_{backend}"
    dev = device_types

    @torch.library.custom_op(lib.format("pool"), mutates_args=(), device_types=dev)
    def pool_op(amplitude: torch.Tensor, index_map: torch.Tensor, n_bins: int) -> torch.Tensor:
        a4 = native(amplitude).unsqueeze(1)                          # [B, 1, H, Wh], a view
        return pool(a4, a4, ring_plan(index_map, n_bins), False, True).to(amplitude.dtype)

    @torch.library.custom_op(lib.format("scatter"), mutates_args=(), device_types=dev)
    def scatter_op(values: torch.Tensor, index_map: torch.Tensor) -> torch.Tensor:
        plan = ring_plan(index_map, values.shape[1])
        return scatter(native(values), plan, False).to(values.dtype)

    @torch.library.custom_op(lib.format("pool_amplitude"), mutates_args=(), device_types=dev)
    def pool_amplitude_op(re: torch.Tensor, im: torch.Tensor, index_map: torch.Tensor,
                          n_bins: int) -> torch.Tensor:
        plan = ring_plan(index_map, n_bins)
        return pool(native(re), native(im), plan, True, True).to(re.dtype)

    # Backward ops: the pool's is a scatter divided by the bin counts, the scatter's a
    # pool-sum, the fused op's an elementwise pass; all gathers, so deterministic.
    @torch.library.custom_op(lib.format("pool_backward"), mutates_args=(), device_types=dev)
    def pool_bwd_op(grad: torch.Tensor, index_map: torch.Tensor) -> torch.Tensor:
        return scatter(native(grad), ring_plan(index_map, grad.shape[1]), True).to(grad.dtype)

    @torch.library.custom_op(lib.format("scatter_backward"), mutates_args=(), device_types=dev)
    def scatter_bwd_op(grad: torch.Tensor, index_map: torch.Tensor, n_bins: int) -> torch.Tensor:
        g4 = native(grad).unsqueeze(1)                               # [B, 1, H, Wh]
        return pool(g4, g4, ring_plan(index_map, n_bins), False, False).to(grad.dtype)

    @torch.library.custom_op(lib.format("pool_amplitude_backward"), mutates_args=(),
                             device_types=dev)
    def amp_bwd_op(grad: torch.Tensor, re: torch.Tensor, im: torch.Tensor,
                   index_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        nre, nim = native(re), native(im)
        g_re, g_im = amplitude_bwd(grad.to(nre.dtype), nre, nim,
                                   ring_plan(index_map, grad.shape[1]))
        return g_re.to(re.dtype), g_im.to(im.dtype)

    @pool_op.register_fake
    def _(amplitude, index_map, n_bins):
        return amplitude.new_empty(amplitude.shape[0], n_bins)

    @scatter_op.register_fake
    def _(values, index_map):
        return values.new_empty(values.shape[0], *index_map.shape)

    @pool_amplitude_op.register_fake
    def _(re, im, index_map, n_bins):
        return re.new_empty(re.shape[0], n_bins)

    @pool_bwd_op.register_fake
    def _(grad, index_map):
        return grad.new_empty(grad.shape[0], *index_map.shape)

    @scatter_bwd_op.register_fake
    def _(grad, index_map, n_bins):
        return grad.new_empty(grad.shape[0], n_bins)

    @amp_bwd_op.register_fake
    def _(grad, re, im, index_map):
        return re.new_empty(re.shape), im.new_empty(im.shape)

    def save_map(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])                              # the index map

    def pool_backward(ctx, grad):
        (index_map,) = ctx.saved_tensors
        return pool_bwd_op(grad, index_map), None, None

    def scatter_backward(ctx, grad):
        (index_map,) = ctx.saved_tensors
        return scatter_bwd_op(grad, index_map, ctx.n_bins), None

    def scatter_context(ctx, inputs, output):
        ctx.save_for_backward(inputs[1])
        ctx.n_bins = inputs[0].shape[1]

    def amp_context(ctx, inputs, output):
        re, im, index_map, _ = inputs
        ctx.save_for_backward(re, im, index_map)

    def amp_backward(ctx, grad):
        re, im, index_map = ctx.saved_tensors
        g_re, g_im = amp_bwd_op(grad, re, im, index_map)
        return g_re, g_im, None, None

    pool_op.register_autograd(pool_backward, setup_context=save_map)
    scatter_op.register_autograd(scatter_backward, setup_context=scatter_context)
    pool_amplitude_op.register_autograd(amp_backward, setup_context=amp_context)

    def ring_pool(amplitude: torch.Tensor, index_map: torch.Tensor, n_bins: int) -> torch.Tensor:
        """See ``frerec_fast.reference.rings``. amplitude: [B, H, Wh] -> [B, n_bins]."""
        check_pool(amplitude, index_map)
        check_device(amplitude, "ring_pool")
        return pool_op(amplitude, index_map, int(n_bins))

    def ring_scatter(values: torch.Tensor, index_map: torch.Tensor) -> torch.Tensor:
        """See ``frerec_fast.reference.ring_scatter``. values: [B, n_bins] -> [B, H, Wh]."""
        check_scatter(values, index_map)
        check_device(values, "ring_scatter")
        return scatter_op(values, index_map)

    def ring_pool_amplitude(re: torch.Tensor, im: torch.Tensor, index_map: torch.Tensor,
                            n_bins: int) -> torch.Tensor:
        """``ring_pool(|re + i im|.mean(1), index_map, n_bins)`` in one pass.

        re, im: [B, C, H, Wh] real (e.g. ``X.real``, ``X.imag`` of an rfft2 output; any
        strides); index_map: [H, Wh] int64. Returns: [B, n_bins], re's dtype.
        Differentiable in re and im (gradient 0 where X = 0).
        """
        check_pool_amplitude(re, im, index_map)
        check_device(re, "ring_pool_amplitude")
        return pool_amplitude_op(re, im, index_map, int(n_bins))

    return ring_pool, ring_scatter, ring_pool_amplitude
