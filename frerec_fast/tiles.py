"""Overlapping work-size tiles for images larger than the index's working size.

Band statistics (and so SHR) are defined at the working size, so a larger image is
cut into tiles of exactly that size that overlap by about a quarter, each tile is
calibrated on its own (its own neighbours, its own noise), and the results are
blended with weights that ramp down towards tile edges inside the overlap.
"""
from __future__ import annotations

import math

import torch


def tile_starts(n: int, size: int, overlap: float = 0.25) -> list[int]:
    """Start offsets of tiles of ``size`` covering ``[0, n)`` with at least ``overlap``
    (a fraction of ``size``) between neighbours; evenly spread, first 0, last n - size."""
    if n < size:
        raise ValueError(f"length {n} is smaller than the tile size {size}")
    if n == size:
        return [0]
    stride = max(1, int(size * (1.0 - overlap)))
    count = math.ceil((n - size) / stride) + 1
    return [round(i * (n - size) / (count - 1)) for i in range(count)]


def blend_weights(size: tuple[int, int], ramp: int) -> torch.Tensor:
    """Separable weights [h, w]: 1 inside, a linear ramp over ``ramp`` pixels at each
    edge, never 0 (so a pixel covered by one tile only keeps that tile's value)."""
    def axis(n: int) -> torch.Tensor:
        i = torch.arange(n, dtype=torch.float64)
        edge = torch.minimum(i + 1, n - i)
        return (edge / max(ramp, 1)).clamp(max=1.0)

    return (axis(size[0])[:, None] * axis(size[1])[None, :]).float()


def cut(x: torch.Tensor, size: tuple[int, int], overlap: float = 0.25):
    """x: [C, H, W] -> tiles [T, C, h, w] and their (top, left) offsets."""
    ys = tile_starts(x.shape[-2], size[0], overlap)
    xs = tile_starts(x.shape[-1], size[1], overlap)
    offsets = [(y, x0) for y in ys for x0 in xs]
    return torch.stack([x[:, y:y + size[0], x0:x0 + size[1]] for y, x0 in offsets]), offsets


def stitch(tiles: torch.Tensor, offsets, shape: tuple[int, int], overlap: float = 0.25):
    """Blend tiles [T, C, h, w] at ``offsets`` into one [C, H, W] image."""
    c, h, w = tiles.shape[1:]
    if len(offsets) == 1:
        return tiles[0]
    wts = blend_weights((h, w), max(1, int(min(h, w) * overlap)))
    acc = torch.zeros(c, *shape, dtype=torch.float64)
    norm = torch.zeros(1, *shape, dtype=torch.float64)
    for t, (y, x0) in zip(tiles, offsets):
        acc[:, y:y + h, x0:x0 + w] += t.double() * wts
        norm[:, y:y + h, x0:x0 + w] += wts
    return (acc / norm).float()
