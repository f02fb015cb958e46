"""Ring/sector pooling: the bin map against an independent construction from its documented
definition, pooling and scattering against brute-force loops, and autograd."""
import math

import numpy as np
import pytest
import torch

from frerec_fast.model import ring_pool, ring_scatter, ring_sector_index

SIZES = [(1, 1), (2, 2), (5, 1), (8, 5), (37, 23), (64, 33), (45, 19)]


def reference_index(h, w_half, n_rings, n_sectors, w=None):
    """The documented definition, written per frequency with Python floats."""
    nyquist = w is not None and w % 2 == 0
    fus = [k if k < h - h // 2 else k - h for k in range(h)]  # fftfreq(h) * h
    radius = {(fu, fv): math.hypot(fu, fv) for fu in fus for fv in range(w_half)}
    big_r = max(radius.values())
    out = np.zeros((h, w_half), dtype=np.int64)
    for i, fu in enumerate(fus):
        for fv in range(w_half):
            # Exact ties go to the outer ring / upper sector; 1e-9 absorbs float rounding and
            # is far below the gap between distinct integer-grid radii at these sizes.
            ring = 0 if big_r == 0 else min(math.floor(n_rings * radius[fu, fv] / big_r + 1e-9), n_rings - 1)
            # Even W: column W/2 holds (fu, W/2) ~ (-fu, -W/2): binned by (|fu|, W/2).
            phi = math.atan2(abs(fu) if nyquist and fv == w_half - 1 else fu, fv) % math.pi
            sector = min(math.floor(n_sectors * phi / math.pi + 1e-9), n_sectors - 1)
            out[i, fv] = sector * n_rings + ring
    return out


@pytest.mark.parametrize("h,w_half", SIZES)
@pytest.mark.parametrize("n_rings,n_sectors", [(16, 32), (4, 6), (1, 1), (3, 8)])
def test_index_matches_definition(h, w_half, n_rings, n_sectors):
    got = ring_sector_index(h, w_half, n_rings, n_sectors)
    assert got.dtype == torch.int64 and got.shape == (h, w_half)
    np.testing.assert_array_equal(got.numpy(), reference_index(h, w_half, n_rings, n_sectors))


@pytest.mark.parametrize("h,w", [(8, 8), (37, 44), (64, 64), (2, 2), (9, 7)])
def test_index_with_width_matches_definition_and_is_hermitian(h, w):
    got = ring_sector_index(h, w // 2 + 1, 4, 6, w=w).numpy()
    np.testing.assert_array_equal(got, reference_index(h, w // 2 + 1, 4, 6, w=w))
    # Self-mirrored columns (0, and W/2 for even W): conjugates fu, -fu share a bin.
    for col in ([0, w // 2] if w % 2 == 0 else [0]):
        for fu in range(1, h):
            assert got[fu, col] == got[(h - fu) % h, col], (fu, col)
    with pytest.raises(ValueError, match="w_half"):
        ring_sector_index(h, w // 2 + 2, 4, 6, w=w)


def test_index_properties():
    idx = ring_sector_index(64, 33, 16, 32)
    assert idx[0, 0] == 0                                         # DC: sector 0, ring 0
    ring, sector = idx % 16, idx // 16
    # Every ring and every sector is populated on a realistic grid (no dead half-circle).
    assert set(ring.unique().tolist()) == set(range(16))
    assert set(sector.unique().tolist()) == set(range(32))
    # Conjugate pairs of the fv = 0 column share a bin (the mask stays Hermitian there).
    for fu in range(1, 32):
        assert idx[fu, 0] == idx[64 - fu, 0]
    # Diagonal (k, k): phi = pi/4 exactly on a boundary -> the upper sector 8.
    assert all(sector[k, k] == 8 for k in range(1, 32))
    # The corner (-32, 32) has r = R: clamped into the last ring.
    assert ring[32, 32] == 15


def test_index_cached_and_checked():
    assert ring_sector_index(16, 9, 4, 8) is ring_sector_index(16, 9, 4, 8)
    with pytest.raises(ValueError):
        ring_sector_index(0, 3, 4, 8)


def brute_pool(amp, idx, n_bins):
    b = amp.shape[0]
    out = np.zeros((b, n_bins))
    for k in range(n_bins):
        sel = idx == k
        if sel.any():
            out[:, k] = amp[:, sel].mean(axis=1)
    return out


@pytest.mark.parametrize("h,w_half,n_rings,n_sectors", [(8, 5, 4, 6), (37, 23, 16, 32), (3, 2, 16, 32)])
def test_pool_matches_brute_force(h, w_half, n_rings, n_sectors):
    g = torch.Generator().manual_seed(0)
    amp = torch.rand(3, h, w_half, generator=g)
    idx = ring_sector_index(h, w_half, n_rings, n_sectors)
    n_bins = n_rings * n_sectors
    got = ring_pool(amp, idx, n_bins)
    assert got.shape == (3, n_bins)
    want = brute_pool(amp.double().numpy(), idx.numpy(), n_bins)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6, atol=1e-6)
    empty = np.bincount(idx.numpy().ravel(), minlength=n_bins) == 0
    if h * w_half < n_bins:
        assert empty.any()
    assert (got[:, torch.from_numpy(empty)] == 0).all()


def test_scatter_matches_loop():
    g = torch.Generator().manual_seed(1)
    idx = ring_sector_index(9, 6, 4, 6)
    vals = torch.randn(2, 24, generator=g)
    got = ring_scatter(vals, idx)
    assert got.shape == (2, 9, 6)
    for b in range(2):
        for i in range(9):
            for j in range(6):
                assert got[b, i, j] == vals[b, idx[i, j]]


def test_pool_of_scatter_is_identity_on_populated_bins():
    idx = ring_sector_index(32, 17, 8, 16)
    vals = torch.randn(2, 128)
    back = ring_pool(ring_scatter(vals, idx), idx, 128)
    populated = torch.bincount(idx.reshape(-1), minlength=128) > 0
    torch.testing.assert_close(back[:, populated], vals[:, populated])


def test_gradcheck_pool_and_scatter():
    idx = ring_sector_index(6, 4, 3, 4)
    amp = torch.rand(2, 6, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: ring_pool(a, idx, 12), (amp,))
    vals = torch.randn(2, 12, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda v: ring_scatter(v, idx), (vals,))


def test_bad_inputs_raise():
    idx = ring_sector_index(8, 5, 4, 6)
    with pytest.raises(ValueError):
        ring_pool(torch.rand(2, 8, 4), idx, 24)
    with pytest.raises(TypeError):
        ring_pool(torch.rand(2, 8, 5), idx.int(), 24)
    with pytest.raises(ValueError):
        ring_scatter(torch.rand(2, 3, 24), idx)
