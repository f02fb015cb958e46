"""quality_dirs against NumPy PSNR and scikit-image SSIM on real files."""
import numpy as np
import pytest
from PIL import Image
from skimage.metrics import structural_similarity

from frerec_fast.eval import quality_dirs


def _write(path, a):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.round(a * 65535).astype(np.uint16)).save(path)


def test_quality_matches_independent_metrics(tmp_path):
    rng = np.random.default_rng(0)
    psnrs, ssims = [], []
    for i in range(3):
        a = rng.random((40, 48))
        b = np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1)
        _write(tmp_path / "in" / "sub" / f"{i}.png", a)
        _write(tmp_path / "out" / "sub" / f"{i}.png", b)
        qa = np.round(a * 65535) / 65535  # what the files hold
        qb = np.round(b * 65535) / 65535
        psnrs.append(10 * np.log10(1 / np.mean((qa - qb) ** 2)))
        ssims.append(structural_similarity(qb, qa, gaussian_weights=True, sigma=1.5,
                                           use_sample_covariance=False, data_range=1))
    q = quality_dirs(tmp_path / "in", tmp_path / "out")
    assert q["n"] == 3
    assert q["psnr"] == pytest.approx(np.mean(psnrs), abs=1e-3)
    assert q["ssim"] == pytest.approx(np.mean(ssims), abs=1e-4)


def test_quality_refuses_mismatched_dirs(tmp_path):
    _write(tmp_path / "in" / "a.png", np.zeros((16, 16)))
    _write(tmp_path / "out" / "b.png", np.zeros((16, 16)))
    with pytest.raises(ValueError, match="same images"):
        quality_dirs(tmp_path / "in", tmp_path / "out")
