"""ring_scatter (method §5, each frequency takes its bin's value) and its gradient (the
bin sums of the upstream gradient): every backend, dtype and device against the float64
NumPy oracle ``ring_oracles`` and ``torch.autograd.gradcheck`` in float64.

The forward is a gather: bit-exact. The backward is a sum per bin, checked against the
bound of a floating-point sum (relative to the sum of |terms|)."""
import pytest
import torch

import ring_oracles as ro
from frerec_fast.reference import ring_sector_index
from ring_cases import CASE_IDS, CASES, FLOATS, LARGE

from .support import (assert_close, assert_same_bytes, assert_sum_close, backend_params, f64,
                      get_op, interpreted, known_gap, small_only)
from .tolerances import tol

OP = "ring_scatter"
BACKENDS = backend_params()


def data(b, h, wh, n_bins, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    vals = torch.randn(b, n_bins, generator=g).to(dtype).to(device)
    up = torch.randn(b, h, wh, generator=g).to(dtype).to(device)
    return vals, up


def forward_backward(fn, vals, idx, up):
    v = vals.clone().requires_grad_()
    out = fn(v, idx)
    (out * up).sum().backward()
    return out.detach(), v.grad


def check(fn, vals, idx, up, what=""):
    out, grad = forward_backward(fn, vals, idx, up)
    n_bins = vals.shape[1]
    assert out.dtype == grad.dtype == vals.dtype and out.device == vals.device
    assert out.shape == (vals.shape[0], *idx.shape) and grad.shape == vals.shape
    i = idx.cpu().numpy()
    assert_close(out, ro.scatter(f64(vals), i), tol(OP, vals.dtype), f"scatter {what}")
    want, abs_sum = ro.scatter_grad(f64(up), i, n_bins)
    assert_sum_close(grad, want, abs_sum, tol("ring_scatter.grad", vals.dtype),
                     f"scatter grad {what}")
    return out


@pytest.mark.dtypes(*FLOATS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_oracle(backend, dtype, case, device):
    fn = get_op(OP, backend, device)
    h, wh, n_rings, n_sectors, b, _ = case
    idx = ring_sector_index(h, wh, n_rings, n_sectors, device=device)
    vals, up = data(b, h, wh, n_rings * n_sectors, dtype, device, seed=h * 100 + wh)
    out = check(fn, vals, idx, up, f"{case} {dtype}")
    with torch.no_grad():
        assert_same_bytes(fn(vals, idx), out, "scatter without autograd")


@pytest.mark.dtypes("float32", "float64")
@pytest.mark.parametrize("case", LARGE, ids=["x".join(map(str, c)) for c in LARGE])
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_maps(backend, dtype, case, device):
    # Several row blocks per image and several threads (cpp), many programs (GPU).
    fn = get_op(OP, backend, device)
    small_only(backend, device, "a large map")
    h, wh, n_rings, n_sectors, b, _ = case
    idx = ring_sector_index(h, wh, n_rings, n_sectors, device=device)
    vals, up = data(b, h, wh, n_rings * n_sectors, dtype, device, seed=h * 100 + wh)
    check(fn, vals, idx, up, f"{case} {dtype}")


@pytest.mark.dtypes("uint8")
@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_values_are_refused(backend, dtype, device):
    fn = get_op(OP, backend, device)
    idx = ring_sector_index(8, 5, 4, 6, device=device)
    with pytest.raises(TypeError, match="values must be a float tensor"):
        fn(torch.ones(2, 24, dtype=dtype, device=device), idx)


@pytest.mark.parametrize("backend", BACKENDS)
def test_arbitrary_map_and_layouts(backend, device):
    # A random map with trailing unused bins; non-contiguous values and map.
    fn = get_op(OP, backend, device)
    g = torch.Generator().manual_seed(11)
    idx = torch.randint(0, 9, (5, 7), generator=g).to(device)
    vals, up = data(3, 5, 7, 13, torch.float32, device, seed=1)
    check(fn, vals, idx, up, "random map")
    vals_t = torch.randn(13, 3, generator=g).to(device).t()
    idx_t = idx.t().contiguous().t()
    assert not vals_t.is_contiguous() and not idx_t.is_contiguous()
    check(fn, vals_t, idx_t, up, "transposed values and map")


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_of_scatter_is_identity_on_populated_bins(backend, device):
    scatter, pool = get_op(OP, backend, device), get_op("ring_pool", backend, device)
    h, wh, rings, sectors = (9, 6, 4, 6) if interpreted(backend, device) else (32, 17, 8, 16)
    idx = ring_sector_index(h, wh, rings, sectors, device=device)
    n_bins = rings * sectors
    vals = torch.randn(2, n_bins, device=device)
    back = pool(scatter(vals, idx), idx, n_bins)
    populated = torch.from_numpy(ro.counts(idx.cpu().numpy(), n_bins) > 0).to(device)
    torch.testing.assert_close(back[:, populated], vals[:, populated])
    assert (back[:, ~populated] == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend, device):
    fn = get_op(OP, backend, device)
    interp = interpreted(backend, device)
    h, wh = (4, 3) if interp else (6, 4)
    idx = ring_sector_index(h, wh, 2, 3, device=device)
    vals = torch.randn(2, 6, dtype=torch.float64, device=device).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: fn(v, idx), (vals,), fast_mode=interp)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend, device):
    fn = get_op(OP, backend, device)
    interp = interpreted(backend, device)
    h, wh, rings, sectors = (9, 6, 4, 6) if interp else (96, 49, 16, 32)
    idx = ring_sector_index(h, wh, rings, sectors, device=device)
    vals, up = data(3, h, wh, rings * sectors, torch.float32, device, seed=1)
    first = forward_backward(fn, vals, idx, up)
    runs = [forward_backward(fn, vals, idx, up)]
    if device.type == "cpu" and not interp:
        before = torch.get_num_threads()
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                runs.append(forward_backward(fn, vals, idx, up))
        finally:
            torch.set_num_threads(before)
    for run in runs:
        for a, b in zip(first, run):
            assert_same_bytes(a, b, "ring_scatter")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, device):
    fn = get_op(OP, backend, device)
    idx = ring_sector_index(8, 5, 4, 6, device=device)
    vals = torch.rand(0, 24, device=device, requires_grad=True)
    out = fn(vals, idx)
    assert out.shape == (0, 8, 5)
    out.sum().backward()
    assert vals.grad.shape == (0, 24)


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend, device):
    fn = get_op(OP, backend, device)
    idx = ring_sector_index(8, 5, 4, 6, device=device)
    with pytest.raises(ValueError, match=r"\[B, n_bins\]"):
        fn(torch.rand(2, 3, 24, device=device), idx)
    with pytest.raises(TypeError, match="int64"):
        fn(torch.rand(2, 24, device=device), idx.int())


@pytest.mark.parametrize("backend", BACKENDS)
def test_bins_outside_the_values_are_refused(backend, device, request):
    fn = get_op(OP, backend, device)
    known_gap(request, backend, ("torch",), "the torch reference does not range-check the "
              "map (index_select raises its own error)")
    idx = ring_sector_index(8, 5, 4, 6, device=device)  # ids up to 23
    with pytest.raises(ValueError, match="outside"):
        fn(torch.rand(2, 10, device=device), idx)


@pytest.mark.dtypes("float32", "float64")
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_map_backward(backend, dtype, device):
    # The backward sums ~100-2000 terms of either sign per bin of a 300 x 151 map.
    fn = get_op(OP, backend, device)
    small_only(backend, device, "a 300x151 map")
    idx = ring_sector_index(300, 151, 16, 32, device=device)
    vals, up = data(3, 300, 151, 512, dtype, device, seed=6)
    check(fn, vals, idx, up, "300x151")


@pytest.mark.triton
def test_triton_many_tiles(device, monkeypatch):
    # 16-position scatter blocks and 2-bin x 2-lane pooling tiles (the backward).
    fn = get_op(OP, "triton", device)
    from frerec_fast.kernels import ring_pool as kring
    monkeypatch.setattr(kring, "FREREC_TRITON_RING_BINS", 2)
    monkeypatch.setattr(kring, "FREREC_TRITON_RING_LANES", 2)
    monkeypatch.setattr(kring, "FREREC_TRITON_RING_SCATTER_BLOCK", 16)
    idx = ring_sector_index(9, 6, 2, 3, device=device)
    vals, up = data(2, 9, 6, 6, torch.float32, device, seed=12)
    check(fn, vals, idx, up, "tiny tiles")
