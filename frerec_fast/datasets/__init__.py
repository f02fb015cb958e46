"""Offline demo and test images shipped inside the package (``frerec_fast/data``).

* ``real_dir("train")``, ``real_dir("heldout")``: real head CT and T1 MRI slices,
  64x64 16-bit grayscale PNGs, split by contiguous slabs (see ``data/README.md``).
* ``synthetic_dir()``: images from the project's own DCGAN (``frerec_fast.synth``),
  same size and format.

Nothing here downloads anything; ``extract.py`` documents how the real images were made.
"""
from __future__ import annotations

import csv
import shutil
from importlib import resources
from pathlib import Path

import numpy as np
import torch

SPLITS = ("train", "heldout")
SETS = SPLITS + ("synthetic",)
MODALITIES = ("ct", "mri")
IMAGE_SIZE = 64


def data_root() -> Path:
    """The package's ``data`` folder as a filesystem path."""
    root = Path(str(resources.files("frerec_fast") / "data"))
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: the package's data folder is missing; reinstall "
                                f"frerec_fast with its package data")
    return root


def real_dir(split: str = "train") -> Path:
    """Folder of the real images of one split (``"train"`` or ``"heldout"``)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return data_root() / "real" / split


def synthetic_dir() -> Path:
    """Folder of the shipped DCGAN images."""
    return data_root() / "synthetic"


def weights_path() -> Path:
    """The shipped DCGAN generator weights (safetensors; config beside it as ``.json``)."""
    return data_root() / "dcgan.safetensors"


def set_dir(which: str) -> Path:
    """``"train"``, ``"heldout"`` or ``"synthetic"`` -> its folder."""
    if which not in SETS:
        raise ValueError(f"set must be one of {SETS}, got {which!r}")
    return synthetic_dir() if which == "synthetic" else real_dir(which)


def list_images(which: str = "train", modality: str | None = None) -> list[Path]:
    """Sorted PNG paths of a shipped set, optionally of one modality (``"ct"``/``"mri"``)."""
    if modality is not None and modality not in MODALITIES:
        raise ValueError(f"modality must be one of {MODALITIES} or None, got {modality!r}")
    root = set_dir(which)
    subdirs = [modality] if modality else MODALITIES
    return sorted(p for m in subdirs for p in (root / m).glob("*.png"))


def read_png16(path: str | Path) -> np.ndarray:
    """One 16-bit grayscale PNG as [H, W] float32 in [0, 1] (value / 65535).

    Raises ValueError for any other PNG mode, so that a shipped file saved as 8-bit
    by mistake is caught rather than silently rescaled.
    """
    from PIL import Image

    with Image.open(path) as im:
        if im.mode not in ("I;16", "I;16B", "I;16L"):
            raise ValueError(f"{path}: expected a 16-bit grayscale PNG, got mode {im.mode!r}")
        return np.asarray(im, dtype=np.uint16).astype(np.float32) / 65535.0


def load_images(which: str = "train", modality: str | None = None) -> torch.Tensor:
    """A shipped set as one batch.

    Returns: [N, 1, H, W] float32 in [0, 1], in ``list_images`` order.
    """
    paths = list_images(which, modality)
    if not paths:
        raise FileNotFoundError(f"no PNGs in {set_dir(which)} (modality={modality})")
    return torch.from_numpy(np.stack([read_png16(p) for p in paths]))[:, None]


def read_manifest(which: str = "real") -> list[dict]:
    """Provenance rows of ``"real"`` (volume, slice index, split per file) or ``"synthetic"``."""
    if which not in ("real", "synthetic"):
        raise ValueError(f"which must be 'real' or 'synthetic', got {which!r}")
    with open(data_root() / which / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def materialise(dst: str | Path, sets=SETS) -> dict[str, Path]:
    """Copy shipped sets to ``dst/<set>`` (for tools that want a writable folder).

    Returns: {set name: its copied folder}. An existing ``dst/<set>`` is left as is,
    so the call is idempotent and never overwrites a user's files.
    """
    out = {}
    for which in sets:
        target = Path(dst) / which
        if not target.exists():
            shutil.copytree(set_dir(which), target, ignore=shutil.ignore_patterns("*.csv"))
        out[which] = target
    return out


__all__ = ["SPLITS", "SETS", "MODALITIES", "IMAGE_SIZE", "data_root", "real_dir", "synthetic_dir",
           "weights_path", "set_dir", "list_images", "read_png16", "load_images", "read_manifest",
           "materialise"]
