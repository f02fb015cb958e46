"""Inference engines for the RHM: how its forward pass is executed.

``load_rhm(path, device, engine, precision)`` returns an ``RHMEngine``, a callable on
[B, C, H, W] batches that builds the chosen engine per input size on first use:

  eager        the module itself (the reference); bf16/fp16 under torch.autocast
  compile      torch.compile (inductor); CUDA graphs on CUDA
  onnxruntime  the module exported to ONNX (matmul DFT), run by onnxruntime (CPU, or
               the CUDA provider of onnxruntime-gpu)
  openvino     the same ONNX graph compiled by OpenVINO for CPU (fp32, bf16; int8
               quantised by NNCF on real training slices, openvino_int8.py)
  tensorrt     the same ONNX graph built into a TensorRT engine (never run here: no
               machine of this project could install TensorRT)
  auto         the fastest installed engine for the device (names.AUTO_ORDER)

Engines other than eager fp32 agree with it to float tolerance, not bit for bit, so
the engine and the precision are part of a run's fingerprint. Measurements and the
choice of "auto": docs/engines.md.
"""
from .loader import MICRO_BATCH, RHMEngine, load_rhm
from .names import (AUTO_ORDER, ENGINES, PRECISIONS, SUPPORTED, canonical, check_engine_device,
                    check_engine_settings)
from .onnx_engine import OnnxRHM
from .torch_engine import AutocastRHM

__all__ = ["AUTO_ORDER", "ENGINES", "MICRO_BATCH", "PRECISIONS", "SUPPORTED", "AutocastRHM",
           "OnnxRHM", "RHMEngine", "canonical", "check_engine_device", "check_engine_settings",
           "load_rhm"]
