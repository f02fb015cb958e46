"""The engine that runs ``frerec train``'s validation: the names and the loader of
``load_rhm`` / ``calibrate_dir`` (``frerec_fast.engine``), applied to the weights being
trained.

Each validation (once per epoch) sees the current weights, so an engine other than
eager is built from the in-memory module every epoch: an ONNX export and a compile
(seconds for the small model), plus NNCF's quantisation for int8 (about 15 s at 64x64
for the small model). It is built in a temporary folder that goes when the epoch's
validation ends, and it picks the delivered epoch and runs the identity guard, so the
model delivered is the best one *as that engine runs it*. Eager, the default, costs
nothing extra: it is the module itself, under the training's autocast unless a
precision is named.
"""
from __future__ import annotations

import contextlib
import tempfile
from typing import Callable, Iterator

import torch

# Training's mixed precision -> the engine precision of the same arithmetic.
_AMP_PRECISION = {None: "fp32", "bf16": "bf16", "fp16": "fp16"}


def resolve(engine: str, precision: str | None, amp_mode: str | None,
            device: torch.device) -> tuple[str, str]:
    """(engine, precision) as validation will run them: ``auto`` resolved, precision
    None -> the training's own (``amp_mode``) for eager, fp32 for the other engines.
    Raises the engine loader's errors (unknown name, not installed, precision the engine
    or device lacks) before any training step."""
    from ..engine.names import canonical, check_engine_device
    if precision is None:
        precision = _AMP_PRECISION[amp_mode] if canonical(engine) == "eager" else "fp32"
    return check_engine_device(engine, precision, device), precision


@contextlib.contextmanager
def forward(model: torch.nn.Module, engine: str, precision: str, device: torch.device,
            micro_batch: int) -> Iterator[Callable]:
    """A callable x [B, C, H, W] -> [B, C, H, W] float32 running ``model``'s current
    weights with ``engine`` (resolved) at ``precision``, for one validation.

    Eager is the module under ``torch.autocast`` at ``precision`` (by default the
    training's own: what validation always ran), as the eager engine runs it, but not
    through ``RHMEngine``: its inference mode would leave inference tensors in the
    module's caches (FESA's polar maps), which a later training step could not save for
    backward. Other engines are an ``RHMEngine`` built from the module in a temporary
    folder.
    """
    if engine == "eager":
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

        def run(x: torch.Tensor) -> torch.Tensor:
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                return model(x).float()
        yield run
        return
    from ..engine import RHMEngine
    with tempfile.TemporaryDirectory(prefix="frerec_val_engine_") as tmp:
        yield RHMEngine(model, engine, precision, device, micro_batch=micro_batch,
                        cache_dir=tmp)
