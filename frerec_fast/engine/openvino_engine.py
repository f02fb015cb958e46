"""The OpenVINO engine of the RHM: the exported ONNX graph compiled by OpenVINO's CPU
plugin for one fixed input shape."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..optional import optional_import
from .openvino_rewrite import split_chunked_convs

_HINTS = {"fp32": "f32", "bf16": "bf16"}


def _hint(precision: str) -> str:
    """OpenVINO's inference precision for the ops that run in float. int8 keeps those at
    bf16 where the CPU has it: measured as fast as f32 or faster at no loss of PSNR
    that matters (docs/engines.md); OpenVINO itself defaults to that on such CPUs."""
    if precision == "int8":
        from .names import openvino_has_bf16
        return "bf16" if openvino_has_bf16() else "f32"
    return _HINTS[precision]


class OpenVinoRHM:
    """An RHM ONNX file compiled by OpenVINO for inputs of exactly [batch, C, H, W].

    __call__(x: [batch, C, H, W] float32 CPU tensor) -> [batch, C, H, W] float32.
    precision: "fp32", or "bf16" (CPU with native bf16 units: OpenVINO's inference
    precision hint; the reductions stay float32 inside oneDNN), or "int8": the model
    quantised by NNCF (convolutions and matrix products in int8, calibrated on real
    training slices; ``openvino_int8``), cached in ``int8_dir``, its float ops at bf16
    where the CPU has bf16 units and at f32 elsewhere.

    The shape is made static (``reshape``) on purpose: with a dynamic batch OpenVINO
    picks other kernels, slower, and at bf16 much less accurate (56 dB against eager
    fp32 at 256x256 static, 28.5 dB dynamic; docs/engines.md). One stream and a fixed
    thread count: the same input gives the same bytes.
    """

    def __init__(self, onnx_path: str | Path, config, shape: tuple[int, int, int, int],
                 precision: str = "fp32", threads: int | None = None,
                 cache_dir: str | Path | None = None, int8_dir: str | Path | None = None):
        ov = optional_import("openvino", "the OpenVINO RHM engine")
        self.config, self.shape, self.precision = config, tuple(int(s) for s in shape), precision
        core = ov.Core()
        if precision == "int8":
            from .openvino_int8 import quantized_model
            model = quantized_model(core, onnx_path, self.shape,
                                    int8_dir or Path(onnx_path).parent / "int8")
        else:
            model = core.read_model(str(onnx_path))
            model.reshape({0: list(self.shape)})
            split_chunked_convs(model)  # 1.2-1.4x: no reference-kernel split (see there)
        props = {"INFERENCE_PRECISION_HINT": _hint(precision),
                 "INFERENCE_NUM_THREADS": int(threads or torch.get_num_threads()),
                 "NUM_STREAMS": 1, "PERFORMANCE_HINT": "LATENCY",
                 # ACCURACY would undo the bf16 hint; PERFORMANCE honours it.
                 "EXECUTION_MODE_HINT": "PERFORMANCE",
                 # Pinned OpenVINO threads fight the run's decode and encode threads and
                 # torch's own pool for the same cores (docs/engines.md, threads).
                 "ENABLE_CPU_PINNING": False}
        if cache_dir is not None:  # OpenVINO's own cache of compiled models: seconds saved
            props["CACHE_DIR"] = str(cache_dir)
        self.compiled = core.compile_model(model, "CPU", props)
        self.request = self.compiled.create_infer_request()

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape) != self.shape:
            raise ValueError(f"the OpenVINO engine was compiled for {self.shape}, got "
                             f"{tuple(x.shape)}")
        arr = np.ascontiguousarray(x.detach().float().cpu().numpy())
        y = self.request.infer({0: arr})[0]
        # The request reuses its output buffer on the next call: copy.
        return torch.from_numpy(np.array(y, dtype=np.float32, copy=True)).to(x.device)
