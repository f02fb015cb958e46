"""ssim_topk (method §4, exact top-K by SSIM, ties to the lower index): every backend,
dtype and device against the float64 NumPy oracle (``ssim_oracles``: the SSIM formula,
or scikit-image where exact duplicates must tie).

Top-K results are checked against the oracle's scores, not against an oracle ranking:
two database images closer than float32 error may legitimately swap, so ``check_topk``
asserts what must hold whatever the rounding (see its docstring). Triton on CPU runs in
the interpreter: 11-pixel images, fewer chunk variants."""
import numpy as np
import pytest
import torch

import frerec_fast as ff
from ssim_oracles import f64_matrix, images, sk_matrix

from .support import (accepts, as_dtype, assert_close, assert_same_bytes, backend_params, get_op,
                      interpreted, require)
from .tolerances import tol

OP = "ssim_topk"
BACKENDS = backend_params()


def check_topk(s, i, ref, k, exclude=None, dtype=torch.float32, what=""):
    """A top-k (scores s, indices i [Q, k]) is right for oracle scores ref [Q, N] when:
    distinct indices, none excluded; scores descending and equal (within the tolerance)
    to the oracle's at their indices; no image left out scores (by the oracle) above the
    lowest selected one by more than twice the tolerance; equal scores, and images the
    oracle ties exactly (duplicates), in ascending index order, also across the cut."""
    t = tol(OP, dtype)
    assert s.dtype == torch.float32 and i.dtype == torch.int64, (s.dtype, i.dtype)
    assert s.shape == i.shape == (ref.shape[0], k), (tuple(s.shape), (ref.shape[0], k))
    s, i = s.cpu().double().numpy(), i.cpu().numpy()
    for r in range(ref.shape[0]):
        row, idx, oref = s[r], i[r], ref[r]
        ex = -1 if exclude is None else int(exclude[r])
        assert len(set(idx.tolist())) == k and ex not in idx, f"{what} row {r}: {idx}"
        assert (np.diff(row) <= 0).all(), f"{what} row {r}: scores not descending: {row}"
        assert_close(row, oref[idx], t, f"{what} row {r} scores")
        for a in range(k - 1):
            if row[a] == row[a + 1] or oref[idx[a]] == oref[idx[a + 1]]:
                assert idx[a] < idx[a + 1], f"{what} row {r}: a tie not low-index first: {idx}"
        rest = np.setdiff1d(np.arange(len(oref)), np.append(idx, ex))
        low = oref[idx].min()
        assert (oref[rest] <= low + 2 * t.atol).all(), \
            f"{what} row {r}: {rest[oref[rest] > low + 2 * t.atol]} left out but score higher"
        for j in rest[oref[rest] == low]:
            assert j > idx[oref[idx] == low].max(), f"{what} row {r}: tie lost by index {j}"


def chunked(backend, device, h, w, chunk):
    """The backend's ssim_topk with small database chunks, so that the running top-K is
    merged across chunks: db_chunk (fast backends) or a block budget (torch)."""
    fn = get_op(OP, backend, device)
    if accepts(fn, "db_chunk"):
        return lambda *a, **kw: fn(*a, db_chunk=chunk, **kw)
    if accepts(fn, "max_block_elems"):
        return lambda *a, **kw: fn(*a, max_block_elems=h * w * min(chunk, 2), **kw)
    pytest.fail(f"{backend}'s ssim_topk takes neither db_chunk nor max_block_elems")


@pytest.mark.dtypes()
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_oracle(backend, dtype, device):
    require(OP, backend, device)
    n = 11 if interpreted(backend, device) else 13
    q, db = (as_dtype(images(m, n, n, s), dtype).to(device) for m, s in ((3, 5), (9, 6)))
    s, i = ff.ssim_topk(q, db, 3, backend=backend)
    check_topk(s, i, f64_matrix(q.double(), db.double()), 3, dtype=dtype, what=str(dtype))


@pytest.mark.parametrize("k", [1, 3, 200])
@pytest.mark.parametrize("backend", BACKENDS)
def test_k_values_and_clamp(backend, k, device):
    # k is clamped to N (here 9), or N - 1 with an exclusion.
    require(OP, backend, device)
    n = 11 if interpreted(backend, device) else 16
    q, db = images(3, n, n, 5, device), images(9, n, n, 6, device)
    ref = sk_matrix(q, db)
    s, i = ff.ssim_topk(q, db, k, backend=backend)
    check_topk(s, i, ref, min(k, 9), what=f"k={k}")
    if k == 200:
        ex = torch.tensor([0, -1, 8], device=device)
        s, i = ff.ssim_topk(q, db, k, exclude=ex, backend=backend)
        check_topk(s, i, ref, 8, exclude=ex.tolist(), what="k=200 with exclusion")


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_lower_index_wins(backend, device):
    # Exact duplicates at 1, 4, 6 and 2, 5 score bit-identically and go low index first,
    # also when they fall into different database chunks.
    require(OP, backend, device)
    n = 11 if interpreted(backend, device) else 16
    uniq = images(4, n, n, 8, device)
    db = uniq[[0, 1, 2, 3, 1, 2, 1]]
    q = torch.cat([images(2, n, n, 7, device), db[[1, 5]]])
    ref = sk_matrix(q, db)  # exact duplicates: exactly equal scores
    exclude = torch.tensor([-1, 3, 1, 5], device=device)
    small = chunked(backend, device, n, n, 3)
    plain = lambda *a, **kw: ff.ssim_topk(*a, backend=backend, **kw)  # noqa: E731
    variants = ([(2, small), (7, small)] if interpreted(backend, device) else
                [(k, fn) for k in (1, 2, 5, 7) for fn in (plain, small)])
    for k, fn in variants:
        s, i = fn(q, db, k)
        check_topk(s, i, ref, k, what=f"k={k}")
        s, i = fn(q, db, k, exclude=exclude)
        check_topk(s, i, ref, min(k, 6), exclude=exclude.tolist(), what=f"k={k} excluded")
    s, i = plain(q, db, 3)
    assert i[2].tolist() == [1, 4, 6] and (s[2] == s[2, 0]).all()
    np.testing.assert_allclose(s[2].cpu().numpy(), 1.0, atol=1e-5)
    if backend == "cuda":
        assert s[2].tolist() == [1.0, 1.0, 1.0]  # the CUDA kernel scores self exactly 1
    s, i = plain(q, db, 2, exclude=torch.tensor([-1, -1, 1, 5], device=device))
    assert i[2].tolist() == [4, 6] and i[3].tolist()[0] == 2


@pytest.mark.parametrize("backend", BACKENDS)
def test_self_exclusion(backend, device):
    require(OP, backend, device)
    n = 11 if interpreted(backend, device) else 16
    db = images(6, n, n, 9, device)
    q = db[[0, 3, 5]]
    s, i = ff.ssim_topk(q, db, k=200, exclude=torch.tensor([0, 3, 5]), backend=backend)
    assert i.shape == (3, 5)  # clamped to N - 1
    for row, self_id in zip(i.tolist(), [0, 3, 5]):
        assert sorted(row) == sorted(set(range(6)) - {self_id})
    # Without exclusion an image finds itself first with SSIM 1; -1 excludes nothing.
    s, i = ff.ssim_topk(q, db, k=1, backend=backend)
    assert i[:, 0].tolist() == [0, 3, 5]
    np.testing.assert_allclose(s.cpu().numpy(), 1.0, atol=1e-5)
    s, i = ff.ssim_topk(q, db, k=2, exclude=[-1, 3, -1], backend=backend)
    assert i[0, 0].item() == 0 and i[1, 0].item() != 3 and i[2, 0].item() == 5


@pytest.mark.parametrize("backend", BACKENDS)
def test_large_k_chunks_and_exclusion(backend, device):
    # K = 200 not clamped (N = 230 > K + 1), several chunks, self-exclusion, K = 1, and
    # K clamped to N - 1 / N. The interpreter gets N = 140 and two calls.
    require(OP, backend, device)
    interp = interpreted(backend, device)
    n_db = 140 if interp else 230
    db = images(n_db, 11, 12, 13, device)
    q = torch.cat([images(1, 11, 12, 14, device), db[[17, n_db - 1]]])
    exclude = torch.tensor([-1, 17, n_db - 1], device=device)
    ref = f64_matrix(q, db)
    variants = [(130, 64)] if interp else [(200, 64), (200, 4096), (1, 64), (229, 100)]
    for k, chunk in variants:
        s, i = chunked(backend, device, 11, 12, chunk)(q, db, k, exclude=exclude)
        check_topk(s, i, ref, k, exclude=exclude.tolist(), what=f"k={k} chunk={chunk}")
    # Without exclusion a query that is db[17] finds itself first.
    s, i = chunked(backend, device, 11, 12, 64)(q[1:2], db, 1)
    assert i.item() == 17 and s.item() == pytest.approx(1.0, abs=1e-5)
    if not interp:
        assert ff.ssim_topk(q, db, 500, exclude=exclude, backend=backend)[1].shape == (3, 229)
        assert ff.ssim_topk(q, db, 500, backend=backend)[1].shape == (3, 230)


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_images(backend, device):
    require(OP, backend, device)
    vals = torch.tensor([0.3, 0.7, 0.0, 1.0, 0.3])
    db = (torch.ones(5, 1, 11, 12) * vals[:, None, None, None]).to(device)
    q = torch.cat([db[:2], images(1, 11, 12, 9, device)])
    s, i = ff.ssim_topk(q, db, 2, exclude=torch.tensor([0, -1, -1], device=device),
                        backend=backend)
    assert torch.isfinite(s).all()
    assert i[0].tolist()[0] == 4  # db[4] is a copy of db[0], which is excluded
    assert i[1].tolist()[0] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_inputs(backend, device):
    require(OP, backend, device)
    h, w = (11, 12) if interpreted(backend, device) else (20, 18)
    q = images(3, w, h, 3).double().transpose(2, 3).to(device)
    db = images(16, h, w, 4, device)[::2]
    assert not q.is_contiguous() and not db.is_contiguous()
    s, i = ff.ssim_topk(q, db, 4, backend=backend)
    check_topk(s, i, f64_matrix(q, db), 4, what="non-contiguous")
    s2, i2 = chunked(backend, device, h, w, 3)(q, db, 4)
    assert torch.equal(i, i2) and torch.equal(s, s2), "chunked and unchunked top-K differ"


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_queries(backend, device):
    require(OP, backend, device)
    db = images(4, 11, 11, 2, device)
    s, i = ff.ssim_topk(db[:0], db, 2, backend=backend)
    assert s.shape == i.shape == (0, 2) and i.dtype == torch.int64
    with pytest.raises(ValueError, match="database has 0 image"):
        ff.ssim_topk(db, db[:0], 2, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend, device):
    require(OP, backend, device)
    q, db = images(2, 11, 11, 1, device), images(6, 11, 11, 2, device)
    ex = torch.tensor([1, -1], device=device)
    (s1, i1), (s2, i2) = (ff.ssim_topk(q, db, 4, exclude=ex, backend=backend) for _ in range(2))
    assert_same_bytes(s1, s2, "scores")
    assert_same_bytes(i1, i2, "indices")


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend, device):
    require(OP, backend, device)
    db = images(2, 12, 12, 1, device)
    with pytest.raises(ValueError, match="no neighbour"):
        ff.ssim_topk(db[:1], db[:1], k=3, exclude=torch.tensor([0]), backend=backend)
    with pytest.raises(ValueError, match="k must be"):
        ff.ssim_topk(db, db, k=0, backend=backend)
    with pytest.raises(ValueError, match="at least 11x11"):
        ff.ssim_topk(torch.rand(1, 1, 8, 8, device=device), torch.rand(3, 1, 8, 8, device=device),
                     k=1, backend=backend)
    with pytest.raises(ValueError, match="one size"):
        ff.ssim_topk(db, torch.rand(3, 1, 13, 12, device=device), k=1, backend=backend)
    with pytest.raises(ValueError, match="exclude holds"):
        ff.ssim_topk(db, db, k=1, exclude=torch.tensor([0, 2]), backend=backend)
    with pytest.raises(ValueError, match=r"exclude must be \[Q=2\]"):
        ff.ssim_topk(db, db, k=1, exclude=torch.tensor([0, 1, 1]), backend=backend)
    with pytest.raises(ValueError, match="mode"):
        ff.ssim_topk(db, db, k=1, mode="approximate", backend=backend)


def gpu_only(device):
    if device.type != "cuda":
        pytest.skip("GPU-size case (21000 pairs of 64x64 images): runs with --device=cuda")


@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_sizes(backend, device):
    # Many programs in both grid directions and several top-K chunks, with duplicates.
    require(OP, backend, device)
    gpu_only(device)
    q, db = images(70, 64, 64, 3, device), images(300, 64, 64, 4, device)
    db[[100, 250]] = db[5]
    ref = f64_matrix(q, db)
    exclude = torch.arange(70, device=device) % 11 - 1
    for chunk in (64, 4096):
        s, i = chunked(backend, device, 64, 64, chunk)(q, db, 50, exclude=exclude)
        check_topk(s, i, ref, 50, exclude=exclude.tolist(), what=f"chunk={chunk}")


@pytest.mark.parametrize("backend", backend_params("torch", "triton", "cuda"))
def test_database_on_another_device(backend, device):
    # Queries on the GPU, the database on the CPU: moved chunk by chunk, same result.
    require(OP, backend, device)
    gpu_only(device)
    q, db_cpu = images(4, 18, 20, 3, device), images(37, 18, 20, 4)
    s, i = chunked(backend, device, 18, 20, 8)(q, db_cpu, 5)
    s2, i2 = ff.ssim_topk(q, db_cpu.to(device), 5, backend=backend)
    assert torch.equal(i, i2) and torch.equal(s, s2)
    check_topk(s, i, f64_matrix(q, db_cpu), 5, what="database on the CPU")
