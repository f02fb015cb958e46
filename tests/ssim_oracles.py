"""Independent SSIM oracles shared by the backend tests (method §4): scikit-image, a float64
NumPy formula, a brute-force top-K sort, and the test image generator. Nothing here
calls frerec_fast's SSIM code."""
import numpy as np
import torch
from skimage.metrics import structural_similarity


def sk_ssim(a, b):
    return structural_similarity(np.asarray(a.cpu(), np.float64), np.asarray(b.cpu(), np.float64),
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0)


def sk_matrix(q, db):
    return np.array([[sk_ssim(q[i, 0], db[j, 0]) for j in range(db.shape[0])]
                     for i in range(q.shape[0])])


def _band64(n):
    """[n - 10, n] float64 valid Gaussian filter (11 taps, sigma 1.5) as a matrix,
    built here from the formula rather than taken from frerec_fast."""
    t = np.arange(11) - 5.0
    g = np.exp(-t ** 2 / (2 * 1.5 ** 2))
    g /= g.sum()
    m = np.zeros((n - 10, n))
    for i in range(n - 10):
        m[i, i:i + 11] = g
    return m


def f64_matrix(q, db):
    """All-pairs SSIM in float64 NumPy (the method §4 formula), as fast as a few matrix
    products so that large cases need not call skimage per pair; checked against
    skimage in test_f64_reference_matches_skimage. q: [Q,1,h,w], db: [N,1,h,w] -> [Q, N]."""
    x = np.asarray(q.cpu()[:, 0], np.float64)
    y = np.asarray(db.cpu()[:, 0], np.float64)
    bv, bh = _band64(x.shape[-2]), _band64(x.shape[-1])

    def filt(a):
        return bv @ a @ bh.T

    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mx, my = filt(x), filt(y)
    vx, vy = filt(x * x) - mx ** 2, filt(y * y) - my ** 2
    out = np.empty((x.shape[0], y.shape[0]))
    for i in range(x.shape[0]):  # one query at a time: [N, h', w'] temporaries only
        cov = filt(x[i] * y) - mx[i] * my
        num = (2 * mx[i] * my + c1) * (2 * cov + c2)
        den = (mx[i] ** 2 + my ** 2 + c1) * (vx[i] + vy + c2)
        out[i] = (num / den).mean(axis=(1, 2))
    return out


def assert_float32_accuracy(m, ref_torch, ref64, floor=1e-6):
    """A fast backend's matrix is as accurate as torch's float32 reference (STYLE 8): its
    largest error against float64 is at most twice torch's plus a small floor. A direct
    backend-vs-torch comparison at 2e-6 would be unfair: each float32 path is ~2e-6 from
    float64 on its own (var = E[y^2] - mu^2 cancels), so the two may differ by twice that."""
    err = np.abs(m.cpu().numpy().astype(np.float64) - ref64).max()
    err_torch = np.abs(ref_torch.cpu().numpy().astype(np.float64) - ref64).max()
    assert err <= 2 * err_torch + floor, (err, err_torch)


def images(n, h, w, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 1, h, w, generator=g)
    # Correlated images so that SSIM values spread over a useful range.
    x = base * torch.rand(n, 1, 1, 1, generator=g) + 0.5 * torch.rand(n, 1, h, w, generator=g)
    return x.clamp(0, 1).to(device)


def brute_topk(scores, k, exclude=None):
    """Sort each row by (-score, index) with NumPy; returns (scores, idx)."""
    s = scores.astype(np.float64)
    if exclude is not None:
        for i, e in enumerate(exclude):
            if e >= 0:
                s[i, e] = -np.inf
    idx = np.stack([np.lexsort((np.arange(s.shape[1]), -row))[:k] for row in s])
    return np.take_along_axis(s, idx, 1), idx
