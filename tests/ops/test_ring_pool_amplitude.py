"""ring_pool_amplitude (method §5, FESA's fused |X|, channel mean and ring/sector mean)
and its gradients in re and im: every backend, dtype and device against the float64
NumPy oracle ``ring_oracles`` (analytic gradients, 0 where X = 0) and
``torch.autograd.gradcheck`` in float64 (away from X = 0)."""
import pytest
import torch

import ring_oracles as ro
from frerec_fast.reference import ring_sector_index
from ring_cases import CASE_IDS, CASES, FLOATS, LARGE, spectrum

from .support import (assert_close, assert_same_bytes, backend_params, f64, get_op, interpreted,
                      known_gap, small_only)
from .tolerances import tol

OP = "ring_pool_amplitude"
BACKENDS = backend_params()


def data(b, c, h, wh, n_bins, dtype, device, seed, zeros=True):
    """re, im [B, C, H, Wh] (every fifth coefficient exactly 0) and an upstream gradient."""
    re, im = spectrum(b, c, h, wh, torch.float32, seed=seed, zeros=zeros)
    up = torch.randn(b, n_bins, generator=torch.Generator().manual_seed(seed + 1))
    return tuple(t.to(dtype).to(device) for t in (re, im, up))


def forward_backward(fn, re0, im0, idx, n_bins, up):
    re, im = re0.clone().requires_grad_(), im0.clone().requires_grad_()
    out = fn(re, im, idx, n_bins)
    (out * up).sum().backward()
    return out.detach(), re.grad, im.grad


def check(fn, re0, im0, idx, n_bins, up, what=""):
    out, g_re, g_im = forward_backward(fn, re0, im0, idx, n_bins, up)
    dt = re0.dtype
    assert out.dtype == g_re.dtype == g_im.dtype == dt and out.device == re0.device
    assert out.shape == (re0.shape[0], n_bins) and g_re.shape == g_im.shape == re0.shape
    i = idx.cpu().numpy()
    assert_close(out, ro.pool_amplitude(f64(re0), f64(im0), i, n_bins), tol(OP, dt),
                 f"pool_amplitude {what}")
    w_re, w_im = ro.pool_amplitude_grad(f64(up), f64(re0), f64(im0), i, n_bins)
    assert_close(g_re, w_re, tol(f"{OP}.grad", dt), f"grad re {what}")
    assert_close(g_im, w_im, tol(f"{OP}.grad", dt), f"grad im {what}")
    zero = (re0 == 0) & (im0 == 0)
    assert (g_re[zero] == 0).all() and (g_im[zero] == 0).all(), f"{what}: gradient at X = 0"
    return out


@pytest.mark.dtypes(*FLOATS)
@pytest.mark.parametrize("case", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_oracle(backend, dtype, case, device):
    fn = get_op(OP, backend, device)
    h, wh, n_rings, n_sectors, b, c = case
    n_bins = n_rings * n_sectors
    idx = ring_sector_index(h, wh, n_rings, n_sectors, device=device)
    re, im, up = data(b, c, h, wh, n_bins, dtype, device, seed=h + 7 * c)
    assert ((re == 0) & (im == 0)).any()
    out = check(fn, re, im, idx, n_bins, up, f"{case} {dtype}")
    with torch.no_grad():  # the inference path (no autograd) gives the same numbers
        assert_same_bytes(fn(re, im, idx, n_bins), out, "pool_amplitude without autograd")


@pytest.mark.dtypes("float32", "float64")
@pytest.mark.parametrize("case", LARGE, ids=["x".join(map(str, c)) for c in LARGE])
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_maps(backend, dtype, case, device):
    # Several row blocks per image and several threads (cpp), many programs (GPU).
    fn = get_op(OP, backend, device)
    small_only(backend, device, "a large map")
    h, wh, n_rings, n_sectors, b, c = case
    n_bins = n_rings * n_sectors
    idx = ring_sector_index(h, wh, n_rings, n_sectors, device=device)
    re, im, up = data(b, c, h, wh, n_bins, dtype, device, seed=h + 7 * c)
    assert ((re == 0) & (im == 0)).any()
    check(fn, re, im, idx, n_bins, up, f"{case} {dtype}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_medium_map_without_zeros(backend, device):
    # 128 x 65, 16 channels, 512 bins: about 16 * 16 terms per bin of float32 amplitudes.
    fn = get_op(OP, backend, device)
    small_only(backend, device, "a 128x65 map of 16 channels")
    idx = ring_sector_index(128, 65, 16, 32, device=device)
    re, im, up = data(2, 16, 128, 65, 512, torch.float32, device, seed=4, zeros=False)
    check(fn, re, im, idx, 512, up, "128x65x16")


@pytest.mark.parametrize("dtype", [torch.uint8, torch.complex64], ids=["uint8", "complex64"])
@pytest.mark.parametrize("backend", BACKENDS)
def test_integer_and_complex_spectra_are_refused(backend, dtype, device):
    fn = get_op(OP, backend, device)
    idx = ring_sector_index(8, 5, 4, 6, device=device)
    z = torch.ones(1, 2, 8, 5, dtype=dtype, device=device)
    with pytest.raises(TypeError, match="re/im must be real float tensors"):
        fn(z, z, idx, 24)


@pytest.mark.parametrize("backend", BACKENDS)
def test_strided_views(backend, device):
    # The .real/.imag views of an rfft2 output (element stride 2), as FESA passes them,
    # give the same bytes as contiguous copies (the matmul DFT path); a transposed
    # spectrum and a channel slice are read through their strides; gradients through the
    # views reach the complex tensor.
    fn = get_op(OP, backend, device)
    x = torch.rand(2, 3, 10, 9, generator=torch.Generator().manual_seed(5)).to(device)
    X = torch.fft.rfft2(x, norm="ortho")
    idx = ring_sector_index(10, 5, 3, 4, device=device)
    i = idx.cpu().numpy()
    assert X.real.stride(-1) == 2
    strided = fn(X.real, X.imag, idx, 12)
    assert_same_bytes(strided, fn(X.real.contiguous(), X.imag.contiguous(), idx, 12),
                      "strided vs contiguous")
    assert_close(strided, ro.pool_amplitude(f64(X.real), f64(X.imag), i, 12), tol(OP, "float32"))
    Xt = X.transpose(2, 3).contiguous().transpose(2, 3)  # column-major planes
    assert Xt.real.stride(-1) != 2
    assert_same_bytes(fn(Xt.real, Xt.imag, idx, 12), strided, "transposed layout")
    Xw = torch.fft.rfft2(torch.rand(2, 7, 10, 9, device=device), norm="ortho")[:, 1:6:2]
    assert_close(fn(Xw.real, Xw.imag, idx, 12),
                 ro.pool_amplitude(f64(Xw.real), f64(Xw.imag), i, 12), tol(OP, "float32"),
                 "channel-strided view")
    Z = X.detach().clone().requires_grad_()
    up = torch.randn(2, 12, device=device)
    (fn(Z.real, Z.imag, idx, 12) * up).sum().backward()
    w_re, w_im = ro.pool_amplitude_grad(f64(up), f64(X.real), f64(X.imag), i, 12)
    assert_close(Z.grad.real, w_re, tol(f"{OP}.grad", "float32"), "grad re through the view")
    assert_close(Z.grad.imag, w_im, tol(f"{OP}.grad", "float32"), "grad im through the view")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradcheck_float64(backend, device):
    # Away from X = 0, where |X| is not differentiable.
    fn = get_op(OP, backend, device)
    interp = interpreted(backend, device)
    h, wh = (4, 3) if interp else (6, 4)
    idx = ring_sector_index(h, wh, 2, 3, device=device)
    kw = dict(dtype=torch.float64, device=device)
    re = (torch.rand(2, 2, h, wh, **kw) + 0.5).requires_grad_()
    im = torch.randn(2, 2, h, wh, **kw).requires_grad_()
    assert torch.autograd.gradcheck(lambda r, i: fn(r, i, idx, 6), (re, im), fast_mode=interp)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend, device):
    # No atomics: two runs (and, on CPU, runs on other thread counts) are bit-identical,
    # forward and backward.
    fn = get_op(OP, backend, device)
    interp = interpreted(backend, device)
    b, c, h, wh, rings, sectors = (2, 3, 24, 13, 4, 8) if interp else (3, 24, 96, 49, 16, 32)
    n_bins = rings * sectors
    idx = ring_sector_index(h, wh, rings, sectors, device=device)
    re, im, up = data(b, c, h, wh, n_bins, torch.float32, device, seed=9)
    first = forward_backward(fn, re, im, idx, n_bins, up)
    runs = [forward_backward(fn, re, im, idx, n_bins, up)]
    if device.type == "cpu" and not interp:
        before = torch.get_num_threads()
        try:
            for threads in (1, 2):
                torch.set_num_threads(threads)
                runs.append(forward_backward(fn, re, im, idx, n_bins, up))
        finally:
            torch.set_num_threads(before)
    for run in runs:
        for a, b_ in zip(first, run):
            assert_same_bytes(a, b_, "ring_pool_amplitude")


@pytest.mark.parametrize("backend", BACKENDS)
def test_no_channels(backend, device, request):
    # The mean over no channel is NaN in every filled bin; empty bins stay 0.
    fn = get_op(OP, backend, device)
    known_gap(request, backend, ("triton",), "the Triton launcher returns zeros for an empty "
              "spectrum instead of the mean of no channel (NaN)")
    idx = ring_sector_index(8, 5, 4, 6, device=device)
    re = torch.rand(2, 0, 8, 5, device=device)
    assert_close(fn(re, re, idx, 30), ro.pool_amplitude(f64(re), f64(re), idx.cpu().numpy(), 30),
                 tol(OP, "float32"), "no channels")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_batch(backend, device, request):
    fn = get_op(OP, backend, device)
    idx = ring_sector_index(8, 5, 4, 6, device=device)
    re = torch.rand(0, 2, 8, 5, device=device, requires_grad=True)
    out = fn(re, re, idx, 24)
    assert out.shape == (0, 24)
    out.sum().backward()
    assert re.grad.shape == (0, 2, 8, 5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend, device):
    fn = get_op(OP, backend, device)
    idx = ring_sector_index(8, 5, 4, 6, device=device)
    with pytest.raises(ValueError, match="must agree"):
        fn(torch.rand(1, 2, 8, 5, device=device), torch.rand(1, 3, 8, 5, device=device), idx, 24)
    with pytest.raises(ValueError, match="must agree"):
        fn(torch.rand(1, 2, 8, 5, device=device), torch.rand(1, 2, 8, 5, device=device).double(),
           idx, 24)
    with pytest.raises(ValueError, match=r"\[B, C, H, Wh\]"):
        fn(torch.rand(2, 8, 5, device=device), torch.rand(2, 8, 5, device=device), idx, 24)
    with pytest.raises(ValueError, match=r"\[B, C, H, Wh\]"):
        fn(torch.rand(1, 2, 8, 4, device=device), torch.rand(1, 2, 8, 4, device=device), idx, 24)
    with pytest.raises(TypeError, match="int64"):
        fn(torch.rand(1, 2, 8, 5, device=device), torch.rand(1, 2, 8, 5, device=device),
           idx.int(), 24)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bins_outside_the_map_are_refused(backend, device, request):
    fn = get_op(OP, backend, device)
    known_gap(request, backend, ("torch",), "the torch reference does not range-check the "
              "map (scatter_add raises its own RuntimeError)")
    idx = ring_sector_index(8, 5, 4, 6, device=device)
    re = torch.rand(1, 2, 8, 5, device=device)
    with pytest.raises(ValueError, match="outside"):
        fn(re, re, idx, 10)


@pytest.mark.triton
def test_triton_many_tiles(device, monkeypatch):
    # 2-bin x 2-lane pooling tiles: many programs, many lane chunks per bin.
    fn = get_op(OP, "triton", device)
    from frerec_fast.kernels import ring_pool as kring
    monkeypatch.setattr(kring, "FREREC_TRITON_RING_BINS", 2)
    monkeypatch.setattr(kring, "FREREC_TRITON_RING_LANES", 2)
    monkeypatch.setattr(kring, "FREREC_TRITON_RING_SCATTER_BLOCK", 16)
    idx = ring_sector_index(9, 6, 2, 3, device=device)
    re, im, up = data(2, 2, 9, 6, 6, torch.float32, device, seed=12)
    check(fn, re, im, idx, 6, up, "tiny tiles")


@pytest.mark.parametrize("size,b,c", [(64, 4, 16), (255, 2, 8)])
@pytest.mark.parametrize("backend", BACKENDS)
def test_realistic_sizes(backend, size, b, c, device):
    # FESA's maps at 64 and 255 pixels with 16 x 32 bins: three runs bit-identical.
    fn = get_op(OP, backend, device)
    small_only(backend, device, f"a {size}x{size // 2 + 1} map")
    wh = size // 2 + 1
    idx = ring_sector_index(size, wh, 16, 32, device=device)
    re, im, _ = data(b, c, size, wh, 512, torch.float32, device, seed=size)
    outs = [fn(re, im, idx, 512) for _ in range(3)]
    for o in outs[1:]:
        assert_same_bytes(outs[0], o, "repeated runs")
    assert_close(outs[0], ro.pool_amplitude(f64(re), f64(im), idx.cpu().numpy(), 512),
                 tol(OP, "float32"), f"{size}x{wh}")
    vals = torch.randn(b, 512, device=device)  # and FESA's way back: a gather, exact
    assert_close(get_op("ring_scatter", backend, device)(vals, idx),
                 ro.scatter(f64(vals), idx.cpu().numpy()), tol("ring_scatter", "float32"))
