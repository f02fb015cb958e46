"""Write real medical images that no part of frerec_fast was trained, tuned or selected on,
as 16-bit PNGs, for checking the shipped RHM on data it never saw (docs/rhm_quality.md §8).

Sources are the sample files inside installed Python wheels, so nothing is downloaded:

- ``pydicom`` (the ``medical`` extra, which scripts/install.sh installs): ``CT_small.dcm``
  (head CT, 128x128), ``693_J2KI.dcm`` (head CT, 512x512, JPEG 2000), ``MR_small.dcm``
  (MR, 64x64), ``examples_overlay.dcm`` (abdominal MR, 300x484).
- ``nibabel`` (the ``medical`` extra): ``example4d.nii.gz``, a real EPI fMRI run
  (128x96 x 24 slices x 2 volumes); the central 8 slices of the first volume.
- ``dipy`` (not a dependency; pass ``--dipy DIR`` with an unpacked wheel, e.g.
  ``pip download dipy --no-deps`` then unzip): ten b0 slices of ``S0_10slices.nii.gz``
  (diffusion EPI, 128x128) and ``t1_coronal_slice.npy`` (T1, 256x256).

Intensity mapping as the bundled data's (``frerec_fast/datasets/extract.py``): CT through
the bundled CT's window (level -18 HU, width 406 HU); MR divided by the volume's (or
image's) 99.5th percentile; both clipped to [0, 1]. Non-square images are zero-padded to
a square; sides above 256 are area-resampled to 256. One folder per group, so each group's
numbers can be read alone:

    python scripts/extra_real_sets.py OUT [--dipy DIR]
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
import torch
from PIL import Image

CT_LEVEL, CT_WIDTH = -18.0, 406.0
MAX_SIDE = 256


def _square(img: np.ndarray, max_side: int = MAX_SIDE) -> np.ndarray:
    """img: [H, W] float -> [S, S], zero-padded (centred), area-resampled to <= max_side."""
    h, w = img.shape
    s = max(h, w)
    out = np.zeros((s, s), np.float64)
    out[(s - h) // 2:(s - h) // 2 + h, (s - w) // 2:(s - w) // 2 + w] = img
    if s > max_side:
        t = torch.from_numpy(out)[None, None]
        out = torch.nn.functional.interpolate(t, size=(max_side, max_side),
                                              mode="area")[0, 0].numpy()
    return out


def _ct(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu - (CT_LEVEL - CT_WIDTH / 2)) / CT_WIDTH, 0.0, 1.0)


def _mr(x: np.ndarray, scale: float | None = None) -> np.ndarray:
    return np.clip(x / (scale or np.percentile(x, 99.5)), 0.0, 1.0)


def _save(img: np.ndarray, path: Path, rows: list, **info) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = _square(img)
    Image.fromarray(np.round(img * 65535).astype(np.uint16)).save(path)
    rows.append({"file": f"{path.parent.name}/{path.name}", "size": img.shape[0], **info})


def pydicom_nibabel(out: Path, rows: list) -> None:
    import nibabel
    import pydicom
    from pydicom.data import get_testdata_file

    for name, group in (("CT_small.dcm", "ct"), ("693_J2KI.dcm", "ct"), ("MR_small.dcm", "mr"),
                        ("examples_overlay.dcm", "mr")):
        path = get_testdata_file(name)
        ds = pydicom.dcmread(path)
        a = ds.pixel_array.astype(np.float64)
        if group == "ct":
            slope = float(getattr(ds, "RescaleSlope", 1))
            a = _ct(a * slope + float(getattr(ds, "RescaleIntercept", 0)))
        else:
            a = _mr(a)
        _save(a, out / f"dicom_{group}" / f"{Path(name).stem}.png", rows,
              source=f"pydicom {pydicom.__version__} test file {name}", modality=ds.Modality)
    epi = Path(nibabel.__file__).parent / "tests" / "data" / "example4d.nii.gz"
    vol = np.asarray(nibabel.load(epi).dataobj, dtype=np.float64)[..., 0]  # [128, 96, 24]
    scale = np.percentile(vol, 99.5)
    mid = vol.shape[2] // 2
    for z in range(mid - 4, mid + 4):
        _save(_mr(np.rot90(vol[:, :, z]), scale), out / "epi_fmri" / f"example4d_z{z:02d}.png",
              rows, source=f"nibabel {nibabel.__version__} tests/data/example4d.nii.gz, volume 0, "
              f"slice {z}", modality="MR (EPI)")


def dipy_files(root: Path, out: Path, rows: list) -> None:
    import nibabel

    files = root / "dipy" / "data" / "files"
    vol = np.asarray(nibabel.load(files / "S0_10slices.nii.gz").dataobj, dtype=np.float64)
    vol = vol.reshape(vol.shape[0], vol.shape[1], -1)
    scale = np.percentile(vol, 99.5)
    for z in range(vol.shape[2]):
        _save(_mr(np.rot90(vol[:, :, z]), scale), out / "dipy_b0" / f"b0_{z:02d}.png", rows,
              source=f"dipy wheel data/files/S0_10slices.nii.gz, slice {z}", modality="MR (b0 EPI)")
    t1 = np.load(files / "t1_coronal_slice.npy").astype(np.float64)
    _save(_mr(t1), out / "dipy_t1" / "t1_coronal.png", rows,
          source="dipy wheel data/files/t1_coronal_slice.npy", modality="MR (T1)")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--dipy", type=Path, default=None, help="an unpacked dipy wheel")
    a = p.parse_args(argv)
    rows: list = []
    pydicom_nibabel(a.out, rows)
    if a.dipy is not None:
        dipy_files(a.dipy, a.out, rows)
    with open(a.out / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["file", "size", "modality", "source"])
        w.writeheader()
        w.writerows(rows)
    print(f"wrote {len(rows)} images under {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
