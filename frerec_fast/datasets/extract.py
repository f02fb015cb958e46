"""Regenerate the shipped real images (``frerec_fast/data/real``) from Debian packages.

Not needed at run time: the PNGs it writes are committed. It documents, and lets anyone
repeat, how they were made::

    python -m frerec_fast.datasets.extract --work /tmp/frerec_src --out frerec_fast/data/real

``--work`` holds the ``.deb`` files (fetched with ``apt-get download`` when missing, which
needs only the Debian archive, no root) and their ``dpkg -x`` trees. Needs ``nibabel``.

Sources (see ``frerec_fast/data/README.md`` for licences):
  * ``invesalius-examples``: ``Cranium.inv3``, a head CT, int16 HU, (108, 256, 256).
  * ``mricron-data``: ``templates/ch2.nii.gz``, a single-subject T1 MRI head, 1 mm,
    uint8, (181, 217, 181), axial slices along the last axis.

Pipeline per volume: intensity map to [0, 1] (CT: the file's own window; MRI: divide by
the volume's 99.5th percentile) -> display orientation (anterior up) -> zero-pad to a
square -> area-resample to ``size`` -> drop near-empty slices -> split into train and a
held-out contiguous slab with ``gap`` slices dropped on each side -> 16-bit PNGs plus
``manifest.csv`` recording each file's volume and slice index.
"""
from __future__ import annotations

import argparse
import csv
import io
import plistlib
import shutil
import subprocess
import tarfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..io import write_png
from ..optional import optional_import

PACKAGES = ("invesalius-examples", "mricron-data")
CRANIUM = "usr/share/doc/invesalius-examples/examples/Cranium.inv3"
CH2 = "usr/share/mricron/templates/ch2.nii.gz"
MANIFEST_FIELDS = ("path", "split", "modality", "volume", "source", "axis", "slice_index",
                   "n_slices", "foreground")


@dataclass(frozen=True)
class Volume:
    """One 3-D scan, already mapped to [0, 1] and in display orientation.

    slices: [Z, H, W] float32 in [0, 1], Z along ``axis`` of the source file.
    """
    name: str
    modality: str
    source: str
    axis: str
    slices: np.ndarray
    mapping: str


# ---------------------------------------------------------------- pure maths

def window(hu: np.ndarray, level: float, width: float) -> np.ndarray:
    """CT display window: ``level - width/2 -> 0``, ``level + width/2 -> 1``, clipped.

    hu: [...] any real dtype. Returns: [...] float32 in [0, 1].
    """
    lo = level - width / 2.0
    return np.clip((hu.astype(np.float64) - lo) / width, 0.0, 1.0).astype(np.float32)


def percentile_scale(vol: np.ndarray, q: float = 99.5) -> np.ndarray:
    """Divide by the volume's ``q``-th percentile and clip to [0, 1].

    One scale for the whole volume, so that slices stay comparable; a percentile
    rather than the max, so that a few bright voxels do not darken everything.
    vol: [...] non-negative. Returns: [...] float32 in [0, 1].
    """
    top = float(np.percentile(vol, q))
    if top <= 0:
        raise ValueError(f"the {q}th percentile of the volume is {top}; cannot scale")
    return np.clip(vol.astype(np.float64) / top, 0.0, 1.0).astype(np.float32)


def pad_square(slices: np.ndarray) -> np.ndarray:
    """Zero-pad the two last axes, centred, to a square (zero = background after mapping).

    slices: [Z, H, W]. Returns: [Z, S, S], S = max(H, W).
    """
    z, h, w = slices.shape
    s = max(h, w)
    top, left = (s - h) // 2, (s - w) // 2
    out = np.zeros((z, s, s), dtype=slices.dtype)
    out[:, top:top + h, left:left + w] = slices
    return out


def area_resize(slices: np.ndarray, size: int) -> np.ndarray:
    """Area (box-average) resampling of each slice, the method's resampling for a common size.

    slices: [Z, H, W] float32. Returns: [Z, size, size] float32.
    """
    t = torch.from_numpy(np.ascontiguousarray(slices, dtype=np.float32))[:, None]
    return F.interpolate(t, size=(size, size), mode="area")[:, 0].numpy()


def foreground_fraction(img: np.ndarray, threshold: float = 0.1) -> float:
    """Fraction of pixels brighter than ``threshold`` (air maps to about 0 in both mappings).

    img: [H, W] float in [0, 1].
    """
    return float((img > threshold).mean())


def slab_split(indices: list[int], heldout_frac: float, gap: int) -> tuple[list[int], list[int]]:
    """Split a volume's kept slice indices into train and one held-out central slab.

    The held-out slab is the middle ``heldout_frac`` of the kept range; every slice
    within ``gap`` of it is dropped, so more than ``gap`` slices separate train and
    held-out slices. A central slab (rather than one end) keeps the held-out anatomy
    inside the range the training slabs cover on both sides.
    Returns: (train indices, held-out indices), sorted.
    """
    idx = sorted(indices)
    if not idx:
        return [], []
    lo, hi = idx[0], idx[-1]
    n_hold = max(1, round(heldout_frac * (hi - lo + 1)))
    start = lo + (hi - lo + 1 - n_hold) // 2
    stop = start + n_hold  # held-out slab is [start, stop)
    held = [i for i in idx if start <= i < stop]
    train = [i for i in idx if i < start - gap or i >= stop + gap]
    return train, held


# ---------------------------------------------------------------- source readers

def load_cranium(inv3: Path) -> Volume:
    """The InVesalius example head CT, windowed by the window stored in its project file."""
    with tarfile.open(inv3, "r:gz") as tar:
        members = {Path(m.name).name: m for m in tar.getmembers() if m.isfile()}
        meta = plistlib.load(tar.extractfile(members["main.plist"]))
        mat = meta["matrix"]
        raw = tar.extractfile(members[mat["filename"]]).read()
    hu = np.frombuffer(raw, dtype=np.dtype(mat["dtype"]).newbyteorder("<"))
    hu = hu.reshape(mat["shape"])  # [Z, Y, X]
    level, width = float(meta["window_level"]), float(meta["window_width"])
    # Rows are stored posterior-up; flip so that the face is at the top, as viewers show it.
    slices = window(hu, level, width)[:, ::-1, :]
    return Volume("cranium", "ct", f"invesalius-examples:{CRANIUM} ({meta['name']})", "z",
                  np.ascontiguousarray(slices),
                  f"CT window level {level:g} HU, width {width:g} HU "
                  f"([{level - width / 2:g}, {level + width / 2:g}] HU -> [0, 1], clipped)")


def load_ch2(nii: Path) -> Volume:
    """The Colin-27 single-subject T1 head (MRIcron's ch2), axial slices, anterior up."""
    nib = optional_import("nibabel", "reading the MRIcron ch2 template")
    vol = np.asarray(nib.load(str(nii)).dataobj)  # [X, Y, Z] in RAS
    scaled = percentile_scale(vol, 99.5)
    # [X, Y, Z] -> [Z, Y, X], then flip Y so that anterior (high Y in RAS) is the top row.
    slices = np.ascontiguousarray(scaled.transpose(2, 1, 0)[:, ::-1, :])
    return Volume("ch2", "mri", f"mricron-data:{CH2}", "z", slices,
                  "MRI T1: divide by the volume's 99.5th percentile, clip to [0, 1]")


# ---------------------------------------------------------------- fetch + write

def fetch_sources(work: Path) -> Path:
    """Make sure ``work`` holds the two .deb files unpacked under ``work/root``.

    Returns: the unpacked root.
    """
    work.mkdir(parents=True, exist_ok=True)
    root = work / "root"
    for pkg in PACKAGES:
        debs = sorted(work.glob(f"{pkg}_*.deb"))
        if not debs:
            subprocess.run(["apt-get", "download", pkg], cwd=work, check=True)
            debs = sorted(work.glob(f"{pkg}_*.deb"))
        subprocess.run(["dpkg", "-x", str(debs[-1]), str(root)], check=True)
    return root


def process(vol: Volume, size: int, min_foreground: float, heldout_frac: float,
            gap: int) -> list[dict]:
    """Rows of the manifest for one volume, each with its resized pixels under ``"pixels"``."""
    small = area_resize(pad_square(vol.slices), size)  # [Z, size, size]
    fg = [foreground_fraction(s) for s in small]
    kept = [i for i, f in enumerate(fg) if f >= min_foreground]
    train, held = slab_split(kept, heldout_frac, gap)
    rows = []
    for split, idx in (("train", train), ("heldout", held)):
        for i in idx:
            rows.append({"path": f"{split}/{vol.modality}/{vol.name}_{vol.axis}{i:03d}.png",
                         "split": split, "modality": vol.modality, "volume": vol.name,
                         "source": vol.source, "axis": vol.axis, "slice_index": i,
                         "n_slices": vol.slices.shape[0], "foreground": f"{fg[i]:.4f}",
                         "pixels": small[i]})
    return rows


def write_dataset(rows: list[dict], out: Path) -> None:
    """Replace ``out/{train,heldout}`` with the rows' PNGs and write ``out/manifest.csv``."""
    out.mkdir(parents=True, exist_ok=True)
    for split in ("train", "heldout"):
        if (out / split).exists():
            shutil.rmtree(out / split)
    for r in rows:
        p = out / r["path"]
        p.parent.mkdir(parents=True, exist_ok=True)
        write_png(p, r["pixels"][None], bit_depth=16)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=MANIFEST_FIELDS, extrasaction="ignore", lineterminator="\n")
    w.writeheader()
    w.writerows(sorted(rows, key=lambda r: r["path"]))
    (out / "manifest.csv").write_text(buf.getvalue())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m frerec_fast.datasets.extract",
                                 description="Regenerate frerec_fast/data/real from Debian packages.")
    ap.add_argument("--work", type=Path, default=Path("/tmp/frerec_src"),
                    help="folder for the .deb files and their unpacked trees")
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "data" / "real")
    ap.add_argument("--size", type=int, default=64, help="output side in pixels (area resampling)")
    ap.add_argument("--min-foreground", type=float, default=0.15,
                    help="drop slices with less than this fraction of pixels above 0.1")
    ap.add_argument("--heldout-frac", type=float, default=0.25)
    ap.add_argument("--gap", type=int, default=6, help="slices dropped each side of the held-out slab")
    a = ap.parse_args(argv)
    root = fetch_sources(a.work)
    rows = []
    for vol in (load_cranium(root / CRANIUM), load_ch2(root / CH2)):
        vr = process(vol, a.size, a.min_foreground, a.heldout_frac, a.gap)
        n_tr = sum(r["split"] == "train" for r in vr)
        print(f"{vol.name}: {vol.slices.shape[0]} slices -> train {n_tr}, heldout "
              f"{len(vr) - n_tr}; mapping: {vol.mapping}")
        rows += vr
    write_dataset(rows, a.out)
    print(f"wrote {len(rows)} PNGs and manifest.csv under {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
