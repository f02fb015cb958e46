"""Sampling the DCGAN to 16-bit PNGs, deterministically from a seed."""
from __future__ import annotations

import csv
from pathlib import Path

import torch

from ..io import write_png
from .checkpoint import load_generator
from .dcgan import Generator
from .train import deterministic_cpu


def class_counts(n: int, fractions) -> list[int]:
    """Split ``n`` into per-class counts proportional to ``fractions`` (largest remainder),
    so the synthetic set has the modality mix of the training set.
    """
    total = float(sum(fractions))
    exact = [n * f / total for f in fractions]
    counts = [int(e) for e in exact]
    by_remainder = sorted(range(len(exact)), key=lambda i: (counts[i] - exact[i], i))
    for i in by_remainder[: n - sum(counts)]:
        counts[i] += 1
    return counts


@torch.no_grad()
def sample(g: Generator, n: int, seed: int, batch_size: int = 64, threads: int = 1):
    """n images from generator ``g`` (eval mode).

    All latents are drawn at once from ``seed``, so image i does not depend on batch size.
    Returns: images [n, 1, S, S] float32 in [0, 1], labels [n] int64 (class-sorted).
    """
    counts = class_counts(n, g.cfg.class_fractions)
    labels = torch.cat([torch.full((c,), k, dtype=torch.long) for k, c in enumerate(counts)])
    z = torch.randn(n, g.cfg.nz, generator=torch.Generator().manual_seed(seed))
    with deterministic_cpu(threads):
        g = g.eval()
        out = [g(z[i:i + batch_size], labels[i:i + batch_size]) for i in range(0, n, batch_size)]
    return torch.cat(out).clamp(0.0, 1.0), labels


def generate(weights: str | Path, n: int, out_dir: str | Path, seed: int = 0,
             batch_size: int = 64, threads: int = 1) -> list[Path]:
    """Write n 16-bit PNGs to ``out_dir/<class>/dcgan_<i>.png`` and ``out_dir/manifest.csv``.

    Returns: the written paths, in index order.
    """
    g = load_generator(weights)
    imgs, labels = sample(g, n, seed, batch_size, threads)
    out_dir = Path(out_dir)
    paths, rows = [], []
    for i in range(n):
        cls = g.cfg.classes[int(labels[i])]
        rel = f"{cls}/dcgan_{i:04d}.png"
        p = out_dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        write_png(p, imgs[i].numpy(), bit_depth=16)
        paths.append(p)
        rows.append({"path": rel, "modality": cls, "index": i, "seed": seed,
                     "weights": Path(weights).name})
    with open(out_dir / "manifest.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["path"], lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return paths
