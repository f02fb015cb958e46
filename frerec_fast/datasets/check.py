"""Spectral check of the shipped sets (method §8): is the synthetic set's spectrum off?

All shipped sets share one size (64x64), so profiles compare directly. The reference
is the real held-out split; real-train vs held-out is the baseline gap that slices of
other anatomy alone produce, and synthetic vs held-out should be clearly larger.
"""
from __future__ import annotations

import torch

from ..spectral import frequency_gap, spectral_profile
from . import load_images

# synthetic-vs-train is extra: how far the generator drifts from the images it was fitted to.
PAIRS = (("synthetic", "heldout"), ("train", "heldout"), ("synthetic", "train"))


def set_gaps(sets: dict[str, torch.Tensor], pairs=PAIRS, ratio: float = 0.5) -> dict:
    """Frequency gaps between named image sets.

    sets: {name: [N, 1, H, W] float32 in [0, 1]}, one H, W for all.
    Returns: {"a-vs-b": {"high_band": float, "all_radii": float}} in ``pairs`` order.
    """
    prof = {k: spectral_profile(v) for k, v in sets.items()}
    out = {}
    for a, b in pairs:
        hi, every = frequency_gap(prof[a], prof[b], ratio=ratio)
        out[f"{a}-vs-{b}"] = {"high_band": hi, "all_radii": every}
    return out


def shipped_gaps(modality: str | None = None, ratio: float = 0.5) -> dict:
    """``set_gaps`` of the shipped synthetic, train and held-out sets."""
    sets = {k: load_images(k, modality) for k in ("synthetic", "train", "heldout")}
    return set_gaps(sets, ratio=ratio)


def report(ratio: float = 0.5) -> str:
    """A text table of gaps, for all images and per modality."""
    lines = [f"frequency gap (mean |log10 power difference|; high band = radii >= "
             f"{ratio:g} * 32 of 64x64 images)",
             f"{'modality':<9}{'pair':<22}{'high band':>10}{'all radii':>11}"]
    for mod in (None, "ct", "mri"):
        for pair, g in shipped_gaps(mod, ratio).items():
            lines.append(f"{mod or 'all':<9}{pair:<22}{g['high_band']:>10.4f}{g['all_radii']:>11.4f}")
    return "\n".join(lines)
