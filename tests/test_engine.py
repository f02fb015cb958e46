"""The onnxruntime RHM engine: a real ONNX export run by a real onnxruntime session,
against the torch module, alone and inside calibrate_dir."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed (pip install 'frerec_fast[onnx]')")
pytest.importorskip("onnx", reason="onnx is not installed (pip install 'frerec_fast[onnx]')")

import frerec_fast as ff
from frerec_fast.datasets import real_dir
from frerec_fast.engine import build_engine
from frerec_fast.model import save_checkpoint
from frerec_fast.pipeline import calibrate_dir
from run_helpers import copy_synth_sample
from tiny_models import trained_tiny


@pytest.mark.parametrize("c", [1, 3])
def test_onnx_engine_matches_torch(tmp_path, c):
    m = trained_tiny(c)
    eng = build_engine(m, "onnxruntime", (64, 64), torch.device("cpu"), cache_dir=tmp_path)
    assert (tmp_path / "rhm.onnx").is_file() and eng.config == m.config
    x = torch.rand(5, c, 64, 64)  # another batch size than exported: the batch is dynamic
    with torch.inference_mode():
        ref = m(x)
    np.testing.assert_allclose(eng(x).numpy(), ref.numpy(), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="64x64"):
        eng(torch.rand(1, c, 32, 32))
    assert build_engine(m, "torch", (64, 64), torch.device("cpu")) is m
    with pytest.raises(ValueError, match="unknown engine"):
        build_engine(m, "tensorrt", (64, 64), torch.device("cpu"))


def test_calibrate_dir_with_onnxruntime_engine(tmp_path):
    src = copy_synth_sample(tmp_path / "src")
    idx = ff.build_index(real_dir("train"), tmp_path / "idx", progress=False)
    save_checkpoint(tmp_path / "m", trained_tiny())
    model = str(tmp_path / "m.safetensors")
    a = calibrate_dir(src, tmp_path / "torch", idx, model=model, device="cpu", k=8, progress=False)
    b = calibrate_dir(src, tmp_path / "ort", idx, model=model, device="cpu", k=8,
                      engine="onnxruntime", progress=False)
    assert a["ok"] == b["ok"] == 8 and b["engine"] == "onnxruntime" and a["engine"] == "torch"
    for p in sorted((tmp_path / "torch").rglob("*.png")):
        q = tmp_path / "ort" / p.relative_to(tmp_path / "torch")
        x = np.asarray(Image.open(p), dtype=np.int64)
        y = np.asarray(Image.open(q), dtype=np.int64)
        assert np.abs(x - y).max() <= 3, p.name  # float tolerance, then 16-bit rounding
    # The engine is part of the fingerprint: resuming the ORT run with torch redoes it.
    c = calibrate_dir(src, tmp_path / "ort", idx, model=model, device="cpu", k=8, progress=False)
    assert c["skipped"] == 0 and c["ok"] == 8
    assert json.loads((tmp_path / "ort" / "frerec_report.json").read_text())["engine"] == "torch"
    with pytest.raises(ValueError, match="unknown engine"):
        calibrate_dir(src, tmp_path / "x", idx, model=model, device="cpu", engine="trt")
