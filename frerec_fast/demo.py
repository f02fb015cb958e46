"""The offline demo: real CT/MRI slices shipped with the package, synthetic images from
the project's own DCGAN, a real index, SHR alone and full FreRec (SHR + the shipped
RHM) on the synthetic set, and the frequency gap to held-out real images (method §8) under
both protocols: "against raw real" (calibrated synthetic vs raw held-out real) and
"deployed" (calibrated synthetic vs held-out real calibrated the same way, method §6)."""
from __future__ import annotations

import json
import time
from pathlib import Path

from .eval import plot_profiles, profile_dir, quality_dirs
from .index import build_index
from .pipeline import calibrate_dir
from .spectral import frequency_gap


def _shipped_model():
    try:
        from .training.default import default_model_path
        path = default_model_path()
    except (ImportError, FileNotFoundError) as e:
        return None, str(e)
    return path, None


def run_demo(out: Path, k: int = 200, seed: int = 0, backend: str = "auto",
             device: str = "cpu", engine: str = "auto", precision: str = "fp32") -> int:
    """Run the demo into ``out``; prints a short report and returns an exit code."""
    from .datasets import real_dir, synthetic_dir

    out.mkdir(parents=True, exist_ok=True)
    train, heldout, synth = real_dir("train"), real_dir("heldout"), synthetic_dir()
    t0 = time.perf_counter()
    index = build_index(train, out / "index", backend=backend, progress=False)
    print(f"[1/4] real index: {len(index)} real CT/MRI slices from the package "
          f"({index.config.work_size[0]}x{index.config.work_size[1]}, "
          f"{time.perf_counter() - t0:.1f}s) -> {out / 'index'}")

    runs = {}
    # One K for every set: held-out real images are calibrated with self-exclusion
    # (method §6), which caps K at the index size minus one, so synthetic ones use that too.
    k = min(k, len(index) - 1)
    common = dict(index=index, device=device, seed=seed, backend=backend, k=k, progress=False,
                  resume=False)
    rep = calibrate_dir(synth, out / "shr", model=False, **common)
    runs["shr"] = rep
    # The deployed protocol's reference: the held-out real slices through the same
    # calibration (calibrate_real: an image never retrieves itself; method §6).
    runs["shr_real"] = calibrate_dir(heldout, out / "shr_real", model=False,
                                     **{**common, "calibrate_real": True})
    print(f"[2/4] SHR only on {rep['ok']} DCGAN images: {rep['images_per_s']:.0f} img/s, "
          f"{rep['failed']} failed -> {out / 'shr'} (and the held-out real slices -> "
          f"{out / 'shr_real'})")
    model, why = _shipped_model()
    if model is not None:
        fr = dict(model=model, engine=engine, precision=precision)
        rep = calibrate_dir(synth, out / "frerec", **fr, **common)
        runs["frerec"] = rep
        runs["frerec_real"] = calibrate_dir(heldout, out / "frerec_real", **fr,
                                            **{**common, "calibrate_real": True})
        stats = "SHR" if rep.get("rhm_stats") == "shr" else "the RHM"
        print(f"[3/4] FreRec (SHR + shipped RHM, {rep['engine']}, {precision}, high-band "
              f"statistics from {stats}) on {rep['ok']} images: "
              f"{rep['images_per_s']:.1f} img/s, {rep['failed']} failed -> {out / 'frerec'} "
              f"(and the held-out real slices -> {out / 'frerec_real'})")
        fit = rep.get("rhm_fit") or {}
        if fit.get("psnr_db") is not None:
            verdict = "passes them through" if fit["fits"] else "DOES NOT pass them through"
            print(f"      the RHM alone on {fit['checked']} clean real slices of the index: "
                  f"PSNR {fit['psnr_db']:.1f} dB ({verdict}, target >= "
                  f"{fit['threshold_db']:.0f}; docs/rhm_quality.md section 8)")
    else:
        print(f"[3/4] FreRec skipped: no shipped RHM model ({why})")

    size = index.config.work_size
    ref = profile_dir(heldout, size, name="real held-out")
    sets = [profile_dir(train, size, name="real train"),
            profile_dir(synth, size, name="synthetic (DCGAN)"),
            profile_dir(out / "shr", size, name="synthetic + SHR")]
    if "frerec" in runs:
        sets.append(profile_dir(out / "frerec", size, name="synthetic + FreRec"))
    # Raw vs raw is the baseline of both protocols (method §8).
    deployed_ref = {"synthetic (DCGAN)": ref,
                    "synthetic + SHR": profile_dir(out / "shr_real", size, name="real + SHR")}
    if "frerec" in runs:
        deployed_ref["synthetic + FreRec"] = profile_dir(out / "frerec_real", size,
                                                         name="real + FreRec")
    print(f"[4/4] frequency gap (mean |diff| of mean log10 power, high band / all radii; "
          f"smaller is closer to real) to {ref.count} held-out real slices, two protocols:")
    print("      against raw real: each set vs the raw held-out slices; deployed: each "
          "calibrated set vs the held-out slices calibrated the same way (method §6)")
    print(f"      {'set':<24}{'against raw real':>20}{'deployed':>20}")
    rows = {}
    for p in sets:
        hi, al = frequency_gap(p.profile, ref.profile, ratio=index.config.ratio)
        rows[p.name] = {"count": p.count, "gap_high": hi, "gap_all": al,
                        "protocol": "against raw real"}
        dep = ""
        if p.name in deployed_ref:
            dh, da = frequency_gap(p.profile, deployed_ref[p.name].profile,
                                   ratio=index.config.ratio)
            rows[p.name]["deployed"] = {"gap_high": dh, "gap_all": da}
            dep = f"{dh:.4f} / {da:.4f}"
        print(f"      {p.name:<24}{hi:>11.4f} / {al:.4f}{dep:>20}")
    quality = {}
    for name in ("shr", "frerec"):
        if name not in runs:
            continue
        q = quality_dirs(synth, out / name)
        quality[name] = q
        print(f"      {name}: outputs vs inputs PSNR {q['psnr']:.2f} dB, SSIM {q['ssim']:.4f} "
              f"({q['n']} images)")
    try:
        plot = plot_profiles([ref, *sets], out / "spectrum.png", ratio=index.config.ratio,
                             title="frerec demo: spectral profiles (64x64 CT/MRI)")
        print(f"plot: {plot}")
    except ImportError as e:
        print(f"(no plot: {e})")
    report = {"gaps_vs_heldout": rows, "quality_vs_inputs": quality, "k": k, "seed": seed,
              "protocols": {"against raw real": "calibrated synthetic vs raw held-out real",
                            "deployed": "calibrated synthetic vs held-out real calibrated "
                                        "the same way (method §6, self-excluded)"},
              "runs": {name: {key: r.get(key) for key in (
                  "ok", "failed", "errors", "seconds", "images_per_s", "stage_seconds",
                  "backends", "device", "device_name", "engine", "precision")}
                       for name, r in runs.items()}}
    (out / "demo_report.json").write_text(json.dumps(report, indent=1))
    print(f"report: {out / 'demo_report.json'}")
    return 1 if any(r["failed"] for r in runs.values()) else 0
