"""The shipped labelled proxy task and the unseen real set (see ``data/task/README.md``).

* ``task_dir(split)``: ``"real_train"``, ``"real_test"`` or ``"synthetic"``, each laid out
  as ``<class>/<name>.png`` (torchvision ``ImageFolder``), classes ``CLASSES``.
* ``unseen_dir()``: 128x128 real T1 MRI slices of a volume that is neither in
  ``data/real`` (so never in RHM training) nor in the task's training split.

``task_extract.py`` documents how they were made. Nothing here downloads anything.
"""
from __future__ import annotations

import csv
from pathlib import Path

from . import data_root

TASK_SPLITS = ("real_train", "real_test", "synthetic")
CLASSES = ("ventricles", "other")


def task_dir(split: str = "real_train") -> Path:
    """Folder of one split of the task (``<class>/*.png`` under it)."""
    if split not in TASK_SPLITS:
        raise ValueError(f"split must be one of {TASK_SPLITS}, got {split!r}")
    return data_root() / "task" / split


def task_manifest(split: str = "real_train") -> list[dict]:
    """Provenance rows of one split (``manifest.csv`` inside its folder)."""
    with open(task_dir(split) / "manifest.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def task_weights_path() -> Path:
    """The task's DCGAN generator weights (safetensors; config beside it as ``.json``)."""
    return data_root() / "task" / "dcgan.safetensors"


def unseen_dir() -> Path:
    """Folder of the unseen real slices (``mri/*.png``, 128x128, 16-bit) + ``manifest.csv``."""
    return data_root() / "real" / "unseen"
