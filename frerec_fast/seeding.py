"""Per-image noise from ``(global_seed, relative path)`` (method §7).

Noise never depends on batch order, batch size or the worker that draws it, so
a resumed or distributed run writes the same bytes as an uninterrupted one.
Draws are always made on the CPU in float32 with torch's CPU generator, whose
stream is stable across machines, and then moved to the caller's device.
"""
from __future__ import annotations

import hashlib
from pathlib import PurePath
from typing import Sequence

import torch


def normalise_relpath(relpath: str | PurePath) -> str:
    """POSIX form of a path relative to the input root, so Windows and Linux agree."""
    s = str(relpath).replace("\\", "/")
    while s.startswith("./"):
        s = s[2:]
    return s


def image_seed(global_seed: int, relpath: str | PurePath, *extra: int) -> int:
    """A 63-bit seed from the global seed, the image's relative path and optional
    extra integers (for example a training step)."""
    key = "\x1f".join([str(int(global_seed)), normalise_relpath(relpath),
                       *(str(int(e)) for e in extra)])
    # surrogateescape: a file name that is not UTF-8 (os.fsdecode gives it lone
    # surrogates) hashes as its raw bytes; UTF-8 names hash exactly as before.
    digest = hashlib.blake2b(key.encode("utf-8", "surrogateescape"), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def sample_eps(global_seed: int, relpaths: Sequence[str | PurePath], channels: int,
               *extra: int, device=None):
    """SHR noise for a batch of images (method §3, 7).

    Returns: eps_mu [B, C] float32, eps_sigma [B, C] float32, where row i depends
    only on (global_seed, relpaths[i], *extra).
    """
    rows = []
    for rp in relpaths:
        g = torch.Generator(device="cpu").manual_seed(image_seed(global_seed, rp, *extra))
        rows.append(torch.randn(2, channels, generator=g, dtype=torch.float32))
    if not rows:
        empty = torch.zeros(0, channels, device=device)
        return empty, empty.clone()
    eps = torch.stack(rows).to(device)
    return eps[:, 0].contiguous(), eps[:, 1].contiguous()
