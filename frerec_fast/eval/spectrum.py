"""Spectral profiles of whole directories (method §8, paper Fig. 6).

Sets compared must share one image size: every image is resampled to ``size``
(area averaging when shrinking, bicubic when enlarging) before its profile is taken.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .. import io as fio
from ..index import resample
from ..spectral import spectral_profile


@dataclass
class DirProfile:
    """Mean log10 radial power profile of a directory. profile: [R] float64."""
    name: str
    count: int
    size: tuple[int, int]
    profile: torch.Tensor


def load_dir(root: str | os.PathLike, size: tuple[int, int], limit: int | None = None,
             luma_only: bool = True) -> tuple[torch.Tensor, list[str]]:
    """Decode the images under ``root`` (sorted; the first ``limit``) resampled to ``size``.

    Returns: x [N, 1, h, w] float32 luma (or [N, C, h, w] with luma_only=False), keys.
    Unreadable files raise ImageReadError naming the file.
    """
    from ..spectral import luma

    rels = fio.scan_images(root)[:limit]
    if not rels:
        raise FileNotFoundError(f"{root}: no supported images found")
    xs, keys = [], []
    for rel in rels:
        for d in fio.read_images(root, rel):
            px = torch.from_numpy(d.pixels)[None]
            xs.append(resample(luma(px) if luma_only else px, size)[0])
            keys.append(d.key)
    return torch.stack(xs), keys


def profile_dir(root: str | os.PathLike, size=(64, 64), limit: int | None = None,
                name: str | None = None) -> DirProfile:
    """Profile of the images under ``root`` at a common ``size``."""
    size = (size, size) if isinstance(size, int) else tuple(size)
    x, _ = load_dir(root, size, limit)
    return DirProfile(name or Path(root).name, x.shape[0], size, spectral_profile(x))


def plot_profiles(profiles: Sequence[DirProfile], out: str | os.PathLike, ratio: float = 0.5,
                  title: str = "Spectral profiles") -> Path:
    """Write a PNG with the profiles against normalised radius (like the paper's Fig. 6)."""
    from ..optional import optional_import

    mpl = optional_import("matplotlib", "plotting spectral profiles")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for p in profiles:
        r = torch.arange(p.profile.shape[0]).double() / max(p.profile.shape[0] - 1, 1)
        ax.plot(r.numpy(), p.profile.numpy(), label=f"{p.name} (n={p.count})")
    ax.axvline(ratio, color="grey", lw=0.8, ls="--", label=f"high band from r={ratio}")
    ax.set_xlabel("spatial frequency (fraction of Nyquist)")
    ax.set_ylabel("mean log10 power")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(out)
    fig.savefig(out)
    plt.close(fig)
    return out
