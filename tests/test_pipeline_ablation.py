"""calibrate_dir's ablation switch (shr=False: the RHM on the decoded input, paper Table 3)
and the protocol its frequency-gap report names (method §8)."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import frerec_fast as ff
from frerec_fast.cli import summary
from frerec_fast.datasets import real_dir
from frerec_fast.model import RHM, RHMConfig, save_checkpoint
from frerec_fast.pipeline import calibrate_dir
from run_helpers import copy_synth_sample, one_thread  # noqa: F401 - a fixture
from tiny_models import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("ablation")
    ff.build_index(real_dir("train"), root / "idx", progress=False)
    torch.manual_seed(0)
    net = RHM(RHMConfig(**TINY)).eval()
    save_checkpoint(root / "tiny", net)
    copy_synth_sample(root / "src", every=64)
    return root


def _u16(path: Path) -> torch.Tensor:
    return torch.from_numpy(np.asarray(Image.open(path), dtype=np.float64) / 65535.0).float()


def test_no_shr_is_the_model_on_the_decoded_input(work, tmp_path):
    """Each output equals clip(RHM(input)) computed here by hand, with no retrieval."""
    rep = calibrate_dir(work / "src", tmp_path / "out", index=work / "idx",
                        model=work / "tiny.safetensors", device="cpu", shr=False,
                        progress=False, resume=False)
    assert rep["ok"] == len(list((work / "src").rglob("*.png"))) and rep["failed"] == 0
    assert rep["shr"] is False and rep["rhm"] is True
    net = ff.load_rhm(work / "tiny.safetensors")
    for p in sorted((work / "src").rglob("*.png")):
        x = _u16(p)[None, None]
        with torch.inference_mode():
            want = net(x).clamp(0, 1)[0, 0]
        got = _u16(tmp_path / "out" / p.relative_to(work / "src"))
        # 16-bit rounding of the written PNG: half a code step, plus float noise.
        assert (got - want).abs().max() <= 0.6 / 65535


def test_no_shr_differs_from_full_and_has_its_own_fingerprint(work, tmp_path):
    full = calibrate_dir(work / "src", tmp_path / "a", index=work / "idx",
                         model=work / "tiny.safetensors", device="cpu", progress=False)
    bare = calibrate_dir(work / "src", tmp_path / "b", index=work / "idx",
                         model=work / "tiny.safetensors", device="cpu", progress=False,
                         shr=False)
    assert full["ok"] == bare["ok"] == 4 and full["failed"] == bare["failed"] == 0
    assert full["run"] != bare["run"]
    a = sorted((tmp_path / "a").rglob("*.png"))
    b = sorted((tmp_path / "b").rglob("*.png"))
    assert any(x.read_bytes() != y.read_bytes() for x, y in zip(a, b))


def test_no_shr_without_a_model_is_refused(work, tmp_path):
    with pytest.raises(ValueError, match="nothing to compute"):
        calibrate_dir(work / "src", tmp_path / "out", index=work / "idx", model=False,
                      device="cpu", shr=False, progress=False)
    assert not (tmp_path / "out").exists()


def test_report_and_summary_name_the_gap_protocol(work, tmp_path):
    rep = calibrate_dir(work / "src", tmp_path / "out", index=work / "idx", model=False,
                        device="cpu", progress=False)
    assert rep["frequency_gap"]["protocol"].startswith("against raw real")
    text = summary(rep, tmp_path / "out")
    assert "against raw real" in text and "deployed" in text
