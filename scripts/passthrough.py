"""The RHM alone on clean real images (no SHR), per folder: does a real image pass through?

Every number comes from files written by ``calibrate_dir(..., shr=False)`` (so tiling,
clipping and encoding are the product's own) and is the PSNR of the output against its
clean input; the issue's target is >= 50 dB. One row per folder and model:

    python scripts/passthrough.py --real-train R --model M [--model M2] DIR [DIR ...] \\
        --out WORK [--json out.json]

--real-train only fixes the working size and index config (as in scripts/rhm_quality.py).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import frerec_fast as ff
from frerec_fast.io import scan_images
from frerec_fast.spectral import psnr
from frerec_fast.pipeline import calibrate_dir


def _psnr(a: Path, b: Path) -> float:
    """PSNR (dB, peak 1) of two single-channel 16-bit PNGs read as value / 65535; each image
    at its own size (a folder may mix sizes)."""
    x, y = (torch.from_numpy(np.asarray(Image.open(f), dtype=np.float64) / 65535.0)
            for f in (a, b))
    if x.shape != y.shape:
        raise ValueError(f"{b}: shape {y.shape} differs from its input's {x.shape}")
    return float(psnr(y[None, None], x[None, None])[0])


def _label(model: str) -> str:
    """A model's short name: its file stem, or its run folder for OUT/rhm.safetensors."""
    m = Path(model)
    return m.parent.name if m.stem == "rhm" else m.stem


def measure(real_train: Path, models: list[Path], folders: list[Path], out: Path) -> list[dict]:
    index = ff.build_index(real_train, out / "index", progress=False)
    rows = []
    for m_i, model in enumerate(models):
        for folder in folders:
            dst = out / f"m{m_i}" / folder.name
            rep = calibrate_dir(folder, dst, index=index, model=model, shr=False, device="cpu",
                                seed=0, progress=False, resume=True, calibrate_real=True)
            if rep["failed"]:
                raise RuntimeError(f"{folder}: {rep['failed']} failed: {rep['errors']}")
            per = {rel: _psnr(folder / rel, dst / rel) for rel in scan_images(folder)}
            rows.append({"model": str(model), "folder": str(folder), "images": len(per),
                         "psnr": float(np.mean(list(per.values()))),
                         "psnr_min": float(np.min(list(per.values()))), "per_image": per})
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("folders", nargs="+", type=Path)
    p.add_argument("--real-train", type=Path, required=True)
    p.add_argument("--model", type=Path, action="append", required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    rows = measure(a.real_train, a.model, a.folders, a.out)
    for r in rows:
        print(f"{_label(r['model']):>24}  {Path(r['folder']).name:<12} "
              f"{r['images']} images: {r['psnr']:.2f} dB, lowest {r['psnr_min']:.2f}")
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
