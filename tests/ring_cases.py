"""Shared inputs of the ring-pooling backend tests (C++, Triton, CUDA vs the torch
reference): the map/batch cases, tolerances and the test spectrum."""
import torch

# (h, w_half, n_rings, n_sectors, batch, channels): odd and non-square maps, 1xN / Nx1 /
# 1x1 maps, a single bin (more positions than one lane chunk), and 16 x 32 = 512 bins on
# a map with fewer positions than bins (empty bins).
CASES = [
    (9, 6, 4, 6, 2, 3),
    (16, 9, 3, 5, 1, 4),
    (1, 7, 3, 4, 3, 2),
    (7, 1, 2, 3, 2, 1),
    (1, 1, 1, 1, 1, 1),
    (12, 4, 1, 1, 2, 2),
    (8, 5, 16, 32, 1, 2),
]
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-6), torch.float64: dict(rtol=1e-12, atol=1e-12)}


def spectrum(b, c, h, w_half, dtype, device="cpu", *, seed, zeros=True):
    """re, im [B, C, H, Wh] as the .real/.imag views of one complex tensor, some X = 0."""
    g = torch.Generator().manual_seed(seed)
    z = torch.complex(torch.randn(b, c, h, w_half, generator=g, dtype=dtype),
                      torch.randn(b, c, h, w_half, generator=g, dtype=dtype))
    if zeros:
        z.view(-1)[:: 5] = 0  # exact zeros: the amplitude's gradient must be 0 there
    z = z.to(device)
    return z.real, z.imag


def close(got, want, dtype=torch.float32):
    assert got.dtype == want.dtype and got.shape == want.shape and got.device == want.device
    torch.testing.assert_close(got, want, **TOL[dtype])


def pool_scatter_pair(pool, scatter, h, w_half, n_rings, n_sectors, b,
                      dtype=torch.float32, device="cpu"):
    """A backend's ring_pool and ring_scatter, and the torch reference's, forward and
    backward on the same random inputs and upstream gradients.

    Returns (fast, ref), each (pool output, grad of the amplitude, scatter output,
    grad of the values).
    """
    from frerec_fast.model.ring_pool import ring_pool, ring_scatter, ring_sector_index

    idx = ring_sector_index(h, w_half, n_rings, n_sectors, device=device)
    n_bins = n_rings * n_sectors
    g = torch.Generator().manual_seed(h * 100 + w_half)
    amp, up_pool, vals, up_scatter = (
        f(*shape, generator=g, dtype=dtype).to(device) for f, shape in (
            (torch.rand, (b, h, w_half)), (torch.randn, (b, n_bins)),
            (torch.randn, (b, n_bins)), (torch.randn, (b, h, w_half))))
    outs = []
    for pool_fn, scatter_fn in ((pool, scatter), (ring_pool, ring_scatter)):
        a, v = amp.clone().requires_grad_(), vals.clone().requires_grad_()
        p, s = pool_fn(a, idx, n_bins), scatter_fn(v, idx)
        (p * up_pool).sum().backward()
        (s * up_scatter).sum().backward()
        outs.append((p.detach(), a.grad, s.detach(), v.grad))
    return outs[0], outs[1]


def amplitude_pool_pair(fused, re0, im0, idx, n_bins, up):
    """A backend's fused ring_pool_amplitude and the torch reference's, forward and
    backward (upstream gradient ``up`` [B, n_bins]) on copies of re0, im0.

    Returns (fast, ref), each (output, grad of re, grad of im).
    """
    from frerec_fast.model.fesa import ring_pool_amplitude

    outs = []
    for fn in (fused, ring_pool_amplitude):
        re, im = re0.clone().requires_grad_(), im0.clone().requires_grad_()
        out = fn(re, im, idx, n_bins)
        (out * up).sum().backward()
        outs.append((out.detach(), re.grad, im.grad))
    return outs[0], outs[1]


def gradcheck_ring_ops(fns, h, w_half, batch, channels, device="cpu", fast_mode=False):
    """gradcheck (float64) of a backend's ring_pool, ring_scatter and fused
    ring_pool_amplitude on an [h, w_half] map of 2 rings x 3 sectors (6 bins)."""
    from frerec_fast.model.ring_pool import ring_sector_index

    idx = ring_sector_index(h, w_half, 2, 3, device=device)
    kw = dict(dtype=torch.float64, device=device)
    amp = torch.rand(batch, h, w_half, **kw).requires_grad_()
    assert torch.autograd.gradcheck(lambda a: fns["ring_pool"](a, idx, 6), (amp,))
    vals = torch.randn(2, 6, **kw).requires_grad_()
    assert torch.autograd.gradcheck(lambda v: fns["ring_scatter"](v, idx), (vals,))
    # Away from X = 0 (where |X| is not differentiable) the fused op checks too.
    re = (torch.rand(2, channels, h, w_half, **kw) + 0.5).requires_grad_()
    im = torch.randn(2, channels, h, w_half, **kw).requires_grad_()
    assert torch.autograd.gradcheck(lambda r, i: fns["ring_pool_amplitude"](r, i, idx, 6),
                                    (re, im), fast_mode=fast_mode)
    return amp, idx
