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
    """``torch.compile(module)`` for inputs of one H x W, called like the module.

    __call__(x: [B, C, H, W] float32) -> [B, C, H, W] float32. The first call compiles
    (15-50 s for the shipped model on 2 CPU cores; RHMEngine makes that call and times
    it as the build). On CUDA mode "reduce-overhead" records the forward as a CUDA
    graph for the fixed micro-batch, so a run pays the launch overhead once; the graph
    reuses its output memory, hence the copy on return. bf16/fp16 run under autocast, as
    in the eager engine. FESA's ring pooling takes the torch reference inside compiled
    graphs (the fast kernels are opaque to the compiler).
    """

    def __init__(self, module: torch.nn.Module, device: torch.device, precision: str,
                 size: tuple[int, int]):
        self.module, self.device, self.precision = module, torch.device(device), precision
        self.config = getattr(module, "config", None)
        prime_index_maps(module, *size, self.device)
        mode = "reduce-overhead" if self.device.type == "cuda" else None
        self.fn = torch.compile(module, mode=mode, dynamic=False)
        self.dtype = autocast_dtype(precision)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None):
            y = self.fn(x)
        return y.float().clone()
