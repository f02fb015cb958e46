"""build_engine: an RHM module as the engine a run asked for."""
from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import torch

from .onnx_engine import OnnxRHM
from .torch_engine import PRECISIONS, AutocastRHM, check_precision

ENGINES = ("torch", "onnxruntime")


def check_engine_settings(engine: str, precision: str) -> None:
    """Refuse an unknown engine or precision, or a combination that cannot run
    (device-specific checks: ``check_precision``)."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if engine != "torch" and precision != "fp32":
        raise ValueError(f"engine {engine!r} runs fp32 only; precision={precision!r} "
                         "needs engine='torch'")


def build_engine(model, engine: str, size: tuple[int, int], device: torch.device,
                 cache_dir: str | Path | None = None, precision: str = "fp32"):
    """``model`` (an RHM module) as the requested engine for inputs of ``size``.

    engine "torch" returns the module itself at precision "fp32", else an AutocastRHM
    ("bf16"; "fp16" on CUDA); "onnxruntime" exports it (into ``cache_dir``, default a
    fresh temporary folder) and returns an OnnxRHM, which runs fp32 only.
    """
    check_engine_settings(engine, precision)
    check_precision(precision, torch.device(device))
    if model is None:
        return model
    if engine == "torch":
        return model if precision == "fp32" else AutocastRHM(model, precision, device)
    from ..model import export_onnx

    cache = Path(cache_dir) if cache_dir else Path(tempfile.mkdtemp(prefix="frerec_onnx_"))
    with warnings.catch_warnings():
        # The tracer's notes that sizes become constants: by design (fixed H x W graph).
        warnings.simplefilter("ignore")
        path = export_onnx(model, cache / "rhm.onnx", (1, model.config.in_channels, *size))
    return OnnxRHM(path, model.config, size, device)
