"""``evaluate``: the whole ``frerec eval`` run (paper Fig. 6-7, Tables 2-3).

Stages, each timed and with its own progress bar: index (built from the real training
images unless one is given), calibrate (every variant through ``calibrate_dir``,
cached under ``out/calibrated/<variant>/<split>/`` and resumed from there), load,
spectral, quality, features, classify, report.
"""
from __future__ import annotations

import json
import os
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from ..index import RealIndex, build_index
from ..progress import bar as progress_bar
from . import spectral as sp
from .classify import BACKBONES, predict_proba, train_classifier
from .features import make_encoder, split_80_20, tsne_2d
from .folders import EvalInputError, load_images, scan_inputs
from .metrics import bootstrap_mean_ci, classification_metrics, frechet_distance, mean_std

SPLITS = ("synthetic", "real_train", "real_test")
# Calibration variants (paper Table 3), in table order: name -> row title.
VARIANTS = {"shr": "SHR only",
            "rhm_nofesa": "RHM w/o FESA (SHR + an RHM trained with fesa=False)",
            "rhm_noshr": "RHM w/ FESA, no SHR at inference",
            "full": "full FreRec (SHR + RHM w/ FESA)",
            "full_rhm_stats": "full FreRec, the RHM's own high-band statistics (paper-literal)"}
METRICS = ("auc", "acc", "f1")
DEFAULT_STEPS, QUICK_STEPS = 200, 12
DEFAULT_SEEDS, QUICK_SEEDS = 5, 2


@contextmanager
def _stage(timings: dict, name: str, total: int, progress: bool):
    t0 = time.perf_counter()
    bar = progress_bar(total, name, enabled=progress)
    try:
        yield bar
    finally:
        bar.close()
        timings[name] = round(time.perf_counter() - t0, 3)


def _index_for(real_train: Path, where: Path) -> RealIndex:
    """The cached index of ``real_train`` under ``where``, (re)built when its keys differ."""
    from .. import io as fio

    if (where / "index.json").is_file():
        try:
            idx = RealIndex.load(where)
            if list(idx.keys) == fio.scan_images(real_train):
                return idx
        except (ValueError, OSError):
            pass
    return build_index(real_train, where, progress=False)


def _variant_calls(model, ablation_model) -> dict:
    """Variant -> calibrate_dir keyword arguments (rhm_nofesa only with an ablation model)."""
    calls = {"shr": {"model": False}, "rhm_noshr": {"model": model, "shr": False},
             "full": {"model": model}, "full_rhm_stats": {"model": model, "rhm_stats": "rhm"}}
    if ablation_model is not None:
        calls["rhm_nofesa"] = {"model": str(ablation_model)}
    return {v: calls[v] for v in VARIANTS if v in calls}


def evaluate(real_train: str | os.PathLike, real_test: str | os.PathLike,
             synthetic: str | os.PathLike, out: str | os.PathLike, *, index=None, model=None,
             ablation_model=None, seeds: int | None = None, backbone: str = "small",
             device: str = "cpu", k: int = 200, seed: int = 0, steps: int | None = None,
             batch_size: int = 32, quick: bool = False, progress: bool = True,
             figures: bool = True) -> dict:
    """Evaluate FreRec on a dataset: frequency gaps, image quality, feature space and
    downstream classification; writes ``report.md``, ``report.json`` and PNG figures
    into ``out`` and returns the report dict.

    real_train, real_test, synthetic: folders in torchvision ImageFolder layout (one
    sub-folder per class, the same classes in all three) or all three unlabelled
    (images directly in them: spectral, quality and feature-space parts only).
    index: a RealIndex or its path (default: built from real_train into out/index).
    model: the RHM for full FreRec (a checkpoint path; None: the shipped model).
    ablation_model: an RHM trained with ``fesa=False`` (same recipe), for the
    "RHM w/o FESA" row (default with model=None: the shipped ``rhm_nofesa``); without
    one that row says "not run".
    seeds: classifier runs per method (default 5; 2 with quick). steps: optimizer steps
    per classifier run, the same for every method (default 200; 12 with quick).
    backbone: "small" (CPU-friendly CNN) or "resnet18" (torchvision, weights=None).
    device: where the calibration and the classifiers run. k, seed: FreRec's top-K and
    noise seed. figures: False skips the PNGs (and t-SNE).
    """
    if backbone not in BACKBONES:
        raise ValueError(f"backbone must be one of {BACKBONES}, got {backbone!r}")
    seeds = seeds if seeds is not None else (QUICK_SEEDS if quick else DEFAULT_SEEDS)
    steps = steps if steps is not None else (QUICK_STEPS if quick else DEFAULT_STEPS)
    if seeds < 1 or steps < 1:
        raise ValueError(f"seeds and steps must be >= 1, got {seeds} and {steps}")
    sets = scan_inputs(real_train, real_test, synthetic)
    labelled = sets["real_train"].labelled
    classes = sets["real_train"].classes
    out = Path(out)
    for s in sets.values():
        if out.resolve().is_relative_to(s.root.resolve()):
            raise EvalInputError(f"--out {out} is inside the {s.name} folder {s.root}: its "
                                 f"calibrated copies would become inputs; put it elsewhere")
    out.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    with _stage(timings, "index", 1, progress) as bar:
        idx = (index if isinstance(index, RealIndex) else RealIndex.load(index)) if index is not None \
            else _index_for(Path(real_train), out / "index")
        bar.update()
    size, channels = tuple(idx.config.work_size), idx.config.channels
    # One K for every split: real ones are calibrated with self-exclusion (method §6), which
    # caps K at the index size minus one, so the synthetic ones use that K too.
    k = min(k, len(idx) - 1)

    if model is None and ablation_model is None:
        # The shipped default's no-FESA partner (same data, command and budget).
        from ..training.default import NOFESA_NAME, default_model_path
        try:
            ablation_model = default_model_path(NOFESA_NAME)
        except FileNotFoundError:
            pass
    calls = _variant_calls(model, ablation_model)
    jobs = [(v, s) for v in calls for s in SPLITS if labelled or s != "real_train" or v == "full"]
    calib: dict = {v: {} for v in calls}
    with _stage(timings, "calibrate", len(jobs), progress) as bar:
        for v, split in jobs:
            dst = out / "calibrated" / v / split
            rep = _calibrate(sets[split].root, dst, idx, device, seed, k, split != "synthetic",
                             **calls[v])
            calib[v][split] = {"dir": str(dst), "ok": rep["ok"], "skipped": rep["skipped"],
                               "failed": rep["failed"], "seconds": round(rep["seconds"], 3)}
            if rep["failed"]:
                first = next(iter(rep["errors"].items()))
                raise RuntimeError(f"calibrating {sets[split].root} ({VARIANTS[v]}) failed for "
                                   f"{rep['failed']} file(s), e.g. {first[0]}: {first[1]}")
            bar.update()

    with _stage(timings, "load", len(SPLITS) + len(jobs), progress) as bar:
        raw, lab = {}, {}
        for s in SPLITS:
            raw[s], owner = load_images(sets[s].root, sets[s].files, size, channels)
            lab[s] = None if not labelled else [sets[s].labels[i] for i in owner]
            bar.update()
        cal: dict = {v: {} for v in calls}
        for v, s in jobs:
            cal[v][s], _ = load_images(out / "calibrated" / v / s, sets[s].files, size, channels)
            bar.update()

    report: dict = {
        "inputs": {s: {"dir": str(sets[s].root), "files": len(sets[s]), "images": int(raw[s].shape[0])}
                   for s in SPLITS},
        "labelled": labelled, "classes": list(classes) if labelled else None,
        "settings": {"k": k, "seed": seed, "seeds": seeds, "steps": steps, "batch_size": batch_size,
                     "backbone": backbone, "device": str(device), "quick": quick,
                     "work_size": list(size), "channels": channels,
                     "index": str(idx.path) if idx.path is not None else "(in memory)",
                     "model": "shipped default" if model is None else str(model),
                     "ablation_model": None if ablation_model is None else str(ablation_model)},
        "variants": {v: {"title": VARIANTS[v], "run": v in calls} for v in VARIANTS},
        "calibration": calib, "figures": [],
    }

    with _stage(timings, "spectral", 2 + len(calls), progress) as bar:
        ratio = idx.config.ratio
        lab_or_none = (lambda s: lab[s]) if labelled else (lambda s: None)
        raw_syn = sp.set_profiles(raw["synthetic"], lab_or_none("synthetic"), classes)
        raw_real = sp.set_profiles(raw["real_test"], lab_or_none("real_test"), classes)
        bar.update(2)
        profs = {}
        spec = {"size": list(size), "ratio": ratio, "protocols": dict(sp.PROTOCOLS),
                "baseline": sp.gap(raw_syn, raw_real, ratio), "variants": {}}
        for v in calls:
            profs[v] = (sp.set_profiles(cal[v]["synthetic"], lab_or_none("synthetic"), classes),
                        sp.set_profiles(cal[v]["real_test"], lab_or_none("real_test"), classes))
            spec["variants"][v] = sp.protocol_gaps(raw_real, profs[v][0], profs[v][1], ratio)
            bar.update()
        spec["profiles"] = {"real_test_raw": raw_real["overall"].tolist(),
                            "synthetic_raw": raw_syn["overall"].tolist(),
                            **{v: {"synthetic": p[0]["overall"].tolist(),
                                   "real_test": p[1]["overall"].tolist()} for v, p in profs.items()}}
        report["spectral"] = spec
        if figures:
            report["figures"] += _profile_figures(out, raw_syn, raw_real, profs, sets, size)

    with _stage(timings, "quality", len(calls), progress) as bar:
        from ..eval import quality_dirs

        report["quality"] = {}
        for v in calls:
            report["quality"][v] = quality_dirs(sets["synthetic"].root, out / "calibrated" / v / "synthetic")
            bar.update()

    torch_threads = torch.get_num_threads()
    with _stage(timings, "features", 1, progress) as bar:
        report["features"] = _features(raw, cal, lab, labelled, classes, backbone, steps,
                                       batch_size, seed, device, out if figures else None)
        if figures and report["features"].get("figure"):
            report["figures"].append(report["features"]["figure"])
        bar.update()

    if labelled:
        runs = _classification_runs(raw, cal, lab, calls)
        with _stage(timings, "classify", len(runs) * seeds, progress) as bar:
            report["classification"] = _classify(runs, len(classes), seeds, seed, backbone, steps,
                                                 batch_size, device, bar)
    else:
        report["classification"] = {"skipped": "unlabelled inputs (no class sub-folders)"}
    report["ablation"] = _ablation_rows(report, calls, ablation_model)
    timings["total"] = round(time.perf_counter() - t_start, 3)
    report["timings_s"] = timings
    report["torch_threads"] = torch_threads

    from .report import write_report

    t0 = time.perf_counter()
    write_report(out, report)
    report["timings_s"]["report"] = round(time.perf_counter() - t0, 3)
    (out / "report.json").write_text(json.dumps(_finite(report), indent=1, default=_jsonable))
    return report


def _finite(o):
    """NaN (e.g. AUC with one class in the test set) -> None, so report.json is strict JSON."""
    if isinstance(o, float) and o != o:
        return None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def _calibrate(src, dst, idx, device, seed, k, real, **kw) -> dict:
    from ..pipeline import calibrate_dir

    return calibrate_dir(src, dst, index=idx, device=device, seed=seed, k=k,
                         calibrate_real=real, progress=False, resume=True, **kw)


def _profile_figures(out: Path, raw_syn, raw_real, profs, sets, size) -> list[str]:
    from ..eval.spectrum import DirProfile, plot_profiles

    def dp(name, prof, n):
        return DirProfile(name, n, size, prof["overall"])

    n_syn, n_real = len(sets["synthetic"]), len(sets["real_test"])
    figs = []
    curves = [dp("real test (raw)", raw_real, n_real), dp("synthetic (raw)", raw_syn, n_syn)]
    curves += [dp(f"synthetic, {VARIANTS[v].split(' (')[0]}", p[0], n_syn) for v, p in profs.items()]
    f = out / "spectrum_against_raw_real.png"
    plot_profiles(curves, f, title="Protocol 'against raw real': calibrated synthetic vs raw real test")
    figs.append(f.name)
    if "full" in profs:
        curves = [dp("real test (raw)", raw_real, n_real),
                  dp("real test, calibrated (FreRec)", profs["full"][1], n_real),
                  dp("synthetic (raw)", raw_syn, n_syn),
                  dp("synthetic, calibrated (FreRec)", profs["full"][0], n_syn)]
        f = out / "spectrum_deployed.png"
        plot_profiles(curves, f, title="Protocol 'deployed': calibrated synthetic vs calibrated real test")
        figs.append(f.name)
    return figs


def _features(raw, cal, lab, labelled, classes, backbone, steps, batch_size, seed, device,
              fig_dir) -> dict:
    """Fig. 7: encoder on 80 % of real train; 20 % vs as many synthetic, before and after."""
    from .classify import extract_features

    n = raw["real_train"].shape[0]
    tr, ho = split_80_20(n, seed)
    y = torch.as_tensor(lab["real_train"])[tr] if labelled else None
    enc, how = make_encoder(raw["real_train"][tr], y, len(classes) if labelled else None,
                            backbone=backbone, steps=steps, batch_size=batch_size, seed=seed,
                            device=device)
    rng = np.random.default_rng(seed)
    n_syn = raw["synthetic"].shape[0]
    pick = np.sort(rng.choice(n_syn, size=min(len(ho), n_syn), replace=False))
    f = {"real_raw": extract_features(enc, raw["real_train"][ho]),
         "real_cal": extract_features(enc, cal["full"]["real_train"][ho]),
         "syn_raw": extract_features(enc, raw["synthetic"][pick]),
         "syn_cal": extract_features(enc, cal["full"]["synthetic"][pick])}
    pairs = {"before (raw synthetic vs raw real)": ("syn_raw", "real_raw"),
             "after, deployed (calibrated synthetic vs calibrated real)": ("syn_cal", "real_cal"),
             "after, against raw real (calibrated synthetic vs raw real)": ("syn_cal", "real_raw")}
    res = {"encoder": how, "backbone": backbone, "real_heldout": int(len(ho)),
           "synthetic": int(len(pick)), "feature_dim": int(f["real_raw"].shape[1]),
           "frechet": {k: frechet_distance(f[a], f[b]) if min(len(ho), len(pick)) >= 2 else None
                       for k, (a, b) in pairs.items()}}
    if fig_dir is not None and min(len(ho), len(pick)) >= 2:
        from .report import plot_tsne

        emb = {k: tsne_2d(np.concatenate([f[a], f[b]]), seed) for k, (a, b) in pairs.items()}
        res["figure"] = plot_tsne(fig_dir / "features_tsne.png", emb, len(pick), res["frechet"]).name
    return res


def _classification_runs(raw, cal, lab, calls) -> dict:
    """Method -> (train x, train y, test x, test y, augmentation)."""
    yr, ys, yt = (torch.as_tensor(lab[s]) for s in ("real_train", "synthetic", "real_test"))
    runs = {"RAW": (raw["real_train"], yr, raw["real_test"], yt, None),
            "AutoAugment": (raw["real_train"], yr, raw["real_test"], yt, "autoaugment"),
            "Mix-up": (raw["real_train"], yr, raw["real_test"], yt, "mixup"),
            "AFA": (raw["real_train"], yr, raw["real_test"], yt, "afa"),
            "GDA": (torch.cat([raw["real_train"], raw["synthetic"]]), torch.cat([yr, ys]),
                    raw["real_test"], yt, None)}
    for v in calls:  # GDA with every set calibrated by the variant (method §6)
        name = "GDA+FreRec" if v == "full" else f"GDA+{v}"
        runs[name] = (torch.cat([cal[v]["real_train"], cal[v]["synthetic"]]), torch.cat([yr, ys]),
                      cal[v]["real_test"], yt, None)
    return runs


def _torchvision_problem() -> str | None:
    """Why torchvision cannot be used (its ImportError with the install hint), or None."""
    from .tv import torchvision

    try:
        torchvision("AutoAugment and Mix-up")
    except ImportError as e:
        return str(e)
    return None


def _classify(runs, num_classes, seeds, seed, backbone, steps, batch_size, device, bar) -> dict:
    per, not_run = {}, {}
    why = _torchvision_problem() if backbone == "small" else None  # resnet18 fails loudly
    for name, (xtr, ytr, xte, yte, aug) in runs.items():
        if why and aug in ("autoaugment", "mixup"):
            not_run[name] = f"not run: {why}"
            bar.update(seeds)
            continue
        per[name] = []
        for i in range(seeds):
            m = train_classifier(xtr, ytr, num_classes, backbone=backbone, steps=steps,
                                 batch_size=batch_size, seed=seed + i, augment=aug, device=device)
            per[name].append(classification_metrics(yte.numpy(), predict_proba(m, xte)))
            bar.update()
    methods = {}
    for name, rows in per.items():
        stats = {m: mean_std([r[m] for r in rows]) for m in METRICS}
        methods[name] = {"per_seed": rows, "mean": {m: s[0] for m, s in stats.items()},
                         "std": {m: s[1] for m, s in stats.items()},
                         "train_images": int(runs[name][0].shape[0])}
    paired = {}
    if "GDA+FreRec" in per and "GDA" in per:
        for m in METRICS:
            d = np.array([a[m] - b[m] for a, b in zip(per["GDA+FreRec"], per["GDA"])])
            lo, hi = bootstrap_mean_ci(d, seed=0)
            paired[m] = {"per_seed_diff": d.tolist(), "mean_diff": float(d.mean()),
                         "ci95": [lo, hi]}
    return {"methods": methods, "not_run": not_run, "seeds": [seed + i for i in range(seeds)],
            "paired_gda_frerec_vs_gda": paired,
            "note": (f"{backbone} backbone, {steps} optimizer steps of {batch_size} images for "
                     f"every method (a fixed budget); test on the real test set, raw for "
                     f"RAW/AutoAugment/Mix-up/AFA/GDA, calibrated with the same variant for "
                     f"GDA+<variant> (method §6)")}


def _ablation_rows(report, calls, ablation_model) -> list[dict]:
    rows = []
    cls = report.get("classification", {}).get("methods", {})
    for v, title in VARIANTS.items():
        if v not in calls:
            rows.append({"variant": v, "title": title,
                         "not_run": "not run: pass --ablation-model" if v == "rhm_nofesa" else "not run"})
            continue
        g = report["spectral"]["variants"][v]
        method = "GDA+FreRec" if v == "full" else f"GDA+{v}"
        row = {"variant": v, "title": title,
               "gap_against_raw_real": g[sp.AGAINST_RAW]["overall"],
               "gap_deployed": g[sp.DEPLOYED]["overall"],
               "psnr": report["quality"][v]["psnr"], "ssim": report["quality"][v]["ssim"]}
        if method in cls:
            row["classification"] = {"mean": cls[method]["mean"], "std": cls[method]["std"]}
        rows.append(row)
    return rows
