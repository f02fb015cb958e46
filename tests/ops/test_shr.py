"""shr (method §3, Statistic High-frequency Replacement): every backend, dtype and
device against the float64 NumPy oracle ``npref.shr``.

Called through the public ``frerec_fast.shr(..., backend=)``. The dtype applies to the
images; the statistics banks and draws stay float32 (as ``band_stats`` returns them).
Triton on CPU runs in the interpreter: small sizes only there."""
import numpy as np
import pytest
import torch

import frerec_fast as ff
import npref

from .support import (as_dtype, assert_close, assert_same_bytes, backend_params, f64, interpreted,
                      require, small_only, spectral_case)
from .tolerances import tol

OP = "shr"
BACKENDS = backend_params()
DOMAINS = ("complex", "amplitude")
SIZES = [(16, 16), (17, 17), (16, 21), (23, 12), (9, 8), (8, 8), (9, 7), (6, 11),
         (1, 9), (7, 1)]
SMALL = [(8, 8), (9, 7), (6, 11)]


def check(args, backend, ratio=0.5, domain="complex", what=""):
    out = ff.shr(*args, ratio=ratio, domain=domain, backend=backend)
    x = args[0]
    assert out.dtype == torch.float32 and out.shape == x.shape and out.device == x.device
    ref = npref.shr(*(f64(a) for a in args), ratio=ratio, domain=domain)
    assert_close(out, ref, tol(OP, x.dtype), f"x_hat {what}")
    return out


def on(device, args):
    return [a.to(device) for a in args]


@pytest.mark.dtypes()
@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_oracle(backend, dtype, domain, device):
    require(OP, backend, device)
    # Every dtype on two sizes; every size in float32 below.
    sizes = [(9, 7)] if interpreted(backend, device) else [(16, 21), (9, 8)]
    for h, w in sizes:
        for c, k in [(1, 1), (3, 200)]:
            x, *rest = spectral_case(2, c, h, w, k, seed=7 * h + w + k)
            check(on(device, [as_dtype(x, dtype)] + rest), backend, domain=domain,
                  what=f"{h}x{w} c={c} k={k}")


@pytest.mark.dtypes("float32")
@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_sizes_channels_and_bank_sizes(backend, dtype, domain, device):
    # Odd, even, non-square, 1xN and Nx1 images; one or three channels; K = 1 (a bank
    # with no spread: sigma of the bank 0) and K = 200.
    require(OP, backend, device)
    sizes = SMALL if interpreted(backend, device) else SIZES
    cks = [(1, 1), (3, 200)] if interpreted(backend, device) else [(1, 1), (3, 1), (1, 200),
                                                                  (3, 200)]
    for h, w in sizes:
        for c, k in cks:
            check(on(device, spectral_case(2, c, h, w, k, seed=7 * h + w + k)), backend,
                  domain=domain, what=f"{h}x{w} c={c} k={k}")


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.8, 1.0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ratios(backend, ratio, device):
    require(OP, backend, device)
    sizes = [(10, 8)] if interpreted(backend, device) else [(10, 8), (20, 18)]
    for h, w in sizes:
        args = on(device, spectral_case(1, 1, h, w, 5, seed=3))
        for domain in DOMAINS:
            check(args, backend, ratio=ratio, domain=domain, what=f"{h}x{w} ratio={ratio}")


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_eps_zero_gives_bank_means(backend, domain, device):
    # With eps = 0 the output's high band has exactly the bank mean statistics (measured
    # by the oracle). The banks are chosen so that no amplitude is clamped at 0, where
    # the identity breaks.
    require(OP, backend, device)
    sizes = [(9, 10)] if interpreted(backend, device) else [(16, 16), (17, 13)]
    for h, w in sizes:
        x, mu_bank, sigma_bank, _, _ = spectral_case(3, 3, h, w, 50, seed=11)
        if domain == "amplitude":
            mu_s, _ = npref.band_stats(f64(x), 0.5, domain)
            mu_bank = mu_bank.abs() + torch.from_numpy(mu_s * 2).float()[:, None]
            sigma_bank = sigma_bank * 0.1
        zeros = torch.zeros(3, 3)
        out = ff.shr(*on(device, [x, mu_bank, sigma_bank, zeros, zeros]), domain=domain,
                     backend=backend)
        mu_o, sigma_o = npref.band_stats(f64(out), 0.5, domain)
        np.testing.assert_allclose(mu_o, f64(mu_bank).mean(1), rtol=1e-4, atol=1e-6)
        np.testing.assert_allclose(sigma_o, f64(sigma_bank).mean(1), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_image_sigma_zero(backend, domain, device):
    # A constant image has an all-zero high band: sigma_s = 0, so the normalised band is
    # 0 and the band becomes mu_hat (in the amplitude domain with phase 0).
    require(OP, backend, device)
    x = torch.full((1, 1, 12, 12), 0.4)
    args = on(device, [x, torch.full((1, 4, 1), 0.02), torch.full((1, 4, 1), 0.1),
                       torch.zeros(1, 1), torch.zeros(1, 1)])
    out = check(args, backend, domain=domain)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_multi_tile_plane(backend, domain, device):
    # 50 x 40 -> a 50 x 21 half spectrum = 1050 coefficients: two default (1024) tiles.
    require(OP, backend, device)
    check(on(device, spectral_case(1, 1, 50, 40, 3, seed=8)), backend, domain=domain)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_input_unchanged(backend, device):
    require(OP, backend, device)
    x = spectral_case(1, 3, 9, 8, 2, seed=4)[0].to(device)
    xt = x.transpose(2, 3)  # [1, 3, 8, 9], a non-contiguous view
    before = xt.clone()
    rest = on(device, spectral_case(1, 3, 8, 9, 2, seed=5)[1:])
    # Banks as non-contiguous views too ([B, C, K] transposed to [B, K, C]).
    rest[0] = rest[0].transpose(1, 2).contiguous().transpose(1, 2)
    assert not xt.is_contiguous() and not rest[0].is_contiguous()
    check([xt] + rest, backend, domain="amplitude")
    assert torch.equal(xt, before), "the input was modified"


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend, device):
    require(OP, backend, device)
    args = on(device, spectral_case(2, 3, 13, 10, 7, seed=6))
    for domain in DOMAINS:
        a, b = (ff.shr(*args, domain=domain, backend=backend) for _ in range(2))
        assert_same_bytes(a, b, f"shr {domain}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, device):
    require(OP, backend, device)
    args = on(device, spectral_case(0, 3, 8, 8, 4, seed=0))
    out = ff.shr(*args, backend=backend)
    assert out.shape == (0, 3, 8, 8) and out.dtype == torch.float32


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend, device):
    require(OP, backend, device)
    x, mb, sb, em, es = on(device, spectral_case(2, 3, 8, 8, 4, seed=0))
    with pytest.raises(ValueError, match="mu_bank"):
        ff.shr(x, mb[:, :, :1], sb, em, es, backend=backend)
    with pytest.raises(ValueError, match="must have one shape"):
        ff.shr(x, mb, sb[:, :2], em, es, backend=backend)
    with pytest.raises(ValueError, match="eps_mu"):
        ff.shr(x, mb, sb, em[:1], es, backend=backend)
    with pytest.raises(ValueError, match="eps_sigma"):
        ff.shr(x, mb, sb, em, es[:1], backend=backend)
    with pytest.raises(ValueError, match="domain"):
        ff.shr(x, mb, sb, em, es, domain="phase", backend=backend)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ff.shr(x[0], mb, sb, em, es, backend=backend)
    with pytest.raises(ValueError, match="empty"):
        ff.shr(x[:, :, :1, :1], mb, sb, em, es, backend=backend)
    bad = mb.clone()
    bad[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="mu_bank contains NaN or infinite"):
        ff.shr(x, bad, sb, em, es, backend=backend)


@pytest.mark.triton
@pytest.mark.parametrize("domain", DOMAINS)
def test_triton_many_tiles(domain, device, monkeypatch):
    # 16-coefficient tiles: many statistics iterations with a partial last tile, and many
    # replacement programs per plane (9 x 7 = 63 coefficients).
    require(OP, "triton", device)
    from frerec_fast.kernels import shr as kshr
    monkeypatch.setattr(kshr, "FREREC_TRITON_SHR_STATS_BLOCK", 16)
    monkeypatch.setattr(kshr, "FREREC_TRITON_SHR_APPLY_BLOCK", 16)
    check(on(device, spectral_case(2, 2, 9, 12, 7, seed=21)), "triton", domain=domain)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_planes(backend, domain, device):
    # Planes spanning many default tiles, and a batch of 192 planes.
    require(OP, backend, device)
    small_only(backend, device, "a 257x255 plane")
    for b, c, h, w, k in [(3, 3, 64, 64, 200), (2, 1, 257, 255, 20), (64, 3, 32, 48, 5)]:
        check(on(device, spectral_case(b, c, h, w, k, seed=h + w)), backend, domain=domain,
              what=f"{b}x{c}x{h}x{w} k={k}")
