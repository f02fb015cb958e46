"""The run's check of the RHM against its index's clean real images (``pipeline/fit.py``,
``report["rhm_fit"]``): its PSNR re-computed in NumPy from the index thumbnails and the
model run directly, and the warning when a model does not fit."""
import logging

import numpy as np
import pytest
import torch

import frerec_fast as ff
from frerec_fast.cli import summary
from frerec_fast.datasets import real_dir
from frerec_fast.model import load_rhm
from frerec_fast.pipeline import calibrate_dir
from frerec_fast.pipeline.fit import SAMPLE, THRESHOLD_DB
from frerec_fast.training.default import default_model_path
from run_helpers import copy_synth_sample, one_thread  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("one_thread")


class Noisy(torch.nn.Module):
    """A stand-in RHM that adds fixed texture of std 0.01 (-40 dB): the b0 failure of
    docs/rhm_quality.md §6, made plain."""

    def forward(self, x):
        g = torch.Generator().manual_seed(0)
        return x + 0.01 * torch.randn(x.shape, generator=g)


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("rhm_fit")
    index = ff.build_index(real_dir("train"), root / "idx", progress=False)
    copy_synth_sample(root / "src", every=128)
    return root, index


RUN = dict(device="cpu", progress=False, engine="eager", backend="torch")


def test_psnr_is_the_models_own_on_the_index_images(work, tmp_path):
    root, index = work
    rep = calibrate_dir(root / "src", tmp_path / "o", index=index, model=default_model_path(),
                        **RUN)
    fit = rep["rhm_fit"]
    # NumPy on the same evenly spaced thumbnails (working size = retrieval size here).
    n = len(index)
    ids = sorted({int(round(i * (n - 1) / (SAMPLE - 1))) for i in range(SAMPLE)})
    x = index.thumbs_at(ids).float()
    with torch.no_grad():
        y = load_rhm(default_model_path())(x).clamp(0, 1)
    xs, ys = x.double().numpy(), y.double().numpy()
    want = np.mean([10 * np.log10(1 / np.mean((a - b) ** 2)) for a, b in zip(xs, ys)])
    assert fit["checked"] == len(ids) == SAMPLE
    assert fit["psnr_db"] == pytest.approx(want, abs=0.05)
    assert fit["fits"] == (want >= THRESHOLD_DB)
    assert fit["lowest_db"] <= fit["psnr_db"]
    assert "pass through" in summary(rep, tmp_path / "o") or "WARNING" in summary(rep, tmp_path / "o")


def test_a_model_that_adds_texture_is_warned_about(work, tmp_path, caplog):
    root, index = work
    with caplog.at_level(logging.WARNING, logger="frerec_fast"):
        rep = calibrate_dir(root / "src", tmp_path / "o", index=index, model=Noisy(), **RUN)
    fit = rep["rhm_fit"]
    assert not fit["fits"]
    # NumPy: the same texture on the same thumbnails, clipped as the run clips.
    n = len(index)
    x = index.thumbs_at(sorted({int(round(i * (n - 1) / (SAMPLE - 1))) for i in range(SAMPLE)}))
    x = x.double().numpy()
    y = np.clip(Noisy()(torch.from_numpy(x).float()).double().numpy(), 0, 1)
    want = np.mean([10 * np.log10(1 / np.mean((a - b) ** 2)) for a, b in zip(x, y)])
    assert fit["psnr_db"] == pytest.approx(want, abs=0.05) and want < 45
    assert any("frerec train REAL OUT --init default" in r.getMessage() for r in caplog.records)
    assert "WARNING: the RHM does not fit" in summary(rep, tmp_path / "o")
    assert rep["ok"] > 0  # a warning, not a refusal: outputs are written as asked


def test_no_rhm_no_check(work, tmp_path):
    root, index = work
    rep = calibrate_dir(root / "src", tmp_path / "o", index=index, model=False, **RUN)
    assert rep["rhm_fit"] is None
