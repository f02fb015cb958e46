"""The torch.compile engine of the RHM (inductor; CUDA graphs on CUDA)."""
from __future__ import annotations

import torch

from .torch_engine import autocast_dtype


def prime_index_maps(module: torch.nn.Module, h: int, w: int, device: torch.device) -> None:
    """Build FESA's polar bin maps for h x w eagerly, so that the compiler finds constant
    module attributes instead of tracing the NumPy code that makes them."""
    for m in module.modules():
        if hasattr(m, "index_map") and hasattr(m, "n_rings"):
            m.index_map(h, w, device)


class CompiledRHM:
    """``torch.compile(module)`` for one input shape, called like the module.

    __call__(x: [B, C, H, W] float32) -> [B, C, H, W] float32. The first call at a new
    shape compiles (a minute or more for the shipped model on 2 CPU cores); its duration
    is in ``compile_seconds``. On CUDA mode "reduce-overhead" records the forward as a
    CUDA graph for the fixed micro-batch, so a run pays the launch overhead once; the
    graph reuses its output memory, hence the copy on return. bf16/fp16 run under
    autocast, as in the eager engine. FESA's ring pooling takes the torch reference
    inside compiled graphs (the fast kernels are opaque to the compiler).
    """

    def __init__(self, module: torch.nn.Module, device: torch.device, precision: str = "fp32"):
        self.module, self.device, self.precision = module, torch.device(device), precision
        self.config = getattr(module, "config", None)
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self.fn = torch.compile(module, mode=mode, dynamic=False)
        self.compile_seconds: dict[tuple[int, ...], float] = {}

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        import time
        shape = tuple(x.shape)
        first = shape not in self.compile_seconds
        if first:
            prime_index_maps(self.module, shape[-2], shape[-1], x.device)
            t0 = time.perf_counter()
        dtype = autocast_dtype(self.precision)
        with torch.autocast(self.device.type, dtype=dtype, enabled=dtype is not None):
            y = self.fn(x)
        y = y.float().clone()
        if first:
            self.compile_seconds[shape] = time.perf_counter() - t0
        return y
