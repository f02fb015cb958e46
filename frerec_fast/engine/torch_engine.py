"""The torch RHM engine at reduced precision: the module run under autocast."""
from __future__ import annotations

import torch

PRECISIONS = ("fp32", "bf16", "fp16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_precision(precision: str, device: torch.device) -> None:
    """Raise ValueError when ``precision`` is unknown or unusable on ``device``."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if precision == "fp16" and device.type != "cuda":
        raise ValueError("precision='fp16' needs a CUDA device; use 'bf16' or 'fp32' on CPU")
    if precision == "bf16" and device.type == "cuda" \
            and torch.cuda.get_device_capability(device)[0] < 8:  # bf16 tensor cores: Ampere+
        raise ValueError(f"{torch.cuda.get_device_name(device)} has no bf16; use 'fp16' or 'fp32'")


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
