"""The shipped labelled proxy task (data/task) and the unseen real set (data/real/unseen)."""
import csv
import hashlib
from collections import defaultdict

import numpy as np
import pytest
from PIL import Image

from frerec_fast.datasets import read_png16
from frerec_fast.datasets import task as T


def _pngs(folder):
    return sorted(folder.rglob("*.png"))


@pytest.mark.parametrize("split", T.TASK_SPLITS)
def test_split_has_both_classes_and_nothing_else(split):
    root = T.task_dir(split)
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert dirs == sorted(T.CLASSES)
    for c in T.CLASSES:
        assert len(list((root / c).glob("*.png"))) >= 5, (split, c)


@pytest.mark.parametrize("split", T.TASK_SPLITS)
def test_images_are_64x64_16bit(split):
    for p in _pngs(T.task_dir(split)):
        with Image.open(p) as im:
            assert im.mode in ("I;16", "I;16B", "I;16L"), p
            assert im.size == (64, 64), p


def _digests(split):
    return {hashlib.sha256(read_png16(p).tobytes()).hexdigest(): p for p in _pngs(T.task_dir(split))}


def test_no_image_shared_between_train_and_test():
    tr, te = _digests("real_train"), _digests("real_test")
    assert not set(tr) & set(te)


@pytest.mark.parametrize("split", ("real_train", "real_test"))
def test_manifest_matches_files(split):
    rows = T.task_manifest(split)
    root = T.task_dir(split)
    on_disk = {p.relative_to(root.parent).as_posix() for p in _pngs(root)}
    assert {r["path"] for r in rows} == on_disk
    for r in rows:
        assert r["split"] == split
        assert r["path"].split("/")[:2] == [split, r["class"]]
        lo, hi, i = int(r["band_lo"]), int(r["band_hi"]), int(r["slice_index"])
        assert (r["class"] == "ventricles") == (lo <= i <= hi)


def test_test_volumes_never_in_train():
    vols = defaultdict(set)
    for split in ("real_train", "real_test"):
        for r in T.task_manifest(split):
            vols[split].add(r["volume"])
    assert vols["real_test"] and vols["real_train"]
    assert not vols["real_test"] & vols["real_train"]


def test_synthetic_is_balanced_like_train_and_has_weights():
    n_syn = {c: len(list((T.task_dir("synthetic") / c).glob("*.png"))) for c in T.CLASSES}
    n_tr = {c: len(list((T.task_dir("real_train") / c).glob("*.png"))) for c in T.CLASSES}
    assert sum(n_syn.values()) == sum(n_tr.values())
    for c in T.CLASSES:  # generate() draws the training set's class mix
        assert abs(n_syn[c] - n_tr[c]) <= 1
    assert T.task_weights_path().is_file()
    assert T.task_weights_path().with_suffix(".json").is_file()


def test_unseen_set():
    root = T.unseen_dir()
    files = _pngs(root)
    assert 30 <= len(files) <= 80
    for p in files:
        with Image.open(p) as im:
            assert im.mode in ("I;16", "I;16B", "I;16L") and im.size == (128, 128), p
    with open(root / "manifest.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {r["path"] for r in rows} == {p.relative_to(root).as_posix() for p in files}
    vols = {r["volume"] for r in rows}
    # Neither in the RHM's real data nor in the task's training split.
    with open(root.parent / "manifest.csv", newline="") as fh:
        assert not vols & {r["volume"] for r in csv.DictReader(fh)}
    assert not vols & {r["volume"] for r in T.task_manifest("real_train")}
    x = np.stack([read_png16(p) for p in files])
    assert x.max() > 0.5 and (x > 0.1).mean() > 0.1  # anatomy, not empty slices
