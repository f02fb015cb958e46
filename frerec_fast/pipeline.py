"""Directory-level jobs built from the ops: SHR-only calibration of a directory.

``shr_dir`` is FreRec's first step alone (the paper's "SHR" ablation row): for
each image, its top-K real neighbours by SSIM, per-image noise from
``(seed, relative path)``, SHR, clip to [0, 1], write. Outputs keep the relative
path; PNG keeps its bit depth, other formats are written as PNG (8-bit from 8-bit
sources, 16-bit otherwise) with the suffix changed to .png.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from . import io as fio
from .index import RealIndex, resample, to_channels
from .ops import shr
from .seeding import sample_eps


@dataclass
class ShrReport:
    ok: int = 0
    failed: int = 0
    errors: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0
    outputs: list[str] = field(default_factory=list)


def _out_path(dst: Path, key: str) -> Path:
    rel = Path(key.replace("#", "_"))
    return dst / (rel if rel.suffix.lower() == ".png" else rel.with_suffix(".png"))


def shr_dir(src: str | os.PathLike, dst: str | os.PathLike, index: RealIndex | str,
            k: int = 200, seed: int = 0, batch_size: int = 32, backend: str = "auto",
            self_exclude: bool = False) -> ShrReport:
    """SHR every image under ``src`` into ``dst`` (see module docstring).

    Images are resampled to the index's working size. self_exclude=True skips an
    image's own entry when it is in the index (calibrating real images, SPEC 6).
    """
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if dst == src or src in dst.parents:
        raise ValueError(f"{dst}: the output directory must not be inside the input {src}")
    index = index if isinstance(index, RealIndex) else RealIndex.load(index)
    cfg = index.config
    report = ShrReport()
    t0 = time.perf_counter()
    pending: list[tuple[str, torch.Tensor, int]] = []

    def flush():
        if not pending:
            return
        keys = [p[0] for p in pending]
        x = torch.stack([p[1] for p in pending])
        exclude = [index.position(key) for key in keys] if self_exclude else None
        nb = index.neighbours(x, k=k, exclude=exclude, backend=backend)
        eps_mu, eps_sigma = sample_eps(seed, keys, cfg.channels)
        y = shr(x, nb.mu_bank, nb.sigma_bank, eps_mu, eps_sigma, ratio=cfg.ratio,
                domain=cfg.domain, backend=backend).clamp_(0.0, 1.0)
        for (key, _, depth), img in zip(pending, y):
            out = _out_path(dst, key)
            out.parent.mkdir(parents=True, exist_ok=True)
            fio.write_png(out, img.numpy(), 16 if depth > 8 and img.shape[0] == 1 else 8)
            report.outputs.append(str(out.relative_to(dst)))
            report.ok += 1
        pending.clear()

    for rel in fio.scan_images(src):
        try:
            items = fio.read_images(src, rel)
        except (fio.ImageReadError, ImportError) as e:
            report.failed += 1
            report.errors[rel] = str(e)
            continue
        for d in items:
            px = to_channels(torch.from_numpy(d.pixels)[None], cfg.channels)
            pending.append((d.key, resample(px, cfg.work_size)[0], d.bit_depth))
            if len(pending) >= batch_size:
                flush()
    flush()
    report.seconds = time.perf_counter() - t0
    return report
