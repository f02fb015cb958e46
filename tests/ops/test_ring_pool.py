"""ring_pool (method §5, the mean of an amplitude map over each ring/sector bin) and its
gradient: every backend, dtype and device against the float64 NumPy oracle
``ring_oracles`` (analytic gradient) and ``torch.autograd.gradcheck`` in float64.

Through ``backends.resolve``. The bin map (``ring_sector_index``, or a random map) is an
input. Triton on CPU runs in the interpreter: the large maps run with --device=cuda."""
import pytest
import torch

import ring_oracles as ro
from frerec_fast.reference import ring_sector_index
from ring_cases import CASE_IDS, CASES, FLOATS, LARGE

from .support import (assert_close, assert_same_bytes, backend_params, f64, get_op, interpreted,
                      known_gap, small_only)
from .tolerances import tol

OP = "ring_pool"
BACKENDS = backend_params()


def data(b, h, wh, n_bins, dtype, device, seed):
    g = torch.Generator().manual_seed(seed)
    amp = torch.rand(b, h, wh, generator=g).to(dtype).to(device)
    up = torch.randn(b, n_bins, generator=g).to(dtype).to(device)
    return amp, up


def forward_backward(fn, amp, idx, n_bins, up):
    a = amp.clone().requires_grad_()
    out = fn(a, idx, n_bins)
    (out * up).sum().backward()
    return out.detach(), a.grad


def check(fn, amp, idx, n_bins, up, what=""):
    out, grad = forward_backward(fn, amp, idx, n_bins, up)
    assert out.dtype == grad.dtype == amp.dtype and out.device == amp.device
    assert out.shape == (amp.shape[0], n_bins) and grad.shape == amp.shape
    i = idx.cpu().numpy()
    assert_close(out, ro.pool(f64(amp), i, n_bins), tol(OP, amp.dtype), f"pool {what}")
    want_grad = torch.from_numpy(ro.pool_grad(f64(up), i, n_bins)).to(amp.dtype)  # rounded once
    assert_close(grad, want_grad, tol("ring_pool.grad", amp.dtype), f"pool grad {what}")
    empty = torch.from_numpy(ro.counts(i, n_bins) == 0)
    assert (out.cpu()[:, empty] == 0).all(), f"{what}: an empty bin is not 0"
    return out


@pytest.mark.dtypes(*FLOATS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_oracle(backend, dtype, case, device):
    fn = get_op(OP, backend, device)
    h, wh, n_rings, n_sectors, b, _ = case
    n_bins = n_rings * n_sectors
    idx = ring_sector_index(h, wh, n_rings, n_sectors, device=device)
    amp, up = data(b, h, wh, n_bins, dtype, device, seed=h * 100 + wh)
    out = check(fn, amp, idx, n_bins, up, f"{case} {dtype}")
    with torch.no_grad():  # the inference path (no autograd) gives the same numbers
        assert_same_bytes(fn(amp, idx, n_bins), out, "pool without autograd")


@pytest.mark.dtypes("float32", "float64")
@pytest.mark.parametrize("case", LARGE, ids=["x".join(map(str, c)) for c in LARGE])
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_maps(backend, dtype, case, device):
    # Several row blocks per image and several threads (cpp), many programs (GPU).
    fn = get_op(OP, backend, device)
    small_only(backend, device, "a large map")
    h, wh, n_rings, n_sectors, b, _ = case
    n_bins = n_rings * n_sectors
    idx = ring_sector_index(h, wh, n_rings, n_sectors, device=device)
    amp, up = data(b, h, wh, n_bins, dtype, device, seed=h * 100 + wh)
    check(fn, amp, idx, n_bins, up, f"{case} {dtype}")


@pytest.mark.dtypes("uint8")
@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_amplitude_is_refused(backend, dtype, device):
    fn = get_op(OP, backend, device)
    idx = ring_sector_index(8, 5, 4, 6, device=device)
    with pytest.raises(TypeError, match="amplitude must be a float tensor"):
        fn(torch.ones(2, 8, 5, dtype=dtype, device=device), idx, 24)


@pytest.mark.parametrize("backend", BACKENDS)
def test_arbitrary_map_unused_bins_and_layouts(backend, device):
    # Not a ring map: random bins, n_bins larger than the largest id (trailing empty
    # bins); non-contiguous amplitude and map; far more bins than positions.
    fn = get_op(OP, backend, device)
    g = torch.Generator().manual_seed(11)
    idx = torch.randint(0, 9, (5, 7), generator=g).to(device)
    amp, up = data(3, 5, 7, 13, torch.float32, device, seed=1)
    out = check(fn, amp, idx, 13, up, "random map")
    assert (out[:, 9:] == 0).all()
    amp_t = torch.rand(3, 7, 5, generator=g).to(device).transpose(1, 2)
    idx_t = idx.t().contiguous().t()
    assert not amp_t.is_contiguous() and not idx_t.is_contiguous()
    check(fn, amp_t, idx_t, 13, up, "transposed amplitude and map")
    check(fn, amp[::2], idx, 13, up[::2], "batch-strided amplitude")
    if not interpreted(backend, device):  # 1e5 bins: 1e5 programs in the interpreter
        big = torch.randint(0, 100_000, (5, 7), generator=g).to(device)
        amp, up = data(4, 5, 7, 100_000, torch.float32, device, seed=2)
        check(fn, amp, big, 100_000, up, "1e5 bins")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend, device):
    # Tiny on purpose: every gradcheck perturbation is a kernel launch (interpreted on CPU).
    fn = get_op(OP, backend, device)
    interp = interpreted(backend, device)
    h, wh = (4, 3) if interp else (6, 4)
    idx = ring_sector_index(h, wh, 2, 3, device=device)
    amp = torch.rand(2, h, wh, dtype=torch.float64, device=device).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: fn(a, idx, 6), (amp,), fast_mode=interp)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend, device):
    # No atomics: two runs (and, on CPU, runs on other thread counts) are bit-identical,
    # forward and backward.
    fn = get_op(OP, backend, device)
    interp = interpreted(backend, device)
    h, wh, rings, sectors = (9, 6, 4, 6) if interp else (96, 49, 16, 32)
    n_bins = rings * sectors
    idx = ring_sector_index(h, wh, rings, sectors, device=device)
    amp, up = data(3, h, wh, n_bins, torch.float32, device, seed=1)
    first = forward_backward(fn, amp, idx, n_bins, up)
    runs = [forward_backward(fn, amp, idx, n_bins, up)]
    if device.type == "cpu" and not interp:
        before = torch.get_num_threads()
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                runs.append(forward_backward(fn, amp, idx, n_bins, up))
        finally:
            torch.set_num_threads(before)
    for run in runs:
        for a, b in zip(first, run):
            assert_same_bytes(a, b, "ring_pool")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, device, request):
    fn = get_op(OP, backend, device)
    idx = ring_sector_index(8, 5, 4, 6, device=device)
    amp = torch.rand(0, 8, 5, device=device, requires_grad=True)
    out = fn(amp, idx, 24)
    assert out.shape == (0, 24)
    out.sum().backward()
    assert amp.grad.shape == (0, 8, 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend, device):
    fn = get_op(OP, backend, device)
    idx = ring_sector_index(8, 5, 4, 6, device=device)
    with pytest.raises(ValueError, match="does not match"):
        fn(torch.rand(2, 8, 4, device=device), idx, 24)
    with pytest.raises(ValueError, match="does not match"):
        fn(torch.rand(8, 5, device=device), idx, 24)
    with pytest.raises(TypeError, match="int64"):
        fn(torch.rand(2, 8, 5, device=device), idx.int(), 24)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bins_outside_the_map_are_refused(backend, device, request):
    fn = get_op(OP, backend, device)
    known_gap(request, backend, ("torch",), "the torch reference does not range-check the "
              "map (scatter_add raises its own RuntimeError)")
    idx = ring_sector_index(8, 5, 4, 6, device=device)  # ids up to 23
    with pytest.raises(ValueError, match="outside"):
        fn(torch.rand(2, 8, 5, device=device), idx, 10)


@pytest.mark.dtypes("float32", "float64")
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_map(backend, dtype, device):
    # 300 x 151 with 512 bins: several row blocks per image (cpp), many programs (GPU).
    fn = get_op(OP, backend, device)
    small_only(backend, device, "a 300x151 map")
    idx = ring_sector_index(300, 151, 16, 32, device=device)
    amp, up = data(3, 300, 151, 512, dtype, device, seed=6)
    check(fn, amp, idx, 512, up, "300x151")


@pytest.mark.triton
def test_triton_many_tiles(device, monkeypatch):
    # 2-bin x 2-lane pooling tiles and 16-position scatter blocks (the backward): many
    # programs, many lane chunks per bin, partial last tiles.
    fn = get_op(OP, "triton", device)
    from frerec_fast.kernels import ring_pool as kring
    monkeypatch.setattr(kring, "FREREC_TRITON_RING_BINS", 2)
    monkeypatch.setattr(kring, "FREREC_TRITON_RING_LANES", 2)
    monkeypatch.setattr(kring, "FREREC_TRITON_RING_SCATTER_BLOCK", 16)
    idx = ring_sector_index(9, 6, 2, 3, device=device)  # 54 positions, 6 bins
    amp, up = data(2, 9, 6, 6, torch.float32, device, seed=12)
    check(fn, amp, idx, 6, up, "tiny tiles")


def test_cpp_binding_checks_the_plan():
    # The compiled functions themselves refuse plans that do not fit (no out-of-range
    # reads or writes even when called directly, past the Python checks).
    get_op(OP, "cpp", torch.device("cpu"))
    from frerec_fast import _ext
    from frerec_fast.fast.ring_plan import ring_plan
    C = _ext.ext()
    plan = ring_plan(ring_sector_index(8, 5, 4, 6), 24)
    re = torch.rand(1, 2, 8, 5)
    with pytest.raises(RuntimeError, match="offsets must run from 0 to 40"):
        C.ring_pool_cpu(re, re, plan.index, plan.offsets.clone()[:11], 10, True, True)
    with pytest.raises(RuntimeError, match="n_bins \\+ 1"):
        C.ring_pool_cpu(re, re, plan.index, plan.offsets, 23, True, True)
    bad = plan.index.clone()
    bad[3] = 99
    with pytest.raises(RuntimeError, match="outside"):
        C.ring_pool_cpu(re, re, bad, plan.offsets, 24, True, True)
    with pytest.raises(RuntimeError, match="entries"):
        C.ring_pool_cpu(torch.rand(1, 2, 8, 4), re, plan.index, plan.offsets, 24, False, True)
    with pytest.raises(RuntimeError, match="int32"):
        C.ring_scatter_cpu(torch.rand(1, 24), plan.index.long(), plan.offsets, 8, 5, False)
    with pytest.raises(RuntimeError, match="float32 or float64"):
        C.ring_pool_cpu(re.half(), re.half(), plan.index, plan.offsets, 24, True, True)
    assert torch.isfinite(C.ring_pool_cpu(re, re, plan.index, plan.offsets, 24, True, True)).all()
