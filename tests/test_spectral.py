"""SHR and band statistics (SPEC 1-3): every backend against the NumPy oracle."""
import numpy as np
import pytest
import torch

import frerec_fast as ff
from frerec_fast.spectral import high_band_mask
from marks import needs_cpp
import npref

SIZES = [(16, 16), (17, 17), (16, 21), (23, 12), (9, 8)]
BACKENDS = ["torch", pytest.param("cpp", marks=needs_cpp)]


def make_case(b, c, h, w, k, seed, bank_scale=1.0):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    smooth = 0.5 + 0.3 * torch.sin(6 * xx + 3 * yy)
    x = (smooth + 0.2 * torch.rand(b, c, h, w, generator=g)).clamp(0, 1)
    mu_bank = (torch.randn(b, k, c, generator=g) * 0.01) * bank_scale
    sigma_bank = (0.05 + 0.05 * torch.rand(b, k, c, generator=g)) * bank_scale
    eps_mu, eps_sigma = torch.randn(b, c, generator=g), torch.randn(b, c, generator=g)
    return x, mu_bank, sigma_bank, eps_mu, eps_sigma


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("domain", ["complex", "amplitude"])
@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("c", [1, 3])
def test_band_stats_matches_numpy(backend, domain, h, w, c):
    x = make_case(2, c, h, w, 1, seed=h * w + c)[0]
    mu, sigma = ff.band_stats(x, domain=domain, backend=backend)
    ref_mu, ref_sigma = npref.band_stats(x.double().numpy(), 0.5, domain)
    np.testing.assert_allclose(mu.numpy(), ref_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma.numpy(), ref_sigma, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("domain", ["complex", "amplitude"])
@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("c,k", [(1, 1), (3, 1), (1, 200), (3, 200)])
def test_shr_matches_numpy(backend, domain, h, w, c, k):
    args = make_case(2, c, h, w, k, seed=7 * h + w + k)
    out = ff.shr(*args, domain=domain, backend=backend)
    ref = npref.shr(*(a.double().numpy() for a in args), ratio=0.5, domain=domain)
    assert out.dtype == torch.float32 and out.shape == args[0].shape
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("ratio", [0.25, 0.5, 0.8])
def test_shr_other_ratios(backend, ratio):
    args = make_case(1, 1, 20, 18, 5, seed=3)
    out = ff.shr(*args, ratio=ratio, backend=backend)
    ref = npref.shr(*(a.double().numpy() for a in args), ratio=ratio)
    np.testing.assert_allclose(out.numpy(), ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("domain", ["complex", "amplitude"])
@pytest.mark.parametrize("h,w", [(16, 16), (17, 13)])
def test_eps_zero_gives_bank_means(backend, domain, h, w):
    # With eps = 0 the output's high band has exactly the bank mean statistics. The
    # banks are chosen so that no amplitude is clamped at 0, where the identity breaks.
    x, mu_bank, sigma_bank, _, _ = make_case(3, 3, h, w, 200, seed=11)
    mu_s, sigma_s = ff.band_stats(x, domain=domain, backend="torch")
    if domain == "amplitude":
        mu_bank = mu_bank.abs() + (mu_s * 2)[:, None]
        sigma_bank = sigma_bank * 0.1
    zeros = torch.zeros(3, 3)
    out = ff.shr(x, mu_bank, sigma_bank, zeros, zeros, domain=domain, backend=backend)
    mu_o, sigma_o = npref.band_stats(out.double().numpy(), 0.5, domain)
    np.testing.assert_allclose(mu_o, mu_bank.double().mean(1).numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sigma_o, sigma_bank.double().mean(1).numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("domain", ["complex", "amplitude"])
def test_constant_image_sigma_zero(backend, domain):
    # A constant image has an all-zero high band: sigma_s = 0, so the band becomes mu_hat.
    x = torch.full((1, 1, 12, 12), 0.4)
    mu_bank, sigma_bank = torch.full((1, 4, 1), 0.02), torch.full((1, 4, 1), 0.1)
    out = ff.shr(x, mu_bank, sigma_bank, torch.zeros(1, 1), torch.zeros(1, 1), domain=domain,
                 backend=backend)
    ref = npref.shr(x.double().numpy(), mu_bank.numpy(), sigma_bank.numpy(), np.zeros((1, 1)),
                    np.zeros((1, 1)), 0.5, domain)
    assert np.isfinite(out.numpy()).all()
    np.testing.assert_allclose(out.numpy(), ref, atol=2e-6)
    mu, sigma = ff.band_stats(x, domain=domain, backend=backend)
    assert float(sigma) == pytest.approx(0.0, abs=1e-7)


def test_mask_is_hermitian_and_matches_centred_definition():
    for h, w in SIZES:
        m = high_band_mask(h, w, 0.5).numpy()
        centred = npref.centred_high_mask(h, w, 0.5)
        np.testing.assert_array_equal(np.fft.fftshift(m), centred)
        # f -> -f maps the band to itself.
        flipped = np.roll(m[::-1, ::-1], (1, 1), axis=(0, 1))
        np.testing.assert_array_equal(flipped, m)


@pytest.mark.parametrize("backend", BACKENDS)
def test_clear_errors(backend):
    x, mb, sb, em, es = make_case(2, 3, 8, 8, 4, seed=0)
    with pytest.raises(ValueError, match="mu_bank"):
        ff.shr(x, mb[:, :, :1], sb, em, es, backend=backend)
    with pytest.raises(ValueError, match="eps_mu"):
        ff.shr(x, mb, sb, em[:1], es, backend=backend)
    with pytest.raises(ValueError, match="domain"):
        ff.shr(x, mb, sb, em, es, domain="phase", backend=backend)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ff.band_stats(x[0], backend=backend)


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
