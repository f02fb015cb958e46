"""ONNX export of a tiny RHM, run in a real onnxruntime session and compared with torch."""
import importlib.util

import numpy as np
import pytest
import torch

from frerec_fast.model import RHM, RHMConfig, export_onnx, rhm_loss

ort = pytest.importorskip("onnxruntime", reason="onnxruntime not installed (pip install onnxruntime); "
                          "the ONNX export path is untested here")
onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install onnx)")

TINY = dict(dim=8, blocks=(1, 1, 1, 1), heads=(1, 1, 2, 2), refinement=1)


def _model(c):
    torch.manual_seed(0)
    m = RHM(RHMConfig(in_channels=c, **TINY)).train()
    x = torch.rand(2, c, 24, 24)
    rhm_loss(m(x), x).backward()  # BatchNorm running stats move off their defaults
    torch.optim.AdamW(m.parameters(), lr=1e-3).step()
    return m.eval()


def _run(path, x):
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(["y"], {"x": x.numpy()})[0]


@pytest.mark.parametrize("c,h,w,opset", [(1, 37, 45, 17), (3, 16, 24, 20)])
def test_export_matches_torch(tmp_path, c, h, w, opset):
    m = _model(c)
    path = export_onnx(m, tmp_path / "rhm.onnx", (1, c, h, w), opset=opset)
    assert m.config.dft == "fft"                      # the caller's model is left as it was
    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    ops = {n.op_type for n in proto.graph.node}
    assert "DFT" not in ops, "the matmul DFT path should avoid the ONNX DFT op"
    x = torch.rand(3, c, h, w)                        # batch 3 though exported with 1
    with torch.no_grad():
        want = m(x).numpy()
    got = _run(path, x)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("onnxscript") is None,
                    reason="onnxscript not installed: the dynamo exporter path is untested here")
def test_dynamo_export_matches_torch(tmp_path):
    m = _model(1)
    # A size no other test uses, so the DFT matrices and ring maps are first built while
    # torch.export traces with fake tensors: they must still be real, cached constants.
    path = export_onnx(m, tmp_path / "rhm_dynamo.onnx", (1, 1, 24, 16), opset=18, dynamo=True)
    x = torch.rand(3, 1, 24, 16)
    with torch.no_grad():
        want = m(x).numpy()
        eager_matmul = m.set_dft("matmul")(x).numpy()  # would fail on a cached fake tensor
    np.testing.assert_allclose(_run(path, x), want, atol=1e-4, rtol=1e-4)
    np.testing.assert_allclose(eager_matmul, want, atol=1e-5, rtol=1e-5)
