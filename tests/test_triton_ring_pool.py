"""Fast ring/sector pooling (kernels/ring_pool.py, Triton; fast/ring_pool_cuda.py, CUDA)
against the torch reference of frerec_fast/model/ring_pool.py, forward and backward.

Without a GPU the Triton kernels run in the interpreter on CPU tensors (tests/conftest.py
sets TRITON_INTERPRET=1), 500-3300x slower than torch: the shapes here are tiny on
purpose. The CUDA backend's tests skip without a GPU ("no GPU") and, on a GPU, with the
dispatch table's reason when neither the CUDA extension nor CuPy is there ("not built").
``--device=cuda`` runs the Triton tests compiled on a GPU.
"""
import pytest
import torch

import frerec_fast.backends as backends
from frerec_fast import _ext
from frerec_fast.fast.ring_plan import ring_plan
from frerec_fast.model import dft as _dft
from frerec_fast.model import fesa as fesa_mod
from frerec_fast.model.fesa import FrequencyBranch, ring_pool_amplitude, set_ring_backend
from frerec_fast.model.ring_pool import ring_pool, ring_scatter, ring_sector_index
from marks import needs_cuda
from ring_cases import CASES, amplitude_pool_pair, close as _close, pool_scatter_pair
from ring_cases import gradcheck_ring_ops, spectrum as _spectrum

def _device_for(backend, device):
    if backend == "cuda":
        if not torch.cuda.is_available():
            pytest.skip("no CUDA GPU visible to torch (the CUDA backend is GPU-only)")
        return torch.device("cuda")
    return device


@pytest.fixture(params=["triton", "cuda"])
def impl(request, device):
    """(backend name, device, {op: function}), skipped with the dispatch table's reason."""
    backend = request.param
    dev = _device_for(backend, device)
    fns = {}
    for op in ("ring_pool", "ring_scatter", "ring_pool_amplitude"):
        why = backends.unavailable_reason(op, backend, dev.type)
        if why:
            pytest.skip(why)
        fns[op] = backends.resolve(op, backend, dev)
    return backend, dev, fns


@pytest.mark.parametrize("h,w_half,n_rings,n_sectors,b,c", CASES)
def test_pool_and_scatter_forward_backward(impl, h, w_half, n_rings, n_sectors, b, c):
    _, dev, fns = impl
    fast, ref = pool_scatter_pair(fns["ring_pool"], fns["ring_scatter"], h, w_half, n_rings,
                                  n_sectors, b, device=dev)
    for got, want in zip(fast, ref):
        _close(got, want)
    outs = {"fast": fast, "ref": ref}
    # Scatter is a pure gather: exact.
    assert torch.equal(outs["fast"][2], outs["ref"][2])


@pytest.mark.parametrize("h,w_half,n_rings,n_sectors,b,c", CASES)
def test_fused_amplitude_pool(impl, h, w_half, n_rings, n_sectors, b, c):
    _, dev, fns = impl
    idx = ring_sector_index(h, w_half, n_rings, n_sectors, device=dev)
    n_bins = n_rings * n_sectors
    re0, im0 = _spectrum(b, c, h, w_half, torch.float32, dev, seed=h + 7 * c)
    up = torch.randn(b, n_bins, generator=torch.Generator().manual_seed(3)).to(dev)
    fast, ref = amplitude_pool_pair(fns["ring_pool_amplitude"], re0, im0, idx, n_bins, up)
    res = {"fast": fast, "ref": ref}
    for got, want in zip(res["fast"], res["ref"]):
        _close(got, want)
    zero = (re0 == 0) & (im0 == 0)
    assert zero.any() and (res["fast"][1][zero] == 0).all() and (res["fast"][2][zero] == 0).all()


def test_fused_reads_strided_views(impl):
    # The .real/.imag views of an rfft2 output (element stride 2), as FESA passes them,
    # and separate contiguous tensors (the matmul DFT path) give the same result.
    _, dev, fns = impl
    x = torch.rand(2, 3, 10, 9, generator=torch.Generator().manual_seed(5)).to(dev)
    X = torch.fft.rfft2(x, norm="ortho")
    idx = ring_sector_index(10, 5, 3, 4, device=dev)
    strided = fns["ring_pool_amplitude"](X.real, X.imag, idx, 12)
    assert X.real.stride(-1) == 2
    packed = fns["ring_pool_amplitude"](X.real.contiguous(), X.imag.contiguous(), idx, 12)
    assert torch.equal(strided, packed)
    _close(strided, ring_pool_amplitude(X.real, X.imag, idx, 12))


def test_many_tiles_triton(device, monkeypatch):
    # Force 2-bin x 2-lane pooling tiles and 16-position scatter blocks: many programs,
    # many lane chunks per bin, partial last tiles.
    if backends.unavailable_reason("ring_pool", "triton", device.type):
        pytest.skip(backends.unavailable_reason("ring_pool", "triton", device.type))
    from frerec_fast.kernels import ring_pool as kring
    monkeypatch.setattr(kring, "FREREC_TRITON_RING_BINS", 2)
    monkeypatch.setattr(kring, "FREREC_TRITON_RING_LANES", 2)
    monkeypatch.setattr(kring, "FREREC_TRITON_RING_SCATTER_BLOCK", 16)
    idx = ring_sector_index(9, 6, 2, 3, device=device)                 # 54 positions, 6 bins
    re0, im0 = _spectrum(2, 2, 9, 6, torch.float32, device, seed=12)
    up = torch.randn(2, 6).to(device)
    fast, ref = amplitude_pool_pair(kring.ring_pool_amplitude, re0, im0, idx, 6, up)
    res = {"fast": fast, "ref": ref}
    for got, want in zip(res["fast"], res["ref"]):
        _close(got, want)
    vals = torch.randn(2, 6).to(device)
    assert torch.equal(kring.ring_scatter(vals, idx), ring_scatter(vals, idx))


def test_arbitrary_index_map_and_unused_bins(impl):
    # Not a ring map: random bins, n_bins larger than the largest id (trailing empty bins).
    _, dev, fns = impl
    g = torch.Generator().manual_seed(11)
    idx = torch.randint(0, 9, (5, 7), generator=g).to(dev)
    amp = torch.rand(3, 5, 7, generator=g).to(dev)
    got = fns["ring_pool"](amp, idx, 13)
    _close(got, ring_pool(amp, idx, 13))
    assert (got[:, 9:] == 0).all()
    vals = torch.randn(3, 13, generator=g).to(dev)
    assert torch.equal(fns["ring_scatter"](vals, idx), ring_scatter(vals, idx))
    # A non-contiguous amplitude (a transposed-back view) is read through its strides.
    amp_t = torch.rand(3, 7, 5, generator=g).to(dev).transpose(1, 2)
    _close(fns["ring_pool"](amp_t, idx, 13), ring_pool(amp_t, idx, 13))


def test_gradcheck_float64(impl):
    # Tiny on purpose: every gradcheck perturbation is a kernel launch (interpreted on CPU).
    _, dev, fns = impl
    amp, idx = gradcheck_ring_ops(fns, 4, 3, batch=1, channels=2, device=dev, fast_mode=True)
    out = fns["ring_pool"](amp.detach(), idx, 6)
    _close(out, ring_pool(amp.detach(), idx, 6), torch.float64)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(impl, dtype):
    # Accumulated in float32, returned in the input dtype (as the reference returns).
    _, dev, fns = impl
    idx = ring_sector_index(16, 9, 3, 5, device=dev)
    amp = torch.rand(2, 16, 9, generator=torch.Generator().manual_seed(2)).to(dev, dtype)
    got = fns["ring_pool"](amp, idx, 15)
    assert got.dtype == dtype
    want = ring_pool(amp.float(), idx, 15).to(dtype)
    torch.testing.assert_close(got, want)  # torch's default tolerance for the dtype


def test_deterministic(impl):
    # No atomics: two runs are bit-identical, forward and backward.
    _, dev, fns = impl
    idx = ring_sector_index(24, 13, 4, 8, device=dev)
    re0, im0 = _spectrum(2, 3, 24, 13, torch.float32, dev, seed=9)
    up = torch.randn(2, 32).to(dev)
    runs = []
    for _ in range(2):
        re, im = re0.clone().requires_grad_(), im0.clone().requires_grad_()
        out = fns["ring_pool_amplitude"](re, im, idx, 32)
        (out * up).sum().backward()
        v = out.detach().clone().requires_grad_()
        s = fns["ring_scatter"](v, idx)
        (s * s).sum().backward()
        runs.append((out.detach(), re.grad, im.grad, s.detach(), v.grad))
    for a, b in zip(*runs):
        assert torch.equal(a, b)


def test_errors_match_the_reference(impl):
    _, dev, fns = impl
    idx = ring_sector_index(8, 5, 4, 6, device=dev)
    with pytest.raises(ValueError):
        fns["ring_pool"](torch.rand(2, 8, 4, device=dev), idx, 24)
    with pytest.raises(TypeError):
        fns["ring_pool"](torch.rand(2, 8, 5, device=dev), idx.int(), 24)
    with pytest.raises(ValueError):
        fns["ring_scatter"](torch.rand(2, 3, 24, device=dev), idx)
    with pytest.raises(ValueError, match="outside"):
        fns["ring_pool"](torch.rand(2, 8, 5, device=dev), idx, 10)  # ids up to 23
    with pytest.raises(ValueError, match="outside"):
        fns["ring_scatter"](torch.rand(2, 10, device=dev), idx)
    with pytest.raises(ValueError):
        fns["ring_pool_amplitude"](torch.rand(1, 2, 8, 5, device=dev),
                                   torch.rand(1, 3, 8, 5, device=dev), idx, 24)


def test_empty_batch(impl):
    _, dev, fns = impl
    idx = ring_sector_index(8, 5, 4, 6, device=dev)
    assert fns["ring_pool"](torch.rand(0, 8, 5, device=dev), idx, 24).shape == (0, 24)
    assert fns["ring_scatter"](torch.rand(0, 24, device=dev), idx).shape == (0, 8, 5)
    re = torch.rand(0, 2, 8, 5, device=dev)
    assert fns["ring_pool_amplitude"](re, re, idx, 24).shape == (0, 24)


# ---------------------------------------------------------------- plan cache


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


# ---------------------------------------------------------------- dispatch and FESA


def test_dispatch_entries():
    for op in ("ring_pool", "ring_scatter", "ring_pool_amplitude"):
        assert set(backends._TABLE[op]) >= {"torch", "triton", "cuda"}
        # CPU auto: the C++ op when built, else the torch reference (never the Triton
        # interpreter).
        assert backends.resolve_name(op, "auto", "cpu") == ("cpp" if _ext.has_cpp() else "torch")
    assert backends.resolve("ring_pool", "torch", "cpu") is ring_pool
    assert backends.resolve("ring_scatter", "torch", "cpu") is ring_scatter
    why = backends.unavailable_reason("ring_pool", "cuda", "cpu")
    assert why and "cuda" in why


def _branch(backend, seed=0):
    torch.manual_seed(seed)
    return FrequencyBranch(4, n_rings=3, n_sectors=5, backend=backend)


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_frequency_branch_backend_matches_torch(backend, device):
    dev = _device_for(backend, device)
    why = backends.unavailable_reason("ring_pool_amplitude", backend, dev.type)
    if why:
        pytest.skip(why)
    x = torch.rand(2, 4, 9, 10, generator=torch.Generator().manual_seed(1)).to(dev)
    outs = []
    for name in ("torch", backend):
        m = _branch(name).to(dev)
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.square().sum().backward()
        outs.append((y.detach(), xi.grad, m.gate.weight.grad, m.value.weight.grad))
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_frequency_branch_uses_torch_while_tracing(monkeypatch):
    # A fast backend asked for, but tracing (jit / ONNX export) must see the torch ops.
    m = _branch("triton").eval()
    x = torch.rand(1, 4, 8, 8)

    def boom(*_a, **_k):
        raise AssertionError("fast ring ops used under tracing")

    monkeypatch.setattr(fesa_mod, "_ring_ops", boom)
    with torch.no_grad():
        # check_trace=False: the check re-runs the module eagerly, where fast ops are fine.
        traced = torch.jit.trace(m, x, check_trace=False)
    m.backend = "torch"
    with torch.no_grad():
        torch.testing.assert_close(traced(x), m(x))


def test_set_ring_backend():
    m = torch.nn.Sequential(_branch("auto"), _branch("auto"))
    assert set_ring_backend(m, "torch") is m
    assert all(b.backend == "torch" for b in m)
    with pytest.raises(ValueError, match="unknown backend"):
        set_ring_backend(m, "fortran")


def test_explicit_unavailable_backend_raises():
    m = _branch("cuda")
    with pytest.raises(backends.BackendUnavailable):
        m(torch.rand(1, 4, 8, 8))


def test_torch_reference_of_fused_op_is_the_old_composition():
    re, im = _spectrum(2, 3, 8, 5, torch.float32, "cpu", seed=4)
    idx = ring_sector_index(8, 5, 4, 6)
    want = ring_pool(_dft.amplitude(re, im).mean(dim=1), idx, 24)
    assert torch.equal(ring_pool_amplitude(re, im, idx, 24), want)


# ---------------------------------------------------------------- GPU-only sizes


@needs_cuda
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("size,b,c", [(64, 4, 16), (255, 2, 8)])
def test_realistic_sizes_on_gpu(backend, size, b, c):
    why = backends.unavailable_reason("ring_pool_amplitude", backend, "cuda")
    if why:
        pytest.skip(why)
    fn = backends.resolve("ring_pool_amplitude", backend, "cuda")
    scatter = backends.resolve("ring_scatter", backend, "cuda")
    wh = size // 2 + 1
    idx = ring_sector_index(size, wh, 16, 32, device="cuda")
    re, im = _spectrum(b, c, size, wh, torch.float32, "cuda", seed=size)
    outs = [fn(re, im, idx, 512) for _ in range(3)]
    assert all(torch.equal(outs[0], o) for o in outs[1:])
    torch.testing.assert_close(outs[0], ring_pool_amplitude(re, im, idx, 512), rtol=1e-5, atol=1e-6)
    vals = torch.randn(b, 512, device="cuda")
    assert torch.equal(scatter(vals, idx), ring_scatter(vals, idx))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_fused_amplitude_backward_low_precision(dtype):
    """The fused op's backward with half-precision spectra (as under autocast) matches the
    float32 reference's gradient to the input precision."""
    from frerec_fast.model.ring_pool import ring_sector_index
    from frerec_fast.model.fesa import ring_pool_amplitude as ref_fn
    from frerec_fast.kernels.ring_pool import ring_pool_amplitude

    g = torch.Generator().manual_seed(3)
    re32 = torch.randn(2, 3, 8, 5, generator=g)
    im32 = torch.randn(2, 3, 8, 5, generator=g)
    idx = ring_sector_index(8, 5, 3, 4)
    out_grad = torch.randn(2, 12, generator=g)
    re, im = re32.to(dtype).requires_grad_(), im32.to(dtype).requires_grad_()
    (ring_pool_amplitude(re, im, idx, 12).float() * out_grad).sum().backward()
    rr, ii = re32.to(dtype).float().requires_grad_(), im32.to(dtype).float().requires_grad_()
    (ref_fn(rr, ii, idx, 12) * out_grad).sum().backward()
    tol = 1e-2 if dtype == torch.bfloat16 else 2e-3
    torch.testing.assert_close(re.grad.float(), rr.grad, rtol=tol, atol=tol)
    torch.testing.assert_close(im.grad.float(), ii.grad, rtol=tol, atol=tol)
