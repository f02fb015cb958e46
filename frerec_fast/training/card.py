"""Package a trained RHM as the shipped default: weights, config and a model card.

``python -m frerec_fast.training.card RUN/rhm.safetensors frerec_fast/data/rhm`` copies the
checkpoint to ``rhm_default.safetensors`` + ``.json`` (absolute paths in its metadata made
relative to the repository) and writes ``MODEL_CARD.md`` from the recorded history.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..model import load_rhm, save_checkpoint
from ..model.checkpoint import read_checkpoint_meta
from .default import DEFAULT_NAME

COMMAND = "bash scripts/train_default_model.sh"


def _relative(p: str | None) -> str | None:
    if p is None:
        return None
    parts = Path(p).parts
    return str(Path(*parts[parts.index("frerec_fast"):])) if "frerec_fast" in parts else Path(p).name


def package(checkpoint: str | os.PathLike, out_dir: str | os.PathLike,
            name: str = DEFAULT_NAME, quality: dict | None = None) -> Path:
    """Copy ``checkpoint`` to ``out_dir/<name>.*`` and write its model card
    (``MODEL_CARD.md`` for the default model, ``<name>.md`` otherwise).

    quality: {title: result of scripts/rhm_quality.py} to include in the card."""
    meta = read_checkpoint_meta(checkpoint)
    extra = dict(meta["extra"])
    data = dict(extra["data"])
    data["real_dir"], data["val_dir"] = _relative(data["real_dir"]), _relative(data["val_dir"])
    extra["data"] = data
    extra.pop("wall_seconds_this_call", None)
    model = load_rhm(checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / name, model, model.config, extra=extra)
    card = "MODEL_CARD.md" if name == DEFAULT_NAME else f"{name}.md"
    (out_dir / card).write_text(card_text(meta["config"], extra, quality, name))
    return out_dir / f"{name}.safetensors"


def card_text(config: dict, extra: dict, quality: dict | None = None,
              name: str = DEFAULT_NAME) -> str:
    tr, data, hist = extra["training"], extra["data"], extra["history"]
    sel = extra.get("selected") or {}
    val = sel.get("val") or (hist[-1].get("val", {}) if hist else {})
    nan = float("nan")
    rows = "\n".join(
        f"| {h['epoch']} | {h['loss']:.5f} | {h['val']['psnr_model']:.2f} | "
        f"{h['val']['ssim_model']:.4f} | {h['val'].get('gap_model', nan):.4f} | "
        f"{h['val'].get('psnr_clean', nan):.2f} | {h['val'].get('score', nan):.2f} |"
        for h in hist if "val" in h
        and (h["epoch"] % 5 == 0 or h["epoch"] in (1, len(hist), sel.get("epoch"))))
    pert = tr.get("perturbation")
    recipe = ("plain SHR with the nearest neighbours (method §5)" if not pert or not any(
        pert[k] for k in ("identity", "random_bank", "tilt")) else
        f"the mixed distribution of `frerec_fast/training/perturb.py`: {pert['identity']:.0%} "
        f"clean inputs; the rest SHR with the nearest neighbours"
        + (f" or, for {pert['random_bank']:.0%}, a bank of K random real images"
           if pert["random_bank"] else "")
        + f", {pert['tilt']:.0%} of them "
        f"after a random radial high-band gain (log10-amplitude slope within "
        f"+-{pert['max_slope']}, curvature within +-{pert['max_curve']})")
    if pert and any(pert.get(k) for k in ("gamma", "noise", "blur")):
        recipe += (f". Every clean crop (input and target alike) first varied in appearance: "
                   f"a gamma within exp(+-{pert.get('gamma', 0)}), for "
                   f"{pert.get('blur', 0):.0%} a down-and-up resampling by 1.5-2.5, for half "
                   f"Gaussian noise of std up to {pert.get('noise', 0)} (magnitude taken)")
    arch = "FET-Restormer with FESA" if config.get("fesa", True) else \
        "plain Restormer (MDTA blocks, no FESA: the paper's ablation)"
    q = _quality_section(quality) if quality else ""
    return f"""# Model card: `{name}` (shipped with frerec_fast)

**What it is.** The Reconstructive High-frequency Mapping network of FreRec (method §5): a
{arch}, trained only on real images to map SHR-perturbed inputs back to the clean image.
Small enough for CPU inference.{' It is the model `calibrate_dir` and `frerec calibrate` use when no `--model` is given, and the demo' + "'" + 's model.' if name == DEFAULT_NAME else ''}

**Size.** {extra['parameters'] / 1e6:.3f} M parameters. Config: `{config}`.

**Data.** {data['n_images']} real 64x64 16-bit grayscale images (`{data['real_dir']}`: head
CT from InVesalius' sample, T1 MRI from MRIcron's ch2; see `frerec_fast/data/README.md`
for sources, licences and the split by slab). Validation: `{data['val_dir']}` (held out by
slab, never seen in training). Index config: `{data['index_config']}`. Data hash
`{data['data_hash'][:16]}...`.

**Training.** Command: `{COMMAND}` (which runs `frerec train ... --preset small{'' if config.get('fesa', True) else ' --no-fesa'}{'' if pert and any(pert[k] for k in ('identity', 'random_bank', 'tilt')) else ' --perturb spec'} --epochs
{tr['epochs']} --batch-size {tr['batch_size']} --lr {tr['lr']} --warmup {tr['warmup_steps']} -k {tr['k']}
--seed {tr['seed']} --device cpu --threads {tr['num_threads']}`). {tr['total_steps']} AdamW steps
(weight decay {tr['weight_decay']}, linear warm-up then cosine to {tr['min_lr_ratio']} x lr,
gradient clip {tr['grad_clip']}), loss = pixel MSE + {tr['lambda_f']} x amplitude-spectrum
MSE (method §5), random crops {tr['crop']} with flips, K = {tr['k']} neighbours (clamped to
the index size minus self). Training inputs: {recipe}. {extra['train_seconds'] / 60:.1f}
minutes of training on {tr['device']} with {tr['num_threads']} thread(s), torch {extra['torch']}.

**Delivered epoch.** {sel.get('epoch', '-')} of {tr['epochs']}, chosen by {sel.get('by', '-')}
on the validation images; the identity guard compares it with the SHR input left as it is:
{'it beats the identity' if val.get('beats_identity') else '**it does NOT beat the identity** (delivered with --keep-worse)'}.

**Validation result** (delivered epoch; {val.get('n', 0)} held-out real images, each
perturbed by SHR with its top-K real neighbours and fixed noise, then restored; outputs
clipped to [0, 1]; SSIM as method §4; gap = method §8 high band vs the clean images):

| | PSNR vs clean (dB) | SSIM vs clean | high-band gap |
|---|---|---|---|
| identity: SHR input left as it is | {val.get('psnr_shr', nan):.2f} | {val.get('ssim_shr', nan):.4f} | {val.get('gap_shr', nan):.4f} |
| RHM output | {val.get('psnr_model', nan):.2f} | {val.get('ssim_model', nan):.4f} | {val.get('gap_model', nan):.4f} |
| RHM on the clean images (no SHR) | {val.get('psnr_clean', nan):.2f} | | |

Score (PSNR - 10 x gap): model {val.get('score', nan):.2f}, identity {val.get('score_identity', nan):.2f}.
{q}
| epoch | train loss | val PSNR | val SSIM | val gap | clean in | score |
|---|---|---|---|---|---|---|
{rows}

**Limits.** Trained on 171 images of two volumes at 64x64: it is a demonstration model
for the bundled data and for CPU smoke runs, not a model for clinical data. It passes
clean real images of those two kinds through (>= 50 dB), not real images of other kinds
(other CT, MR and fMRI EPI slices, diffusion b0: docs/rhm_quality.md §8 has both shipped
models' numbers); every `calibrate_dir` run measures this on its own index
(`report["rhm_fit"]`) and warns below 50 dB. Train your own on your real images with
`frerec train` (use `--preset paper` on a GPU), or fine-tune this one (`--init default`).
"""


def _quality_section(quality: dict) -> str:
    """Tables from ``scripts/rhm_quality.py`` JSON files: {title: result}."""
    out = ["", "**Calibration quality** (`scripts/rhm_quality.py`: every number from files "
           "written by `calibrate_dir`; gaps are method §8 high band / all radii; \"against "
           "raw real\" = calibrated synthetic vs raw held-out real, \"deployed\" = "
           "calibrated synthetic vs held-out real calibrated the same way):", ""]
    for title, r in quality.items():
        out += [f"*{title}* (index of {r['index_images']} real images, K = {r['k']}; RHM on "
                f"clean held-out real images: {r['clean_passthrough_psnr']:.2f} dB; held-out "
                f"real through SHR: {r['real_restore']['shr_psnr_vs_clean']:.2f} dB, through "
                f"SHR + RHM: {r['real_restore']['frerec_psnr_vs_clean']:.2f} dB)", "",
                "| synthetic images | PSNR vs input | SSIM vs input | gap against raw real | gap deployed |",
                "|---|---|---|---|---|",
                f"| raw | | | {r['raw_gap']['high_band']:.4f} / {r['raw_gap']['all_radii']:.4f} "
                f"| {r['raw_gap']['high_band']:.4f} / {r['raw_gap']['all_radii']:.4f} |"]
        stats = {"shr": "; SHR's statistics kept, the default",
                 "rhm": "; the RHM's own statistics, paper-literal"}.get(r.get("rhm_stats"), "")
        for key, label in (("shr", "SHR only"), ("frerec", f"FreRec (SHR + this RHM{stats})")):
            v = r[key]
            a, d = v["gap_against_raw_real"], v["gap_deployed"]
            out.append(f"| {label} | {v['psnr_vs_input']:.2f} | {v['ssim_vs_input']:.4f} | "
                       f"{a['high_band']:.4f} / {a['all_radii']:.4f} | "
                       f"{d['high_band']:.4f} / {d['all_radii']:.4f} |")
        out.append("")
    return "\n".join(out)


def main(argv=None) -> int:
    import argparse
    import json

    ap = argparse.ArgumentParser(prog="python -m frerec_fast.training.card",
                                 description="Package a trained RHM with its model card.")
    ap.add_argument("checkpoint")
    ap.add_argument("out_dir")
    ap.add_argument("--name", default=DEFAULT_NAME)
    ap.add_argument("--quality", nargs=2, action="append", metavar=("TITLE", "JSON"),
                    default=[], help="a scripts/rhm_quality.py result to include")
    a = ap.parse_args(argv)
    quality = {t: json.loads(Path(j).read_text()) for t, j in a.quality} or None
    print(package(a.checkpoint, a.out_dir, a.name, quality))
    return 0


if __name__ == "__main__":
    sys.exit(main())
