"""FESA, the frequency-enhanced spatial attention of the FET-block (paper Eqs. 4-6, method §5).

Residual reading. The method (docs/method.md §5) writes the block as `x = x + FESA(LN(x))` and the paper's Eq. 6 as
`F_final = F_rgb + ReLU(BN(Conv1x1(F_rgb_hat || F_fre_hat)))`. Taking both literally with
F_rgb = LN(x) would add the normalised input on top of the block's residual
(x + LN(x) + ...). We read Eq. 6's `F_rgb +` as *being* the block's residual: `FESA.forward`
returns only the fused increment `ReLU(BN(Conv1x1(concat)))`, and the block adds it to its
un-normalised input x. So one FET-block computes
    x = x + ReLU(BN(Conv1x1(concat(MDTA(LN(x)), Freq(LN(x))))))
    x = x + GDFN(LN(x))
and with fesa=False (plain Restormer) `x = x + MDTA(LN(x))`, exactly Restormer's block.

Backends of the polar pooling. FrequencyBranch calls two ops through frerec_fast.backends:
"ring_pool_amplitude" (|X|, channel mean and ring/sector mean in one pass; its torch
reference is ``reference.rings.ring_pool_amplitude``, the plain composition) and
"ring_scatter". `backend="auto"` (the default) takes the dispatch table's order for the
tensor's device: the C++ op on CPU, the CUDA kernels on CUDA, else Triton, else torch.
The fast ops are ``torch.library`` custom ops with fake implementations and autograd,
so ``torch.compile`` and ``torch.export`` keep them in the graph, and training with them
is deterministic (no atomics). Only the exporters to other runtimes (ONNX, TorchScript
tracing or scripting) get the torch reference, since a custom op has no meaning there.
`set_ring_backend(model, name)` switches every FrequencyBranch of a model;
`with ring_backend(name):` overrides it for the calls inside, leaving the model as it is
(what a run does with a model the caller passed in).
"""
from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Callable, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import backends
from . import dft as _dft
from ..reference.rings import ring_pool_amplitude, ring_scatter, ring_sector_index


_TORCH_OPS = (ring_pool_amplitude, ring_scatter)


def _foreign_export() -> bool:
    """True while an exporter to another runtime (ONNX, TorchScript) traces the model."""
    return torch.jit.is_scripting() or torch.jit.is_tracing() or torch.onnx.is_in_onnx_export()


@functools.lru_cache(maxsize=32)
def _ring_ops(backend: str, device_type: str) -> tuple[Callable, Callable]:
    """(pool_amplitude, scatter) of `backend` ("auto" resolved) on `device_type`.

    Raises backends.BackendUnavailable (with the reason) for an explicit backend that
    cannot run here; not cached then, so a later call asks again.
    """
    return (backends.resolve("ring_pool_amplitude", backend, device_type),
            backends.resolve("ring_scatter", backend, device_type))


_OVERRIDE: contextvars.ContextVar[str | None] = contextvars.ContextVar("ring_backend",
                                                                      default=None)


def _check_backend(backend: str) -> None:
    if backend != "auto" and backend not in backends.BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; "
                         f"choose one of {('auto',) + backends.BACKENDS}")


@contextlib.contextmanager
def ring_backend(backend: str) -> Iterator[None]:
    """Run every FrequencyBranch called inside with ``backend``, whatever it is set to."""
    _check_backend(backend)
    token = _OVERRIDE.set(backend)
    try:
        yield
    finally:
        _OVERRIDE.reset(token)


def set_ring_backend(module: nn.Module, backend: str) -> nn.Module:
    """Use `backend` ("auto", "torch", "triton", "cuda") for the polar pooling of every
    FrequencyBranch in `module`. Returns `module`."""
    _check_backend(backend)
    for m in module.modules():
        if isinstance(m, FrequencyBranch):
            m.backend = backend
    return module


class MDTA(nn.Module):
    """Restormer's multi-Dconv-head transposed attention (the global branch, Eq. 4).

    x: [B, C, H, W] -> [B, C, H, W]; attention is C/heads x C/heads per head, over all pixels.
    """

    def __init__(self, dim: int, heads: int, bias: bool = False):
        super().__init__()
        self.heads = heads
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1, bias=bias)
        self.qkv_dwconv = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3, bias=bias)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dwconv(self.qkv(x)).chunk(3, dim=1)
        # [B, C, H, W] -> [B, heads, C/heads, H*W]; -1 keeps the batch dim symbolic for export.
        q, k, v = (t.reshape(-1, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = ((q @ k.transpose(-2, -1)) * self.temperature).softmax(dim=-1)
        return self.project_out((attn @ v).reshape(-1, c, h, w))


class FrequencyBranch(nn.Module):
    """Local frequency branch (Eq. 5, as method §5 reads it).

    X = rfft2(x, ortho); |X| averaged over channels; mean-pooled into the polar grid
    [B, 1, n_sectors, n_rings]; G = sigmoid(Conv3x3), V = Conv3x3; G*V scattered back to the
    half-spectrum grid multiplies X; irfft2 to the input size; 1x1 conv.
    x: [B, C, H, W] -> [B, C, H, W].
    """

    def __init__(self, dim: int, n_rings: int = 16, n_sectors: int = 32, bias: bool = False,
                 dft: str = "fft", backend: str = "auto"):
        super().__init__()
        self.n_rings, self.n_sectors, self.dft = n_rings, n_sectors, dft
        self.backend = backend        # polar pooling backend (module docstring); not a parameter
        # The polar map is one channel (the channel-averaged amplitude); bias kept here
        # regardless of config.bias, since a 1->1 conv without it cannot shift the gate.
        self.gate = nn.Conv2d(1, 1, 3, padding=1, bias=True)
        self.value = nn.Conv2d(1, 1, 3, padding=1, bias=True)
        self.project_out = nn.Conv2d(dim, dim, 1, bias=bias)
        # Per-size polar maps held by the module: a compiler (torch.compile) then sees a
        # constant attribute instead of tracing the NumPy code that builds one.
        self._maps: dict[tuple[int, int, str], torch.Tensor] = {}

    def index_map(self, h: int, w: int, device: torch.device) -> torch.Tensor:
        """The [h, w // 2 + 1] int64 polar bin map for an h x w input on ``device``."""
        key = (h, w, str(device))
        idx = self._maps.get(key)
        if idx is None:
            idx = ring_sector_index(h, w // 2 + 1, self.n_rings, self.n_sectors, device=device, w=w)
            if not torch.compiler.is_compiling():  # no module state changes inside a trace
                self._maps[key] = idx
        return idx

    def _backend(self) -> str:
        """The ring backend of this call: ``ring_backend()``'s override, else the module's.
        While torch.compile traces, the module's (the override is a ContextVar, which the
        tracer cannot read): set it with ``set_ring_backend`` before compiling."""
        if torch.compiler.is_compiling():
            return self.backend
        return _OVERRIDE.get() or self.backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        # float32 whatever the autocast dtype, in both DFT modes: cuFFT has no bf16 and
        # does fp16 only for power-of-two sizes, and the matmul DFT would otherwise run
        # its products at the autocast dtype.
        with torch.autocast(x.device.type, enabled=False):
            re, im = _dft.rfft2(x.float(), self.dft)                       # [B, C, H, Wh]
        idx = self.index_map(h, w, x.device)
        n_bins = self.n_rings * self.n_sectors
        backend = self._backend()
        if backend == "torch" or _foreign_export():
            pool_amplitude, scatter = _TORCH_OPS
        else:
            pool_amplitude, scatter = _ring_ops(backend, x.device.type)
        # |X| averaged over channels, mean-pooled per bin: [B, n_bins] -> [B, 1, S, R].
        polar = pool_amplitude(re, im, idx, n_bins).reshape(-1, 1, self.n_sectors, self.n_rings)
        mod = torch.sigmoid(self.gate(polar)) * self.value(polar)          # [B, 1, S, R]
        mask = scatter(mod.reshape(-1, n_bins), idx).unsqueeze(1)          # [B, 1, H, Wh]
        with torch.autocast(x.device.type, enabled=False):
            mask = mask.float()
            y = _dft.irfft2(re * mask, im * mask, (h, w), self.dft)        # [B, C, H, W]
        return self.project_out(y)


class FESA(nn.Module):
    """Global MDTA + local frequency branch, fused by 1x1 conv, BatchNorm, ReLU (Eq. 6).

    x: [B, C, H, W] (already layer-normalised) -> the residual increment [B, C, H, W];
    the caller adds it to the block input (see the module docstring).
    """

    def __init__(self, dim: int, heads: int, bias: bool = False, n_rings: int = 16,
                 n_sectors: int = 32, dft: str = "fft", backend: str = "auto"):
        super().__init__()
        self.spatial = MDTA(dim, heads, bias)
        self.frequency = FrequencyBranch(dim, n_rings, n_sectors, bias, dft, backend)
        self.fuse = nn.Sequential(nn.Conv2d(2 * dim, dim, 1, bias=bias), nn.BatchNorm2d(dim),
                                  nn.ReLU(inplace=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fuse(torch.cat([self.spatial(x), self.frequency(x)], dim=1))
