"""glibc allocator settings for CPU runs of the RHM (training and inference).

Measured on the project's 2-core EPYC (docs/rhm_quality.md, "CPU time"): with glibc's
defaults, every activation tensor above the dynamic mmap threshold is a fresh ``mmap``
that is unmapped on free, so each training step of the small RHM took about 790k minor
page faults and 1.9 s of kernel time next to 1.1 s of useful work (6.1 s wall on a busy
machine, 2.1 s with the settings below). Inference suffers the same way. Raising the mmap
threshold keeps those blocks in the heap, and a high trim threshold plus top pad stops the
heap from being handed back and re-faulted after every step.

``tune()`` applies this once per process through ``mallopt``: the CLI calls it, and so do
``train_rhm`` and ``calibrate_dir``. It is a no-op off glibc, and ``FREREC_MALLOC=system``
turns it off. The cost: freed memory stays with the process until it exits (its peak
resident size, not more).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger("frerec_fast")

# mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3
SETTINGS = {"mmap_threshold": 1 << 30, "trim_threshold": 1 << 30, "top_pad": 256 << 20}
_state: dict = {}


def tune() -> dict:
    """Apply the settings once; returns what was done ({"applied": bool, "why": str})."""
    if _state:
        return _state
    if os.environ.get("FREREC_MALLOC", "").lower() == "system":
        _state.update(applied=False, why="FREREC_MALLOC=system")
    elif not sys.platform.startswith("linux"):
        _state.update(applied=False, why=f"not glibc ({sys.platform})")
    else:
        try:
            libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
            mallopt = libc.mallopt
        except (OSError, AttributeError) as e:
            _state.update(applied=False, why=f"no mallopt ({e})")
        else:
            params = {"mmap_threshold": _M_MMAP_THRESHOLD, "trim_threshold": _M_TRIM_THRESHOLD,
                      "top_pad": _M_TOP_PAD}
            refused = [name for name, p in params.items() if mallopt(p, SETTINGS[name]) != 1]
            _state.update(applied=not refused,
                          why="mallopt" if not refused else f"mallopt refused {refused}")
    log.debug("allocator: %s", _state)
    return _state
