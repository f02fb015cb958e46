"""The ``frerec eval`` report: ``report.md`` (tables like the paper's Fig. 6 gaps,
Tables 2 and 3, Fig. 7 distances) and the t-SNE figure. ``run.py`` writes report.json."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from . import spectral as sp


def _f(x, nd=4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def _pm(mean: dict, std: dict, m: str) -> str:
    return f"{_f(mean[m], 3)} ± {_f(std[m], 3)}"


def plot_tsne(path: Path, emb: dict, n_syn: int, frechet: dict) -> Path:
    """One panel per comparison: t-SNE points [N, 2], the first ``n_syn`` synthetic."""
    from .deps import need

    mpl = need("matplotlib", "the figures of frerec eval")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(emb), figsize=(4.2 * len(emb), 4), dpi=110)
    for ax, (name, pts) in zip(np.atleast_1d(axes), emb.items()):
        ax.scatter(pts[n_syn:, 0], pts[n_syn:, 1], s=10, c="tab:orange", label="real")
        ax.scatter(pts[:n_syn, 0], pts[:n_syn, 1], s=10, c="tab:blue", label="synthetic")
        ax.set_title(f"{name.split(' (')[0]}\nFréchet {_f(frechet[name], 3)}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.legend(fontsize=7)
    fig.suptitle("Feature space (t-SNE), real held-out 20 % vs synthetic", fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


def markdown(r: dict) -> str:
    """The human-readable report of an ``evaluate`` result dict."""
    s = r["settings"]
    L = ["# FreRec evaluation", ""]
    L.append(f"Inputs: real train {r['inputs']['real_train']['images']} images, real test "
             f"{r['inputs']['real_test']['images']}, synthetic {r['inputs']['synthetic']['images']}; "
             + (f"classes {', '.join(r['classes'])}." if r["labelled"] else
                "unlabelled (spectral, quality and feature-space parts only)."))
    L.append(f"Settings: K = {s['k']}, seed {s['seed']}, model {s['model']}, working size "
             f"{s['work_size'][0]}x{s['work_size'][1]} (every image resampled to it: area "
             f"averaging when shrinking, bicubic when enlarging), device {s['device']}"
             + (", quick mode" if s["quick"] else "") + ".")
    L += ["", "## Frequency gap (method §8, paper Fig. 6)", "",
          "Mean |difference| of mean log10 radial power profiles; high band / all radii. "
          "Protocols: " + "; ".join(f"**{k}** = {v}" for k, v in sp.PROTOCOLS.items())
          + f"; **baseline** = raw synthetic vs raw real test.", "",
          "| set | protocol | high band | all radii |", "|---|---|---|---|"]
    spec = r["spectral"]
    b = spec["baseline"]["overall"]
    L.append(f"| raw synthetic | baseline | {_f(b['high_band'])} | {_f(b['all_radii'])} |")
    for v, g in spec["variants"].items():
        for p in (sp.AGAINST_RAW, sp.DEPLOYED):
            o = g[p]["overall"]
            L.append(f"| {r['variants'][v]['title']} | {p} | {_f(o['high_band'])} | {_f(o['all_radii'])} |")
    if spec["baseline"]["per_class"]:
        L += ["", "Per class (high band): baseline, then full FreRec under each protocol.", "",
              "| class | baseline | against raw real | deployed |", "|---|---|---|---|"]
        full = spec["variants"].get("full")
        for c, g in spec["baseline"]["per_class"].items():
            a = full[sp.AGAINST_RAW]["per_class"].get(c, {}) if full else {}
            d = full[sp.DEPLOYED]["per_class"].get(c, {}) if full else {}
            L.append(f"| {c} | {_f(g['high_band'])} | {_f(a.get('high_band'))} | {_f(d.get('high_band'))} |")
    L += ["", "## Ablation (paper Table 3)", "",
          "Gaps overall, high band. PSNR (dB) and SSIM: calibrated synthetic vs its input. "
          "Classification: GDA with every set calibrated by the variant.", "",
          "| variant | gap, against raw real | gap, deployed | PSNR | SSIM | AUC | Acc. | F1 |",
          "|---|---|---|---|---|---|---|---|"]
    for row in r["ablation"]:
        if "not_run" in row:
            L.append(f"| {row['title']} | {row['not_run']} | | | | | | |")
            continue
        c = row.get("classification")
        cl = " | ".join(_pm(c["mean"], c["std"], m) for m in ("auc", "acc", "f1")) if c else "n/a | n/a | n/a"
        L.append(f"| {row['title']} | {_f(row['gap_against_raw_real']['high_band'])} | "
                 f"{_f(row['gap_deployed']['high_band'])} | {_f(row['psnr'], 2)} | "
                 f"{_f(row['ssim'], 3)} | {cl} |")
    cls = r["classification"]
    L += ["", "## Downstream classification (paper Table 2)", ""]
    if "skipped" in cls:
        L.append(f"Not run: {cls['skipped']}.")
    else:
        L += [f"Mean ± std over seeds {cls['seeds']}; {cls['note']}.", "",
              "| method | train images | AUC | Acc. | F1 |", "|---|---|---|---|---|"]
        for name, m in cls["methods"].items():
            L.append(f"| {name} | {m['train_images']} | " + " | ".join(
                _pm(m["mean"], m["std"], k) for k in ("auc", "acc", "f1")) + " |")
        for name, why in cls.get("not_run", {}).items():
            L.append(f"| {name} | {why} | | | |")
        pr = cls["paired_gda_frerec_vs_gda"]
        if pr:
            L += ["", "Paired comparison GDA+FreRec − GDA (same seeds): per-seed differences, "
                  "mean, bootstrap 95 % interval of the mean (10000 resamples, fixed RNG).", "",
                  "| metric | per-seed differences | mean | 95 % interval |", "|---|---|---|---|"]
            for k, d in pr.items():
                L.append(f"| {k} | {', '.join(_f(x, 3) for x in d['per_seed_diff'])} | "
                         f"{_f(d['mean_diff'], 3)} | [{_f(d['ci95'][0], 3)}, {_f(d['ci95'][1], 3)}] |")
    fe = r["features"]
    L += ["", "## Feature space (paper Fig. 7)", "",
          f"Encoder: {fe['backbone']} backbone, {fe['encoder']}; features ({fe['feature_dim']}-D, "
          f"head removed) of {fe['real_heldout']} held-out real training images (20 %) and "
          f"{fe['synthetic']} synthetic images. Fréchet distance (Gaussian fits):", "",
          "| comparison | Fréchet distance |", "|---|---|"]
    for k, v in fe["frechet"].items():
        L.append(f"| {k} | {_f(v)} |")
    L += ["", "## Figures", ""] + [f"![{f}]({f})" for f in r["figures"]]
    L += ["", "## Timings (s)", "", "| stage | seconds |", "|---|---|"]
    L += [f"| {k} | {v:.1f} |" for k, v in r["timings_s"].items()]
    return "\n".join(L) + "\n"


def write_report(out: Path, r: dict) -> Path:
    """Write ``out/report.md``. Returns its path."""
    p = Path(out) / "report.md"
    p.write_text(markdown(r))
    return p
