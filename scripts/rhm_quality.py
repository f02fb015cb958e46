"""Measure the RHM quality targets (docs/rhm_quality.md) through the product's own path.

For one real index (built from --real-train), one RHM and a set of held-out real and
synthetic images, every number comes from files written by ``calibrate_dir``:
  * clean pass-through: the RHM alone (shr=False) on clean held-out real images, PSNR;
  * restoration: SHR then RHM on held-out real images (self-excluded), PSNR vs clean;
  * on the synthetic images, for SHR alone and full FreRec: PSNR/SSIM vs the input and
    the method §8 high-band and all-radii gaps under both protocols: "against raw real"
    (vs the raw held-out real images) and "deployed" (vs the held-out real images
    calibrated the same way); the raw synthetic gap is the baseline.

    python scripts/rhm_quality.py --real-train R --real-test T --synthetic S \\
        --model M --out DIR [--k 200] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import frerec_fast as ff
from frerec_fast.eval import image_size, profile_dir, quality_dirs
from frerec_fast.pipeline import calibrate_dir


def _gap(a: Path, b: Path, size, ratio: float) -> dict:
    hi, al = ff.frequency_gap(profile_dir(a, size).profile, profile_dir(b, size).profile, ratio)
    return {"high_band": hi, "all_radii": al}


def measure(real_train: Path, real_test: Path, synthetic: Path, model, out: Path, k: int = 200,
            seed: int = 0, rhm_stats: str = "shr") -> dict:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    index = ff.build_index(real_train, out / "index", progress=False)
    ratio = index.config.ratio
    # One K for both sets: real images are calibrated with self-exclusion (method §6), which
    # caps K at the index size minus one.
    k = min(k, len(index) - 1)
    run = dict(index=index, device="cpu", seed=seed, k=k, progress=False, resume=True)
    variants = {"shr": dict(model=False), "frerec": dict(model=model, rhm_stats=rhm_stats)}
    for name, kw in variants.items():
        for split, src in (("real", real_test), ("synthetic", synthetic)):
            rep = calibrate_dir(src, out / name / split, **run, **kw,
                                calibrate_real=split == "real")
            if rep["failed"]:
                raise RuntimeError(f"{name}/{split}: {rep['failed']} failed: {rep['errors']}")
    calibrate_dir(real_test, out / "rhm_only" / "real", **run, model=model, shr=False,
                  calibrate_real=True)
    size_real, size_syn = image_size(real_test), image_size(synthetic)
    size = (min(size_real[0], size_syn[0]), min(size_real[1], size_syn[1]))
    res = {"k": k, "rhm_stats": rhm_stats, "index_images": len(index), "size_compared": list(size),
           "real_test": str(real_test), "synthetic": str(synthetic), "model": str(model),
           "clean_passthrough_psnr": quality_dirs(real_test, out / "rhm_only" / "real")["psnr"],
           "real_restore": {"shr_psnr_vs_clean": quality_dirs(real_test, out / "shr" / "real")["psnr"],
                            "frerec_psnr_vs_clean": quality_dirs(real_test, out / "frerec" / "real")["psnr"]},
           "raw_gap": _gap(synthetic, real_test, size, ratio)}
    for name in variants:
        q = quality_dirs(synthetic, out / name / "synthetic")
        res[name] = {"psnr_vs_input": q["psnr"], "ssim_vs_input": q["ssim"],
                     "gap_against_raw_real": _gap(out / name / "synthetic", real_test, size, ratio),
                     "gap_deployed": _gap(out / name / "synthetic", out / name / "real", size, ratio)}
    s, f = res["shr"], res["frerec"]
    need_psnr = min(s["psnr_vs_input"] + 3.0, 40.0)
    res["targets"] = {
        "frerec_gap_le_shr_against_raw_real": f["gap_against_raw_real"]["high_band"] <= s["gap_against_raw_real"]["high_band"],
        "frerec_gap_le_shr_deployed": f["gap_deployed"]["high_band"] <= s["gap_deployed"]["high_band"],
        "frerec_psnr_vs_input_needed": need_psnr,
        "frerec_psnr_vs_input_met": f["psnr_vs_input"] >= need_psnr,
        "clean_passthrough_ge_50db": res["clean_passthrough_psnr"] >= 50.0,
    }
    res["seconds"] = time.perf_counter() - t0
    return res


def render(res: dict) -> str:
    lines = [f"real index {res['index_images']} images, K={res['k']}, rhm_stats="
             f"{res.get('rhm_stats', 'rhm')}; spectra at "
             f"{res['size_compared'][0]}x{res['size_compared'][1]}",
             f"RHM on clean held-out real (no SHR): PSNR {res['clean_passthrough_psnr']:.2f} dB",
             f"held-out real, SHR: {res['real_restore']['shr_psnr_vs_clean']:.2f} dB vs clean; "
             f"+ RHM: {res['real_restore']['frerec_psnr_vs_clean']:.2f} dB",
             f"{'synthetic':<10}{'PSNR in':>9}{'SSIM in':>9}{'gap raw real (hi/all)':>24}"
             f"{'gap deployed (hi/all)':>24}",
             f"{'raw':<10}{'':>9}{'':>9}{res['raw_gap']['high_band']:>12.4f}/"
             f"{res['raw_gap']['all_radii']:<11.4f}{'':>24}"]
    for name in ("shr", "frerec"):
        r = res[name]
        a, d = r["gap_against_raw_real"], r["gap_deployed"]
        lines.append(f"{name:<10}{r['psnr_vs_input']:>9.2f}{r['ssim_vs_input']:>9.4f}"
                     f"{a['high_band']:>12.4f}/{a['all_radii']:<11.4f}"
                     f"{d['high_band']:>12.4f}/{d['all_radii']:<11.4f}")
    lines.append("targets: " + ", ".join(f"{k}={v if not isinstance(v, float) else round(v, 2)}"
                                          for k, v in res["targets"].items()))
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--real-train", type=Path, required=True)
    ap.add_argument("--real-test", type=Path, required=True)
    ap.add_argument("--synthetic", type=Path, required=True)
    ap.add_argument("--model", default=None, help="RHM checkpoint (default: the shipped one)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("-k", "--k", type=int, default=200)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--rhm-stats", choices=("shr", "rhm"), default="shr",
                    help="whose high-band statistics full FreRec keeps (calibrate_dir's rhm_stats)")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    if a.model is None:
        from frerec_fast.training.default import default_model_path
        a.model = default_model_path()
    res = measure(a.real_train, a.real_test, a.synthetic, a.model, a.out, a.k,
                  rhm_stats=a.rhm_stats)
    print(render(res))
    if a.json:
        a.json.write_text(json.dumps(res, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
