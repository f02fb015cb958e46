"""Inference engines for the RHM: how its forward pass is executed.

"torch" runs the module itself (the reference). "onnxruntime" exports it once to ONNX
(fixed H x W, dynamic batch; the matmul DFT path) and runs an onnxruntime session,
about 3x faster than eager torch on CPU for the shipped model (see the engine
benchmark). Outputs agree with torch to float tolerance, not bit for bit, so the engine
is part of a run's fingerprint.
"""
from .onnx_engine import ENGINES, OnnxRHM, build_engine

__all__ = ["ENGINES", "OnnxRHM", "build_engine"]
