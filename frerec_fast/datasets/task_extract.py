"""Regenerate the labelled proxy task (``frerec_fast/data/task``) and the unseen real set
(``frerec_fast/data/real/unseen``) from Debian and PyPI packages.

Not needed at run time: the PNGs it writes are committed. It documents, and lets anyone
repeat, how they were made::

    python -m frerec_fast.datasets.task_extract extract   # real_train, real_test, unseen
    python -m frerec_fast.datasets.task_extract dcgan     # train the DCGAN, write synthetic/
    python -m frerec_fast.datasets.task_extract baseline  # real-only tiny-CNN test AUC

``--work`` holds the ``.deb`` files and the ``nilearn`` wheel (fetched with ``apt-get
download`` / ``pip download --no-deps`` when missing) and their unpacked trees.
Needs ``nibabel``.

The task is a **proxy**: "is this axial slice at the level of the lateral ventricles?"
(class ``ventricles``: the frontal horns or bodies of the lateral ventricles are visible;
class ``other``: any slice below or above that band). No disease label exists in any
offline source; the band per volume is ``VENTRICLE_BANDS``, read by eye.

Volumes (every one a different head, all axial slices, 64x64):
  * ``cranium`` CT (``invesalius-examples``), ``ch2bet`` skull-stripped T1 MRI of the
    Colin-27 head (``mricron-data``),
    ``inia19`` macaque T1 brain template (``mricron-data``): **train**.
  * ``mni152`` ICBM 2009a symmetric T1 template (PyPI ``nilearn``): **test**, a whole
    volume never seen in training. It also gives the 128x128 unseen set.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io import write_png
from ..optional import optional_import
from .extract import (CRANIUM, Volume, area_resize, fetch_sources, foreground_fraction,
                      load_cranium, pad_square, percentile_scale)

INIA19 = "usr/share/mricron/templates/inia19-t1-brain.nii.gz"
CH2BET = "usr/share/mricron/templates/ch2bet.nii.gz"
NILEARN_WHEEL = "nilearn==0.14.1"
MNI152 = "nilearn/datasets/data/mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz"
from .task import CLASSES  # ("ventricles", "other")
TRAIN_VOLUMES = ("cranium", "ch2bet", "inia19")
TEST_VOLUMES = ("mni152",)
MANIFEST_FIELDS = ("path", "split", "class", "volume", "modality", "source", "axis",
                   "slice_index", "n_slices", "foreground", "band_lo", "band_hi")
UNSEEN_FIELDS = ("path", "volume", "modality", "source", "axis", "slice_index", "n_slices",
                 "foreground")
DATA = Path(__file__).resolve().parent.parent / "data"


# ---------------------------------------------------------------- extra sources

def fetch_nilearn(work: Path) -> Path:
    """Unzip the MNI152 template from the nilearn wheel (``pip download`` when missing)."""
    work.mkdir(parents=True, exist_ok=True)
    wheels = sorted(work.glob("nilearn-*.whl"))
    if not wheels:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(work),
                        NILEARN_WHEEL], check=True)
        wheels = sorted(work.glob("nilearn-*.whl"))
    out = work / "nilearn_root"
    with zipfile.ZipFile(wheels[-1]) as z:
        z.extract(MNI152, out)
    return out / MNI152


def _axial_from_ras(nii: Path) -> np.ndarray:
    """A RAS NIfTI as [Z, Y, X] with anterior at the top row, scaled by its 99.5th percentile."""
    nib = optional_import("nibabel", "reading the NIfTI templates")
    img = nib.as_closest_canonical(nib.load(str(nii)))
    vol = np.asarray(img.dataobj, dtype=np.float32)
    scaled = percentile_scale(vol, 99.5)
    return np.ascontiguousarray(scaled.transpose(2, 1, 0)[:, ::-1, :])


def load_ch2bet(nii: Path) -> Volume:
    """MRIcron's skull-stripped ch2 (the same Colin-27 head as ``extract.load_ch2``), axial.

    Skull-stripped like the test volume, so that a skull is not what tells volumes apart.
    """
    return Volume("ch2bet", "mri", f"mricron-data:{CH2BET}", "z", _axial_from_ras(nii),
                  "MRI T1: divide by the volume's 99.5th percentile, clip to [0, 1]")


def load_inia19(nii: Path) -> Volume:
    """The INIA19 rhesus macaque T1 brain template (skull-stripped, 0.5 mm), axial."""
    return Volume("inia19", "mri", f"mricron-data:{INIA19}", "z", _axial_from_ras(nii),
                  "MRI T1: divide by the volume's 99.5th percentile, clip to [0, 1]")


def load_mni152(nii: Path) -> Volume:
    """The ICBM 2009a nonlinear symmetric T1 template shipped by nilearn (1 mm), axial."""
    return Volume("mni152", "mri", f"nilearn:{MNI152}", "z", _axial_from_ras(nii),
                  "MRI T1: divide by the volume's 99.5th percentile, clip to [0, 1]")


def load_all(work: Path) -> dict[str, Volume]:
    root = fetch_sources(work)
    return {"cranium": load_cranium(root / CRANIUM), "ch2bet": load_ch2bet(root / CH2BET),
            "inia19": load_inia19(root / INIA19), "mni152": load_mni152(fetch_nilearn(work))}


# ---------------------------------------------------------------- labels

# Per volume, the inclusive range of axial slice indices (as written, 0 = most inferior) in
# which the lateral ventricles (frontal horns and/or bodies) are visible, read by eye from
# every second slice at 128x128 (so each edge is uncertain by about 1-2 slices).
VENTRICLE_BANDS = {"cranium": (43, 70), "ch2bet": (72, 101), "inia19": (70, 79),
                   "mni152": (71, 100)}


def label_of(volume: str, slice_index: int) -> str:
    """``"ventricles"`` inside the volume's band, ``"other"`` above or below it."""
    lo, hi = VENTRICLE_BANDS[volume]
    return CLASSES[0] if lo <= slice_index <= hi else CLASSES[1]


def label_volume(vol: Volume, size: int, min_foreground: float) -> list[dict]:
    """Manifest rows (with ``"pixels"``) of every kept axial slice of one volume."""
    small = area_resize(pad_square(vol.slices), size)
    lo, hi = VENTRICLE_BANDS[vol.name]
    rows = []
    for i, s in enumerate(small):
        fg = foreground_fraction(s)
        if fg < min_foreground:
            continue
        rows.append({"class": label_of(vol.name, i), "volume": vol.name,
                     "modality": vol.modality, "source": vol.source, "axis": vol.axis,
                     "slice_index": i, "n_slices": vol.slices.shape[0],
                     "foreground": f"{fg:.4f}", "band_lo": lo, "band_hi": hi, "pixels": s})
    return rows


def _write_manifest(path: Path, rows: list[dict], fields) -> None:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(sorted(rows, key=lambda r: r["path"]))
    path.write_text(buf.getvalue())


def write_task(vols: dict[str, Volume], out: Path, size: int,
               min_foreground: float) -> list[dict]:
    """Replace ``out/real_train`` and ``out/real_test`` and their manifests."""
    rows_all = []
    for split, names in (("real_train", TRAIN_VOLUMES), ("real_test", TEST_VOLUMES)):
        if (out / split).exists():
            shutil.rmtree(out / split)
        rows = []
        for name in names:
            vr = label_volume(vols[name], size, min_foreground)
            for r in vr:
                r["split"] = split
                r["path"] = f"{split}/{r['class']}/{name}_{r['axis']}{r['slice_index']:03d}.png"
                p = out / r["path"]
                p.parent.mkdir(parents=True, exist_ok=True)
                write_png(p, r["pixels"][None], bit_depth=16)
            n_pos = sum(r["class"] == CLASSES[0] for r in vr)
            print(f"{split} {name}: {len(vr)} slices ({n_pos} {CLASSES[0]}, "
                  f"{len(vr) - n_pos} {CLASSES[1]})")
            rows += vr
        _write_manifest(out / split / "manifest.csv", rows, MANIFEST_FIELDS)
        rows_all += rows
    return rows_all


def write_unseen(vol: Volume, out: Path, size: int, every: int, min_foreground: float) -> int:
    """Every ``every``-th kept axial slice of ``vol`` at ``size`` into ``out/<modality>/``."""
    if out.exists():
        shutil.rmtree(out)
    small = area_resize(pad_square(vol.slices), size)
    kept = [i for i, s in enumerate(small) if foreground_fraction(s) >= min_foreground]
    rows = []
    for i in kept[::every]:
        rel = f"{vol.modality}/{vol.name}_{vol.axis}{i:03d}.png"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        write_png(out / rel, small[i][None], bit_depth=16)
        rows.append({"path": rel, "volume": vol.name, "modality": vol.modality,
                     "source": vol.source, "axis": vol.axis, "slice_index": i,
                     "n_slices": vol.slices.shape[0],
                     "foreground": f"{foreground_fraction(small[i]):.4f}"})
    _write_manifest(out / "manifest.csv", rows, UNSEEN_FIELDS)
    return len(rows)


# ---------------------------------------------------------------- DCGAN + baseline

def train_dcgan(task: Path, steps: int, seed: int, threads: int, n: int | None) -> dict:
    """Train the project's DCGAN on ``task/real_train`` with the task's class names, ship its
    weights as ``task/dcgan.safetensors`` + ``.json`` and sample ``task/synthetic``.

    The ``synth train`` CLI fixes the classes to ("ct", "mri"), so this calls the same
    ``train`` / ``generate`` functions with ``DCGANConfig(classes=CLASSES)``.
    """
    from ..synth.dcgan import DCGANConfig
    from ..synth.generate import generate
    from ..synth.train import train

    res = train(task, steps=steps, seed=seed, threads=threads,
                cfg=DCGANConfig(classes=CLASSES), real_dir=task / "real_train")
    n_train = res["info"]["n_train"]
    if (task / "synthetic").exists():
        shutil.rmtree(task / "synthetic")
    paths = generate(task / "dcgan.safetensors", n or n_train, task / "synthetic", seed=seed,
                     threads=threads)
    print(f"DCGAN: {steps} steps in {res['info']['train_seconds']} s on {threads} thread(s); "
          f"wrote {len(paths)} synthetic PNGs")
    return res["info"]


def _load_split(folder: Path):
    from . import read_png16

    paths = sorted(p for c in CLASSES for p in (folder / c).glob("*.png"))
    x = torch.stack([torch.from_numpy(read_png16(p)) for p in paths])[:, None]
    y = torch.tensor([float(p.parent.name == CLASSES[0]) for p in paths])
    return x, y


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC by the rank-sum formula (ties get half credit)."""
    pos, neg = scores[labels == 1], scores[labels == 0]
    gt = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(gt / (len(pos) * len(neg)))


def baseline(task: Path, train_split: str = "real_train", epochs: int = 30, seed: int = 0,
             threads: int = 1) -> float:
    """Test AUC on ``real_test`` of a tiny 3-conv CNN trained on ``train_split`` (ventricles = 1)."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    xtr, ytr = _load_split(task / train_split)
    xte, yte = _load_split(task / "real_test")
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(),
        torch.nn.AdaptiveMaxPool2d(1), torch.nn.Flatten(), torch.nn.Linear(32, 1))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(perm), 32):
            b = perm[i:i + 32]
            xb = xtr[b]
            flip = torch.rand(len(b), generator=g) < 0.5
            xb = torch.where(flip[:, None, None, None], xb.flip(-1), xb)
            loss = F.binary_cross_entropy_with_logits(net(xb)[:, 0], ytr[b])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        s = net(xte)[:, 0].numpy()
    return auc(s, yte.numpy())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m frerec_fast.datasets.task_extract",
                                 description="Regenerate frerec_fast/data/task and real/unseen.")
    ap.add_argument("cmd", choices=("extract", "dcgan", "baseline"))
    ap.add_argument("--work", type=Path, default=Path("/tmp/frerec_src"))
    ap.add_argument("--task", type=Path, default=DATA / "task")
    ap.add_argument("--unseen", type=Path, default=DATA / "real" / "unseen")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--min-foreground", type=float, default=0.15)
    ap.add_argument("--unseen-size", type=int, default=128)
    ap.add_argument("--unseen-every", type=int, default=2)
    ap.add_argument("--steps", type=int, default=2000, help="DCGAN steps")
    ap.add_argument("--n", type=int, default=None, help="synthetic images (default: n train)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--epochs", type=int, default=30, help="baseline CNN epochs")
    ap.add_argument("--train-split", default="real_train", help="baseline: folder to train on")
    a = ap.parse_args(argv)
    if a.cmd == "extract":
        vols = load_all(a.work)
        rows = write_task(vols, a.task, 64, a.min_foreground)
        n = write_unseen(vols["mni152"], a.unseen, a.unseen_size, a.unseen_every,
                         a.min_foreground)
        print(f"wrote {len(rows)} task PNGs under {a.task}, {n} unseen PNGs under {a.unseen}")
    elif a.cmd == "dcgan":
        t0 = time.perf_counter()
        info = train_dcgan(a.task, a.steps, a.seed, a.threads, a.n)
        print(json.dumps({"train_seconds": info["train_seconds"],
                          "total_seconds": round(time.perf_counter() - t0, 1)}))
    else:
        print(f"{a.train_split} -> real_test AUC "
              f"{baseline(a.task, a.train_split, a.epochs, a.seed, a.threads):.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
