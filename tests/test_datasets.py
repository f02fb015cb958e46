"""The shipped offline images: counts, format, provenance, split hygiene, spectra."""
import hashlib
from collections import defaultdict

import numpy as np
import pytest
import torch
from PIL import Image

from frerec_fast import datasets as ds
from frerec_fast.datasets import check, extract

GAP = 6  # extract.py's default --gap, used to write the shipped split


def test_real_sets_are_large_enough_and_16bit():
    n = {s: len(ds.list_images(s)) for s in ds.SPLITS}
    assert sum(n.values()) >= 200, n
    assert n["train"] >= 150 and n["heldout"] >= 40, n
    for s in ds.SPLITS:
        for m in ds.MODALITIES:
            assert ds.list_images(s, m), f"no {m} images in {s}"
    for p in ds.list_images("train")[:5] + ds.list_images("heldout")[:5]:
        with Image.open(p) as im:
            assert im.mode.startswith("I;16") and im.size == (ds.IMAGE_SIZE, ds.IMAGE_SIZE), (p, im.mode)


@pytest.mark.parametrize("which", ds.SETS)
def test_load_images_values(which):
    x = ds.load_images(which)
    assert x.dtype == torch.float32 and x.shape[1:] == (1, ds.IMAGE_SIZE, ds.IMAGE_SIZE)
    assert x.min() >= 0 and x.max() <= 1
    # Every image carries anatomy: some dark air and a real fraction of bright tissue.
    frac = (x > 0.1).flatten(1).float().mean(1)
    assert frac.min() >= 0.1, f"near-empty image in {which}: min foreground {frac.min():.3f}"
    assert x.flatten(1).std(1).min() > 0.05


def test_real_images_are_distinct():
    digests = [hashlib.sha256(ds.read_png16(p).tobytes()).hexdigest()
               for s in ds.SPLITS for p in ds.list_images(s)]
    assert len(digests) == len(set(digests))


def test_manifest_matches_files():
    rows = ds.read_manifest("real")
    listed = {r["path"] for r in rows}
    on_disk = {p.relative_to(ds.data_root() / "real").as_posix()
               for s in ds.SPLITS for p in ds.list_images(s)}
    assert listed == on_disk
    for r in rows:
        assert r["path"].split("/")[:2] == [r["split"], r["modality"]]
        assert 0 <= int(r["slice_index"]) < int(r["n_slices"])
        assert float(r["foreground"]) >= 0.15


def test_split_is_by_slab_with_gap():
    by_vol = defaultdict(lambda: defaultdict(list))
    for r in ds.read_manifest("real"):
        by_vol[r["volume"]][r["split"]].append(int(r["slice_index"]))
    assert set(by_vol) == {"cranium", "ch2"}
    for vol, sp in by_vol.items():
        tr, he = sorted(sp["train"]), sorted(sp["heldout"])
        assert tr and he, vol
        assert len(set(tr)) == len(tr) and len(set(he)) == len(he), f"{vol}: repeated slice"
        assert he == list(range(he[0], he[-1] + 1)), f"{vol}: held-out slices are not one slab"
        nearest = min(abs(a - b) for a in tr for b in he)
        assert nearest > GAP, f"{vol}: train slice {nearest} slices from a held-out one"


def test_synthetic_set():
    paths = ds.list_images("synthetic")
    assert 200 <= len(paths) <= 300
    rows = ds.read_manifest("synthetic")
    assert {r["path"] for r in rows} == {p.relative_to(ds.synthetic_dir()).as_posix() for p in paths}
    # Same modality mix as the real train split, within rounding.
    frac_real = len(ds.list_images("train", "ct")) / len(ds.list_images("train"))
    frac_syn = len(ds.list_images("synthetic", "ct")) / len(paths)
    assert abs(frac_real - frac_syn) < 0.01


def test_synthetic_spectrum_is_further_from_heldout_than_real_train():
    g = check.shipped_gaps()
    syn, real = g["synthetic-vs-heldout"], g["train-vs-heldout"]
    assert syn["high_band"] > 2.0 * real["high_band"], g
    assert syn["all_radii"] > real["all_radii"], g


def test_set_gaps_zero_for_identical_sets():
    x = ds.load_images("heldout", "ct")
    g = check.set_gaps({"a": x, "b": x.clone()}, pairs=[("a", "b")])
    assert g["a-vs-b"] == {"high_band": 0.0, "all_radii": 0.0}


def test_data_folder_is_small():
    # Images + DCGAN about 3.9 MiB, the shipped RHM (float32 weights) about 5 MiB.
    total = sum(p.stat().st_size for p in ds.data_root().rglob("*") if p.is_file())
    assert total < 24 * 2**20, f"data folder is {total / 2**20:.2f} MiB"


def test_read_png16_rejects_8bit(tmp_path):
    p = tmp_path / "x.png"
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(p)
    with pytest.raises(ValueError, match="16-bit"):
        ds.read_png16(p)


def test_bad_names_raise():
    with pytest.raises(ValueError):
        ds.real_dir("test")
    with pytest.raises(ValueError):
        ds.list_images("train", modality="pet")


def test_materialise_copies_and_keeps_existing(tmp_path):
    out = ds.materialise(tmp_path, sets=("heldout",))
    copied = sorted(p.relative_to(out["heldout"]) for p in out["heldout"].rglob("*.png"))
    assert copied == sorted(p.relative_to(ds.real_dir("heldout")) for p in ds.list_images("heldout"))
    victim = next(out["heldout"].rglob("*.png"))
    victim.write_bytes(b"mine")
    ds.materialise(tmp_path, sets=("heldout",))
    assert victim.read_bytes() == b"mine"


# ---- the extraction maths (the sources themselves need apt, so only the pure parts run here)

def test_window_maps_edges():
    hu = np.array([-1024, -221, -18, 185, 3000], np.int16)
    np.testing.assert_allclose(extract.window(hu, -18, 406), [0, 0, 0.5, 1, 1], atol=1e-6)


def test_slab_split_gap_and_contiguity():
    train, held = extract.slab_split(list(range(10, 110)), heldout_frac=0.25, gap=GAP)
    assert held == list(range(held[0], held[-1] + 1)) and len(held) == 25
    assert min(abs(a - b) for a in train for b in held) == GAP + 1
    assert len(train) == 100 - 25 - 2 * GAP


def test_pad_square_and_area_resize():
    a = np.random.default_rng(0).random((2, 6, 4)).astype(np.float32)
    sq = extract.pad_square(a)
    assert sq.shape == (2, 6, 6) and np.array_equal(sq[:, :, 1:5], a)
    small = extract.area_resize(sq, 3)  # exact 2x2 boxes
    np.testing.assert_allclose(small, sq.reshape(2, 3, 2, 3, 2).mean((2, 4)), rtol=1e-6)
