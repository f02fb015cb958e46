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


def package(checkpoint: str | os.PathLike, out_dir: str | os.PathLike) -> Path:
    """Copy ``checkpoint`` to ``out_dir/rhm_default.*`` and write ``out_dir/MODEL_CARD.md``."""
    meta = read_checkpoint_meta(checkpoint)
    extra = dict(meta["extra"])
    data = dict(extra["data"])
    data["real_dir"], data["val_dir"] = _relative(data["real_dir"]), _relative(data["val_dir"])
    extra["data"] = data
    extra.pop("wall_seconds_this_call", None)
    model = load_rhm(checkpoint)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_checkpoint(out_dir / DEFAULT_NAME, model, model.config, extra=extra)
    (out_dir / "MODEL_CARD.md").write_text(card_text(meta["config"], extra))
    return out_dir / f"{DEFAULT_NAME}.safetensors"


def card_text(config: dict, extra: dict) -> str:
    tr, data, hist = extra["training"], extra["data"], extra["history"]
    val = hist[-1].get("val", {}) if hist else {}
    best = max((h for h in hist if "val" in h), key=lambda h: h["val"]["psnr_model"], default=None)
    rows = "\n".join(
        f"| {h['epoch']} | {h['loss']:.5f} | {h['val']['psnr_model']:.2f} | "
        f"{h['val']['ssim_model']:.4f} |" for h in hist if "val" in h
        and (h["epoch"] % 5 == 0 or h["epoch"] in (1, len(hist))))
    return f"""# Model card: `rhm_default` (the RHM shipped with frerec_fast)

**What it is.** The Reconstructive High-frequency Mapping network of FreRec (SPEC 5): a
FET-Restormer with FESA, trained only on real images to map SHR-perturbed inputs back
to the clean image. Small enough for CPU inference; it is the model `calibrate_dir`
and `frerec calibrate` use when no `--model` is given, and the demo's model.

**Size.** {extra['parameters'] / 1e6:.3f} M parameters. Config: `{config}`.

**Data.** {data['n_images']} real 64x64 16-bit grayscale images (`{data['real_dir']}`: head
CT from InVesalius' sample, T1 MRI from MRIcron's ch2; see `frerec_fast/data/README.md`
for sources, licences and the split by slab). Validation: `{data['val_dir']}` (held out by
slab, never seen in training). Index config: `{data['index_config']}`. Data hash
`{data['data_hash'][:16]}...`.

**Training.** Command: `{COMMAND}` (which runs `frerec train ... --preset small --epochs
{tr['epochs']} --batch-size {tr['batch_size']} --lr {tr['lr']} --warmup {tr['warmup_steps']} -k {tr['k']}
--seed {tr['seed']} --device cpu --threads {tr['num_threads']}`). {extra['step']} AdamW steps
(weight decay {tr['weight_decay']}, linear warm-up then cosine to {tr['min_lr_ratio']} x lr,
gradient clip {tr['grad_clip']}), loss = pixel MSE + {tr['lambda_f']} x amplitude-spectrum
MSE (SPEC 5), random crops {tr['crop']} with flips, K = {tr['k']} neighbours (clamped to
the index size minus self). {extra['train_seconds'] / 60:.1f} minutes of training on
{tr['device']} with {tr['num_threads']} thread(s), torch {extra['torch']}.

**Held-out result** (final epoch; {val.get('n', 0)} held-out real images, each perturbed
by SHR with its top-K real neighbours and fixed noise, then restored; outputs clipped to
[0, 1]; SSIM as SPEC 4):

| | PSNR vs clean (dB) | SSIM vs clean |
|---|---|---|
| SHR input (before RHM) | {val.get('psnr_shr', float('nan')):.2f} | {val.get('ssim_shr', float('nan')):.4f} |
| RHM output | {val.get('psnr_model', float('nan')):.2f} | {val.get('ssim_model', float('nan')):.4f} |

Best epoch by held-out PSNR: {best['epoch'] if best else '-'}
({best['val']['psnr_model'] if best else float('nan'):.2f} dB).

| epoch | train loss | held-out PSNR | held-out SSIM |
|---|---|---|---|
{rows}

**Limits.** Trained on 171 images of two volumes at 64x64: it is a demonstration model
for the bundled data and for CPU smoke runs, not a model for clinical data. Train your
own on your real images with `frerec train` (use `--preset paper` on a GPU).
"""


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python -m frerec_fast.training.card RUN/rhm.safetensors OUT_DIR")
    print(package(sys.argv[1], sys.argv[2]))
