"""Triton SSIM matrix and exact top-K (kernels/ssim_topk.py) against scikit-image and a
brute-force NumPy sort (SPEC 4).

Without a GPU the kernels run in the Triton interpreter (tests/conftest.py), where a
16x16 all-pairs block costs about a second: images are 11-17 pixels wide on purpose.
``--device=cuda`` runs the same tests compiled; the ``needs_cuda`` test adds sizes
that span many programs.
"""
import numpy as np
import pytest
import torch

pytest.importorskip("triton")
from skimage.metrics import structural_similarity  # noqa: E402

import frerec_fast as ff  # noqa: E402
from frerec_fast import backends  # noqa: E402
from marks import needs_cuda  # noqa: E402


@pytest.fixture
def tdev(device):
    """The test device, skipped with the dispatch table's reason when Triton cannot run
    there (e.g. CPU tensors on a GPU machine, where the interpreter is not enabled)."""
    why = backends.unavailable_reason("ssim_topk", "triton", device.type)
    if why:
        pytest.skip(why)
    return device


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
    """All-pairs SSIM in float64 NumPy (the SPEC 4 formula), as fast as a few matrix
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
    """The Triton matrix is as accurate as torch's float32 reference (STYLE 8): its
    largest error against float64 is at most twice torch's plus a small floor. A direct
    Triton-vs-torch comparison at 2e-6 would be unfair: each float32 path is ~2e-6 from
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


def test_f64_reference_matches_skimage():
    q, db = images(2, 13, 17, 11), images(3, 13, 17, 12)
    np.testing.assert_allclose(f64_matrix(q, db), sk_matrix(q, db), rtol=0, atol=1e-12)


@pytest.mark.parametrize("h,w,nq,nd", [(16, 16, 3, 5), (13, 17, 2, 4), (11, 11, 2, 3)])
def test_matrix_matches_skimage(tdev, h, w, nq, nd):
    q, db = images(nq, h, w, 1, tdev), images(nd, h, w, 2, tdev)
    m = ff.ssim_matrix(q, db, backend="triton")
    assert m.shape == (nq, nd) and m.dtype == torch.float32 and m.device == q.device
    sk = sk_matrix(q, db)
    np.testing.assert_allclose(m.cpu().numpy(), sk, rtol=0, atol=2e-5)
    assert_float32_accuracy(m, ff.ssim_matrix(q, db, backend="torch"), sk)


def test_matrix_many_programs(tdev, monkeypatch):
    # 16-wide blocks with 20 queries x 35 images: a 3 x 2 grid with partial blocks in
    # both directions, and two statistics programs per image set.
    from frerec_fast.kernels import ssim_topk as ks
    monkeypatch.setattr(ks, "FREREC_TRITON_SSIM_BLOCK_Q", 16)
    monkeypatch.setattr(ks, "FREREC_TRITON_SSIM_BLOCK_N", 16)
    monkeypatch.setattr(ks, "FREREC_TRITON_SSIM_STATS_BLOCK", 16)
    q, db = images(20, 12, 11, 3, tdev), images(35, 12, 11, 4, tdev)
    m = ff.ssim_matrix(q, db, backend="triton")
    ref64 = f64_matrix(q, db)
    np.testing.assert_allclose(m.cpu().numpy(), ref64, rtol=0, atol=2e-5)
    assert_float32_accuracy(m, ff.ssim_matrix(q, db, backend="torch"), ref64)
    sk = np.array([sk_ssim(q[i, 0], db[j, 0]) for i, j in [(0, 0), (19, 34), (7, 20)]])
    np.testing.assert_allclose(m.cpu().numpy()[[0, 19, 7], [0, 34, 20]], sk, atol=2e-5)


@pytest.mark.parametrize("k", [1, 3, 200])
def test_topk_matches_brute_force(tdev, k):
    q, db = images(3, 13, 13, 5, tdev), images(9, 13, 13, 6, tdev)
    s, i = ff.ssim_topk(q, db, k, backend="triton")
    ref = sk_matrix(q, db)
    bs, bi = brute_topk(ref, min(k, 9))
    np.testing.assert_array_equal(i.cpu().numpy(), bi)
    np.testing.assert_allclose(s.cpu().numpy(), bs, atol=2e-5)


def test_topk_k200_against_float64(tdev):
    # K = 200 not clamped (N = 230 > K + 1), several chunks, self-exclusion, K = 1.
    # 11x12 images keep the interpreter fast: one output row, two output columns.
    from frerec_fast.kernels import ssim_topk as ks
    db = images(230, 11, 12, 13, tdev)
    q = torch.cat([images(1, 11, 12, 14, tdev), db[[17, 229]]])
    exclude = torch.tensor([-1, 17, 229], device=tdev)
    full = ks.ssim_matrix(q, db).cpu().numpy()
    ref = f64_matrix(q, db)
    np.testing.assert_allclose(full, ref, rtol=0, atol=2e-5)
    for k, chunk in ((200, 64), (200, 4096), (1, 64)):
        s, i = ks.ssim_topk(q, db, k, exclude=exclude, db_chunk=chunk)
        assert s.shape == i.shape == (3, k) and i.dtype == torch.int64
        # Indices against a brute-force sort of the kernel's own scores: 230 random
        # SSIMs include pairs closer than float32 error (7e-7 apart here), so float64
        # order is not the oracle for indices; the sorted VALUES are compared to it.
        bi = brute_topk(full, k, exclude.tolist())[1]
        np.testing.assert_array_equal(i.cpu().numpy(), bi)
        bs = brute_topk(ref, k, exclude.tolist())[0]
        np.testing.assert_allclose(s.cpu().numpy(), bs, rtol=0, atol=2e-5)
    # Without exclusion a query that is db[17] finds itself first.
    s, i = ks.ssim_topk(q[1:2], db, 1, db_chunk=64)
    assert i.item() == 17 and s.item() == pytest.approx(1.0, abs=1e-5)


def test_topk_ties_self_exclusion_and_chunks(tdev):
    # Exact duplicates at 1, 4, 6 and 2, 5 must score bit-identically and tie-break
    # low-first, also when they fall into different database chunks (db_chunk=3).
    from frerec_fast.kernels import ssim_topk as ks
    uniq = images(4, 12, 12, 8, tdev)
    db = uniq[[0, 1, 2, 3, 1, 2, 1]]
    q = torch.cat([images(2, 12, 12, 7, tdev), db[[1, 5]]])
    full = ks.ssim_matrix(q, db).cpu().numpy()
    assert (full[:, 1] == full[:, 4]).all() and (full[:, 1] == full[:, 6]).all()
    assert (full[:, 2] == full[:, 5]).all()
    np.testing.assert_allclose(full, sk_matrix(q, db), atol=2e-5)
    exclude = torch.tensor([-1, 3, 1, 5])
    for k in (2, 5, 7):
        for chunk in (3, 4096):
            s, i = ks.ssim_topk(q, db, k, exclude=None, db_chunk=chunk)
            bs, bi = brute_topk(full, k)
            np.testing.assert_array_equal(i.cpu().numpy(), bi)
            np.testing.assert_array_equal(s.cpu().numpy(), bs.astype(np.float32))
            s, i = ks.ssim_topk(q, db, k, exclude=exclude.to(tdev), db_chunk=chunk)
            kk = min(k, 6)
            bs, bi = brute_topk(full, kk, exclude.tolist())
            assert i.shape == (4, kk)
            np.testing.assert_array_equal(i.cpu().numpy(), bi)
    # A query that is db[1] (without exclusion) finds index 1 first, with SSIM ~1.
    s, i = ks.ssim_topk(q, db, 3)
    assert i[2].tolist() == [1, 4, 6]
    assert s[2, 0].item() == pytest.approx(1.0, abs=1e-5)


def test_constant_images(tdev):
    vals = torch.tensor([0.3, 0.7, 0.0, 1.0, 0.3])
    db = (torch.ones(5, 1, 12, 13) * vals[:, None, None, None]).to(tdev)
    q = torch.cat([db[:2], images(1, 12, 13, 9, tdev)])
    m = ff.ssim_matrix(q, db, backend="triton")
    assert torch.isfinite(m).all()
    # float32 local variances of a flat image cancel to ~1e-7, against C2 = 9e-4.
    np.testing.assert_allclose(m.cpu().numpy(), sk_matrix(q, db), atol=2e-4)
    s, i = ff.ssim_topk(q, db, 2, exclude=torch.tensor([0, -1, -1]).to(tdev), backend="triton")
    assert i[0].tolist()[0] == 4  # db[4] is a copy of db[0], which is excluded
    assert i[1].tolist()[0] == 1


def test_errors(tdev):
    db = images(2, 12, 12, 1, tdev)
    with pytest.raises(ValueError, match="no neighbour"):
        ff.ssim_topk(db[:1], db[:1], k=3, exclude=torch.tensor([0]), backend="triton")
    with pytest.raises(ValueError, match="at least 11x11"):
        ff.ssim_topk(torch.rand(1, 1, 8, 8, device=tdev), torch.rand(3, 1, 8, 8, device=tdev),
                     k=1, backend="triton")
    with pytest.raises(ValueError, match="one size"):
        ff.ssim_matrix(db, torch.rand(3, 1, 13, 12, device=tdev), backend="triton")
    with pytest.raises(ValueError, match="exclude"):
        ff.ssim_topk(db, db, k=1, exclude=torch.tensor([0, 1, 1]), backend="triton")


@needs_cuda
def test_cuda_matches_references():
    # Compiled kernels with real parallel execution: the same comparisons, plus sizes
    # that span many programs in both grid directions and several top-K chunks.
    from frerec_fast.kernels import ssim_topk as ks
    q, db = images(4, 16, 16, 1, "cuda"), images(6, 16, 16, 2, "cuda")
    m = ff.ssim_matrix(q, db, backend="triton")
    np.testing.assert_allclose(m.cpu().numpy(), sk_matrix(q, db), atol=2e-5)
    q, db = images(70, 64, 64, 3, "cuda"), images(300, 64, 64, 4, "cuda")
    db[[100, 250]] = db[5]
    m = ff.ssim_matrix(q, db, backend="triton")
    ref64 = f64_matrix(q, db)
    np.testing.assert_allclose(m.cpu().numpy(), ref64, rtol=0, atol=2e-5)
    assert_float32_accuracy(m, ff.ssim_matrix(q, db, backend="torch"), ref64)
    full = m.cpu().numpy()
    assert (full[:, 5] == full[:, 100]).all() and (full[:, 5] == full[:, 250]).all()
    exclude = torch.arange(70, device="cuda") % 11 - 1
    for chunk in (64, 4096):
        s, i = ks.ssim_topk(q, db, 50, exclude=exclude, db_chunk=chunk)
        bs, bi = brute_topk(full, 50, exclude.tolist())
        np.testing.assert_array_equal(i.cpu().numpy(), bi)
        np.testing.assert_array_equal(s.cpu().numpy(), bs.astype(np.float32))
