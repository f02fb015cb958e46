"""ONNX export of RHM through the matmul DFT path (no ONNX `DFT` op; see dft.py, FACTS.md)."""
from __future__ import annotations

import copy
import os
import tempfile
import warnings
from pathlib import Path

import torch

from ..optional import optional_import
from ._consts import default_file_mode
from .fesa import ring_backend, set_ring_backend
from .restormer import RHM


def export_onnx(model: RHM, path: str | os.PathLike, example_shape: tuple[int, int, int, int],
                opset: int = 17, dynamic_batch: bool = True, dynamo: bool = False) -> Path:
    """Export `model` for inputs of `example_shape` = (B, C, H, W) to an ONNX file.

    The graph is fixed to H x W (the DFT matrices and ring map are constants of the size);
    the batch dimension stays dynamic when `dynamic_batch`. The model itself is not changed:
    a copy is switched to the matmul DFT path, the torch reference of the polar pooling
    and eval mode (BatchNorm uses running stats).
    dynamo=False uses the TorchScript-based exporter (deprecated in torch but fast, and it
    needs only `onnx`); dynamo=True uses torch.export and needs `onnxscript` too. Both
    handle opsets 17-20 for this graph. Input name "x", output name "y". Returns the
    written path; the file appears atomically (temp file + os.replace).
    """
    optional_import("onnx", "RHM ONNX export")
    if dynamo:
        optional_import("onnxscript", "RHM ONNX export with dynamo=True")
    b, c, h, w = (int(s) for s in example_shape)
    if dynamo and dynamic_batch:
        b = max(b, 2)  # torch.export specialises a size-1 dim to a constant
    # The graph must hold only standard ops: the torch reference of the polar pooling.
    m = set_ring_backend(copy.deepcopy(model).to("cpu").eval().set_dft("matmul"), "torch")
    dummy = torch.rand(b, c, h, w)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        # Sizes become graph constants by design (fixed H x W): that is what the tracer warns about.
        with torch.no_grad(), ring_backend("torch"), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export",
                                    category=DeprecationWarning)
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
            if dynamo:
                shapes = {"x": {0: torch.export.Dim("batch")}} if dynamic_batch else None
                torch.onnx.export(m, (dummy,), tmp, opset_version=opset, input_names=["x"],
                                  output_names=["y"], dynamo=True, dynamic_shapes=shapes,
                                  verbose=False)
            else:
                axes = {"x": {0: "batch"}, "y": {0: "batch"}} if dynamic_batch else None
                torch.onnx.export(m, (dummy,), tmp, opset_version=opset, input_names=["x"],
                                  output_names=["y"], dynamic_axes=axes, dynamo=False)
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
