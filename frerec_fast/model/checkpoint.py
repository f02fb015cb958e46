"""RHM checkpoints: `<path>.safetensors` (weights) + `<path>.json` (config, extra, checksum).

Never pickle: weights load with safetensors only. Both files are written atomically (temp
file, fsync, os.replace); the JSON goes last and carries the SHA-256 of the weights file, so
a crash mid-save or a weights file from another save is detected at load time.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from ..reference.checks import require_finite
from ._consts import default_file_mode
from .config import RHMConfig
from .restormer import RHM

FORMAT = "frerec_fast.rhm"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint file is missing, corrupt, or does not match its partner file or the model."""


def _stem(path: str | os.PathLike) -> Path:
    p = Path(path)
    return p.with_suffix("") if p.suffix in (".safetensors", ".json") else p


def checkpoint_paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, sidecar) paths for a checkpoint stem; a '.safetensors'/'.json' suffix is dropped."""
    s = _stem(path)
    return s.with_name(s.name + ".safetensors"), s.with_name(s.name + ".json")


def _atomic_write(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:  # make the rename itself durable; not possible on every filesystem/OS
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save_checkpoint(path: str | os.PathLike, model: RHM, config: RHMConfig | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write the model's state_dict (parameters and BatchNorm buffers) and its config.

    extra: JSON-able metadata (epoch, loss, data description, ...). Returns the stem path.
    """
    config = config or model.config
    if config.replace(dft=model.config.dft) != model.config:
        raise ValueError(f"save_checkpoint: config {config} does not describe the model ({model.config})")
    ws, js = checkpoint_paths(path)
    ws.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    cfg_json = json.dumps(config.to_dict(), sort_keys=True)
    blob = st_save(tensors, metadata={"format": FORMAT, "config": cfg_json})
    meta = {"format": FORMAT, "format_version": FORMAT_VERSION, "config": config.to_dict(),
            "weights_file": ws.name, "weights_sha256": hashlib.sha256(blob).hexdigest(),
            "extra": extra or {}}
    side = json.dumps(meta, indent=2, sort_keys=True).encode()  # fails here if extra is not JSON-able
    _atomic_write(ws, blob)
    _atomic_write(js, side)
    return _stem(path)


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The sidecar JSON of a checkpoint (config, extra, checksum), validated."""
    _, js = checkpoint_paths(path)
    if not js.is_file():
        raise CheckpointError(f"RHM checkpoint sidecar {js} not found (a checkpoint is "
                              f"<stem>.safetensors + <stem>.json, written by save_checkpoint)")
    try:
        meta = json.loads(js.read_bytes())
    except (OSError, ValueError, RecursionError) as e:  # also bad UTF-8, nesting too deep
        raise CheckpointError(f"cannot read checkpoint sidecar {js}: {type(e).__name__}: "
                              f"{str(e)[:200]}") from e
    if not isinstance(meta, dict):
        raise CheckpointError(f"{js} is not an RHM checkpoint (a JSON {type(meta).__name__}, "
                              "not an object)")
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{js} is not an RHM checkpoint (format {meta.get('format')!r})")
    version = meta.get("format_version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{js}: format_version must be an integer, got {version!r}")
    if version > FORMAT_VERSION:
        raise CheckpointError(f"{js} has format version {meta['format_version']}, this "
                              f"frerec_fast reads up to {FORMAT_VERSION}: upgrade frerec_fast")
    return meta


def load_rhm(path: str | os.PathLike, device: str | torch.device = "cpu") -> RHM:
    """Rebuild an RHM from a checkpoint written by save_checkpoint, in eval mode on `device`.

    Both files are untrusted input: the weights are read with safetensors only (never
    pickle), the sidecar is JSON. A missing, damaged or forged checkpoint raises
    CheckpointError saying what is wrong: checksum, config (types and ranges), tensor
    names, shapes and dtypes (compared with the model built on the meta device, so a
    config with absurd sizes allocates nothing), non-finite weights."""
    ws, js = checkpoint_paths(path)
    meta = read_checkpoint_meta(path)
    if not ws.is_file():
        raise CheckpointError(f"RHM weights {ws} not found (sidecar {js} exists)")
    blob = ws.read_bytes()
    if hashlib.sha256(blob).hexdigest() != meta.get("weights_sha256"):
        raise CheckpointError(f"{ws} does not match its sidecar {js} (SHA-256 differs): the "
                              f"weights were overwritten, truncated, or come from another save")
    try:
        config = RHMConfig.from_dict(meta.get("config"))
        state = st_load(blob)
        # The config saved inside the weights, from the header of the bytes checked
        # above (8-byte length, then JSON; safetensors has validated both).
        header = json.loads(blob[8:8 + struct.unpack("<Q", blob[:8])[0]])
        inner = (header.get("__metadata__") or {}).get("config")
        saved = None if inner is None else RHMConfig.from_dict(json.loads(inner))
    except Exception as e:  # noqa: BLE001 - bad config values, a damaged header or inner config
        raise CheckpointError(f"cannot load RHM checkpoint {ws}: {type(e).__name__}: "
                              f"{str(e)[:300]}") from e
    # The checksum covers the weights (and the config saved inside them), not the sidecar:
    # a sidecar whose sizes were edited (n_rings, say, changes no weight shape) would
    # silently build another model. The dft mode is a run-time choice, not the model's.
    if saved is not None:
        if saved.replace(dft=config.dft) != config:
            raise CheckpointError(f"{js}: its config {config.to_dict()} differs from the one "
                                  f"saved inside {ws.name} ({saved.to_dict()})")
    _check_weights(ws, config, state)
    model = RHM(config)
    model.load_state_dict(state, strict=True)  # names, shapes and dtypes checked above
    return model.to(device).eval()


def _check_weights(ws: Path, config: RHMConfig, state: dict[str, torch.Tensor]) -> None:
    """CheckpointError unless ``state`` holds exactly the tensors of RHM(config), each of
    the model's shape and dtype, all finite. The model is built on the meta device
    (no memory), after a bound on its module count from the file's tensor count, so a
    sidecar claiming a huge model costs nothing."""
    if sum(config.blocks) + config.refinement > len(state):
        raise CheckpointError(f"{ws} does not fit RHM({config}): the config has "
                              f"{sum(config.blocks) + config.refinement} blocks, the file only "
                              f"{len(state)} tensors")
    try:
        with torch.device("meta"):
            want = {k: (tuple(v.shape), v.dtype) for k, v in RHM(config).state_dict().items()}
    except Exception as e:  # noqa: BLE001 - a config the model cannot be built from
        raise CheckpointError(f"{ws}: cannot build RHM({config}): {e}") from e
    missing, unexpected = sorted(set(want) - set(state)), sorted(set(state) - set(want))
    if missing or unexpected:
        raise CheckpointError(f"{ws} does not fit RHM({config}): missing {missing[:8]}, "
                              f"unexpected {unexpected[:8]}")
    for k, (shape, dtype) in want.items():
        got = state[k]
        if tuple(got.shape) != shape or got.dtype != dtype:
            raise CheckpointError(f"{ws} does not fit RHM({config}): {k} is {got.dtype} "
                                  f"{tuple(got.shape)}, the model needs {dtype} {shape}")
    try:
        require_finite(**state)
    except ValueError as e:
        raise CheckpointError(f"{ws}: weights hold NaN or infinite values ({e})") from e
