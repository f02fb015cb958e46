"""Ring/sector pooling of FESA (method §5) with the CUDA kernels of ``csrc/cuda/ring_pool.cu``.

Same three ops and signatures as the reference (``frerec_fast/reference/rings.py``),
registered as ``torch.library`` custom ops ``frerec::ring_*_cuda`` with autograd
(``ring_plan.py``); the Triton version's docstring (``kernels/ring_pool.py``) gives the maths. The kernels run from
``frerec_fast._C`` when it was built with CUDA, else from the same source compiled by
CuPy/NVRTC, on the current torch stream either way.

Deterministic: the host's CSR plan (``fast/ring_plan.py``) gives each bin to one warp,
which sums its (channel, position) items in a fixed order and reduces with a fixed
shuffle tree; scatter and backward are gathers. No atomics, so results (forward and
gradients) are bit-identical from run to run.

Dtypes: float32 and float64 run natively (float64 for gradcheck); float16/bfloat16 are
computed in float32 and cast back.
"""
from __future__ import annotations

import torch

from .. import _ext
from .registration import check_cuda, register_ring_ops
from .ring_plan import RingPlan

_WARPS = 4        # FREREC_RING_WARPS in ring_pool.cu: bins per block of the pool kernel
_EW_BLOCK = 256   # FREREC_RING_EW_BLOCK: threads per block of the elementwise kernels


_check_cuda = check_cuda  # a module name: the CUDA emulation tests replace it


def _cupy_call(name: str, dtype: torch.dtype, device: torch.device, grid: int, block: int,
               args: tuple) -> None:
    import cupy as cp
    from .cuda_source import module

    suffix = "f64" if dtype == torch.float64 else "f32"
    with cp.cuda.Device(device.index or 0), \
            cp.cuda.ExternalStream(torch.cuda.current_stream(device).cuda_stream):
        module("ring_pool.cu").get_function(f"{name}_{suffix}")((grid,), (block,), args)


def _ptr(t: torch.Tensor):
    """A CuPy-callable pointer argument for a (possibly strided) torch tensor."""
    import cupy as cp
    return cp.uint64(t.data_ptr())


def _strides(t: torch.Tensor):
    import cupy as cp
    return tuple(cp.int64(s) for s in t.stride())


def _pool(re: torch.Tensor, im: torch.Tensor, plan: RingPlan, amplitude: bool,
          mean: bool) -> torch.Tensor:
    """re, im: [B, C, H, Wh] float32/float64 CUDA (any strides). Returns: [B, n_bins]."""
    if _ext.has_cuda_ext():
        return _ext.ext().ring_pool_cuda(re, im, plan.order, plan.offsets, plan.n_bins,
                                         amplitude, mean)
    import cupy as cp

    b, c = re.shape[0], re.shape[1]
    out = torch.empty(b, plan.n_bins, dtype=re.dtype, device=re.device)
    if b == 0 or plan.n_bins == 0:
        return out
    if c == 0 or plan.h * plan.wh == 0:
        return out.zero_()
    blocks = b * -(-plan.n_bins // _WARPS)
    _cupy_call("frerec_ring_pool", re.dtype, re.device, blocks, 32 * _WARPS,
               (_ptr(re), _ptr(im), _ptr(plan.order), _ptr(plan.offsets), _ptr(out),
                cp.int32(plan.n_bins), cp.int32(c), cp.int32(plan.wh),
                *_strides(re), *_strides(im), cp.int32(amplitude), cp.int32(mean)))
    return out


def _scatter(values: torch.Tensor, plan: RingPlan, div_count: bool) -> torch.Tensor:
    """values: [B, n_bins] float32/float64 CUDA. Returns: [B, H, Wh]."""
    values = values.contiguous()
    if _ext.has_cuda_ext():
        return _ext.ext().ring_scatter_cuda(values, plan.index, plan.offsets, plan.h, plan.wh,
                                            div_count)
    import cupy as cp

    b, hw = values.shape[0], plan.h * plan.wh
    out = torch.empty(b, plan.h, plan.wh, dtype=values.dtype, device=values.device)
    total = b * hw
    if total:
        _cupy_call("frerec_ring_scatter", values.dtype, values.device,
                   -(-total // _EW_BLOCK), _EW_BLOCK,
                   (_ptr(values), _ptr(plan.index), _ptr(plan.offsets), _ptr(out),
                    cp.int64(total), cp.int32(hw), cp.int32(values.shape[1]),
                    cp.int32(div_count)))
    return out


def _amplitude_bwd(grad: torch.Tensor, re: torch.Tensor, im: torch.Tensor, plan: RingPlan):
    """grad: [B, n_bins]; re, im: [B, C, H, Wh] (same dtype). Returns g_re, g_im contiguous."""
    grad = grad.contiguous()
    if _ext.has_cuda_ext():
        return _ext.ext().ring_pool_amplitude_bwd_cuda(grad, re, im, plan.index, plan.offsets)
    import cupy as cp

    b, c, hw = re.shape[0], re.shape[1], plan.h * plan.wh
    g_re = torch.empty(re.shape, dtype=re.dtype, device=re.device)
    g_im = torch.empty_like(g_re)
    total = b * c * hw
    if total:
        _cupy_call("frerec_ring_amp_bwd", re.dtype, re.device, -(-total // _EW_BLOCK), _EW_BLOCK,
                   (_ptr(grad), _ptr(re), _ptr(im), _ptr(plan.index), _ptr(plan.offsets),
                    _ptr(g_re), _ptr(g_im), cp.int64(total), cp.int32(c), cp.int32(hw),
                    cp.int32(plan.wh), cp.int32(grad.shape[1]), *_strides(re), *_strides(im)))
    return g_re, g_im


# Registered for every device type, and the device checked per call (by name, so
# that the CPU emulation of the kernels, tests/toolchain/test_cuda_emulated.py, can
# run them on CPU tensors); a CPU tensor gets _check_cuda's message.
ring_pool, ring_scatter, ring_pool_amplitude = register_ring_ops(
    "cuda", None, _pool, _scatter, _amplitude_bwd, lambda t, name: _check_cuda(t, name))

OPS = {"ring_pool": ring_pool, "ring_scatter": ring_scatter,
       "ring_pool_amplitude": ring_pool_amplitude}
