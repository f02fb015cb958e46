"""torchvision, imported with an install hint, also where only a CUDA build of it exists.

PyPI's Linux torchvision wheels are CUDA builds. Beside a CPU-only torch their C++
extension cannot load (it links ``libc10_cuda.so``); torchvision is written to work
without it (``torchvision.extension._has_ops()``), except that its
``_meta_registrations`` registers fake kernels for ``torchvision::nms`` and ``::qnms``
unconditionally, so ``import torchvision`` fails with "operator torchvision::nms does
not exist". In that case only, the two operator schemas (as the extension declares
them, with no kernel) are defined and the import retried: the pure-Python parts used
here (``transforms.v2``, ``models.resnet18``) then work; the detection ops (nms, ...)
still raise if anything calls them. A matching torchvision never takes this path.
"""
from __future__ import annotations

import sys

_LIB = None


def torchvision(purpose: str):
    """Return the torchvision module, or raise ImportError with an install hint."""
    from .deps import need

    what = f"{purpose} in frerec eval"
    try:
        return need("torchvision", what)
    except RuntimeError as e:
        if "torchvision::" not in str(e) or "does not exist" not in str(e):
            raise
    global _LIB
    import torch

    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    if _LIB is None:
        _LIB = torch.library.Library("torchvision", "FRAGMENT")
        for op in ("nms", "qnms"):
            try:
                _LIB.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
            except RuntimeError:
                pass  # already declared
    return need("torchvision", what)
