"""RHM training on real images only (method §5): input SHR(x), target x.

Determinism (the property resume relies on): with the same arguments, device, backend
and thread count, the run is a pure function of ``seed``:
  * model initialisation: torch's global generator, seeded with ``seed`` inside a
    ``fork_rng`` block (the caller's RNG state is left untouched);
  * epoch order, crops and flips: fresh generators seeded by (seed, epoch) and
    (seed, step) (data.py);
  * SHR noise: ``sample_eps(seed, keys, C, step)``, per image and step;
  * learning rate: a function of the step (state.lr_at), no scheduler object;
  * nothing in RHM's forward is random (no dropout).
So the state at an epoch boundary is exactly (weights + BatchNorm buffers, optimizer
moments and step counts, GradScaler scale): that is what each epoch saves, in safetensors
and JSON, and a resumed run continues bit-identically on CPU.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load

from ..devices import resolve_device
from ..index import RealIndex, build_index
from ..model import RHM, RHMConfig, rhm_loss, save_checkpoint
from ..model.checkpoint import checkpoint_paths, load_rhm, read_checkpoint_meta
from ..ops import shr
from ..progress import NoBar
from ..progress import bar as progress_bar
from ..seeding import sample_eps
from ..spectral import frequency_gap, luma, psnr, spectral_profile
from ..reference.ssim import ssim
from . import state as st
from . import val_engine as engines
from .default import default_model_path
from .data import ImageSet, augment, data_hash, epoch_order, load_images
from .perturb import Perturbation, appearance, band_tilt, draw, random_banks

log = logging.getLogger("frerec_fast")

FINAL_NAME = "rhm"
REJECTED_NAME = "rhm_rejected"
BEST_NAME = "best"  # out/checkpoints/best_EEEE.*: the best epoch up to a resume point
VAL_FROM_TRAIN = 64         # without val_dir, validate on this many training images
VAL_EXTRA = -1  # sample_eps extra of the fixed validation noise (training steps are >= 0)
# Arguments that change the numbers of a run; resume refuses to mix runs that differ in them.
_MATH_KEYS = ("seed", "batch_size", "crop", "lr", "weight_decay", "warmup_steps", "k",
              "grad_clip", "amp", "lambda_f", "backend", "min_lr_ratio", "perturbation", "init")


class WorseThanIdentity(RuntimeError):
    """No epoch's model beat the identity (its own SHR input left as it is) on validation.

    The model is kept as ``rejected`` (``out/rhm_rejected.safetensors``), never as the result.
    """

    def __init__(self, message: str, rejected: Path):
        super().__init__(message)
        self.rejected = rejected


class WorseThanStart(WorseThanIdentity):
    """Fine-tuning (``init``) found no epoch that beats the model it started from on
    validation: the start is the better model, so nothing is delivered."""


def val_score(psnr_db: float, gap_high: float) -> float:
    """The validation score that picks the delivered epoch: PSNR vs clean (dB) minus the
    high-band spectral error in dB (the method §8 gap is in log10 power, so x10). Both terms
    matter: a blurring model can win PSNR while flattening the high band, and a model that
    reproduces the spectrum can still misplace detail. Non-finite (NaN outputs): -inf."""
    score = psnr_db - 10.0 * gap_high
    return score if math.isfinite(score) else -math.inf


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def _resolve_amp(amp, device: torch.device) -> str | None:
    """None -> bf16 (fp16 where bf16 is unsupported) on CUDA, off elsewhere; 'off'/False -> off.

    An explicit 'bf16' also works on CPU (torch's CPU autocast), which is how the AMP code
    path is tested without a GPU; 'fp16' needs CUDA (its GradScaler is CUDA-only here).
    """
    if amp in (False, "off", "none", "fp32"):
        return None
    if amp is not None and amp not in ("bf16", "fp16"):
        raise ValueError(f"amp must be None, 'off', 'bf16' or 'fp16', got {amp!r}")
    if device.type != "cuda":
        if amp is None or amp == "bf16":
            return amp
        raise ValueError(f"amp='fp16' needs a CUDA device (got {device}); use 'bf16' or 'off' on CPU")
    if amp is None:
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return amp


def _open_index(src, out: Path, real_dir, progress: bool) -> tuple[RealIndex, Path]:
    """(index, directory holding its images). A directory with index.json is an index
    (its images come from ``real_dir``); any other directory is a real-image directory,
    indexed into ``out/index`` (rebuilt every time: it is cheap next to training, and a
    changed directory then shows up as a changed data hash on resume)."""
    if isinstance(src, RealIndex):
        index = src
    elif (Path(src) / "index.json").is_file() or Path(src).name == "index.json":
        index = RealIndex.load(src, mmap=False)
    else:
        return build_index(src, out / "index", progress=progress), Path(src)
    if real_dir is None:
        raise ValueError("training from a prebuilt index needs real_dir= (the directory the "
                         "index was built from), since an index stores statistics, not images")
    return index, Path(real_dir)


def _self_positions(index: RealIndex, images: ImageSet) -> torch.Tensor:
    """Index position of each image when it is the same file as an index entry, else -1.

    Matched by file content (SHA-256), whatever its name or folder, so a validation
    directory that overlaps the training index never retrieves an image as its own
    neighbour (method §4). A file indexed twice under two names matches its first entry;
    for NIfTI slices (one file, many keys) the key must match too.
    Returns: [N] int64.
    """
    first: dict[str, int] = {}
    for i, digest in enumerate(index.hashes):
        first.setdefault(digest, i)
    pos = []
    for key, digest in zip(images.keys, images.hashes):
        p = index.position(key)
        if p >= 0 and index.hashes[p] == digest:
            pos.append(p)
        elif "#z=" not in key and digest in first:
            pos.append(first[digest])
        else:
            pos.append(-1)
    return torch.tensor(pos, dtype=torch.long)


class _Validation:
    """Held-out real images, their SHR inputs (fixed noise, computed once) and metrics.

    clean, noisy: [N, C, H, W] on the training device. The identity (the SHR input left as
    it is) is the baseline every epoch's model must beat (``val_score``); the model on
    the clean images measures the error it adds to an image SHR leaves alone.
    """

    def __init__(self, index: RealIndex, data: ImageSet, exclude: torch.Tensor, source: str,
                 seed: int, k: int, backend: str, device: torch.device, batch_size: int):
        cfg = index.config
        self.source = source
        self.batch_size = batch_size
        self.n = len(data.keys)
        noisy = []
        for i in range(0, self.n, batch_size):
            x = data.images[i:i + batch_size].to(device)
            nb = index.neighbours(x, k, exclude=exclude[i:i + batch_size], backend=backend)
            e_mu, e_sigma = sample_eps(seed, data.keys[i:i + batch_size], cfg.channels,
                                       VAL_EXTRA, device=device)
            noisy.append(shr(x, nb.mu_bank, nb.sigma_bank, e_mu, e_sigma, ratio=cfg.ratio,
                             domain=cfg.domain, backend=backend))
        self.ratio = cfg.ratio
        self.clean = data.images.to(device)
        self.noisy = torch.cat(noisy)
        self.clean_profile = spectral_profile(luma(self.clean.float()))
        self.baseline = self._metrics(self.noisy.clamp(0, 1))

    def _metrics(self, out: torch.Tensor) -> dict[str, float]:
        # Outputs are clipped as calibrate() clips them (method §6); SSIM on luma (method §4).
        if not bool(torch.isfinite(out).all()):
            # A diverged model (NaN outputs): SSIM and the spectral profile refuse
            # non-finite images, and val_score makes a NaN gap -inf.
            nan = float("nan")
            return {"psnr": _mean_psnr(out, self.clean), "ssim": nan, "gap_high": nan}
        gap = frequency_gap(spectral_profile(luma(out.float())), self.clean_profile, self.ratio)[0]
        return {"psnr": _mean_psnr(out, self.clean),
                "ssim": float(ssim(luma(out.float()), luma(self.clean)).mean()),
                "gap_high": float(gap)}

    def _forward(self, run, x: torch.Tensor) -> torch.Tensor:
        outs = []
        for i in range(0, self.n, self.batch_size):
            outs.append(run(x[i:i + self.batch_size]).float().clamp(0, 1))
        return torch.cat(outs)

    @torch.no_grad()
    def run(self, model: RHM, engine: str = "eager", precision: str = "fp32") -> dict[str, Any]:
        """Metrics of ``model``'s current weights run by ``engine`` at ``precision``
        (resolved names, see ``training/val_engine.py``)."""
        was_training = model.training
        model.eval()
        try:
            with engines.forward(model, engine, precision, self.clean.device,
                                 self.batch_size) as run:
                m = self._metrics(self._forward(run, self.noisy))
                clean_psnr = _mean_psnr(self._forward(run, self.clean), self.clean)
        finally:
            model.train(was_training)
        b = self.baseline
        score, base = val_score(m["psnr"], m["gap_high"]), val_score(b["psnr"], b["gap_high"])
        return {"n": self.n, "source": self.source,
                "psnr_model": m["psnr"], "ssim_model": m["ssim"], "gap_model": m["gap_high"],
                "psnr_shr": b["psnr"], "ssim_shr": b["ssim"], "gap_shr": b["gap_high"],
                "psnr_clean": clean_psnr, "engine": engine, "precision": precision,
                "score": score, "score_identity": base, "beats_identity": score > base}


def _mean_psnr(out: torch.Tensor, clean: torch.Tensor) -> float:
    """Mean PSNR (dB) over every image: an exact image counts as 100 dB and a NaN output
    as 0 dB, so the model and the identity are averaged over the same images (SHR leaves
    a blank slice exactly unchanged) and a broken output can never raise the mean."""
    p = torch.nan_to_num(psnr(out, clean), nan=0.0, posinf=100.0).clamp(max=100.0)
    return float(p.mean())


def _validation(index: RealIndex, val_dir, train: ImageSet, seed: int, k: int, backend: str,
                dev: torch.device, bs: int) -> _Validation:
    """Held-out images from ``val_dir``; without one, an evenly spaced sample of the
    training images (self-excluded), so the identity guard always runs."""
    if val_dir is not None:
        data = load_images(val_dir, index.config.work_size, index.config.channels)
        return _Validation(index, data, _self_positions(index, data), str(val_dir), seed, k,
                           backend, dev, bs)
    n = len(train.keys)
    rows = torch.linspace(0, n - 1, min(n, VAL_FROM_TRAIN)).round().long().unique()
    data = ImageSet(train.images[rows], [train.keys[i] for i in rows.tolist()],
                    [train.hashes[i] for i in rows.tolist()])
    log.warning("no validation directory: the identity guard and best-epoch choice use %d "
                "training images (pass val_dir / --val with held-out real images)", len(rows))
    return _Validation(index, data, rows, "training images (no val_dir)", seed, k, backend,
                       dev, bs)


def _resume_point(out: Path, train_cfg: dict, model_cfg: RHMConfig, dhash: str):
    """The latest verifiable epoch in ``out`` as (stem, meta, optimizer state), or None."""
    for epoch in reversed(st.completed_epochs(out)):
        stem = st.epoch_stem(out, epoch)
        try:
            meta, opt_sd = st.load_state(stem)
        except st.ResumeError as e:
            log.warning("resume: skipping epoch %d: %s", epoch, e)
            continue
        diffs = [f"{k}: saved {meta['train_config'].get(k)!r}, now {train_cfg.get(k)!r}"
                 for k in _MATH_KEYS if meta["train_config"].get(k) != train_cfg.get(k)]
        if meta["model_config"] != model_cfg.to_dict():
            diffs.append(f"model config: saved {meta['model_config']}, now {model_cfg.to_dict()}")
        if meta["data_hash"] != dhash:
            diffs.append("training data (index content hash) differs")
        if diffs:
            raise st.ResumeError(f"{out}: cannot resume epoch {epoch} with different settings "
                                 f"(use a new output directory or the saved ones): " + "; ".join(diffs))
        saved_threads = meta["train_config"].get("num_threads")
        if train_cfg["device"] == "cpu" and saved_threads != train_cfg["num_threads"]:
            log.warning("resume: %s CPU threads now, %s when saved: float sums may be ordered "
                        "differently, so the result will not be bit-identical to an "
                        "uninterrupted run (pass --threads %s for that)",
                        train_cfg["num_threads"], saved_threads, saved_threads)
        if int(meta["epoch"]) > train_cfg["epochs"]:
            raise st.ResumeError(f"{out}: epoch {meta['epoch']} is already done but epochs="
                                 f"{train_cfg['epochs']}; resume with epochs >= {meta['epoch']} "
                                 f"or use a new output directory")
        if meta["train_config"].get("epochs") != train_cfg["epochs"]:
            log.warning("resume: epochs %s -> %s changes the cosine schedule; the result will "
                        "differ from an uninterrupted run", meta["train_config"].get("epochs"),
                        train_cfg["epochs"])
        return stem, meta, opt_sd
    return None


def train_rhm(real_index_or_dir, out, *, val_dir=None, real_dir=None,
              config: RHMConfig | None = None, epochs: int = 10, batch_size: int = 8,
              crop=None, lr: float = 1e-3, weight_decay: float = 1e-4, warmup_steps: int = 50,
              min_lr_ratio: float = 0.01, k: int = 200, lambda_f: float = 1.0, seed: int = 0,
              amp=None, grad_clip: float | None = 1.0, device="cpu", backend: str = "auto",
              resume: bool = False, progress: bool = True, num_threads: int | None = None,
              keep_checkpoints: int = 2, perturbation: Perturbation | None = None,
              keep_worse: bool = False, val_engine: str = "eager",
              val_precision: str | None = None, init=None) -> Path:
    """Train an RHM denoiser on real images: input SHR(x) with self-excluded neighbours and
    fresh noise per step, target x (method §5). Returns the final checkpoint's weights path
    (``out/rhm.safetensors``; ``load_rhm`` reads it).

    real_index_or_dir: a directory of real images (indexed into ``out/index``), or a
        RealIndex / index directory together with ``real_dir`` holding its images.
    val_dir: held-out real images; each epoch reports PSNR/SSIM/high-band gap vs clean of
        the model's (clipped) output on their SHR versions, of the SHR input itself (the
        identity baseline) and PSNR of the model on the clean images. Without it, a sample
        of the training images stands in (with a warning).
    The delivered ``rhm.safetensors`` is the epoch with the best ``val_score`` (PSNR minus
    the high-band gap in dB), not the last one. If no epoch beats the identity, the model
    is written as ``rhm_rejected.safetensors`` and ``WorseThanIdentity`` is raised, unless
    ``keep_worse=True`` (then it is delivered with a warning).
    perturbation: the training-input distribution (``perturb.Perturbation``; default: clean
        inputs, nearest and random banks, radial high-band gains; ``Perturbation.spec()``
        is method §5's plain SHR). See ``frerec_fast/training/perturb.py`` for why.
    config: RHM sizes (default RHMConfig(); in_channels is taken from the index).
    batch_size: images per step (each epoch takes floor(N / batch_size) full batches).
    crop: training crop (int or (h, w)), at most the index's working size (the default).
    lr, weight_decay, warmup_steps, min_lr_ratio: AdamW with linear warm-up then cosine
        decay to min_lr_ratio * lr at the last step.
    k: neighbours per image (clamped to the index size minus self). lambda_f: method §5, Eq. 7.
    amp: None (bf16 on CUDA, fp16 where bf16 is unsupported; off on CPU), 'bf16', 'fp16', 'off'.
    grad_clip: max gradient norm (None: no clipping).
    resume: continue from the latest complete epoch in ``out`` (start fresh if none);
        bit-identical to an uninterrupted run on CPU with the same thread count.
        Without resume, an ``out`` that already holds epochs is refused.
    num_threads: torch CPU threads during training (restored afterwards).
    keep_checkpoints: completed epochs kept in ``out/checkpoints`` (older ones deleted).
    init: start from these weights instead of a random initialisation (fine-tuning): an
        RHM checkpoint path, or "default" for the shipped model. The model's sizes are the
        checkpoint's (``config`` must be None or the same); its SHA-256 is part of the run's
        settings (resume refuses another), and its own validation metrics are logged before
        the first step and kept in the result's ``extra["init"]``. If no epoch scores above
        the start, ``WorseThanStart`` is raised as for the identity (``keep_worse``
        delivers it anyway).
    val_engine, val_precision: the RHM engine that runs validation, by the names of
        ``load_rhm`` / ``calibrate_dir`` (default eager at the training's own precision;
        e.g. "openvino" with "int8"). Built from the current weights at every epoch's
        validation, so the delivered epoch is picked as that engine runs it
        (``training/val_engine.py``); recorded in each epoch's val metrics.
    """
    t_start = time.perf_counter()
    from ..allocator import tune
    tune()  # glibc: page faults otherwise cost more than the arithmetic (allocator.py)
    out = Path(out)
    dev = resolve_device(device)
    amp_mode = _resolve_amp(amp, dev)
    # Names checked before any work: a typo or a missing package fails now, not at epoch 1.
    val_run = engines.resolve(val_engine, val_precision, amp_mode, dev)
    if epochs < 1 or batch_size < 1 or k < 1 or keep_checkpoints < 1:
        raise ValueError("epochs, batch_size, k and keep_checkpoints must be >= 1")
    out.mkdir(parents=True, exist_ok=True)
    if st.completed_epochs(out) and not resume:
        raise FileExistsError(f"{out} already holds training checkpoints; pass resume=True "
                              f"(CLI: --resume) to continue, or choose another output directory")
    old_threads = torch.get_num_threads()
    if num_threads:
        torch.set_num_threads(int(num_threads))
    try:
        return _train(real_index_or_dir, out, val_dir, real_dir, config, epochs, batch_size,
                      crop, lr, weight_decay, warmup_steps, min_lr_ratio, k, lambda_f, seed,
                      amp_mode, grad_clip, dev, backend, resume, progress, keep_checkpoints,
                      t_start, perturbation or Perturbation(), keep_worse, val_run, init)
    finally:
        torch.set_num_threads(old_threads)


def _train(src, out, val_dir, real_dir, config, epochs, batch_size, crop, lr, weight_decay,
           warmup_steps, min_lr_ratio, k, lambda_f, seed, amp_mode, grad_clip, dev, backend,
           resume, progress, keep_checkpoints, t_start, pert, keep_worse, val_run,
           init=None) -> Path:
    index, image_root = _open_index(src, out, real_dir, progress)
    icfg = index.config
    if len(index) < 2:
        raise ValueError(f"the index holds {len(index)} image(s); training needs at least 2 "
                         f"(each image's neighbours exclude itself)")
    crop = _pair(crop) if crop is not None else tuple(icfg.work_size)
    if crop[0] > icfg.work_size[0] or crop[1] > icfg.work_size[1] or min(crop) < 1:
        raise ValueError(f"crop {crop} must fit in the working size {tuple(icfg.work_size)}")
    if min(batch_size, len(index)) * -(-crop[0] // 8) * -(-crop[1] // 8) < 2:
        raise ValueError(f"batch {batch_size} of {crop[0]}x{crop[1]} crops leaves one value per "
                         f"channel at the 1/8-size level, where FESA's BatchNorm needs two: "
                         f"use batch_size >= 2 or crops larger than 8x8")
    start = _init_model(init, config, icfg.channels)
    config = start.config if start is not None else (config or RHMConfig()).replace(
        in_channels=icfg.channels)
    train = load_images(image_root, icfg.work_size, icfg.channels, keys=index.keys)
    if train.hashes != list(index.hashes):
        bad = next(key for key, a, b in zip(train.keys, train.hashes, index.hashes) if a != b)
        raise ValueError(f"{image_root}: {bad} differs from the file the index was built from; "
                         f"rebuild the index or pass the right real_dir")
    positions = torch.arange(len(index))  # train.keys == index.keys, so self = own row
    # RealIndex.neighbours keeps one copy of the index per device, so retrieval on the
    # training device uploads it once, not every step.
    n = len(index)
    bs = min(batch_size, n)
    spe = n // bs
    total_steps = epochs * spe
    dhash = data_hash(index)
    train_cfg = {"seed": seed, "epochs": epochs, "batch_size": bs, "crop": list(crop), "lr": lr,
                 "weight_decay": weight_decay, "warmup_steps": warmup_steps,
                 "min_lr_ratio": min_lr_ratio, "k": k, "lambda_f": lambda_f,
                 "grad_clip": grad_clip, "amp": amp_mode, "backend": backend,
                 "perturbation": pert.to_dict(),
                 "steps_per_epoch": spe, "total_steps": total_steps, "device": str(dev),
                 "num_threads": torch.get_num_threads(),
                 # Not in _MATH_KEYS: another validation engine may resume these weights.
                 "val_engine": val_run[0], "val_precision": val_run[1]}
    if start is not None:  # absent otherwise: runs recorded before init existed still resume
        train_cfg["init"] = start.init_sha256

    with torch.random.fork_rng(devices=[]):
        # Only the CPU generator (the one fork_rng restores): torch.manual_seed would also
        # reseed every CUDA generator of the caller.
        torch.random.default_generator.manual_seed(seed)
        model = RHM(config)
    if start is not None:
        model.load_state_dict(start.state_dict(), strict=True)
    model.to(dev).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_mode == "fp16")
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp_mode)

    def autocast():
        return torch.autocast(dev.type, dtype=amp_dtype, enabled=amp_dtype is not None)

    start_epoch, history, seconds_before = 0, [], 0.0
    point = _resume_point(out, train_cfg, config, dhash) if resume else None
    if point is not None:
        stem, meta, opt_sd = point
        weights, _ = checkpoint_paths(stem)
        model.load_state_dict(st_load(weights.read_bytes()), strict=True)
        opt.load_state_dict(opt_sd)
        if meta.get("scaler"):
            scaler.load_state_dict(meta["scaler"])
        start_epoch, history = int(meta["epoch"]), list(meta["history"])
        seconds_before = float(meta.get("train_seconds", 0.0))
        log.info("resuming %s after epoch %d (step %d)", out, start_epoch, start_epoch * spe)
    elif resume:
        log.info("resume: no complete epoch in %s; starting fresh", out)

    val = _validation(index, val_dir, train, seed, k, backend, dev, max(bs, 16))
    init_val = None
    if start is not None:
        init_val = val.run(start.to(dev), *val_run)
        log.info("starting point %s: val PSNR %.2f dB (SHR input %.2f), gap %.4f, clean in "
                 "%.2f dB | score %.2f vs identity %.2f", start.init_path, init_val["psnr_model"],
                 init_val["psnr_shr"], init_val["gap_model"], init_val["psnr_clean"],
                 init_val["score"], init_val["score_identity"])
        del start
    mu_db, sigma_db = index.tensors_on(dev)[1:]
    bar = progress_bar(total_steps, "train", "step", progress, initial=start_epoch * spe)
    n_params = sum(p.numel() for p in model.parameters())
    t_run = time.perf_counter()
    try:
        for epoch in range(start_epoch, epochs):
            order = epoch_order(seed, epoch, n)
            t_epoch, loss_sum = time.perf_counter(), 0.0
            for s in range(spe):
                step = epoch * spe + s
                rows = order[s * bs:(s + 1) * bs]
                keys = [train.keys[i] for i in rows.tolist()]
                x = augment(train.images[rows], crop, seed, step).to(dev)
                if pert.changes_appearance:
                    x = appearance(x, pert, seed, step)
                # Neighbours of the augmented crop itself, never the image's own entry.
                nb = index.neighbours(x, k, exclude=positions[rows], backend=backend)
                e_mu, e_sigma = sample_eps(seed, keys, icfg.channels, step, device=dev)
                with torch.no_grad():
                    x_hat = _perturb(x, nb, pert, draw(pert, len(rows), seed, step),
                                     positions[rows], mu_db, sigma_db, e_mu, e_sigma, icfg,
                                     seed, step, backend)
                lr_now = st.lr_at(step, lr, warmup_steps, total_steps, min_lr_ratio)
                for g in opt.param_groups:
                    g["lr"] = lr_now
                with autocast():
                    pred = model(x_hat)
                loss = rhm_loss(pred.float(), x, lambda_f)  # the loss in fp32 whatever the AMP
                if not torch.isfinite(loss) and not scaler.is_enabled():
                    raise FloatingPointError(f"non-finite loss {loss.item()} at epoch {epoch + 1}, "
                                             f"step {step}; lower lr or raise warmup_steps")
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if grad_clip:
                    scaler.unscale_(opt)  # clip the true gradients, not the fp16-scaled ones
                    torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                scaler.step(opt)
                scaler.update()
                loss_sum += loss.detach().item()
                rate = (s + 1) * bs / max(time.perf_counter() - t_epoch, 1e-9)
                bar.set_postfix(epoch=epoch + 1, loss=f"{loss_sum / (s + 1):.5f}",
                                img_s=f"{rate:.1f}", refresh=False)
                bar.update(1)
            epoch_s = time.perf_counter() - t_epoch
            record = {"epoch": epoch + 1, "step": (epoch + 1) * spe, "loss": loss_sum / spe,
                      "lr": lr_now, "images_per_s": spe * bs / epoch_s, "seconds": epoch_s}
            v = record["val"] = val.run(model, *val_run)
            improved = best_epoch([*history, record], epoch + 1) == epoch + 1
            msg = (f"epoch {epoch + 1}/{epochs} loss {record['loss']:.5f} | val PSNR "
                   f"{v['psnr_model']:.2f} dB (SHR input {v['psnr_shr']:.2f}), gap "
                   f"{v['gap_model']:.4f} ({v['gap_shr']:.4f}), clean in {v['psnr_clean']:.2f} dB"
                   f" | score {v['score']:.2f} vs identity {v['score_identity']:.2f}"
                   f"{' *' if improved else ''}")
            if isinstance(bar, NoBar):
                log.info(msg)
            else:
                bar.write(msg)
            history.append(record)
            meta = {"epoch": epoch + 1, "step": (epoch + 1) * spe, "train_config": train_cfg,
                    "model_config": config.to_dict(), "data_hash": dhash,
                    "train_seconds": seconds_before + time.perf_counter() - t_run,
                    "history": history}
            stem = st.epoch_stem(out, epoch + 1)
            save_checkpoint(stem, model, config, extra=_extra(meta, index, image_root, val_dir,
                                                              n_params))
            if improved:
                save_checkpoint(_best_stem(out, epoch + 1), model, config,
                                extra={"epoch": epoch + 1, "score": v["score"]})
            st.save_state(stem, opt, meta, scaler)
            for old in st.completed_epochs(out)[:-keep_checkpoints]:
                st.remove_epoch(out, old)
            _prune_best(out, history, st.completed_epochs(out))
    finally:
        bar.close()
    final_meta = {"epoch": epochs, "step": total_steps, "train_config": train_cfg,
                  "model_config": config.to_dict(), "data_hash": dhash,
                  "train_seconds": seconds_before + time.perf_counter() - t_run,
                  "history": history}
    if point is not None and start_epoch >= epochs:  # nothing left to train: keep saved timing
        final_meta.update({k_: point[1][k_] for k_ in ("train_seconds", "history")})
    extra = _extra(final_meta, index, image_root, val_dir, n_params)
    extra["wall_seconds_this_call"] = time.perf_counter() - t_start
    chosen = history[best_epoch(history, epochs) - 1]
    weights, _ = checkpoint_paths(_best_stem(out, chosen["epoch"]))
    model.load_state_dict(st_load(weights.read_bytes()), strict=True)
    extra["selected"] = {"epoch": chosen["epoch"], "by": "val_score = PSNR - 10 x high-band gap",
                         "val": chosen["val"]}
    if init_val is not None:
        extra["init"] = {"path": str(init_path_of(init)), "weights_sha256": train_cfg["init"],
                         "val": init_val}
    extra["metrics"]["val"] = chosen["val"]
    if init_val is not None and not chosen["val"]["score"] > init_val["score"]:
        if not keep_worse:
            _remove_checkpoint(out / FINAL_NAME)
            save_checkpoint(out / REJECTED_NAME, model, config, extra=extra)
            raise WorseThanStart(
                f"no epoch beat the model it started from ({extra['init']['path']}) on "
                f"{chosen['val']['source']}: best epoch {chosen['epoch']} scores "
                f"{chosen['val']['score']:.2f} vs {init_val['score']:.2f} for the start. Keep "
                f"using the start; the fine-tuned model was written to "
                f"{checkpoint_paths(out / REJECTED_NAME)[0]}, not as the result (keep_worse="
                f"True / --keep-worse delivers it anyway).",
                checkpoint_paths(out / REJECTED_NAME)[0])
        log.warning("delivering a fine-tuned model that does not beat its start on validation "
                    "(keep_worse=True)")
    if not chosen["val"]["beats_identity"] and not keep_worse:
        _remove_checkpoint(out / FINAL_NAME)  # never leave an earlier delivery looking current
        save_checkpoint(out / REJECTED_NAME, model, config, extra=extra)
        v = chosen["val"]
        raise WorseThanIdentity(
            f"no epoch beat the identity on {v['source']}: best epoch {chosen['epoch']} scores "
            f"{v['score']:.2f} (PSNR {v['psnr_model']:.2f} dB, gap {v['gap_model']:.4f}) vs "
            f"{v['score_identity']:.2f} for its SHR input left as it is (PSNR "
            f"{v['psnr_shr']:.2f} dB, gap {v['gap_shr']:.4f}). The model would damage these "
            f"images; it was written to {checkpoint_paths(out / REJECTED_NAME)[0]}, not as "
            f"the result. Train longer or on more data, or pass keep_worse=True "
            f"(--keep-worse) to deliver it anyway.", checkpoint_paths(out / REJECTED_NAME)[0])
    if not chosen["val"]["beats_identity"]:
        log.warning("delivering a model that does not beat the identity on validation "
                    "(keep_worse=True)")
    _remove_checkpoint(out / REJECTED_NAME)
    save_checkpoint(out / FINAL_NAME, model, config, extra=extra)
    return checkpoint_paths(out / FINAL_NAME)[0]


def init_path_of(init) -> Path:
    """The checkpoint ``init`` names: "default" is the shipped model."""
    return default_model_path() if str(init) == "default" else Path(init)


def _init_model(init, config: RHMConfig | None, channels: int) -> RHM | None:
    """The RHM to start from (eval mode, CPU), with ``init_path`` and ``init_sha256`` set;
    None without ``init``. ValueError when its sizes or channels do not fit the run."""
    if init is None:
        return None
    path = init_path_of(init)
    model = load_rhm(path)
    if config is not None and config.replace(in_channels=channels, dft=model.config.dft) \
            != model.config:
        raise ValueError(f"init {path}: its model config {model.config.to_dict()} differs from "
                         f"the one asked for ({config.to_dict()}); with init the sizes are the "
                         f"checkpoint's, so leave the config out")
    if model.config.in_channels != channels:
        raise ValueError(f"init {path} takes {model.config.in_channels}-channel images, the "
                         f"index holds {channels}-channel ones")
    model.init_path = path
    model.init_sha256 = read_checkpoint_meta(path)["weights_sha256"]
    return model


def _remove_checkpoint(stem: Path) -> None:
    for p in checkpoint_paths(stem)[::-1]:  # sidecar first: a lone sidecar never validates
        p.unlink(missing_ok=True)


def _perturb(x, nb, pert: Perturbation, d, self_pos, mu_db, sigma_db, e_mu, e_sigma, icfg,
             seed: int, step: int, backend: str) -> torch.Tensor:
    """One step's training inputs (``perturb`` module): SHR of each crop, some with a
    random bank and a radial high-band gain first, some left clean.
    x: [B, C, h, w] clean crops -> [B, C, h, w]."""
    dev = x.device
    mu_bank, sigma_bank = nb.mu_bank, nb.sigma_bank
    if bool(d.random_bank.any()):
        rmu, rsig = random_banks(mu_db, sigma_db, self_pos, mu_bank.shape[1], seed, step)
        sel = d.random_bank.to(dev).view(-1, 1, 1)
        mu_bank, sigma_bank = torch.where(sel, rmu, mu_bank), torch.where(sel, rsig, sigma_bank)
    src = x
    if bool((d.slope != 0).any() or (d.curve != 0).any()):
        src = band_tilt(x, d.slope, d.curve, icfg.ratio)
    x_hat = shr(src, mu_bank, sigma_bank, e_mu, e_sigma, ratio=icfg.ratio, domain=icfg.domain,
                backend=backend)
    if bool(d.identity.any()):
        x_hat = torch.where(d.identity.to(dev).view(-1, 1, 1, 1), x, x_hat)
    return x_hat


def best_epoch(history: list, upto: int) -> int:
    """The epoch (1-based) with the highest validation score among epochs <= upto; the
    earliest on ties. history: the per-epoch records, epoch i at position i - 1."""
    best = None
    for h in history:
        if h["epoch"] <= upto and (best is None or h["val"]["score"] > best["val"]["score"]):
            best = h
    return best["epoch"]


def _best_stem(out: Path, epoch: int) -> Path:
    return Path(out) / st.CKPT_DIR / f"{BEST_NAME}_{epoch:04d}"


def _prune_best(out: Path, history: list, kept: list) -> None:
    """Keep the best-epoch weights that some kept resume point still needs (the best up
    to each kept epoch): resuming from any of them then delivers what an uninterrupted
    run delivers. At most ``keep_checkpoints`` files."""
    need = {best_epoch(history, e) for e in kept if e <= len(history)}
    for p in (Path(out) / st.CKPT_DIR).glob(f"{BEST_NAME}_*.*"):
        e = int(p.name[len(BEST_NAME) + 1:].split(".", 1)[0])
        if e not in need:
            for q in checkpoint_paths(_best_stem(out, e))[::-1]:  # sidecar first
                q.unlink(missing_ok=True)


def _extra(meta: dict, index: RealIndex, image_root: Path, val_dir, n_params: int) -> dict:
    """The checkpoint JSON's ``extra``: what was trained on what, and how well it did."""
    last = meta["history"][-1] if meta["history"] else {}
    return {"epoch": meta["epoch"], "step": meta["step"], "training": meta["train_config"],
            "data": {"real_dir": str(image_root), "n_images": len(index),
                     "index_config": index.config.to_dict(), "data_hash": meta["data_hash"],
                     "val_dir": None if val_dir is None else str(val_dir)},
            "metrics": {"train_loss": last.get("loss"), "val": last.get("val")},
            "parameters": n_params, "train_seconds": meta["train_seconds"],
            "torch": torch.__version__, "history": meta["history"]}
