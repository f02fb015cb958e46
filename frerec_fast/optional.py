"""Lazy import of optional dependencies with an install hint (the core needs none of them)."""
from __future__ import annotations

import importlib

_HINTS = {"pydicom": "pip install pydicom", "nibabel": "pip install nibabel",
          "onnxruntime": "pip install onnxruntime", "onnx": "pip install onnx",
          "cupy": "pip install cupy-cuda12x (or cupy-cuda13x)", "ray": "pip install 'ray[default]'",
          "tensorrt": "pip install tensorrt-cu13 (needs a CUDA GPU)", "triton": "pip install triton",
          "tqdm": "pip install tqdm"}


def optional_import(name: str, purpose: str):
    """Import an optional dependency, or raise ImportError saying what needs it and how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as e:
        hint = _HINTS.get(name.split(".")[0], f"pip install {name}")
        raise ImportError(f"{name} is needed for {purpose} but is not installed: {hint}") from e


def ray_get(ray, ref):
    """``ray.get`` of an optional Ray, raising a task's or actor's Python exception as
    itself (with the Ray error, which holds the worker's traceback, as its cause) rather
    than wrapped, so callers catch the errors they know (``CheckpointError``, ...)."""
    try:
        return ray.get(ref)
    except ray.exceptions.RayTaskError as e:
        cause = getattr(e, "cause", None)
        if isinstance(cause, Exception):
            raise cause from e
        raise
