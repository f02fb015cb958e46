"""Reduced-precision RHM (engine "torch", precision bf16/fp16): the module under a real
torch.autocast, alone and inside calibrate_dir (bytes, fingerprint, errors)."""
import os
import subprocess
import sys

import pytest
import torch

import frerec_fast as ff
from frerec_fast.datasets import real_dir
from frerec_fast.engine import AutocastRHM, RHMEngine, check_engine_device
from frerec_fast.model import save_checkpoint
from frerec_fast.pipeline import calibrate_dir
from run_helpers import copy_synth_sample, one_thread, png_digests  # noqa: F401
from tiny_models import trained_tiny

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("c", [1, 3])
def test_reduced_precision_is_close_to_fp32_but_not_fp32(device, c):
    """On --device: bf16 (and fp16 on CUDA) against the same module at fp32."""
    m = trained_tiny(c).to(device)
    x = torch.rand(3, c, 64, 64).to(device)
    with torch.inference_mode():
        ref = m(x)
    for precision in ("bf16", "fp16") if device.type == "cuda" else ("bf16",):
        eng = RHMEngine(m, "eager", precision, device)
        assert isinstance(eng.runner(64, 64), AutocastRHM) and eng.config == m.config
        with torch.inference_mode():
            y = eng(x)
        assert y.dtype == torch.float32 and y.shape == x.shape and y.device == x.device
        err = (y - ref).abs().max().item()
        # 8 (bf16) or 11 (fp16) mantissa bits: the residual branch is rounded, the skip
        # path is exact.
        assert 0 < err < 2e-2, (precision, err)
    assert RHMEngine(m, "eager", "fp32", device).runner(64, 64) is m


def test_precision_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown precision"):
        check_engine_device("eager", "int4", CPU)
    with pytest.raises(ValueError, match="does not run precision='int8'.*openvino"):
        check_engine_device("eager", "int8", CPU)
    with pytest.raises(ValueError, match="eager.*on cpu runs fp32, bf16.*fp16"):
        check_engine_device("eager", "fp16", CPU)
    with pytest.raises(ValueError, match="onnxruntime.*does not run precision='bf16'"):
        check_engine_device("onnxruntime", "bf16", CPU)


def test_calibrate_dir_bf16(tmp_path):
    src = copy_synth_sample(tmp_path / "src")
    idx = ff.build_index(real_dir("train"), tmp_path / "idx", progress=False)
    save_checkpoint(tmp_path / "m", trained_tiny())
    common = dict(index=idx, model=str(tmp_path / "m.safetensors"), device="cpu", k=8,
                  progress=False, model_batch=4, engine="eager")
    a = calibrate_dir(src, tmp_path / "a", precision="bf16", batch_size=3, **common)
    b = calibrate_dir(src, tmp_path / "b", precision="bf16", batch_size=16, **common)
    f = calibrate_dir(src, tmp_path / "f", **common)
    assert a["ok"] == b["ok"] == f["ok"] == 8
    assert a["precision"] == "bf16" and f["precision"] == "fp32"
    # Same bytes whatever the batch size; other bytes than fp32 (8 mantissa bits).
    assert png_digests(tmp_path / "a") == png_digests(tmp_path / "b")
    assert png_digests(tmp_path / "a") != png_digests(tmp_path / "f")
    # The precision is in the fingerprint: resuming the bf16 run at fp32 redoes every file.
    c = calibrate_dir(src, tmp_path / "a", **common)
    assert c["skipped"] == 0 and c["ok"] == 8
    assert png_digests(tmp_path / "a") == png_digests(tmp_path / "f")
    d = calibrate_dir(src, tmp_path / "b", precision="bf16", **common)
    assert d["skipped"] == 8
    # The CLI's --precision is the same setting (same bytes at the same thread count).
    cli = [sys.executable, "-m", "frerec_fast.cli", "calibrate", src, tmp_path / "cli",
           "--index", tmp_path / "idx", "--model", tmp_path / "m.safetensors", "--device", "cpu",
           "-k", "8", "--model-batch", "4", "--engine", "eager", "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    run = subprocess.run([*map(str, cli), "--precision", "bf16"], capture_output=True, text=True,
                         env=env)
    assert run.returncode == 0, run.stderr
    assert png_digests(tmp_path / "cli") == png_digests(tmp_path / "b")
    run = subprocess.run([*map(str, cli), "--precision", "fp16"], capture_output=True, text=True,
                         env=env)
    assert run.returncode == 2 and "fp16" in run.stderr and "cpu" in run.stderr
    with pytest.raises(ValueError, match="does not run precision='bf16'"):
        calibrate_dir(src, tmp_path / "x", **{**common, "engine": "onnxruntime"},
                      precision="bf16")
    with pytest.raises(ValueError, match="unknown precision"):
        calibrate_dir(src, tmp_path / "x", precision="half", **common)
