"""Generator weights as safetensors plus a JSON config beside them (never pickle).

``dcgan.safetensors`` holds only tensors, so loading cannot run code; ``dcgan.json``
holds the architecture (``DCGANConfig``) and how the weights were trained.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from .dcgan import DCGANConfig, Generator


def config_path(weights: str | Path) -> Path:
    """``x/dcgan.safetensors`` -> ``x/dcgan.json``."""
    return Path(weights).with_suffix(".json")


def _atomic_write(path: Path, write) -> None:
    # Write to a temp name and rename, so a killed run never leaves a half-written file.
    tmp = path.with_name(path.name + ".tmp")
    write(tmp)
    os.replace(tmp, path)


def save_generator(path: str | Path, state: dict, cfg: DCGANConfig, info: dict) -> Path:
    """Write the generator's tensors and ``{"config": ..., "training": ...}`` JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(path, lambda p: save_file(state, str(p), metadata={"format": "pt"}))
    doc = {"model": "frerec_fast.synth.dcgan.Generator", "config": cfg.to_dict(), "training": info}
    _atomic_write(config_path(path), lambda p: p.write_text(json.dumps(doc, indent=2) + "\n"))
    return path


def load_generator(path: str | Path) -> Generator:
    """A generator in eval mode from ``path`` (safetensors) and its JSON config."""
    path = Path(path)
    cfg_file = config_path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    if not cfg_file.is_file():
        raise FileNotFoundError(f"{cfg_file}: the config JSON must sit beside {path.name}")
    cfg = DCGANConfig.from_dict(json.loads(cfg_file.read_text())["config"])
    g = Generator(cfg)
    state = load_file(str(path))
    missing, unexpected = g.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(f"{path}: weights do not match the config in {cfg_file.name}: "
                         f"missing {missing}, unexpected {unexpected}")
    return g.eval()


def state_digest(state: dict) -> str:
    """SHA-256 over names and raw bytes of every tensor (for determinism checks)."""
    import hashlib

    h = hashlib.sha256()
    for k in sorted(state):
        t = state[k].detach().contiguous().cpu()
        h.update(k.encode())
        h.update(str(t.dtype).encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()
