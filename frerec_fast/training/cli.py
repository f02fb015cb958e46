"""``frerec train`` (and ``python -m frerec_fast.training``): train an RHM on real images."""
from __future__ import annotations

import argparse
import json
import sys

from ..engine.names import ALIASES, ENGINES, PRECISIONS

# Named model sizes. "paper" is method §5's default; "small" is the shipped CPU model's;
# "tiny" is for smoke tests. Individual --dim/--heads/... flags override a preset.
PRESETS = {
    "paper": {},
    "small": {"dim": 16, "heads": (1, 2, 4, 8), "blocks": (1, 1, 2, 2), "refinement": 1,
              "n_rings": 8, "n_sectors": 16},
    "tiny": {"dim": 8, "heads": (1, 1, 1, 1), "blocks": (1, 1, 1, 1), "refinement": 0,
             "n_rings": 4, "n_sectors": 8},
}


def _ints(s: str) -> tuple[int, ...]:
    return tuple(int(v) for v in s.replace("x", ",").split(",") if v)


_SIZE_FLAGS = ("preset", "dim", "heads", "blocks", "refinement", "n_rings", "n_sectors")


def model_config(a):
    """RHMConfig from a preset plus explicit overrides; None with --init (the checkpoint's
    sizes), where any size flag is refused rather than silently ignored."""
    from ..model import RHMConfig

    if getattr(a, "init", None) is not None:
        given = [f"--{n.replace('n_', '').replace('_', '-')}" for n in _SIZE_FLAGS
                 if getattr(a, n) is not None] + (["--no-fesa"] if a.no_fesa else [])
        if given:
            raise ValueError(f"--init takes the model's sizes from the checkpoint; drop "
                             f"{', '.join(given)}")
        return None
    cfg = dict(PRESETS[a.preset or "small"])
    for name in _SIZE_FLAGS[1:]:
        v = getattr(a, name)
        if v is not None:
            cfg[name] = v
    if a.no_fesa:
        cfg["fesa"] = False
    return RHMConfig(**cfg)


def add_arguments(s: argparse.ArgumentParser) -> None:
    s.add_argument("real", help="directory of real training images, or an index directory "
                   "(then also pass --real-dir)")
    s.add_argument("out", help="output directory: checkpoints/, index/ and the final rhm.safetensors")
    s.add_argument("--val", default=None, help="held-out real images: PSNR/SSIM each epoch")
    s.add_argument("--real-dir", default=None, help="images of a prebuilt index given as REAL")
    s.add_argument("--engine", choices=ENGINES + tuple(ALIASES), default="eager",
                   help="the RHM engine that runs validation, by frerec calibrate's names "
                   "(default eager: the module itself; another engine is built from the "
                   "current weights at every epoch, so the delivered epoch is the best as "
                   "that engine runs it)")
    s.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="validation's arithmetic (default: the training's own for eager, "
                   "fp32 for the other engines; e.g. --engine openvino --precision int8)")
    s.add_argument("--preset", choices=sorted(PRESETS), default=None,
                   help="model size (default small: the shipped CPU model; paper: method §5)")
    s.add_argument("--dim", type=int, default=None)
    s.add_argument("--heads", type=_ints, default=None, help="per level, e.g. 1,2,4,8")
    s.add_argument("--blocks", type=_ints, default=None, help="per level, e.g. 2,4,6,8")
    s.add_argument("--refinement", type=int, default=None)
    s.add_argument("--rings", dest="n_rings", type=int, default=None)
    s.add_argument("--sectors", dest="n_sectors", type=int, default=None)
    s.add_argument("--no-fesa", action="store_true", help="plain Restormer (the ablation)")
    s.add_argument("--epochs", type=int, default=10)
    s.add_argument("--batch-size", type=int, default=8)
    s.add_argument("--crop", type=int, default=None, help="square crop (default: working size)")
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--weight-decay", type=float, default=1e-4)
    s.add_argument("--warmup", type=int, default=50, help="warm-up steps")
    s.add_argument("-k", type=int, default=200, help="neighbours per image (method §4)")
    s.add_argument("--lambda-f", type=float, default=1.0, help="amplitude-loss weight (Eq. 7)")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--amp", default=None, choices=("bf16", "fp16", "off"),
                   help="mixed precision on CUDA (default bf16 there, off on CPU)")
    s.add_argument("--grad-clip", type=float, default=1.0, help="0 disables clipping")
    s.add_argument("--device", default="auto", help="auto (cuda if present) | cpu | cuda")
    s.add_argument("--backend", default="auto", help="SHR/retrieval backend")
    s.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    s.add_argument("--keep", type=int, default=2, help="epoch checkpoints kept")
    s.add_argument("--perturb", choices=("mixed", "spec"), default="mixed",
                   help="training inputs: mixed (default: 30%% clean inputs, the rest SHR with "
                   "the nearest neighbours, 80%% of those after a random radial high-band "
                   "gain; see training/perturb.py) or spec (plain SHR with the nearest "
                   "neighbours, method §5)")
    s.add_argument("--keep-worse", action="store_true",
                   help="deliver the model even if no epoch beats the identity on validation "
                   "(default: refuse, write rhm_rejected.safetensors, exit 3)")
    s.add_argument("--resume", action="store_true",
                   help="continue from the last complete epoch in OUT (bit-exact on CPU)")
    s.add_argument("--appearance", nargs=3, type=float, default=None,
                   metavar=("GAMMA", "NOISE", "BLUR"),
                   help="also vary each clean training crop (input and target): a gamma "
                   "within exp(+-GAMMA), Gaussian noise of std up to NOISE on half of them, a "
                   "down-and-up resampling on a BLUR share; e.g. 0.4 0.01 0.3 (off by "
                   "default; measured in docs/rhm_quality.md section 7)")
    s.add_argument("--clean-share", type=float, default=None, metavar="F",
                   help="share of training inputs left clean (target = input), teaching the "
                   "model to pass real images through (default 0.3 with --perturb mixed; "
                   "docs/rhm_quality.md section 9)")
    s.add_argument("--init", default=None, metavar="MODEL",
                   help="fine-tune: start from this RHM checkpoint (or 'default', the shipped "
                   "model) instead of random weights; its sizes are kept, so no size flags. "
                   "For real images unlike the shipped model's (another modality, contrast "
                   "or noise level): see docs/rhm_quality.md section 8")
    s.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _perturbation(a):
    """The training-input distribution the options name (None: the default)."""
    from dataclasses import replace

    from .perturb import Perturbation
    base = Perturbation.spec() if a.perturb == "spec" else Perturbation()
    changes = {}
    if getattr(a, "clean_share", None) is not None:
        changes["identity"] = a.clean_share  # range-checked by Perturbation
    if a.appearance is not None:
        changes.update(zip(("gamma", "noise", "blur"), a.appearance))
    if a.perturb != "spec" and not changes:
        return None  # train_rhm's default
    return replace(base, **changes)


def run(a) -> int:
    from ..devices import resolve_device
    from .train import WorseThanIdentity, train_rhm

    device = str(resolve_device(a.device))
    try:
        path = train_rhm(a.real, a.out, val_dir=a.val, real_dir=a.real_dir,
                         config=model_config(a), epochs=a.epochs, batch_size=a.batch_size,
                         crop=a.crop, lr=a.lr, weight_decay=a.weight_decay,
                         warmup_steps=a.warmup, k=a.k, lambda_f=a.lambda_f, seed=a.seed,
                         amp=a.amp, grad_clip=a.grad_clip or None, device=device,
                         backend=a.backend, resume=a.resume, progress=not a.quiet,
                         num_threads=a.threads, keep_checkpoints=a.keep,
                         perturbation=_perturbation(a),
                         keep_worse=a.keep_worse, val_engine=a.engine,
                         val_precision=a.precision, init=a.init)
    except WorseThanIdentity as e:
        bar = "!" * 78
        print(f"{bar}\nfrerec train: NO MODEL DELIVERED. {e}\n{bar}", file=sys.stderr)
        return 3
    meta = json.loads(path.with_suffix(".json").read_text())
    extra = meta.get("extra", {})
    val = (extra.get("metrics") or {}).get("val")
    sel = extra.get("selected") or {}
    print(f"trained RHM ({extra.get('parameters', 0) / 1e6:.2f}M parameters, "
          f"{extra.get('step')} steps, {extra.get('train_seconds', 0):.0f}s): {path}")
    if val:
        print(f"  delivered epoch {sel.get('epoch')} (best {sel.get('by')}), on {val['n']} "
              f"validation images ({val['source']}):\n"
              f"    SHR input restored: PSNR {val['psnr_model']:.2f} dB (identity "
              f"{val['psnr_shr']:.2f}), SSIM {val['ssim_model']:.4f} (identity "
              f"{val['ssim_shr']:.4f}), high-band gap {val['gap_model']:.4f} (identity "
              f"{val['gap_shr']:.4f})\n"
              f"    clean input passed through: PSNR {val['psnr_clean']:.2f} dB\n"
              f"    run by engine {val.get('engine', 'eager')}, precision "
              f"{val.get('precision', 'fp32')}\n"
              f"    score {val['score']:.2f} vs identity {val['score_identity']:.2f}: "
              f"{'beats the identity' if val['beats_identity'] else 'WORSE THAN THE IDENTITY (kept: --keep-worse)'}")
    start = (extra.get("init") or {}).get("val")
    if start:
        better = val and val["score"] > start["score"]
        print(f"  started from {extra['init']['path']}: score {start['score']:.2f}, clean input "
              f"passed through {start['psnr_clean']:.2f} dB before fine-tuning ("
              + ("improved)" if better else "NOT improved: delivered because of --keep-worse)"))
    return 0


def register(sub) -> None:
    """Add the ``train`` subcommand to the ``frerec`` parser's subparsers."""
    s = sub.add_parser("train", help="train an RHM on real images (method §5)",
                       description="Train the RHM denoiser on real images only: each step "
                       "perturbs real crops with SHR (neighbours from the real index, self "
                       "excluded, fresh noise) and learns to restore them. Writes resumable "
                       "epoch checkpoints (safetensors + JSON) and OUT/rhm.safetensors.")
    add_arguments(s)
    s.set_defaults(fn=run)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m frerec_fast.training",
                                description="Train an RHM on real images (same as `frerec train`).")
    add_arguments(p)
    a = p.parse_args(argv)
    try:
        return run(a)
    except (OSError, ValueError, ImportError, RuntimeError) as e:
        print(f"train: error: {e}", file=sys.stderr)
        return 2
