"""Inference engines for the RHM: how its forward pass is executed.

"torch" runs the module itself (the reference). "onnxruntime" exports it once to ONNX
(fixed H x W, dynamic batch; the matmul DFT path) and runs an onnxruntime session,
about 3x faster than eager torch on CPU for the shipped model (see the engine
benchmark). Outputs agree with torch to float tolerance, not bit for bit, so the engine
is part of a run's fingerprint.

precision (torch engine only): "fp32" (default, the reference), "bf16" (CPU or CUDA) or
"fp16" (CUDA): the module under ``torch.autocast``, the fast path on tensor-core GPUs.
It changes the output bytes too, so it is part of the fingerprint as well.
"""
from .build import ENGINES, build_engine
from .onnx_engine import OnnxRHM
from .torch_engine import PRECISIONS, AutocastRHM, check_precision

__all__ = ["ENGINES", "PRECISIONS", "AutocastRHM", "OnnxRHM", "build_engine", "check_precision"]
