"""The one device resolver: "auto", "cpu", "cuda", "cuda:1" -> a usable torch.device."""
from __future__ import annotations

import torch


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """``device`` as a torch.device; "auto" is CUDA when torch sees a GPU, else CPU.
    A CUDA device without a visible GPU is refused with a message saying what to pass."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r} was requested but no CUDA GPU is visible to "
                         "torch; pass device='cpu' (CLI: --device cpu)")
    return dev
