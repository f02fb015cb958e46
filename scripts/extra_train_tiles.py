"""Write 64x64 tiles of real medical images from the ``pydicom-data`` wheel (PyPI; fetched
with ``pip download`` when no wheel is given), for training an RHM on more kinds of real
image than the bundled head CT and T1 MRI (docs/rhm_quality.md §9).

Images used (uncompressed or JPEG 2000 files, one encoding of each image): an enhanced
head CT (2 frames), an abdominal CT, a shoulder MR (1024x1024), a 64x64 MR series (10
frames), a chest and an extremity radiograph (CR), a whole-body nuclear-medicine scan.
Left out: test patterns (``mlut_18``, ``vlut_04``), colour and ultrasound files, JPEG
lossless files (no decoder installed), and every image that ``scripts/extra_real_sets.py``
uses as an untouched check (``693_*`` is the CT ``693_J2KI.dcm`` of pydicom's own test
files, ``MR-SIEMENS-DICOM-WithOverlays`` is ``examples_overlay.dcm``).

Intensity mapping as ``scripts/extra_real_sets.py`` (CT: the bundled CT window; others:
the image's 99.5th percentile; MONOCHROME1 inverted). Each image is zero-padded to a
square, area-resampled to 256x256 (64x64 ones kept), cut into 64x64 tiles, and a tile is
kept when at least 15 % of its pixels exceed 0.1 (the bundled data's foreground rule):

    python scripts/extra_train_tiles.py OUT [--wheel pydicom_data-*.whl]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from extra_real_sets import _ct, _mr, _square  # noqa: E402 - the check sets' mapping

FILES = ("emri_small.dcm", "eCT_Supplemental.dcm", "explicit_VR-UN.dcm", "MR2_UNCR.dcm",
         "RG1_UNCR.dcm", "RG3_UNCR.dcm", "JPEG2000_UNC.dcm")
TILE, SIDE, FOREGROUND = 64, 256, 0.15


def _rescale(ds):
    """The dataset holding RescaleSlope/Intercept: the file itself, or (enhanced CT) its
    shared functional groups."""
    if "RescaleIntercept" not in ds and "SharedFunctionalGroupsSequence" in ds:
        return ds.SharedFunctionalGroupsSequence[0].PixelValueTransformationSequence[0]
    return ds


def tiles(root: Path, out: Path) -> int:
    import pydicom

    out.mkdir(parents=True, exist_ok=True)
    n = 0
    for name in FILES:
        (path,) = root.rglob(name)
        ds = pydicom.dcmread(path)
        arr = ds.pixel_array.astype(np.float64)
        frames = arr if arr.ndim == 3 else arr[None]
        for f, a in enumerate(frames):
            if ds.Modality == "CT":
                r = _rescale(ds)
                slope = float(getattr(r, "RescaleSlope", 1))
                a = _ct(a * slope + float(getattr(r, "RescaleIntercept", 0)))
            else:
                a = _mr(a, np.percentile(frames, 99.5))
                if ds.PhotometricInterpretation == "MONOCHROME1":
                    a = 1.0 - a
            sq = _square(a, SIDE)
            for i in range(0, sq.shape[0], TILE):
                for j in range(0, sq.shape[1], TILE):
                    t = np.clip(sq[i:i + TILE, j:j + TILE], 0.0, 1.0)
                    if (t > 0.1).mean() < FOREGROUND:
                        continue
                    Image.fromarray(np.round(t * 65535).astype(np.uint16)).save(
                        out / f"{Path(name).stem}_f{f}_{i // TILE}{j // TILE}.png")
                    n += 1
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("--wheel", type=Path, default=None,
                   help="pydicom_data-*.whl (default: pip download)")
    a = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        wheel = a.wheel
        if wheel is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "-d", tmp,
                            "pydicom-data==1.0.0"], check=True)
            (wheel,) = Path(tmp).glob("pydicom_data-*.whl")
        with zipfile.ZipFile(wheel) as z:
            z.extractall(Path(tmp) / "pdd")
        n = tiles(Path(tmp) / "pdd", a.out)
    print(f"wrote {n} tiles to {a.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
