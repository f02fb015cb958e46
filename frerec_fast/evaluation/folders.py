"""Input folders of ``frerec eval``: torchvision ``ImageFolder`` layout, validated.

A *labelled* set has one sub-folder per class (images anywhere below it); an
*unlabelled* set has its images directly in the folder. The three sets of one run
(real train, real test, synthetic) must all use the same layout and, when labelled,
the same class folders. Every problem raises :class:`EvalInputError` naming the folder
and what is wrong, so that the CLI can print it and exit 2.

Images of different sizes within a set are resampled to one working size (the
index's, by ``frerec_fast.index.resample``: area averaging when shrinking, bicubic
when enlarging) before spectra are taken or classifiers see them.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch

from .. import io as fio
from ..channels import to_channels
from ..index import resample


class EvalInputError(ValueError):
    """An input folder of ``evaluate`` has the wrong layout; the message names it."""


@dataclass(frozen=True)
class ImageSet:
    """The images of one input folder.

    files: relative POSIX paths, sorted. labels: [N] class number per file (index into
    ``classes``), or None for an unlabelled set.
    """
    name: str
    root: Path
    files: tuple[str, ...]
    classes: tuple[str, ...] | None
    labels: tuple[int, ...] | None

    @property
    def labelled(self) -> bool:
        return self.classes is not None

    def __len__(self) -> int:
        return len(self.files)


def scan_set(root: str | os.PathLike, name: str) -> ImageSet:
    """Scan one folder: class sub-folders (labelled) or images directly in it (unlabelled)."""
    root = Path(root)
    if not root.is_dir():
        raise EvalInputError(f"{name} folder {root}: not a directory")
    rels = fio.scan_images(root)
    if not rels:
        raise EvalInputError(f"{name} folder {root}: empty (no supported images found; "
                             f"looked for {', '.join(fio.SUPPORTED_EXTS)})")
    top = [r for r in rels if "/" not in r]
    nested = [r for r in rels if "/" in r]
    if top and nested:
        raise EvalInputError(
            f"{name} folder {root}: mixed layout: {len(top)} image(s) directly in it (e.g. "
            f"{top[0]}) and {len(nested)} in sub-folders (e.g. {nested[0]}); use either one "
            f"sub-folder per class or no sub-folders at all")
    if top:
        return ImageSet(name, root, tuple(rels), None, None)
    subdirs = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    empty = [d for d in subdirs if not any(r.startswith(d + "/") for r in rels)]
    if empty:
        raise EvalInputError(f"{name} folder {root}: class folder {root / empty[0]} is empty "
                             f"(no supported images)")
    classes = tuple(subdirs)
    pos = {c: i for i, c in enumerate(classes)}
    labels = tuple(pos[r.split("/", 1)[0]] for r in rels)
    return ImageSet(name, root, tuple(rels), classes, labels)


def scan_inputs(real_train, real_test, synthetic) -> dict[str, ImageSet]:
    """Scan and cross-check the three input folders of ``evaluate``.

    Returns {"real_train", "real_test", "synthetic"} -> ImageSet.
    """
    sets = {"real_train": scan_set(real_train, "real-train"),
            "real_test": scan_set(real_test, "real-test"),
            "synthetic": scan_set(synthetic, "synthetic")}
    kinds = {k: s.labelled for k, s in sets.items()}
    if len(set(kinds.values())) > 1:
        lab = [str(s.root) for s in sets.values() if s.labelled]
        unl = [str(s.root) for s in sets.values() if not s.labelled]
        raise EvalInputError(f"mixed labelled/unlabelled layouts: {', '.join(lab)} "
                             f"{'has' if len(lab) == 1 else 'have'} class sub-folders but "
                             f"{', '.join(unl)} {'has' if len(unl) == 1 else 'have'} images "
                             f"directly in the folder; use one layout for all three")
    ref = sets["real_train"]
    if not ref.labelled:
        return sets
    if len(ref.classes) < 2:
        raise EvalInputError(f"real-train folder {ref.root}: only one class folder "
                             f"({ref.classes[0]}); classification needs at least two "
                             f"(or put the images directly in the folders for an "
                             f"unlabelled evaluation)")
    for s in sets.values():
        missing = sorted(set(ref.classes) - set(s.classes))
        extra = sorted(set(s.classes) - set(ref.classes))
        if missing:
            raise EvalInputError(f"{s.name} folder {s.root}: class folder {missing[0]!r} "
                                 f"is missing (it is in {ref.root})")
        if extra:
            raise EvalInputError(f"{s.name} folder {s.root}: class folder {extra[0]!r} is "
                                 f"not in {ref.root}")
    return sets


def load_images(root: str | os.PathLike, files: Sequence[str], size: tuple[int, int],
                channels: int) -> tuple[torch.Tensor, list[int]]:
    """Decode ``files`` under ``root`` at one ``size`` (``resample``) and channel count.

    Returns: x [N, channels, size[0], size[1]] float32 in [0, 1], and for each image
    the position in ``files`` of its file (a NIfTI volume gives one image per slice).
    """
    xs, owner = [], []
    for i, rel in enumerate(files):
        for d in fio.read_images(root, rel):
            px = torch.from_numpy(d.pixels)[None]
            xs.append(resample(to_channels(px, channels), size)[0])
            owner.append(i)
    return torch.stack(xs).float(), owner
