"""frerec_fast: a fast inference engine for FreRec, the frequency recalibration of
AI-synthesised medical images (see README.md and the method contract in SPEC)."""
from .backends import BackendUnavailable
from .index import IndexFileError, RealIndex, build_index
from .ops import band_stats, shr, ssim_matrix, ssim_topk
from .spectral import frequency_gap, psnr, spectral_profile
from .ssim import ssim

__version__ = "0.1.0"

__all__ = ["BackendUnavailable", "RealIndex", "build_index", "IndexFileError", "band_stats", "shr", "ssim", "ssim_matrix", "ssim_topk",
           "spectral_profile", "frequency_gap", "psnr", "__version__"]
