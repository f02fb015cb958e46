"""Run-time compilation of the project's ``.cu`` kernels through CuPy (NVRTC).

Used when ``frerec_fast._C`` was built without CUDA (for example against a CPU
torch): the same ``extern "C"`` kernels as the compiled extension, taken from
``csrc/cuda`` in a source checkout or from the copy a wheel ships in
``frerec_fast/_cuda_src``.
"""
from __future__ import annotations

import functools
from pathlib import Path

from ..optional import optional_import


def source_path(name: str) -> Path:
    here = Path(__file__).resolve().parent.parent
    for cand in (here / "_cuda_src" / name, here.parent / "csrc" / "cuda" / name):
        if cand.is_file():
            return cand
    raise FileNotFoundError(f"CUDA source {name} not found next to the package or in csrc/cuda")


@functools.lru_cache(maxsize=None)
def module(name: str):
    """The compiled CuPy RawModule of ``csrc/cuda/<name>``, cached per process."""
    cp = optional_import("cupy", "the CuPy/NVRTC CUDA backend")
    return cp.RawModule(code=source_path(name).read_text(), options=("--std=c++17",))
