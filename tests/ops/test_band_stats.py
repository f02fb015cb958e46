"""band_stats (method §1-2, high-band mean and mean absolute deviation): every backend,
dtype and device against the float64 NumPy oracle ``npref.band_stats``.

Called through the public ``frerec_fast.band_stats(..., backend=)``. Triton on CPU runs
in the interpreter: its cases are the small sizes; the large ones run with
``--device=cuda``."""
import pytest
import torch

import frerec_fast as ff
import npref

from .support import (assert_close, assert_same_bytes, backend_params, f64, interpreted, require,
                      small_only, spectral_case, as_dtype)
from .tolerances import tol

OP = "band_stats"
BACKENDS = backend_params()
DOMAINS = ("complex", "amplitude")
# Odd, even, non-square; the interpreter gets the small ones.
SIZES = [(16, 16), (17, 17), (16, 21), (23, 12), (9, 8), (8, 8), (9, 7), (6, 11)]
SMALL = [(8, 8), (9, 7), (6, 11)]


def check(x, backend, ratio=0.5, domain="complex", what=""):
    mu, sigma = ff.band_stats(x, ratio=ratio, domain=domain, backend=backend)
    assert mu.dtype == sigma.dtype == torch.float32
    assert mu.shape == sigma.shape == x.shape[:2] and mu.device == x.device
    ref_mu, ref_sigma = npref.band_stats(f64(x), ratio, domain)
    t = tol(OP, x.dtype)
    assert_close(mu, ref_mu, t, f"mu {what}")
    assert_close(sigma, ref_sigma, t, f"sigma {what}")
    return mu, sigma


@pytest.mark.dtypes()
@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_oracle(backend, dtype, domain, device):
    require(OP, backend, device)
    # Every dtype on two sizes; every size in float32 below.
    sizes = SMALL if interpreted(backend, device) else [(17, 17), (16, 21)]
    for h, w in sizes:
        for c in (1, 3):
            x = as_dtype(spectral_case(2, c, h, w, 1, seed=h * w + c)[0], dtype).to(device)
            check(x, backend, domain=domain, what=f"{h}x{w} c={c}")


@pytest.mark.dtypes("float32")
@pytest.mark.parametrize("backend", BACKENDS)
def test_all_sizes_one_row_and_column(backend, dtype, device):
    # 1xN and Nx1 images (one frequency row or column), 1x2 (a one-coefficient band).
    require(OP, backend, device)
    sizes = SMALL + [(1, 9), (7, 1), (1, 2)]
    if not interpreted(backend, device):
        sizes = SIZES + sizes[3:]
    for h, w in sizes:
        x = spectral_case(2, 2, h, w, 1, seed=h + 7 * w)[0].to(dtype).to(device)
        for domain in DOMAINS:
            check(x, backend, domain=domain, what=f"{h}x{w} {domain}")


@pytest.mark.dtypes("float32")
@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.8, 1.0])
@pytest.mark.parametrize("backend", BACKENDS)
def test_ratios(backend, dtype, ratio, device):
    # ratio 0: everything is high band; ratio 1 on an even size: only the Nyquist row and
    # column remain (column W/2 is a weight-1 column of the half spectrum).
    require(OP, backend, device)
    sizes = [(10, 8)] if interpreted(backend, device) else [(10, 8), (20, 18), (17, 13)]
    for h, w in sizes:
        x = spectral_case(1, 2, h, w, 1, seed=3)[0].to(dtype).to(device)
        if ratio == 1.0 and h % 2 and w % 2:  # no Nyquist row or column: no band at all
            with pytest.raises(ValueError, match="empty"):
                ff.band_stats(x, ratio=ratio, backend=backend)
            continue
        for domain in DOMAINS:
            check(x, backend, ratio=ratio, domain=domain, what=f"{h}x{w} ratio={ratio}")


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_image_sigma_zero(backend, domain, device):
    # A constant image has an all-zero high band: mu = sigma = 0.
    require(OP, backend, device)
    x = torch.full((1, 1, 12, 12), 0.4, device=device)
    mu, sigma = check(x, backend, domain=domain)
    assert float(sigma) == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_input_unchanged(backend, device):
    require(OP, backend, device)
    x = spectral_case(1, 4, 9, 8, 1, seed=4)[0].to(device)
    views = {"transposed": x.transpose(2, 3), "channel stride": x[:, ::2],
             "row stride": x[:, :, ::2]}
    for name, v in views.items():
        assert not v.is_contiguous()
        before = v.clone()
        check(v, backend, domain="amplitude", what=name)
        assert torch.equal(v, before), f"{name}: the input was modified"


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend, device):
    require(OP, backend, device)
    x = spectral_case(2, 3, 13, 10, 1, seed=5)[0].to(device)
    for domain in DOMAINS:
        first, second = (ff.band_stats(x, domain=domain, backend=backend) for _ in range(2))
        for a, b in zip(first, second):
            assert_same_bytes(a, b, f"band_stats {domain}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, device):
    require(OP, backend, device)
    mu, sigma = ff.band_stats(torch.rand(0, 3, 8, 8, device=device), backend=backend)
    assert mu.shape == sigma.shape == (0, 3) and mu.dtype == torch.float32
    assert mu.device.type == device.type


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend, device):
    require(OP, backend, device)
    x = spectral_case(2, 3, 8, 8, 1, seed=0)[0].to(device)
    with pytest.raises(ValueError, match="empty"):
        ff.band_stats(torch.rand(1, 1, 7, 9, device=device), ratio=1.0, backend=backend)
    with pytest.raises(ValueError, match="empty"):
        ff.band_stats(torch.rand(1, 1, 1, 1, device=device), backend=backend)
    with pytest.raises(ValueError, match="domain"):
        ff.band_stats(x, domain="phase", backend=backend)
    with pytest.raises(ValueError, match="ratio"):
        ff.band_stats(x, ratio=1.5, backend=backend)
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ff.band_stats(x[0], backend=backend)
    with pytest.raises(ValueError, match="at least one channel and one pixel"):
        ff.band_stats(x[:, :, :0], backend=backend)
    bad = x.clone()
    bad[1, 2, 3, 4] = float("nan")
    with pytest.raises(ValueError, match="x contains NaN"):
        ff.band_stats(bad, backend=backend)


@pytest.mark.triton
@pytest.mark.parametrize("domain", DOMAINS)
def test_triton_many_tiles(domain, device, monkeypatch):
    # 16-coefficient tiles: the statistics loop runs many iterations with a partial last
    # tile (9 x 7 = 63 coefficients per plane).
    require(OP, "triton", device)
    from frerec_fast.kernels import shr as kshr
    monkeypatch.setattr(kshr, "FREREC_TRITON_SHR_STATS_BLOCK", 16)
    check(spectral_case(2, 2, 9, 12, 1, seed=21)[0].to(device), "triton", domain=domain)


@pytest.mark.parametrize("domain", DOMAINS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_planes(backend, domain, device):
    # Planes spanning many default (1024-coefficient) tiles, and a batch of 192 planes.
    require(OP, backend, device)
    small_only(backend, device, "a 257x255 plane")
    for b, c, h, w in [(3, 3, 64, 64), (2, 1, 257, 255), (64, 3, 32, 48)]:
        check(spectral_case(b, c, h, w, 1, seed=h + w)[0].to(device), backend, domain=domain,
              what=f"{b}x{c}x{h}x{w}")
