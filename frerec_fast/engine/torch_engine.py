"""The eager engine at reduced precision: the RHM module run under autocast."""
from __future__ import annotations

import torch

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` (None: fp32, no autocast)."""
    return _DTYPES.get(precision)


class AutocastRHM:
    """An RHM module whose forward runs under ``torch.autocast`` at bf16 or fp16.

    __call__(x: [B, C, H, W] float32) -> [B, C, H, W] float32 (cast back, so that the
    clip and the encoder see what they see at fp32). Matrix products and convolutions
    run at the reduced precision; FESA's DFT stays float32 (the model casts it).
    Outputs differ from fp32 by the rounding of 8 (bf16) or 11 (fp16) mantissa bits, so
    the precision is part of a run's fingerprint.
    """

    def __init__(self, module: torch.nn.Module, precision: str, device: torch.device):
        self.module, self.precision = module, precision
        self.config = getattr(module, "config", None)
        self.device_type = torch.device(device).type
        self.dtype = _DTYPES[precision]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device_type, dtype=self.dtype):
            y = self.module(x)
        return y.float()
