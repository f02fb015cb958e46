"""The run's check of the RHM against its index's clean real images (``pipeline/fit.py``,
``report["rhm_fit"]``): its PSNR re-computed in NumPy from the index thumbnails and the
model run directly, the warning when a model does not fit, and what it never does."""
import logging

import numpy as np
import pytest
import torch

import frerec_fast as ff
from frerec_fast.cli import summary
from frerec_fast.datasets import real_dir
from frerec_fast.model import load_rhm
from frerec_fast.pipeline import calibrate_dir
from frerec_fast.pipeline.fit import SAMPLE, THRESHOLD_DB, sample_positions
from frerec_fast.training.default import default_model_path
from run_helpers import copy_synth_sample, one_thread  # noqa: F401 - a fixture

pytestmark = pytest.mark.usefixtures("one_thread")
RUN = dict(device="cpu", progress=False, engine="eager", backend="torch")


def _checker(x: torch.Tensor) -> torch.Tensor:
    """+-0.01 in a pixel checkerboard: a fixed texture at Nyquist, whatever the batching."""
    h, w = x.shape[-2:]
    return 0.01 * (1 - 2 * ((torch.arange(h)[:, None] + torch.arange(w)[None, :]) % 2)).float()


class Textured(torch.nn.Module):
    """A stand-in RHM that paints a fixed texture (the b0 failure of docs/rhm_quality.md
    §6, made plain)."""

    def forward(self, x):
        return x + _checker(x)


class NaNs(torch.nn.Module):
    def forward(self, x):
        return x * float("nan")


def _psnr_np(x: np.ndarray, y: np.ndarray) -> float:
    """Mean over images of 10 log10(1 / MSE) (NumPy, float64)."""
    return float(np.mean([10 * np.log10(1 / np.mean((a - b) ** 2)) for a, b in zip(x, y)]))


def _thumbs(index) -> np.ndarray:
    """The thumbnails the check samples, brute force: every image's foreground share
    computed here, positions by the formula in the docs (first and last included)."""
    n = len(index)
    ids = sorted({i * (n - 1) // (SAMPLE - 1) for i in range(SAMPLE)})
    x = index.thumbs_at(ids).double().numpy().clip(0, 1)
    return x[[(t > 0.1).mean() >= 0.15 for t in x]]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("rhm_fit")
    index = ff.build_index(real_dir("train"), root / "idx", progress=False)
    copy_synth_sample(root / "src", every=128)
    return root, index


def test_sample_positions():
    assert sample_positions(5) == [0, 1, 2, 3, 4]
    assert sample_positions(171) == [i * 170 // 15 for i in range(16)]
    got = sample_positions(10 ** 9)
    assert len(got) == SAMPLE and got[0] == 0 and got[-1] == 10 ** 9 - 1


def test_psnr_is_the_models_own_on_the_index_images(work, tmp_path):
    root, index = work
    rep = calibrate_dir(root / "src", tmp_path / "o", index=index, model=default_model_path(),
                        **RUN)
    fit = rep["rhm_fit"]
    x = _thumbs(index)
    with torch.no_grad():
        y = load_rhm(default_model_path())(torch.from_numpy(x).float()).clamp(0, 1)
    want = _psnr_np(x, y.double().numpy())
    assert fit["checked"] == len(x) == SAMPLE
    assert fit["psnr_db"] == pytest.approx(want, abs=0.05)
    assert fit["fits"] == (want >= THRESHOLD_DB)
    assert fit["lowest_db"] <= fit["psnr_db"]
    line = "pass through at" if fit["fits"] else "does not fit"
    assert line in summary(rep, tmp_path / "o")


def test_a_model_that_adds_texture_is_warned_about(work, tmp_path, caplog):
    root, index = work
    with caplog.at_level(logging.WARNING, logger="frerec_fast"):
        rep = calibrate_dir(root / "src", tmp_path / "o", index=index, model=Textured(), **RUN)
    fit = rep["rhm_fit"]
    x = _thumbs(index)
    y = np.clip(x + _checker(torch.from_numpy(x)).double().numpy(), 0, 1)
    want = _psnr_np(x, y)
    assert want < 45 and fit["psnr_db"] == pytest.approx(want, abs=0.05)
    assert not fit["fits"]
    assert any("frerec train REAL OUT --init default" in r.getMessage() for r in caplog.records)
    assert "WARNING: the RHM does not fit" in summary(rep, tmp_path / "o")
    assert rep["ok"] > 0  # a warning, not a refusal: outputs are written as asked


def test_other_retrieval_size_checks_the_thumbnails_with_the_module(work, tmp_path):
    """Working size 64, thumbnails 32: the check runs the RHM module on the 32x32
    thumbnails (never on thumbnails upsampled to 64, which have no high band)."""
    root, _ = work
    index = ff.build_index(real_dir("train"), tmp_path / "idx32", retrieval_size=32,
                           progress=False)
    rep = calibrate_dir(root / "src", tmp_path / "o", index=index, model=Textured(), **RUN)
    x = _thumbs(index)
    assert x.shape[-1] == 32
    y = np.clip(x + _checker(torch.from_numpy(x)).double().numpy(), 0, 1)
    assert rep["rhm_fit"]["psnr_db"] == pytest.approx(_psnr_np(x, y), abs=0.05)
    assert "approximation" in rep["rhm_fit"]["on"]


def test_non_finite_outputs_do_not_fit(work, tmp_path):
    root, index = work
    rep = calibrate_dir(root / "src", tmp_path / "o", index=index, model=NaNs(), **RUN)
    fit = rep["rhm_fit"]
    assert fit["fits"] is False and fit["psnr_db"] is None and "non-finite" in fit["reason"]
    assert "non-finite outputs" in summary(rep, tmp_path / "o")


def test_switched_off_or_no_rhm_no_check(work, tmp_path):
    root, index = work
    off = calibrate_dir(root / "src", tmp_path / "a", index=index, model=Textured(),
                        fit_check=False, **RUN)
    assert off["rhm_fit"] == {"checked": 0, "skipped": "fit_check=False"}
    rep = calibrate_dir(root / "src", tmp_path / "b", index=index, model=False, **RUN)
    assert rep["rhm_fit"] is None
