"""C++ CPU ring/sector pooling (frerec_fast/fast/ring_pool_cpp.py, csrc/cpu/ring_pool.cpp)
against the torch reference of frerec_fast/model/ring_pool.py and model/fesa.py, forward
and backward. Skipped, with the build hint, when frerec_fast._C is not built."""
import pytest
import torch

import frerec_fast.backends as backends
from frerec_fast.fast.ring_plan import ring_plan
from frerec_fast.model import fesa as fesa_mod
from frerec_fast.model.fesa import FrequencyBranch, ring_pool_amplitude, set_ring_backend
from frerec_fast.model.ring_pool import ring_pool, ring_scatter, ring_sector_index
from marks import needs_cpp
from ring_cases import CASES as BASE_CASES, amplitude_pool_pair, close as _close, pool_scatter_pair
from ring_cases import gradcheck_ring_ops, spectrum as _spectrum

pytestmark = needs_cpp

# The shared cases plus maps large enough to split into several row blocks per image
# and to run on several threads.
CASES = BASE_CASES + [
    (64, 33, 16, 32, 3, 20),
    (37, 23, 5, 7, 2, 64),
]


def _fns():
    return {op: backends.resolve(op, "cpp", "cpu")
            for op in ("ring_pool", "ring_scatter", "ring_pool_amplitude")}


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("h,w_half,n_rings,n_sectors,b,c", CASES)
def test_pool_and_scatter_forward_backward(h, w_half, n_rings, n_sectors, b, c, dtype):
    fns = _fns()
    fast, ref = pool_scatter_pair(fns["ring_pool"], fns["ring_scatter"], h, w_half, n_rings,
                                  n_sectors, b, dtype)
    for got, want in zip(fast, ref):
        _close(got, want, dtype)
    outs = {"cpp": fast, "ref": ref}
    # Scatter is a pure gather, and the pool's backward a gather of grad / count: exact.
    assert torch.equal(outs["cpp"][2], outs["ref"][2])
    assert torch.equal(outs["cpp"][1], outs["ref"][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("h,w_half,n_rings,n_sectors,b,c", CASES)
def test_fused_amplitude_pool(h, w_half, n_rings, n_sectors, b, c, dtype):
    fns = _fns()
    idx = ring_sector_index(h, w_half, n_rings, n_sectors)
    n_bins = n_rings * n_sectors
    re0, im0 = _spectrum(b, c, h, w_half, dtype, seed=h + 7 * c)
    up = torch.randn(b, n_bins, generator=torch.Generator().manual_seed(3), dtype=dtype)
    fast, ref = amplitude_pool_pair(fns["ring_pool_amplitude"], re0, im0, idx, n_bins, up)
    res = {"cpp": fast, "ref": ref}
    for got, want in zip(res["cpp"], res["ref"]):
        _close(got, want, dtype)
    zero = (re0 == 0) & (im0 == 0)
    assert zero.any() and (res["cpp"][1][zero] == 0).all() and (res["cpp"][2][zero] == 0).all()
    # Without autograd (the inference path) the same numbers.
    with torch.no_grad():
        assert torch.equal(fns["ring_pool_amplitude"](re0, im0, idx, n_bins), res["cpp"][0])


def test_fused_reads_strided_views():
    # The .real/.imag views of an rfft2 output (element stride 2), as FESA passes them,
    # separate contiguous tensors (the matmul DFT path) and other layouts (a transposed
    # spectrum, a channel slice) give the same result, forward and backward.
    fns = _fns()
    x = torch.rand(2, 3, 10, 9, generator=torch.Generator().manual_seed(5))
    X = torch.fft.rfft2(x, norm="ortho")
    idx = ring_sector_index(10, 5, 3, 4)
    pool = fns["ring_pool_amplitude"]
    assert X.real.stride(-1) == 2
    strided = pool(X.real, X.imag, idx, 12)
    assert torch.equal(strided, pool(X.real.contiguous(), X.imag.contiguous(), idx, 12))
    _close(strided, ring_pool_amplitude(X.real, X.imag, idx, 12))
    Xt = X.transpose(2, 3).contiguous().transpose(2, 3)                 # column-major planes
    assert Xt.real.stride(-1) != 2
    assert torch.equal(pool(Xt.real, Xt.imag, idx, 12), strided)
    Xw = torch.fft.rfft2(torch.rand(2, 7, 10, 9), norm="ortho")[:, 1:6:2]  # channel stride
    _close(pool(Xw.real, Xw.imag, idx, 12), ring_pool_amplitude(Xw.real, Xw.imag, idx, 12))
    # Gradients through the views reach the complex tensor as the reference's do.
    grads = []
    for fn in (pool, ring_pool_amplitude):
        Z = X.detach().clone().requires_grad_()
        (fn(Z.real, Z.imag, idx, 12) ** 2).sum().backward()
        grads.append(Z.grad)
    _close(grads[0], grads[1])


def test_arbitrary_index_map_and_unused_bins():
    # Not a ring map: random bins, n_bins larger than the largest id (trailing empty bins).
    fns = _fns()
    g = torch.Generator().manual_seed(11)
    idx = torch.randint(0, 9, (5, 7), generator=g)
    amp = torch.rand(3, 5, 7, generator=g)
    got = fns["ring_pool"](amp, idx, 13)
    _close(got, ring_pool(amp, idx, 13))
    assert (got[:, 9:] == 0).all()
    vals = torch.randn(3, 13, generator=g)
    assert torch.equal(fns["ring_scatter"](vals, idx), ring_scatter(vals, idx))
    # A non-contiguous amplitude (a transposed-back view) is read through its strides.
    amp_t = torch.rand(3, 7, 5, generator=g).transpose(1, 2)
    _close(fns["ring_pool"](amp_t, idx, 13), ring_pool(amp_t, idx, 13))
    # A non-contiguous values tensor for the scatter.
    vals_t = torch.randn(13, 3, generator=g).t()
    assert torch.equal(fns["ring_scatter"](vals_t, idx), ring_scatter(vals_t, idx))
    # Far more bins than positions (the kernels' private bins must not grow with B * n_bins
    # beyond the output's own size).
    big = torch.randint(0, 100_000, (5, 7), generator=g)
    amp = torch.rand(4, 5, 7, generator=g)
    _close(fns["ring_pool"](amp, big, 100_000), ring_pool(amp, big, 100_000))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_large_single_channel_map(dtype):
    # ring_pool (and ring_scatter's backward) on a map that splits into several row blocks.
    fns = _fns()
    idx = ring_sector_index(300, 151, 16, 32)
    g = torch.Generator().manual_seed(6)
    amp = torch.rand(3, 300, 151, generator=g, dtype=dtype)
    _close(fns["ring_pool"](amp, idx, 512), ring_pool(amp, idx, 512), dtype)
    # The scatter's backward sums ~100-2000 terms of either sign per bin: compare with the
    # reference in float64 (the C++ sums in double; torch's float32 scatter_add is the
    # less accurate of the two there).
    v = torch.randn(3, 512, dtype=dtype, requires_grad=True)
    up = torch.randn(3, 300, 151, generator=g, dtype=dtype)
    (fns["ring_scatter"](v, idx) * up).sum().backward()
    vr = v.detach().double().requires_grad_()
    (ring_scatter(vr, idx) * up.double()).sum().backward()
    _close(v.grad, vr.grad.to(dtype), dtype)


def test_gradcheck_float64():
    gradcheck_ring_ops(_fns(), 6, 4, batch=2, channels=3)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision_inputs(dtype):
    # Computed in float32, returned in the input dtype (as the reference returns).
    fns = _fns()
    idx = ring_sector_index(16, 9, 3, 5)
    amp = torch.rand(2, 16, 9, generator=torch.Generator().manual_seed(2)).to(dtype)
    got = fns["ring_pool"](amp, idx, 15)
    assert got.dtype == dtype
    torch.testing.assert_close(got, ring_pool(amp.float(), idx, 15).to(dtype))
    re, im = _spectrum(2, 3, 16, 9, torch.float32, seed=1)
    got = fns["ring_pool_amplitude"](re.to(dtype), im.to(dtype), idx, 15)
    assert got.dtype == dtype
    want = ring_pool_amplitude(re.to(dtype).float(), im.to(dtype).float(), idx, 15).to(dtype)
    torch.testing.assert_close(got, want)
    vals = torch.randn(2, 15).to(dtype).requires_grad_()
    s = fns["ring_scatter"](vals, idx)
    assert s.dtype == dtype and torch.equal(s, ring_scatter(vals.detach(), idx))
    s.float().sum().backward()
    assert vals.grad.dtype == dtype


@pytest.mark.parametrize("threads", [1, 2])
def test_deterministic(threads):
    # No atomics, and a work partition fixed by the shape: two runs, and runs on different
    # thread counts, are bit-identical, forward and backward.
    fns = _fns()
    idx = ring_sector_index(96, 49, 16, 32)
    re0, im0 = _spectrum(3, 24, 96, 49, torch.float32, seed=9)
    up = torch.randn(3, 512)

    def run():
        re, im = re0.clone().requires_grad_(), im0.clone().requires_grad_()
        out = fns["ring_pool_amplitude"](re, im, idx, 512)
        (out * up).sum().backward()
        v = out.detach().clone().requires_grad_()
        s = fns["ring_scatter"](v, idx)
        (s * s).sum().backward()
        a = torch.rand(3, 96, 49, generator=torch.Generator().manual_seed(1)).requires_grad_()
        p = fns["ring_pool"](a, idx, 512)
        (p * up).sum().backward()
        return out.detach(), re.grad, im.grad, s.detach(), v.grad, p.detach(), a.grad

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        first, second = run(), run()
        torch.set_num_threads(3 - threads)
        other = run()
    finally:
        torch.set_num_threads(before)
    for a, b, c in zip(first, second, other):
        assert torch.equal(a, b) and torch.equal(a, c)


def test_matches_a_double_precision_oracle():
    # The float32 result is at least as close to a float64 computation as torch's is
    # (the C++ sums bins in double).
    fns = _fns()
    idx = ring_sector_index(128, 65, 16, 32)
    re, im = _spectrum(2, 16, 128, 65, torch.float32, seed=4, zeros=False)
    oracle = ring_pool_amplitude(re.double(), im.double(), idx, 512)
    err_cpp = (fns["ring_pool_amplitude"](re, im, idx, 512).double() - oracle).abs().max()
    err_torch = (ring_pool_amplitude(re, im, idx, 512).double() - oracle).abs().max()
    assert err_cpp <= 2 * err_torch + 1e-7


def test_errors_are_clear():
    fns = _fns()
    idx = ring_sector_index(8, 5, 4, 6)
    with pytest.raises(ValueError, match="does not match"):
        fns["ring_pool"](torch.rand(2, 8, 4), idx, 24)
    with pytest.raises(TypeError, match="int64"):
        fns["ring_pool"](torch.rand(2, 8, 5), idx.int(), 24)
    with pytest.raises(TypeError, match="float"):
        fns["ring_pool"](torch.ones(2, 8, 5, dtype=torch.int32), idx, 24)
    with pytest.raises(ValueError, match=r"\[B, n_bins\]"):
        fns["ring_scatter"](torch.rand(2, 3, 24), idx)
    with pytest.raises(ValueError, match="outside"):
        fns["ring_pool"](torch.rand(2, 8, 5), idx, 10)  # ids up to 23
    with pytest.raises(ValueError, match="outside"):
        fns["ring_scatter"](torch.rand(2, 10), idx)
    with pytest.raises(ValueError, match="must agree"):
        fns["ring_pool_amplitude"](torch.rand(1, 2, 8, 5), torch.rand(1, 3, 8, 5), idx, 24)
    with pytest.raises(ValueError, match="must agree"):
        fns["ring_pool_amplitude"](torch.rand(1, 2, 8, 5), torch.rand(1, 2, 8, 5).double(), idx, 24)
    with pytest.raises(TypeError, match="real float"):
        z = torch.rand(1, 2, 8, 5, dtype=torch.complex64)
        fns["ring_pool_amplitude"](z, z, idx, 24)
    with pytest.raises(ValueError, match=r"\[B, C, H, Wh\]"):
        fns["ring_pool_amplitude"](torch.rand(2, 8, 5), torch.rand(2, 8, 5), idx, 24)


def test_binding_checks_the_plan():
    # The compiled functions themselves refuse plans that do not fit (no out-of-range
    # reads or writes even when called directly).
    from frerec_fast import _ext
    C = _ext.ext()
    idx = ring_sector_index(8, 5, 4, 6)
    plan = ring_plan(idx, 24)
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


def test_cuda_tensors_are_refused_by_name():
    # Only reachable with a GPU; on CPU the dispatch table already refuses the device.
    why = backends.unavailable_reason("ring_pool_amplitude", "cpp", "cuda")
    assert why and "cpu" in why


def test_empty_inputs():
    fns = _fns()
    idx = ring_sector_index(8, 5, 4, 6)
    assert fns["ring_pool"](torch.rand(0, 8, 5), idx, 24).shape == (0, 24)
    assert fns["ring_scatter"](torch.rand(0, 24), idx).shape == (0, 8, 5)
    re = torch.rand(0, 2, 8, 5)
    assert fns["ring_pool_amplitude"](re, re, idx, 24).shape == (0, 24)
    # No channels: the mean over none is NaN in every filled bin, as the reference's.
    re = torch.rand(2, 0, 8, 5)
    got, want = fns["ring_pool_amplitude"](re, re, idx, 24), ring_pool_amplitude(re, re, idx, 24)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())


# ---------------------------------------------------------------- dispatch and FESA


def test_dispatch_and_auto_order():
    for op in ("ring_pool", "ring_scatter", "ring_pool_amplitude"):
        assert "cpp" in backends.available(op, "cpu")
        assert backends.resolve_name(op, "auto", "cpu") == "cpp"
    from frerec_fast.fast import ring_pool_cpp
    assert backends.resolve("ring_pool_amplitude", "auto", "cpu") is ring_pool_cpp.ring_pool_amplitude


def _branch(backend, seed=0, dim=4):
    torch.manual_seed(seed)
    return FrequencyBranch(dim, n_rings=3, n_sectors=5, backend=backend)


@pytest.mark.parametrize("size", [(9, 10), (16, 16), (1, 7)])
def test_frequency_branch_cpp_matches_torch(size):
    x = torch.rand(2, 4, *size, generator=torch.Generator().manual_seed(1))
    outs = []
    for name in ("torch", "cpp"):
        m = _branch(name)
        xi = x.clone().requires_grad_()
        y = m(xi)
        y.square().sum().backward()
        outs.append((y.detach(), xi.grad, m.gate.weight.grad, m.value.weight.grad))
    for got, want in zip(outs[1], outs[0]):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_model_forward_cpp_matches_torch():
    from frerec_fast.model import RHM, RHMConfig
    torch.manual_seed(0)
    m = RHM(RHMConfig(dim=8, blocks=(1, 1, 1, 1), heads=(1, 1, 2, 2), refinement=1)).eval()
    x = torch.rand(2, 1, 37, 45, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = set_ring_backend(m, "cpp")(x)
        want = set_ring_backend(m, "torch")(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
def test_frequency_branch_uses_torch_while_tracing(monkeypatch):
    # cpp asked for (or auto, which is cpp on CPU), but tracing must see the torch ops.
    for backend in ("cpp", "auto"):
        m = _branch(backend).eval()
        x = torch.rand(1, 4, 8, 8)

        def boom(*_a, **_k):
            raise AssertionError("fast ring ops used under tracing")

        monkeypatch.setattr(fesa_mod, "_ring_ops", boom)
        with torch.no_grad():
            traced = torch.jit.trace(m, x, check_trace=False)
        monkeypatch.undo()
        m.backend = "torch"
        with torch.no_grad():
            torch.testing.assert_close(traced(x), m(x))
