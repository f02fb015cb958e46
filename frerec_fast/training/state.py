"""Resumable training state next to each epoch's model checkpoint, without pickle.

Per completed epoch E, ``out/checkpoints/`` holds
  ``epoch_EEEE.safetensors`` + ``.json``            the model (``save_checkpoint``; ``load_rhm`` reads it)
  ``epoch_EEEE.state.safetensors`` + ``.state.json`` optimizer tensors; scalars, configs, history
The state JSON is written last and records the SHA-256 of the three other files, so it is
the done-marker of the epoch: a crash at any point leaves either a complete, verifiable
epoch or a JSON-less one that resume ignores.

Nothing random is stored: every draw is re-derived from (seed, epoch, step) (data.py).
The learning rate is a pure function of the step (see ``lr_at``), so there is no
scheduler state either; what remains is the optimizer's moments and step counts.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..model.checkpoint import _atomic_write, checkpoint_paths

FORMAT = "frerec_fast.rhm_train_state"
VERSION = 1
CKPT_DIR = "checkpoints"
_EPOCH_RE = re.compile(r"^epoch_(\d{4,})\.state\.json$")


class ResumeError(RuntimeError):
    """The training state in ``out`` cannot be resumed with the given arguments."""


def lr_at(step: int, base_lr: float, warmup_steps: int, total_steps: int,
          min_ratio: float = 0.0) -> float:
    """Learning rate of optimizer step ``step`` (0-based): linear warm-up then cosine decay.

    Warm-up goes from base_lr / warmup_steps to base_lr over ``warmup_steps`` steps (never 0,
    so the first step already learns); the cosine then runs from base_lr down to
    ``min_ratio * base_lr`` at the last step.
    """
    if warmup_steps > 0 and step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    t = min(1.0, (step - warmup_steps) / span)
    return base_lr * (min_ratio + (1.0 - min_ratio) * 0.5 * (1.0 + math.cos(math.pi * t)))


def epoch_stem(out: Path, epoch: int) -> Path:
    """``out/checkpoints/epoch_EEEE``: the model checkpoint stem of a completed epoch."""
    return Path(out) / CKPT_DIR / f"epoch_{epoch:04d}"


def _state_paths(stem: Path) -> tuple[Path, Path]:
    return stem.with_name(stem.name + ".state.safetensors"), stem.with_name(stem.name + ".state.json")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def save_state(stem: Path, optimizer: torch.optim.Optimizer, meta: dict[str, Any],
               scaler: torch.amp.GradScaler | None = None) -> Path:
    """Write the optimizer state of the epoch whose model checkpoint is at ``stem``.

    Call after ``save_checkpoint(stem, ...)``. meta: JSON-able (epoch, step, configs, ...).
    Returns the state JSON path (the epoch's done-marker).
    """
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, st in sd["state"].items():
        for name, v in st.items():
            if isinstance(v, torch.Tensor):
                tensors[f"optim.{pid}.{name}"] = v.detach().to("cpu").contiguous()
            else:
                scalars.setdefault(str(pid), {})[name] = v
    blob = st_save(tensors, metadata={"format": FORMAT})
    ts, js = _state_paths(stem)
    ws, wj = checkpoint_paths(stem)
    doc = dict(meta)
    doc.update({"format": FORMAT, "version": VERSION,
                "param_groups": sd["param_groups"], "optim_scalars": scalars,
                "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
                "sha256": {"state": hashlib.sha256(blob).hexdigest(),
                           "model_weights": _sha(ws), "model_json": _sha(wj)}})
    text = json.dumps(doc, indent=1, sort_keys=True).encode()  # fails before writing if not JSON-able
    _atomic_write(ts, blob)
    _atomic_write(js, text)
    return js


def load_state(stem: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """Read and verify an epoch's state. Returns (meta, optimizer state_dict).

    Raises ResumeError if a file is missing or does not match the recorded checksums.
    """
    ts, js = _state_paths(stem)
    ws, wj = checkpoint_paths(stem)
    try:
        meta = json.loads(js.read_text())
    except (OSError, ValueError) as e:
        raise ResumeError(f"cannot read {js}: {e}") from e
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise ResumeError(f"{js}: not a version-{VERSION} training state")
    if not all(isinstance(meta.get(k), (dict, list)) for k in ("sha256", "optim_scalars",
                                                               "param_groups")):
        raise ResumeError(f"{js}: incomplete training state (missing checksums or optimizer fields)")
    for path, key in ((ts, "state"), (ws, "model_weights"), (wj, "model_json")):
        if not path.is_file() or _sha(path) != meta["sha256"][key]:
            raise ResumeError(f"{path}: missing or does not match {js.name} (interrupted save?)")
    tensors = st_load(ts.read_bytes())
    state: dict[int, dict[str, Any]] = {}
    for name, t in tensors.items():
        _, pid, field = name.split(".", 2)
        state.setdefault(int(pid), {})[field] = t
    for pid, d in meta["optim_scalars"].items():
        state.setdefault(int(pid), {}).update(d)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):  # JSON turned the tuple into a list
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return meta, {"state": state, "param_groups": groups}


def completed_epochs(out: Path) -> list[int]:
    """Epochs with a state JSON in ``out/checkpoints``, ascending (not yet verified)."""
    d = Path(out) / CKPT_DIR
    if not d.is_dir():
        return []
    return sorted(int(m.group(1)) for p in d.iterdir() if (m := _EPOCH_RE.match(p.name)))


def remove_epoch(out: Path, epoch: int) -> None:
    """Delete an old epoch's four files (done-marker first, so a crash never leaves a
    marker that points at deleted files)."""
    stem = epoch_stem(out, epoch)
    ts, js = _state_paths(stem)
    ws, wj = checkpoint_paths(stem)
    for p in (js, ts, wj, ws):
        p.unlink(missing_ok=True)
