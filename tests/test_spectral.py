"""The band mask, the spectral profile and gap, and PSNR against NumPy (method §1, §8).
The band_stats and shr ops of every backend: tests/ops/test_band_stats.py, test_shr.py."""
import numpy as np
import pytest
import torch

import frerec_fast as ff
from frerec_fast.reference.spectral import high_band_mask
import npref

SIZES = [(16, 16), (17, 17), (16, 21), (23, 12), (9, 8)]


def test_mask_is_hermitian_and_matches_centred_definition():
    for h, w in SIZES:
        m = high_band_mask(h, w, 0.5).numpy()
        centred = npref.centred_high_mask(h, w, 0.5)
        np.testing.assert_array_equal(np.fft.fftshift(m), centred)
        # f -> -f maps the band to itself.
        flipped = np.roll(m[::-1, ::-1], (1, 1), axis=(0, 1))
        np.testing.assert_array_equal(flipped, m)


def test_spectral_profile_and_gap_match_numpy():
    g = torch.Generator().manual_seed(5)
    x = torch.rand(4, 3, 20, 24, generator=g)
    prof = ff.spectral_profile(x).numpy()
    xd = x.double().numpy()
    y = 0.299 * xd[:, 0] + 0.587 * xd[:, 1] + 0.114 * xd[:, 2]
    n_r = min(20, 24) // 2 + 1
    fu = np.fft.fftshift(np.fft.fftfreq(20) * 20)[:, None]
    fv = np.fft.fftshift(np.fft.fftfreq(24) * 24)[None, :]
    rad = np.floor(np.sqrt(fu ** 2 + fv ** 2) + 0.5).astype(int)
    per = []
    for img in y:
        p = np.abs(np.fft.fftshift(np.fft.fft2(img, norm="ortho"))) ** 2
        per.append([np.log10(p[rad == r].mean()) for r in range(n_r)])
    np.testing.assert_allclose(prof, np.mean(per, 0), rtol=1e-10)
    other = prof + np.linspace(0, 1, n_r)
    hi, all_r = ff.frequency_gap(prof, other)
    start = int(np.ceil(0.5 * (n_r - 1)))
    assert hi == pytest.approx(np.linspace(0, 1, n_r)[start:].mean())
    assert all_r == pytest.approx(0.5)


def test_psnr():
    a = torch.zeros(2, 1, 4, 4)
    b = a.clone()
    b[0] += 0.1
    p = ff.psnr(a, b)
    assert p[0].item() == pytest.approx(20.0)
    assert torch.isinf(p[1])
