"""Ring/sector pooling's bin map against an independent construction from its documented
definition, and the fast backends' cached CSR plan of a map. The ring ops of every
backend: tests/ops/test_ring_pool.py, test_ring_scatter.py, test_ring_pool_amplitude.py."""
import math

import numpy as np
import pytest
import torch

from frerec_fast.fast.ring_plan import ring_plan
from frerec_fast.reference.rings import ring_sector_index

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


def test_plan_is_cached_and_tracks_in_place_edits():
    idx = torch.tensor([[0, 1, 1], [2, 0, 1]])
    p1 = ring_plan(idx, 4)
    assert ring_plan(idx, 4) is p1
    assert p1.offsets.tolist() == [0, 2, 5, 6, 6] and p1.max_count == 3
    assert p1.order.tolist() == [0, 4, 1, 2, 5, 3]          # ascending inside each bin
    idx[0, 0] = 3                                            # in-place edit: a new plan
    p2 = ring_plan(idx, 4)
    assert p2 is not p1 and p2.offsets.tolist() == [0, 1, 4, 5, 6]
    assert ring_plan(idx, 5) is not p2                       # n_bins is part of the key
