"""Size-dependent constant tensors (DFT matrices, polar bin maps), cached and safe under
export and compilation.

torch.export and torch.compile run the model's Python under a fake-tensor mode. A constant
first built there would be a data-less fake tensor, and caching it would poison every later
eager call (and torch.export rejects it as a constant). So constants are always built with
fake mode switched off: they are real tensors, cached, and traced in as graph constants.
"""
from __future__ import annotations

import contextlib

import numpy as np
import torch

try:  # private but stable since torch 2.1; without it, plain creation (eager use is unaffected)
    from torch._subclasses.fake_tensor import unset_fake_temporarily as _no_fake
except ImportError:  # pragma: no cover
    _no_fake = contextlib.nullcontext


def real_constant(array: np.ndarray, dtype: torch.dtype, device: str) -> torch.Tensor:
    """A real (never fake) tensor copy of `array` on `device` with `dtype`.

    Also never an inference tensor: a constant first built during inference (e.g. by
    calibrate_dir) is cached and must stay usable when the same process later trains.
    """
    with _no_fake(), torch.inference_mode(False):
        return torch.tensor(array, dtype=dtype, device=device)
