"""The ``frerec`` command line. Every subcommand has ``--help``."""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from .engine.names import ALIASES, ENGINES, PRECISIONS


def _size(s: str):
    if s.lower() == "none":
        return None
    parts = s.lower().replace(",", "x").split("x")
    return (int(parts[0]), int(parts[-1]))


def cmd_index(a) -> int:
    from .index import build_index

    t0 = time.perf_counter()
    if a.compact:
        return _compact(a, t0)
    if a.out is None:
        print("frerec index: give REAL_DIR and OUT (or --compact INDEX_DIR)", file=sys.stderr)
        return 2
    # Settings left out keep build_index's defaults (or, with --append, the index's own).
    given = {k: getattr(a, k) for k in ("ratio", "domain", "retrieval_size") if hasattr(a, k)}
    common = dict(work_size=a.work_size, channels=a.channels, batch_size=a.batch_size,
                  backend=a.backend, progress=not a.quiet, shard_size=a.shard_size,
                  append=a.append, **given)
    if a.ray or a.ray_address or a.ray_workers:
        from .index.ray_build import build_index_ray
        idx = build_index_ray(a.real_dir, a.out, num_workers=a.ray_workers,
                              cpus_per_worker=a.cpus_per_worker, address=a.ray_address,
                              **common)
    else:
        idx = build_index(a.real_dir, a.out, workers=a.workers, **common)
    shards = getattr(getattr(idx, "manifest", None), "shards", None)
    layout = f"{len(shards)} shard(s)" if shards else "one file pair"
    print(f"{'appended to' if a.append else 'indexed'} {len(idx)} image(s) from {a.real_dir} "
          f"into {a.out} ({layout}) in {time.perf_counter() - t0:.1f}s (work size "
          f"{idx.config.work_size}, {idx.config.channels} channel(s), "
          f"{len(idx.skipped)} skipped)")
    for s in idx.skipped:
        print(f"  skipped {s['path']}: {s['error']}", file=sys.stderr)
    return 0


def _compact(a, t0: float) -> int:
    """`frerec index --compact INDEX_DIR [--shard-size N]`."""
    from .index import RealIndex
    from .index.compact import compact_index

    if a.out is not None:
        print("frerec index --compact takes one directory, the index", file=sys.stderr)
        return 2
    old = RealIndex.load(a.real_dir)
    before = len(old.manifest.shards) if hasattr(old, "manifest") else 1
    idx = compact_index(a.real_dir, shard_size=a.shard_size)
    print(f"compacted {a.real_dir}: {before} shard(s) -> {len(idx.manifest.shards)} of "
          f"{idx.manifest.shard_size} files, {len(idx)} image(s), in "
          f"{time.perf_counter() - t0:.1f}s")
    return 0


def _ray_options(s, what: str, workers: str, cpus: str | None) -> None:
    """--ray, --ray-address, --ray-workers and --cpus-per-worker of one subcommand."""
    s.add_argument("--ray", action="store_true", help=what)
    s.add_argument("--ray-address", default=None, help="existing Ray cluster ('auto', ray://...)")
    s.add_argument("--ray-workers", type=int, default=None,
                   help=f"{workers} (default: cluster CPUs / --cpus-per-worker)")
    s.add_argument("--cpus-per-worker", type=int, default=1, help=cpus)


def _device(name: str) -> str:
    from .devices import resolve_device
    return str(resolve_device(name))


def cmd_calibrate(a) -> int:
    from .pipeline import config_from_cli

    cfg = config_from_cli(a)
    model = False if a.shr_only else a.model
    if a.ray or a.ray_address or a.ray_workers:
        from .distributed import calibrate_dir_ray

        rep = calibrate_dir_ray(a.src, a.dst, a.index, model, num_workers=a.ray_workers,
                                cpus_per_worker=a.cpus_per_worker,
                                gpus_per_worker=a.gpus_per_worker, address=a.ray_address,
                                shard_size=a.shard_size, max_retries=a.max_retries,
                                config=cfg)
    else:
        from .pipeline import calibrate_dir

        rep = calibrate_dir(a.src, a.dst, a.index, model, config=cfg)
    print(summary(rep, a.dst))
    if rep.get("files") == 0:
        print(f"frerec calibrate: no supported image found under {a.src} (formats: "
              "PNG, JPEG, TIFF, DICOM, NIfTI; hidden files are skipped)", file=sys.stderr)
    for path, why in (rep.get("excluded") or {}).items():
        print(f"  left out {path}: {why}", file=sys.stderr)
    for path, err in rep["errors"].items():
        print(f"  failed {path}: {err}", file=sys.stderr)
    if rep["failed"]:
        print(f"frerec calibrate: {rep['failed']} file(s) failed (listed above and in "
              f"{Path(a.dst) / 'frerec_report.json'})", file=sys.stderr)
    return 1 if rep["failed"] else 0


def summary(rep: dict, dst) -> str:
    """A short text summary of a calibrate_dir report."""
    st = rep["stage_seconds"]
    lines = [f"{'FreRec' if rep['rhm'] else 'SHR only'}: {rep['ok']} written to {dst}, "
             f"{rep['skipped']} already done, {rep['failed']} failed"
             + (f", {len(rep['excluded'])} left out (links)" if rep.get("excluded") else "")
             + f"; {rep['seconds']:.1f}s, "
             f"{rep['images_per_s']:.1f} img/s on {rep['device_name']} "
             f"(backends: {', '.join(f'{k}={v}' for k, v in rep['backends'].items())})",
             "  stage seconds (encode and decode: summed over their threads): "
             + ", ".join(f"{k} {v:.2f}" for k, v in st.items())]
    if rep.get("rhm"):
        lines.append(f"  RHM: engine {rep.get('engine')}, precision {rep.get('precision')}"
                     + (", high-band statistics kept from SHR" if rep.get("rhm_stats") == "shr"
                        else ", high-band statistics the RHM's own" if rep.get("rhm_stats")
                        else ""))
        fit = rep.get("rhm_fit") or {}
        if fit.get("fits") is False:  # the full advice was logged when the run was planned
            got = (f"{fit['psnr_db']:.1f} dB" if fit.get("psnr_db") is not None
                   else "non-finite outputs")
            lines.append(f"  WARNING: the RHM does not fit this index's real images: they pass "
                         f"through at {got} (< {fit['threshold_db']:.0f} dB); see the warning "
                         f"above")
        elif fit.get("fits"):
            lines.append(f"  RHM fit: clean real images of the index pass through at "
                         f"{fit['psnr_db']:.1f} dB (>= {fit['threshold_db']:.0f}; "
                         f"{fit['checked']} checked)")
    r = rep.get("retrieval") or {}
    if r.get("mode") == "prefilter":
        got = (f"recall@k {r['recall_sample']:.3f} against exact on {r['recall_queries']} "
               "tile(s) of the first micro-batch" if "recall_sample" in r else
               f"recall not measured ({r.get('recall_error', 'no micro-batch ran')})")
        lines.append(f"  retrieval: prefilter, {r['candidates']} candidates per tile; {got}")
    gap = rep.get("frequency_gap") or {}
    if gap:
        gi, go = gap["inputs_vs_index"], gap["outputs_vs_index"]
        lines.append(f"  frequency gap, protocol 'against raw real' (this run's images vs the "
                     f"index's uncalibrated real images; high band / all radii, "
                     f"{gap['sample']} images): inputs {gi['high_band']:.4f} / "
                     f"{gi['all_radii']:.4f}, outputs {go['high_band']:.4f} / {go['all_radii']:.4f}")
        lines.append("  (the 'deployed' protocol, real images calibrated too, is measured by "
                     "frerec eval)")
    return "\n".join(lines)


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

    return run_demo(Path(a.out), k=a.k, seed=a.seed, backend=a.backend, device=_device(a.device),
                    engine=a.engine, precision=a.precision)


def cmd_eval(a) -> int:
    from .evaluation import evaluate

    rep = evaluate(a.real_train, a.real_test, a.synthetic, a.out, index=a.index, model=a.model,
                   ablation_model=a.ablation_model, seeds=a.seeds, backbone=a.backbone,
                   device=_device(a.device), k=a.k, seed=a.seed, steps=a.steps,
                   batch_size=a.batch_size, quick=a.quick, progress=not a.quiet,
                   figures=not a.no_figures)
    out = Path(a.out)
    g = rep["spectral"]
    b = g["baseline"]["overall"]
    print(f"frerec eval: report in {out / 'report.md'} (and report.json, "
          f"{len(rep['figures'])} figure(s)); {rep['timings_s']['total']:.1f}s")
    print(f"  high-band gap, baseline (raw synthetic vs raw real test): {b['high_band']:.4f}")
    for v, pr in g["variants"].items():
        print(f"  {rep['variants'][v]['title']}: against raw real "
              f"{pr['against raw real']['overall']['high_band']:.4f}, deployed "
              f"{pr['deployed']['overall']['high_band']:.4f}")
    for row in rep["ablation"]:
        if "not_run" in row:
            print(f"  {row['title']}: {row['not_run']}")
    for name, why in rep["classification"].get("not_run", {}).items():
        print(f"  {name}: {why}")
    cls = rep["classification"].get("methods", {})
    for name in ("GDA", "GDA+FreRec"):
        if name in cls:
            m, sd = cls[name]["mean"], cls[name]["std"]
            print(f"  {name}: AUC {m['auc']:.3f} ± {sd['auc']:.3f}, acc {m['acc']:.3f} ± "
                  f"{sd['acc']:.3f}, F1 {m['f1']:.3f} ± {sd['f1']:.3f}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="frerec", description=(
        "FreRec: recalibrate the high-frequency spectrum of AI-synthesised medical "
        "images to match real ones."))
    p.add_argument("-v", "--verbose", action="store_true", help="log more")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("index", help="build a real-image index from a directory",
                       description="Scan REAL_DIR recursively (PNG, JPEG, TIFF, BMP, DICOM, "
                       "NIfTI) and write an index to OUT: one file pair (OUT/index.json + "
                       "OUT/index.safetensors) for up to 65,536 files, else a manifest "
                       "OUT/index.json and shards under OUT/shards/ (see --shard-size).")
    s.add_argument("real_dir", help="directory of real images (with --compact: the index)")
    s.add_argument("out", nargs="?", default=None, help="index directory to write")
    s.add_argument("--ratio", type=float, default=argparse.SUPPRESS,
                   help="low-band ratio r (default 0.5)")
    s.add_argument("--domain", choices=("complex", "amplitude"), default=argparse.SUPPRESS,
                   help="(default complex)")
    s.add_argument("--work-size", type=_size, default=None,
                   help="HxW at which band statistics are computed (default: first image's size)")
    s.add_argument("--retrieval-size", type=_size, default=argparse.SUPPRESS,
                   help="HxW of the SSIM retrieval thumbnails (default 64x64; 'none' = the "
                   "first image's size)")
    s.add_argument("--channels", type=int, choices=(1, 3), default=None)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--backend", default="auto", help="auto|torch|cpp|triton|cuda")
    s.add_argument("--shard-size", type=int, default=None,
                   help="write a sharded index with this many files per shard (default: "
                   "sharded with 65536 when REAL_DIR holds more files than that)")
    s.add_argument("--workers", type=int, default=None,
                   help="processes building shards at once (default: one per CPU)")
    s.add_argument("--append", action="store_true",
                   help="add the images of REAL_DIR to the index at OUT as new shards (its "
                   "settings are kept; keys already in it are refused)")
    s.add_argument("--compact", action="store_true",
                   help="rewrite the sharded index at REAL_DIR (the only argument) into full "
                   "shards (of --shard-size files, default its own): many small appended "
                   "shards become few; crash-safe, answers unchanged")
    _ray_options(s, "build the shards as Ray tasks (a local cluster unless --ray-address); "
                 "same bytes as a local build", "shard tasks at once on Ray",
                 "CPUs (and torch threads) per Ray shard task")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    s.set_defaults(fn=cmd_index)

    for name, shr_only in (("calibrate", False), ("shr", True)):
        s = sub.add_parser(name, help=("calibrate a directory: retrieval, SHR, RHM" if not shr_only
                                       else "SHR only (no RHM): the first FreRec step alone"),
                           description=(
            "For each image under SRC: top-K real neighbours by SSIM, per-image noise from "
            "(seed, relative path), SHR" + ("" if shr_only else ", RHM") + ", clip; written "
            "to DST with the same relative path, format and bit depth. Resumable: a manifest "
            "in DST records finished files. Exit code 1 if any file failed."))
        s.add_argument("src")
        s.add_argument("dst")
        s.add_argument("--index", required=True, help="index directory from `frerec index`")
        if not shr_only:
            s.add_argument("--model", default=None,
                           help="RHM checkpoint (default: the model shipped with the package)")
        from .pipeline.config import add_cli_options
        add_cli_options(s, skip=() if not shr_only else ("engine", "precision", "shr",
                                                         "rhm_stats"))
        _ray_options(s, "run on Ray (a local cluster unless --ray-address): long-lived "
                     "workers take shards of files; same outputs as a local run", "Ray workers",
                     None)
        s.add_argument("--gpus-per-worker", type=float, default=0,
                       help="> 0 runs each Ray worker on CUDA")
        s.add_argument("--shard-size", type=int, default=None,
                       help="files per Ray shard (default: a quarter of a worker's share, "
                            "at most 256)")
        s.add_argument("--max-retries", type=int, default=3,
                       help="restarts of a Ray worker that dies, and times a shard may be lost")
        s.set_defaults(fn=cmd_calibrate, shr_only=shr_only)

    from .training.cli import register as register_train
    register_train(sub)
    from .capacity import register as register_capacity
    register_capacity(sub)

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
    s.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    s.add_argument("--engine", choices=ENGINES + tuple(ALIASES), default="auto",
                   help="how the RHM runs (default auto: the fastest installed for the device; "
                   "see frerec calibrate --help)")
    s.add_argument("--precision", choices=PRECISIONS, default="fp32",
                   help="the RHM's arithmetic (bf16: CPUs with bf16 units, GPUs)")
    s.set_defaults(fn=cmd_demo)

    s = sub.add_parser("eval", help="evaluate FreRec on a dataset: gaps, quality, features, "
                       "classification (paper Fig. 6-7, Tables 2-3)",
                       description="Calibrate the synthetic and real images with FreRec and its "
                       "ablations, then measure the frequency gap under both protocols ('against "
                       "raw real' and 'deployed'), PSNR/SSIM, a feature-space t-SNE and Frechet "
                       "distance, and downstream classification (RAW, AutoAugment, Mix-up, AFA, "
                       "GDA, GDA+FreRec). Inputs in ImageFolder layout (one sub-folder per class, "
                       "the same classes in all three), or unlabelled (images directly in the "
                       "folders: no classification). Writes OUT/report.md, OUT/report.json and "
                       "PNG figures; calibrated copies are cached under OUT/calibrated/.")
    s.add_argument("--real-train", required=True, metavar="DIR",
                   help="real training images (also the index, unless --index)")
    s.add_argument("--real-test", required=True, metavar="DIR", help="real test images")
    s.add_argument("--synthetic", required=True, metavar="DIR", help="synthetic images")
    s.add_argument("--out", required=True, metavar="RUN_DIR", help="report and cache folder")
    s.add_argument("--index", default=None,
                   help="an index from `frerec index` (default: built from --real-train)")
    s.add_argument("--model", default=None, help="RHM checkpoint (default: the shipped model)")
    s.add_argument("--ablation-model", default=None, metavar="M_NOFESA",
                   help="an RHM trained with fesa=False (same recipe), for the 'RHM w/o FESA' row")
    s.add_argument("--seeds", type=int, default=None,
                   help="classifier runs per method (default 5; 2 with --quick)")
    s.add_argument("--steps", type=int, default=None,
                   help="optimizer steps per classifier run, the same for every method "
                        "(default 200; 12 with --quick)")
    s.add_argument("--batch-size", type=int, default=32, help="classifier batch (default 32)")
    s.add_argument("--backbone", choices=("small", "resnet18"), default="small",
                   help="classifier: small (CPU-friendly CNN, default) or resnet18 (torchvision)")
    s.add_argument("--device", default="cpu", help="cpu (default) | cuda | auto")
    s.add_argument("-k", type=int, default=200, help="FreRec neighbours per image (default 200)")
    s.add_argument("--seed", type=int, default=0, help="FreRec noise and first classifier seed")
    s.add_argument("--quick", action="store_true", help="few steps and seeds (CI, smoke tests)")
    s.add_argument("--no-figures", action="store_true", help="skip the PNG figures and t-SNE")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    s.set_defaults(fn=cmd_eval)
    return p


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    from .allocator import tune
    tune()
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.fn(args) or 0)
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        print(f"frerec {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
