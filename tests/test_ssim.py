"""Paired SSIM (``frerec_fast.reference.ssim.ssim``) against scikit-image (method §4). The ssim_matrix,
ssim_topk and ssim_pairs ops of every backend: tests/ops/test_ssim_*.py."""
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

import frerec_fast as ff


def sk_ssim(a, b):
    return structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0)


def images(n, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 1, h, w, generator=g)
    # Correlated images so SSIM values spread over a useful range.
    return (base * torch.rand(n, 1, 1, 1, generator=g) + 0.5 * torch.rand(n, 1, h, w, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("h,w", [(11, 11), (16, 16), (23, 17), (64, 64)])
def test_paired_ssim_matches_skimage(h, w):
    a, b = images(3, h, w, 1), images(3, h, w, 2)
    ours = ff.ssim(a, b)
    for i in range(3):
        assert ours[i].item() == pytest.approx(sk_ssim(a[i, 0], b[i, 0]), abs=2e-5)


def test_ssim_of_constant_images_is_finite():
    a = torch.full((1, 1, 16, 16), 0.3)
    b = torch.full((1, 1, 16, 16), 0.7)
    ours = ff.ssim(a, b)
    assert torch.isfinite(ours).all()
    # float32 local variances of a flat image cancel to ~1e-7, against C2 = 9e-4.
    assert ours.item() == pytest.approx(sk_ssim(a[0, 0], b[0, 0]), abs=2e-4)
    assert ff.ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)
