"""frerec_fast: a fast inference engine for FreRec, the frequency recalibration of
AI-synthesised medical images (see README.md and the method in docs/method.md)."""
from .errors import BackendUnavailable
from .index import IndexFileError, RealIndex, ShardedIndex, build_index
from .ops import band_stats, shr, ssim_matrix, ssim_topk
from .spectral import frequency_gap, psnr, spectral_profile
from .reference.ssim import ssim

__version__ = "0.1.0"

# Heavier entry points load on first use, so `import frerec_fast` stays quick for the ops.
_LAZY = {"calibrate_dir": ".pipeline", "CalibrateConfig": ".pipeline", "train_rhm": ".training", "load_rhm": ".engine",
         "RHM": ".model", "RHMConfig": ".model", "evaluate": ".evaluation"}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'frerec_fast' has no attribute {name!r}")


__all__ = ["BackendUnavailable", "RealIndex", "ShardedIndex", "build_index", "IndexFileError", "band_stats", "shr", "ssim", "ssim_matrix", "ssim_topk",
           "spectral_profile", "frequency_gap", "psnr", "calibrate_dir", "CalibrateConfig", "train_rhm", "load_rhm", "RHM", "RHMConfig",
           "evaluate", "__version__"]
