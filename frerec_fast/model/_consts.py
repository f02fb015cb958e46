"""File modes for atomically written outputs (model checkpoints, ONNX files)."""
from __future__ import annotations

import os


def default_file_mode() -> int:
    """0o666 minus the umask: what open() would give; mkstemp's 0o600 would hide shared outputs."""
    try:  # Linux: read it without the set-and-restore race of os.umask
        with open("/proc/self/status") as f:
            umask = next(int(line.split()[1], 8) for line in f if line.startswith("Umask:"))
    except (OSError, StopIteration, ValueError):
        umask = os.umask(0)
        os.umask(umask)
    return 0o666 & ~umask
