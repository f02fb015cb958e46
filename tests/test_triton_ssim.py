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

import frerec_fast as ff  # noqa: E402
from frerec_fast import backends  # noqa: E402
from marks import needs_cuda
from ssim_oracles import (assert_float32_accuracy, brute_topk, f64_matrix, images, sk_matrix,
                          sk_ssim)  # noqa: E402


@pytest.fixture
def tdev(device):
    """The test device, skipped with the dispatch table's reason when Triton cannot run
    there (e.g. CPU tensors on a GPU machine, where the interpreter is not enabled)."""
    why = backends.unavailable_reason("ssim_topk", "triton", device.type)
    if why:
        pytest.skip(why)
    return device


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
