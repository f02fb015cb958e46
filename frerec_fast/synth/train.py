"""Deterministic CPU training of the DCGAN on the shipped real train split.

Reproducibility: every random draw (initialisation, batch indices, flips, latents)
comes from one seeded ``torch.Generator`` or the seeded global generator, the run is a
fixed number of steps (never a time budget), ``torch.use_deterministic_algorithms`` is
on, and the intra-op thread count is fixed (default 1: on a small shared 2-core CPU a
second thread made steps slower, not faster). CPU reductions can group differently with
another thread count, CPU instruction set or torch version, so bit-identical weights are
promised for the same (seed, steps, threads, torch version, CPU). The caller's global
RNG state is saved and restored around training.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from pathlib import Path

import torch
from torch import nn

from .checkpoint import save_generator
from .dcgan import DCGANConfig, Discriminator, Generator


@contextlib.contextmanager
def deterministic_cpu(threads: int):
    """Fix the thread count and turn on deterministic algorithms; restore both on exit."""
    old_threads, old_det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(old_threads)
        torch.use_deterministic_algorithms(old_det)


def labels_of(paths: list[Path], classes: tuple) -> torch.Tensor:
    """Class index of each image from its parent folder name (``.../ct/x.png`` -> "ct").

    Returns: [N] int64.
    """
    try:
        return torch.tensor([classes.index(p.parent.name) for p in paths], dtype=torch.long)
    except ValueError as e:
        raise ValueError(f"every image must sit in a folder named one of {classes}") from e


def load_training_set(real_dir: Path | None, classes: tuple):
    """Images and labels of a folder laid out as ``<class>/<name>.png`` (default: the
    shipped real train split).

    Returns: x [N, 1, H, W] float32 in [0, 1], labels [N] int64.
    """
    from .. import datasets

    root = Path(real_dir) if real_dir is not None else datasets.real_dir("train")
    paths = sorted(p for c in classes for p in (root / c).glob("*.png"))
    if not paths:
        raise FileNotFoundError(f"no PNGs under {root}/<class>/ for classes {classes}")
    x = torch.stack([torch.from_numpy(datasets.read_png16(p)) for p in paths])[:, None]
    return x, labels_of(paths, classes)


def train(out: str | Path | None, steps: int = 2000, seed: int = 0, threads: int = 1,
          batch_size: int = 32, lr: float = 2e-4, cfg: DCGANConfig | None = None,
          real_dir: str | Path | None = None, data=None, log_every: int = 100) -> dict:
    """Train a DCGAN and (if ``out`` is given) write ``out/dcgan.safetensors`` + ``.json``.

    data: optional (x [N, 1, S, S] float32 in [0, 1], labels [N] int64) instead of a folder
    (tests use tiny in-memory sets).
    Returns: {"state_dict": generator weights, "config": DCGANConfig, "info": dict}.
    """
    cfg = cfg or DCGANConfig()
    x, labels = data if data is not None else load_training_set(real_dir, cfg.classes)
    if x.shape[-1] != cfg.image_size or x.shape[-2] != cfg.image_size:
        raise ValueError(f"images are {tuple(x.shape[-2:])}, config wants {cfg.image_size}")
    counts = torch.bincount(labels, minlength=len(cfg.classes)).double()
    cfg = dataclasses.replace(cfg, class_fractions=tuple((counts / counts.sum()).tolist()))
    t0 = time.perf_counter()
    with deterministic_cpu(threads), torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)  # module initialisation draws from the global generator
        g, d = Generator(cfg), Discriminator(cfg)
        gen = torch.Generator().manual_seed(seed + 1)
        opt_g = torch.optim.Adam(g.parameters(), lr=lr, betas=(0.5, 0.999))
        opt_d = torch.optim.Adam(d.parameters(), lr=lr, betas=(0.5, 0.999))
        bce = nn.BCEWithLogitsLoss()
        n = x.shape[0]
        ones, zeros = torch.full((batch_size,), 0.9), torch.zeros(batch_size)  # 0.9: one-sided smoothing
        log = []
        for step in range(steps):
            idx = torch.randint(0, n, (batch_size,), generator=gen)
            real, lab = x[idx], labels[idx]
            # Left-right flips: heads are roughly symmetric, and 171 slices are few.
            flip = torch.rand(batch_size, generator=gen) < 0.5
            real = torch.where(flip[:, None, None, None], real.flip(-1), real)
            z = torch.randn(batch_size, cfg.nz, generator=gen)
            fake_lab = torch.multinomial(counts, batch_size, replacement=True, generator=gen)
            fake = g(z, fake_lab)

            opt_d.zero_grad(set_to_none=True)
            loss_d = bce(d(real, lab), ones) + bce(d(fake.detach(), fake_lab), zeros)
            loss_d.backward()
            opt_d.step()

            opt_g.zero_grad(set_to_none=True)
            loss_g = bce(d(fake, fake_lab), torch.ones(batch_size))
            loss_g.backward()
            opt_g.step()
            if log_every and (step + 1) % log_every == 0:
                log.append({"step": step + 1, "loss_d": round(loss_d.item(), 4),
                            "loss_g": round(loss_g.item(), 4)})
                print(f"step {step + 1}/{steps}  loss_d {loss_d.item():.3f}  "
                      f"loss_g {loss_g.item():.3f}", flush=True)
    g.eval()
    info = {"steps": steps, "seed": seed, "threads": threads, "batch_size": batch_size, "lr": lr,
            "n_train": n, "train_seconds": round(time.perf_counter() - t0, 1),
            "torch": torch.__version__, "log": log}
    state = {k: v.detach().clone().contiguous() for k, v in g.state_dict().items()}
    if out is not None:
        path = save_generator(Path(out) / "dcgan.safetensors", state, cfg, info)
        info["weights"] = str(path)
    return {"state_dict": state, "config": cfg, "info": info}

