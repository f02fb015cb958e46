"""Command line: ``python -m frerec_fast.synth train|generate`` (``--help`` on each)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .dcgan import DCGANConfig


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m frerec_fast.synth",
                                 description="Train or sample the project's small DCGAN.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    t = sub.add_parser("train", help="train on real 16-bit PNGs laid out as <class>/<name>.png")
    t.add_argument("--out", type=Path, required=True, help="folder for dcgan.safetensors + dcgan.json")
    t.add_argument("--real-dir", type=Path, default=None,
                   help="training images (default: the shipped real train split)")
    t.add_argument("--steps", type=int, default=2000)
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads; bit-identical weights need the same count")
    t.add_argument("--batch-size", type=int, default=32)
    t.add_argument("--lr", type=float, default=2e-4)
    t.add_argument("--ngf", type=int, default=DCGANConfig.ngf)
    t.add_argument("--ndf", type=int, default=DCGANConfig.ndf)
    t.add_argument("--nz", type=int, default=DCGANConfig.nz)

    g = sub.add_parser("generate", help="write N synthetic 16-bit PNGs")
    g.add_argument("--weights", type=Path, default=None,
                   help="dcgan.safetensors (its .json beside it); default: the shipped weights")
    g.add_argument("--n", type=int, required=True)
    g.add_argument("--out", type=Path, required=True)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--batch-size", type=int, default=64)
    g.add_argument("--threads", type=int, default=1)
    return ap


def main(argv=None) -> int:
    a = build_parser().parse_args(argv)
    if a.cmd == "train":
        from .train import train

        cfg = DCGANConfig(ngf=a.ngf, ndf=a.ndf, nz=a.nz)
        res = train(a.out, steps=a.steps, seed=a.seed, threads=a.threads, batch_size=a.batch_size,
                    lr=a.lr, cfg=cfg, real_dir=a.real_dir)
        print(f"wrote {res['info']['weights']} ({res['info']['train_seconds']} s)")
    else:
        from .. import datasets
        from .generate import generate

        weights = a.weights or datasets.weights_path()
        paths = generate(weights, a.n, a.out, seed=a.seed, batch_size=a.batch_size,
                         threads=a.threads)
        print(f"wrote {len(paths)} PNGs under {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
