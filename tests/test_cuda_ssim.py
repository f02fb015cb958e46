"""CUDA SSIM matrix and exact top-K (csrc/cuda/ssim_topk.cu through
frerec_fast/fast/ssim_cuda.py) against scikit-image, a float64 NumPy reference, the torch
reference and a brute-force NumPy sort (SPEC 4).

The kernel tests need a GPU and either a CUDA build of frerec_fast._C or CuPy: they skip
with "no CUDA GPU visible" on a machine without one, and with the dispatch table's
reason ("not built ... CuPy is not installed") where the GPU is there but neither path is.
The dispatch and launch-geometry tests at the top run everywhere.
"""
import re

import numpy as np
import pytest
import torch

import frerec_fast as ff
from frerec_fast import backends
from frerec_fast.fast import ssim_cuda
from marks import needs_cuda
from ssim_oracles import (assert_float32_accuracy, brute_topk, f64_matrix, images, sk_matrix,
                          sk_ssim)


@pytest.fixture
def cuda():
    """The CUDA device, skipped with the dispatch table's reason when the backend cannot run
    (a GPU but neither a CUDA _C nor CuPy)."""
    why = backends.unavailable_reason("ssim_topk", "cuda", "cuda")
    if why:
        pytest.skip(why)
    return torch.device("cuda")


# ---------------------------------------------------------------------------------
# Everywhere (no GPU needed)
# ---------------------------------------------------------------------------------

def test_dispatch_lists_cuda_and_refuses_cpu_tensors():
    for op in ("ssim_matrix", "ssim_topk"):
        why = backends.unavailable_reason(op, "cuda", "cpu")
        assert why is not None and "cuda" in why and "not cpu" in why
    db = images(3, 12, 12, 1)
    with pytest.raises(backends.BackendUnavailable):
        ff.ssim_matrix(db, db, backend="cuda")
    with pytest.raises(backends.BackendUnavailable):
        ff.ssim_topk(db, db, 1, backend="cuda")


def test_wrapper_rejects_cpu_tensors_after_validation():
    db = images(3, 12, 12, 1)
    with pytest.raises(ValueError, match="needs CUDA tensors.*backend='cpp' or 'torch'"):
        ssim_cuda.ssim_matrix(db, db)
    with pytest.raises(ValueError, match="needs CUDA tensors"):
        ssim_cuda.ssim_topk(db, db, 1)
    # Shape errors come first and read as in the reference.
    with pytest.raises(ValueError, match="at least 11x11"):
        ssim_cuda.ssim_matrix(torch.rand(1, 1, 8, 8), torch.rand(2, 1, 8, 8))
    with pytest.raises(ValueError, match="one size"):
        ssim_cuda.ssim_topk(db, torch.rand(2, 1, 13, 12), 1)


def test_launch_geometry_matches_the_source():
    """The CuPy path launches with constants mirrored from ssim_topk.cu's macros."""
    from frerec_fast.fast.cuda_source import source_path

    src = source_path("ssim_topk.cu").read_text()

    def macro(name):
        return re.search(rf"#define {name} (\S+)", src).group(1)

    assert int(macro("FREREC_SSIM_TQ")) == ssim_cuda._TQ
    assert int(macro("FREREC_SSIM_TN")) == ssim_cuda._TN
    assert int(macro("FREREC_SSIM_STATS_BLOCK")) == ssim_cuda._STATS_BLOCK
    assert int(macro("FREREC_SSIM_MAX_GRID_Y")) == ssim_cuda._MAX_GRID_Y
    # THREADS = (TN / 2) * (TQ / 2): each thread owns 2 x 2 pairs.
    assert ssim_cuda._THREADS == (ssim_cuda._TN // 2) * (ssim_cuda._TQ // 2)
    assert "frerec_ssim_stats(" in src and "frerec_ssim_pairs(" in src


# ---------------------------------------------------------------------------------
# GPU
# ---------------------------------------------------------------------------------

@needs_cuda
@pytest.mark.parametrize("h,w,nq,nd", [(16, 16, 3, 5), (13, 17, 2, 4), (11, 11, 2, 3),
                                       (11, 40, 1, 2), (40, 11, 2, 1), (22, 23, 3, 3)])
def test_matrix_matches_skimage(cuda, h, w, nq, nd):
    q, db = images(nq, h, w, 1, cuda), images(nd, h, w, 2, cuda)
    m = ff.ssim_matrix(q, db, backend="cuda")
    assert m.shape == (nq, nd) and m.dtype == torch.float32 and m.device == q.device
    sk = sk_matrix(q, db)
    np.testing.assert_allclose(m.cpu().numpy(), sk, rtol=0, atol=2e-5)
    assert_float32_accuracy(m, ff.ssim_matrix(q, db, backend="torch"), sk)


@needs_cuda
@pytest.mark.parametrize("h,w,nq,nd", [(12, 11, 33, 65), (64, 64, 70, 300), (23, 29, 40, 70)])
def test_matrix_many_blocks(cuda, h, w, nq, nd):
    # Partial 32 x 32 tiles in both grid directions; H not a multiple of the 11-row chunk.
    q, db = images(nq, h, w, 3, cuda), images(nd, h, w, 4, cuda)
    m = ssim_cuda.ssim_matrix(q, db)
    ref64 = f64_matrix(q, db)
    np.testing.assert_allclose(m.cpu().numpy(), ref64, rtol=0, atol=2e-5)
    assert_float32_accuracy(m, ff.ssim_matrix(q, db, backend="torch"), ref64)
    picks = [(0, 0), (nq - 1, nd - 1), (nq // 2, nd // 3)]
    sk = np.array([sk_ssim(q[i, 0], db[j, 0]) for i, j in picks])
    np.testing.assert_allclose(m.cpu().numpy()[tuple(zip(*picks))], sk, atol=2e-5)


@needs_cuda
def test_duplicates_bit_identical_and_self_exactly_one(cuda, monkeypatch):
    db = images(70, 19, 23, 5, cuda)
    db[[40, 66]] = db[1].clone()  # other tiles of the grid, other top-K chunks
    db[33] = db[2].clone()
    q = torch.cat([images(3, 19, 23, 6, cuda), db[[1, 2, 69]]])
    m = ssim_cuda.ssim_matrix(q, db).cpu().numpy()
    assert (m[:, 1] == m[:, 40]).all() and (m[:, 1] == m[:, 66]).all()
    assert (m[:, 2] == m[:, 33]).all()
    assert m[3, 1] == 1.0 and m[4, 2] == 1.0 and m[5, 69] == 1.0
    mm = ssim_cuda.ssim_matrix(db, db)
    assert (torch.diagonal(mm) == 1.0).all()
    # Query blocks spread over several launches (the CuPy path's grid.y split) score the same.
    monkeypatch.setattr(ssim_cuda, "_MAX_GRID_Y", 1)
    assert torch.equal(ssim_cuda.ssim_matrix(db, db), mm)


@needs_cuda
@pytest.mark.parametrize("k", [1, 3, 200])
def test_topk_matches_brute_force(cuda, k):
    q, db = images(3, 13, 13, 5, cuda), images(9, 13, 13, 6, cuda)
    s, i = ff.ssim_topk(q, db, k, backend="cuda")
    ref = sk_matrix(q, db)
    bs, bi = brute_topk(ref, min(k, 9))
    np.testing.assert_array_equal(i.cpu().numpy(), bi)
    np.testing.assert_allclose(s.cpu().numpy(), bs, atol=2e-5)


@needs_cuda
def test_topk_k200_chunks_and_self_exclusion(cuda):
    db = images(230, 11, 12, 13, cuda)
    q = torch.cat([images(1, 11, 12, 14, cuda), db[[17, 229]]])
    exclude = torch.tensor([-1, 17, 229], device=cuda)
    full = ssim_cuda.ssim_matrix(q, db).cpu().numpy()
    ref = f64_matrix(q, db)
    np.testing.assert_allclose(full, ref, rtol=0, atol=2e-5)
    for k, chunk in ((200, 64), (200, 4096), (1, 64), (229, 100)):
        s, i = ssim_cuda.ssim_topk(q, db, k, exclude=exclude, db_chunk=chunk)
        assert s.shape == i.shape == (3, k) and i.dtype == torch.int64 and s.dtype == torch.float32
        # Indices against a brute-force sort of the kernel's own scores (random SSIMs can
        # be closer than float32 error); values against float64.
        np.testing.assert_array_equal(i.cpu().numpy(), brute_topk(full, k, exclude.tolist())[1])
        np.testing.assert_allclose(s.cpu().numpy(), brute_topk(ref, k, exclude.tolist())[0],
                                   rtol=0, atol=2e-5)
    # Without exclusion a query that is db[17] finds itself first, at exactly 1.
    s, i = ssim_cuda.ssim_topk(q[1:2], db, 1, db_chunk=64)
    assert i.item() == 17 and s.item() == 1.0
    # K is clamped to N - 1 with exclusion, N without.
    assert ssim_cuda.ssim_topk(q, db, 500, exclude=exclude)[1].shape == (3, 229)
    assert ssim_cuda.ssim_topk(q, db, 500)[1].shape == (3, 230)


@needs_cuda
def test_topk_ties_self_exclusion_and_chunks(cuda):
    # Exact duplicates at 1, 4, 6 and 2, 5 tie bit-identically and go low index first,
    # also when they fall into different database chunks (db_chunk=3).
    uniq = images(4, 12, 12, 8, cuda)
    db = uniq[[0, 1, 2, 3, 1, 2, 1]]
    q = torch.cat([images(2, 12, 12, 7, cuda), db[[1, 5]]])
    full = ssim_cuda.ssim_matrix(q, db).cpu().numpy()
    assert (full[:, 1] == full[:, 4]).all() and (full[:, 1] == full[:, 6]).all()
    assert (full[:, 2] == full[:, 5]).all()
    np.testing.assert_allclose(full, sk_matrix(q, db), atol=2e-5)
    exclude = torch.tensor([-1, 3, 1, 5])
    for k in (1, 2, 5, 7):
        for chunk in (3, 4096):
            s, i = ssim_cuda.ssim_topk(q, db, k, db_chunk=chunk)
            bs, bi = brute_topk(full, k)
            np.testing.assert_array_equal(i.cpu().numpy(), bi)
            np.testing.assert_array_equal(s.cpu().numpy(), bs.astype(np.float32))
            s, i = ssim_cuda.ssim_topk(q, db, k, exclude=exclude.to(cuda), db_chunk=chunk)
            kk = min(k, 6)
            bs, bi = brute_topk(full, kk, exclude.tolist())
            assert i.shape == (4, kk)
            np.testing.assert_array_equal(i.cpu().numpy(), bi)
            np.testing.assert_array_equal(s.cpu().numpy(), bs.astype(np.float32))
    s, i = ssim_cuda.ssim_topk(q, db, 3)
    assert i[2].tolist() == [1, 4, 6] and s[2].tolist() == [1.0, 1.0, 1.0]
    s, i = ssim_cuda.ssim_topk(q, db, 2, exclude=torch.tensor([-1, -1, 1, 5]))
    assert i[2].tolist() == [4, 6] and i[3].tolist()[0] == 2


@needs_cuda
def test_constant_images(cuda):
    vals = torch.tensor([0.3, 0.7, 0.0, 1.0, 0.3])
    db = (torch.ones(5, 1, 12, 13) * vals[:, None, None, None]).to(cuda)
    q = torch.cat([db[:2], images(1, 12, 13, 9, cuda)])
    m = ff.ssim_matrix(q, db, backend="cuda")
    assert torch.isfinite(m).all()
    # float32 local variances of a flat image cancel to ~1e-7, against C2 = 9e-4.
    np.testing.assert_allclose(m.cpu().numpy(), sk_matrix(q, db), atol=2e-4)
    s, i = ff.ssim_topk(q, db, 2, exclude=torch.tensor([0, -1, -1]).to(cuda), backend="cuda")
    assert i[0].tolist()[0] == 4  # db[4] is a copy of db[0], which is excluded
    assert i[1].tolist()[0] == 1


@needs_cuda
def test_inputs_converted_like_the_reference(cuda):
    # float64, non-contiguous queries; a database left on the CPU (moved chunk by chunk).
    q = images(4, 20, 18, 3).double().transpose(2, 3).to(cuda)
    db_cpu = images(37, 18, 20, 4)
    m = ssim_cuda.ssim_matrix(q, db_cpu)
    ref = ff.ssim_matrix(q.float(), db_cpu.to(cuda), backend="torch")
    np.testing.assert_allclose(m.cpu().numpy(), ref.cpu().numpy(), rtol=0, atol=2e-5)
    s, i = ssim_cuda.ssim_topk(q, db_cpu, 5, db_chunk=8)
    s2, i2 = ssim_cuda.ssim_topk(q, db_cpu.to(cuda), 5)
    assert torch.equal(i, i2) and torch.equal(s, s2)
    assert ssim_cuda.ssim_matrix(q[:0], db_cpu).shape == (0, 37)
    assert ssim_cuda.ssim_matrix(q, db_cpu[:0]).shape == (4, 0)


@needs_cuda
def test_errors(cuda):
    db = images(2, 12, 12, 1, cuda)
    with pytest.raises(ValueError, match="no neighbour"):
        ff.ssim_topk(db[:1], db[:1], k=3, exclude=torch.tensor([0]), backend="cuda")
    with pytest.raises(ValueError, match="k must be"):
        ff.ssim_topk(db, db, k=0, backend="cuda")
    with pytest.raises(ValueError, match="at least 11x11"):
        ff.ssim_topk(torch.rand(1, 1, 8, 8, device=cuda), torch.rand(3, 1, 8, 8, device=cuda),
                     k=1, backend="cuda")
    with pytest.raises(ValueError, match="one size"):
        ff.ssim_matrix(db, torch.rand(3, 1, 13, 12, device=cuda), backend="cuda")
    with pytest.raises(ValueError, match="exclude"):
        ff.ssim_topk(db, db, k=1, exclude=torch.tensor([0, 1, 1]), backend="cuda")
