"""RHM, the FreRec denoising auto-encoder (FET-Restormer with FESA), method §5.

config.py (RHMConfig), dft.py (fft / matmul DFT), fesa.py (with the polar pooling ops of
frerec_fast.reference.rings), restormer.py (RHM), loss.py (Eq. 7), checkpoint.py (safetensors), export.py (ONNX).
"""
from .checkpoint import CheckpointError, load_rhm, save_checkpoint
from .config import RHMConfig
from .export import export_onnx
from .loss import rhm_loss
from .restormer import RHM

__all__ = ["RHM", "RHMConfig", "load_rhm", "save_checkpoint", "CheckpointError", "rhm_loss",
           "export_onnx"]
