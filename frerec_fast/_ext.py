"""Tolerant loading of the compiled extension ``frerec_fast._C``.

A missing or broken binary never breaks ``import frerec_fast``: the torch
backends keep working, and asking for a compiled backend explicitly raises an
error that carries the reason recorded here.
"""
from __future__ import annotations

import logging

from .errors import BackendUnavailable

log = logging.getLogger("frerec_fast")

try:
    from . import _C  # type: ignore[attr-defined]
    LOAD_ERROR: str | None = None
except Exception as e:  # ImportError, or an undefined symbol from an ABI mismatch
    _C = None
    LOAD_ERROR = (f"the C++ extension frerec_fast._C is not available ({type(e).__name__}: {e}); "
                  f"reinstall with `pip install --no-build-isolation -e .` to build it")
    log.debug(LOAD_ERROR)


def has_cpp() -> bool:
    return _C is not None


def has_cuda_ext() -> bool:
    """True when ``_C`` was built with its CUDA kernels (a CUDA torch and nvcc were present)."""
    return _C is not None and bool(getattr(_C, "WITH_CUDA", False))


def ext():
    """The loaded extension module, or a BackendUnavailable error saying why not."""
    if _C is None:
        raise BackendUnavailable(LOAD_ERROR)
    return _C
