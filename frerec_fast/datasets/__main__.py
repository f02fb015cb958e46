"""``python -m frerec_fast.datasets``: list the shipped sets and their spectral gaps."""
from __future__ import annotations

import argparse
import sys

from . import MODALITIES, SETS, data_root, list_images, set_dir, weights_path
from .check import report


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m frerec_fast.datasets",
                                 description="Show the shipped demo/test images and how far the "
                                             "synthetic set's spectrum is from the real one.")
    ap.add_argument("--ratio", type=float, default=0.5, help="high-band ratio r (method §8)")
    a = ap.parse_args(argv)
    print(f"data root: {data_root()}")
    for which in SETS:
        counts = {m: len(list_images(which, m)) for m in MODALITIES}
        detail = ", ".join(f"{m} {c}" for m, c in counts.items())
        print(f"{which:<10} {sum(counts.values()):>4} images ({detail})  {set_dir(which)}")
    print(f"generator weights: {weights_path()}")
    print()
    print(report(a.ratio))
    return 0


if __name__ == "__main__":
    sys.exit(main())
