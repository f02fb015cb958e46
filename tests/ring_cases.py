"""Shared inputs of the ring-pooling tests: the map/batch cases and the test spectrum
(tests/ops/test_ring_*.py), and the fast-vs-reference pairs of the emulated CUDA kernels
(tests/toolchain/test_cuda_emulated.py) with their tolerances."""
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
CASE_IDS = ["x".join(map(str, c)) for c in CASES]
# Several row blocks per image and several threads (cpp), many programs (GPU).
LARGE = [(64, 33, 16, 32, 3, 20), (37, 23, 5, 7, 2, 64)]
FLOATS = ("float16", "bfloat16", "float32", "float64")  # every dtype the ring ops take
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
    from frerec_fast.reference.rings import ring_pool, ring_scatter, ring_sector_index

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
    from frerec_fast.reference.rings import ring_pool_amplitude

    outs = []
    for fn in (fused, ring_pool_amplitude):
        re, im = re0.clone().requires_grad_(), im0.clone().requires_grad_()
        out = fn(re, im, idx, n_bins)
        (out * up).sum().backward()
        outs.append((out.detach(), re.grad, im.grad))
    return outs[0], outs[1]
