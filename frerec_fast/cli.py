"""The ``frerec`` command line. Every subcommand has ``--help``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path


def _size(s: str):
    if s.lower() == "none":
        return None
    parts = s.lower().replace(",", "x").split("x")
    return (int(parts[0]), int(parts[-1]))


def cmd_index(a) -> int:
    from .index import build_index

    t0 = time.perf_counter()
    idx = build_index(a.real_dir, a.out, ratio=a.ratio, domain=a.domain, work_size=a.work_size,
                      retrieval_size=a.retrieval_size, channels=a.channels,
                      batch_size=a.batch_size, backend=a.backend, progress=not a.quiet)
    print(f"indexed {len(idx)} image(s) from {a.real_dir} into {a.out} in "
          f"{time.perf_counter() - t0:.1f}s (work size {idx.config.work_size}, "
          f"{idx.config.channels} channel(s), {len(idx.skipped)} skipped)")
    for s in idx.skipped:
        print(f"  skipped {s['path']}: {s['error']}", file=sys.stderr)
    return 0


def cmd_shr(a) -> int:
    from .pipeline import shr_dir

    rep = shr_dir(a.src, a.dst, a.index, k=a.k, seed=a.seed, batch_size=a.batch_size,
                  backend=a.backend, self_exclude=a.real)
    print(f"SHR: {rep.ok} written to {a.dst}, {rep.failed} failed, {rep.seconds:.1f}s")
    for path, err in rep.errors.items():
        print(f"  failed {path}: {err}", file=sys.stderr)
    return 1 if rep.failed else 0


def cmd_spectrum(a) -> int:
    from .eval import plot_profiles, profile_dir
    from .spectral import frequency_gap

    profs = [profile_dir(d, size=a.size, limit=a.limit) for d in a.dirs]
    ref = profs[0]
    rows = []
    print(f"spectral profiles at {ref.size[0]}x{ref.size[1]}; gaps against {ref.name!r} "
          f"(mean |difference| of mean log10 power)")
    print(f"  {'set':<28}{'images':>8}{'high band':>12}{'all radii':>12}")
    for p in profs:
        hi, al = frequency_gap(p.profile, ref.profile, ratio=a.ratio)
        rows.append({"set": str(p.name), "count": p.count, "gap_high": hi, "gap_all": al})
        print(f"  {p.name:<28}{p.count:>8}{hi:>12.4f}{al:>12.4f}")
    if a.plot:
        print(f"plot: {plot_profiles(profs, a.plot, ratio=a.ratio)}")
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0


def cmd_demo(a) -> int:
    from .demo import run_demo

    return run_demo(Path(a.out), k=a.k, seed=a.seed, backend=a.backend)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="frerec", description=(
        "FreRec: recalibrate the high-frequency spectrum of AI-synthesised medical "
        "images to match real ones."))
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("index", help="build a real-image index from a directory",
                       description="Scan REAL_DIR recursively (PNG, JPEG, TIFF, BMP, DICOM, "
                       "NIfTI) and write OUT/index.safetensors + OUT/index.json.")
    s.add_argument("real_dir")
    s.add_argument("out")
    s.add_argument("--ratio", type=float, default=0.5, help="low-band ratio r (default 0.5)")
    s.add_argument("--domain", choices=("complex", "amplitude"), default="complex")
    s.add_argument("--work-size", type=_size, default=None,
                   help="HxW at which band statistics are computed (default: first image's size)")
    s.add_argument("--retrieval-size", type=_size, default=(64, 64),
                   help="HxW of the SSIM retrieval thumbnails (default 64x64; 'none' = work size)")
    s.add_argument("--channels", type=int, choices=(1, 3), default=None)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--backend", default="auto", help="auto|torch|cpp|triton|cuda")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_index)

    s = sub.add_parser("shr", help="SHR only (no RHM): recalibrate a directory's high band",
                       description="For each image: top-K real neighbours by SSIM, per-image "
                       "noise from (seed, relative path), SHR, clip, write to DST.")
    s.add_argument("src")
    s.add_argument("dst")
    s.add_argument("--index", required=True, help="index directory from `frerec index`")
    s.add_argument("-k", type=int, default=200, help="neighbours per image (default 200)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--backend", default="auto")
    s.add_argument("--real", action="store_true",
                   help="inputs are real images that may be in the index: exclude self")
    s.set_defaults(fn=cmd_shr)

    s = sub.add_parser("spectrum", help="spectral profiles of directories and their gaps",
                       description="Mean log10 radial power profile of each directory's luma "
                       "(resampled to --size), and its frequency gap to the first directory.")
    s.add_argument("dirs", nargs="+")
    s.add_argument("--size", type=_size, default=(64, 64))
    s.add_argument("--ratio", type=float, default=0.5)
    s.add_argument("--limit", type=int, default=None, help="at most this many images per dir")
    s.add_argument("--plot", default=None, help="write a PNG plot here")
    s.add_argument("--json", default=None, help="write the gap table as JSON here")
    s.set_defaults(fn=cmd_spectrum)

    s = sub.add_parser("demo", help="offline demo on the bundled real and synthetic images")
    s.add_argument("--out", default="demo_out", help="output directory (default demo_out)")
    s.add_argument("-k", type=int, default=200)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--backend", default="auto")
    s.set_defaults(fn=cmd_demo)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args) or 0)
    except (FileNotFoundError, ValueError, ImportError, RuntimeError) as e:
        print(f"frerec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
