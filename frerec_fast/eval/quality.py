"""Image quality of calibrated outputs against their inputs (method §8): PSNR and SSIM."""
from __future__ import annotations

import math
import os

import torch

from ..spectral import psnr
from ..reference.ssim import ssim
from .spectrum import load_dir


def quality_dirs(inputs: str | os.PathLike, outputs: str | os.PathLike,
                 limit: int | None = None) -> dict[str, float]:
    """Mean PSNR (dB; identical pairs left out of the mean) and mean SSIM (luma, method §4)
    of each output against the input with the same relative path, at the input's size.

    Both directories must hold the same images (as ``calibrate_dir`` writes them).
    """
    a, ka = load_dir(inputs, image_size(inputs), limit)
    b, kb = load_dir(outputs, tuple(a.shape[-2:]), limit)
    if ka != kb:
        missing = sorted(set(ka) ^ set(kb))
        raise ValueError(f"{inputs} and {outputs} do not hold the same images "
                         f"(first difference: {missing[0] if missing else 'order'})")
    p = psnr(b, a)
    finite = p[torch.isfinite(p)]
    return {"n": len(ka), "psnr": float(finite.mean()) if finite.numel() else math.inf,
            "ssim": float(ssim(b, a).mean())}


def image_size(root) -> tuple[int, int]:
    """(H, W) of the first image under ``root`` (sorted order)."""
    from .. import io as fio

    rels = fio.scan_images(root)
    if not rels:
        raise FileNotFoundError(f"{root}: no supported images found")
    h, w = fio.read_images(root, rels[0])[0].pixels.shape[-2:]
    return (h, w)
