"""The onnxruntime engine of the RHM (see the package docstring)."""
from __future__ import annotations

from pathlib import Path

import torch

from ..optional import optional_import


class OnnxRHM:
    """An RHM exported to ONNX and run by onnxruntime, called like the module.

    __call__(x: [B, C, H, W] float32 torch tensor, H x W = the exported size)
        -> [B, C, H, W] float32 torch tensor on x's device.
    config: the RHMConfig of the exported model. Not an nn.Module (nothing to train).
    """

    def __init__(self, onnx_path: str | Path, config, size: tuple[int, int],
                 device: torch.device, threads: int | None = None):
        ort = optional_import("onnxruntime", "the onnxruntime RHM engine")
        self.config, self.size, self.device = config, tuple(size), torch.device(device)
        opts = ort.SessionOptions()
        # Fixed thread count: reductions split by thread count would change the bytes.
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        # Idle pool threads would otherwise spin for the next call, taking the cores the
        # decode and encode threads of a run need between two micro-batches.
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if self.device.type == "cuda":
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                raise ValueError("engine='onnxruntime' on CUDA needs onnxruntime-gpu "
                                 "(this onnxruntime has only "
                                 f"{', '.join(ort.get_available_providers())}); use engine='torch'")
            providers = [("CUDAExecutionProvider", {"device_id": self.device.index or 0})]
        else:
            providers = ["CPUExecutionProvider"]
        self.session = ort.InferenceSession(str(onnx_path), opts, providers=providers)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"the ONNX engine was built for {self.size[0]}x{self.size[1]} "
                             f"inputs, got {tuple(x.shape)}")
        y = self.session.run(None, {"x": x.detach().float().cpu().contiguous().numpy()})[0]
        return torch.from_numpy(y).to(x.device)
