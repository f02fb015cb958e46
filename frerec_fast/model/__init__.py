"""RHM, the FreRec denoising auto-encoder (FET-Restormer with FESA), SPEC section 5.

config.py (RHMConfig), ring_pool.py (polar pooling reference op), dft.py (fft / matmul DFT),
fesa.py, restormer.py (RHM), loss.py (Eq. 7), checkpoint.py (safetensors), export.py (ONNX).
"""
from .checkpoint import CheckpointError, load_rhm, save_checkpoint
from .config import RHMConfig
from .export import export_onnx
from .loss import rhm_loss
from .restormer import RHM
from .ring_pool import ring_pool, ring_scatter, ring_sector_index

__all__ = ["RHM", "RHMConfig", "load_rhm", "save_checkpoint", "CheckpointError", "rhm_loss",
           "ring_pool", "ring_scatter", "ring_sector_index", "export_onnx"]
