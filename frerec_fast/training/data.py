"""In-memory real training/validation images and the per-step random draws.

Every random draw of training (epoch order, crop offsets, flips) comes from a fresh
CPU generator seeded by ``(seed, purpose, epoch or step)``: nothing random is carried
from one step to the next, so a run resumed at an epoch boundary draws exactly what an
uninterrupted run draws (method §7's rule, extended from SHR noise to training).
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .. import io as fio
from ..channels import to_channels
from ..index import RealIndex, resample
from ..seeding import image_seed


@dataclass
class ImageSet:
    """Decoded images of one directory at a common size.

    images: [N, C, H, W] float32 in [0, 1]; keys: N relative paths (NIfTI: ``file#z=...``);
    hashes: N file SHA-256 (as in a RealIndex, so one can match images to index entries).
    """
    images: torch.Tensor
    keys: list[str]
    hashes: list[str]


def load_images(root: str | os.PathLike, size: tuple[int, int], channels: int,
                keys: Sequence[str] | None = None) -> ImageSet:
    """Decode the images under ``root`` (or exactly ``keys``, in that order) into memory.

    Images are converted and resampled the way ``build_index`` does (to ``channels`` and
    ``size``), so a training crop sees the pixels the index statistics were made from.
    Unlike indexing, an unreadable file is an error: training on a silently different
    set than the index describes would break the data hash and self-exclusion.
    """
    root = Path(root)
    rels = fio.scan_images(root)
    wanted = None if keys is None else set(keys)
    # A NIfTI slice key is "file#z=0007": the file to decode is the part before "#z=".
    files = None if keys is None else wanted | {k.rsplit("#z=", 1)[0] for k in keys}
    decoded: dict[str, torch.Tensor] = {}
    hashes: dict[str, str] = {}
    for rel in rels:
        if files is not None and rel not in files:
            continue  # not part of the index: skip before decoding
        items = fio.read_images(root, rel)  # raises ImageReadError naming the file
        digest = fio.file_sha256(root / rel)
        for d in items:
            if wanted is not None and d.key not in wanted:
                continue
            px = torch.from_numpy(d.pixels)[None]
            px = resample(to_channels(px, channels), size)[0]
            decoded[d.key] = px.contiguous()
            hashes[d.key] = digest
    order = list(keys) if keys is not None else list(decoded)
    missing = [k for k in order if k not in decoded]
    if missing:
        raise FileNotFoundError(f"{root}: {len(missing)} image(s) of the index are missing "
                                f"(first: {missing[0]}); pass the directory the index was built from")
    if not order:
        raise FileNotFoundError(f"{root}: no supported images found")
    return ImageSet(torch.stack([decoded[k] for k in order]), order, [hashes[k] for k in order])


def data_hash(index: RealIndex) -> str:
    """SHA-256 over the index's keys, file hashes and config: names the training data."""
    h = hashlib.sha256()
    h.update(repr(sorted(index.config.to_dict().items())).encode())
    for k, c in zip(index.keys, index.hashes):
        h.update(f"{k}\x1f{c}\n".encode())
    return h.hexdigest()


def _generator(seed: int, purpose: str, *extra: int) -> torch.Generator:
    # image_seed hashes (seed, string, extras) with BLAKE2b: independent streams per purpose.
    return torch.Generator(device="cpu").manual_seed(image_seed(seed, purpose, *extra))


def epoch_order(seed: int, epoch: int, n: int) -> torch.Tensor:
    """The permutation of the n training images used in ``epoch``. Returns: [n] int64."""
    return torch.randperm(n, generator=_generator(seed, "frerec_fast.train/order", epoch))


def augment(images: torch.Tensor, crop: tuple[int, int], seed: int, step: int) -> torch.Tensor:
    """Random crop of size ``crop`` and random horizontal/vertical flips, drawn per image.

    images: [B, C, H, W] -> [B, C, crop[0], crop[1]]. The draws depend on (seed, step) only.
    """
    b, _, h, w = images.shape
    ch, cw = crop
    g = _generator(seed, "frerec_fast.train/augment", step)
    tops = torch.randint(0, h - ch + 1, (b,), generator=g).tolist()
    lefts = torch.randint(0, w - cw + 1, (b,), generator=g).tolist()
    flips = torch.randint(0, 2, (b, 2), generator=g).tolist()
    out = []
    for i in range(b):
        x = images[i, :, tops[i]:tops[i] + ch, lefts[i]:lefts[i] + cw]
        dims = [d for d, f in zip((-2, -1), flips[i]) if f]
        out.append(x.flip(dims) if dims else x)
    return torch.stack(out).contiguous()
