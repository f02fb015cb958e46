"""Skip markers that separate "not built" from "no GPU"."""
import pytest
import torch


def cpp_built() -> bool:
    from frerec_fast import _ext
    return _ext.has_cpp()


needs_cpp = pytest.mark.skipif(not cpp_built(), reason="C++ extension frerec_fast._C not built "
                               "(install with `pip install --no-build-isolation -e .`)")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="no CUDA GPU visible to torch (GPU-only test)")
