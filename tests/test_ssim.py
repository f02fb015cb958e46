"""SSIM against scikit-image, and exact top-K against a brute-force sort (SPEC 4)."""
import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

import frerec_fast as ff
from frerec_fast.ssim import ssim_matrix_torch, ssim_topk_torch
from marks import needs_cpp
from ssim_oracles import brute_topk

BACKENDS = ["torch", pytest.param("cpp", marks=needs_cpp)]


def topk(backend, q, db, k, exclude=None, small_chunks=False):
    """ssim_topk of one backend, optionally with tiny database chunks to exercise merging."""
    if not small_chunks:
        return ff.ssim_topk(q, db, k, exclude=exclude, backend=backend)
    if backend == "torch":
        return ssim_topk_torch(q, db, k, exclude=exclude, max_block_elems=q.shape[-1] * q.shape[-2] * 2)
    from frerec_fast.fast.ssim_cpp import ssim_topk
    return ssim_topk(q, db, k, exclude=exclude, db_chunk=2)


def sk_ssim(a, b):
    return structural_similarity(np.asarray(a, np.float64), np.asarray(b, np.float64),
                                 gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                 data_range=1.0)


def images(n, h, w, seed):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 1, h, w, generator=g)
    # Correlated images so SSIM values spread over a useful range.
    return (base * torch.rand(n, 1, 1, 1, generator=g) + 0.5 * torch.rand(n, 1, h, w, generator=g)).clamp(0, 1)


@pytest.mark.parametrize("h,w", [(11, 11), (16, 16), (23, 17), (64, 64)])
def test_paired_ssim_matches_skimage(h, w):
    a, b = images(3, h, w, 1), images(3, h, w, 2)
    ours = ff.ssim(a, b)
    for i in range(3):
        assert ours[i].item() == pytest.approx(sk_ssim(a[i, 0], b[i, 0]), abs=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_images_in_matrix(backend):
    flat = torch.stack([torch.full((1, 16, 16), v) for v in (0.0, 0.3, 0.3, 1.0)])
    m = ff.ssim_matrix(flat, flat, backend=backend)
    assert torch.isfinite(m).all()
    ref = np.array([[sk_ssim(a[0], b[0]) for b in flat] for a in flat])
    np.testing.assert_allclose(m.numpy(), ref, atol=2e-4)


def test_ssim_of_constant_images_is_finite():
    a = torch.full((1, 1, 16, 16), 0.3)
    b = torch.full((1, 1, 16, 16), 0.7)
    ours = ff.ssim(a, b)
    assert torch.isfinite(ours).all()
    # float32 local variances of a flat image cancel to ~1e-7, against C2 = 9e-4.
    assert ours.item() == pytest.approx(sk_ssim(a[0, 0], b[0, 0]), abs=2e-4)
    assert ff.ssim(a, a).item() == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ssim_matrix_matches_skimage_and_blocks(backend):
    q, db = images(4, 20, 18, 3), images(7, 20, 18, 4)
    full = ff.ssim_matrix(q, db, backend=backend)
    ref = np.array([[sk_ssim(q[i, 0], db[j, 0]) for j in range(7)] for i in range(4)])
    np.testing.assert_allclose(full.numpy(), ref, atol=2e-5)
    tiny_blocks = ssim_matrix_torch(q, db, max_block_elems=20 * 18 * 3)
    np.testing.assert_allclose(tiny_blocks.numpy(), full.numpy(), atol=1e-6)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("k", [1, 3, 200])
@pytest.mark.parametrize("small_chunks", [False, True])
def test_topk_matches_brute_force(backend, k, small_chunks):
    q, db = images(5, 16, 16, 5), images(13, 16, 16, 6)
    s, i = topk(backend, q, db, k, small_chunks=small_chunks)
    ref_scores = np.array([[sk_ssim(q[a, 0], db[b, 0]) for b in range(13)] for a in range(5)])
    bs, bi = brute_topk(ref_scores, min(k, 13))
    np.testing.assert_array_equal(i.numpy(), bi)
    np.testing.assert_allclose(s.numpy(), bs, atol=2e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_ties_go_to_lower_index(backend):
    q = images(3, 16, 16, 7)
    uniq = images(4, 16, 16, 8)
    # Exact duplicates at positions 1, 4, 6 and 2, 5: every tie must resolve low-first.
    db = torch.cat([uniq[0:1], uniq[1:2], uniq[2:3], uniq[3:4], uniq[1:2], uniq[2:3], uniq[1:2]])
    full = ff.ssim_matrix(q, db, backend=backend).numpy()
    for k in (2, 5, 7):
        for small_chunks in (False, True):
            s, i = topk(backend, q, db, k, small_chunks=small_chunks)
            bs, bi = brute_topk(full, k)
            np.testing.assert_array_equal(i.numpy(), bi)
    # Duplicates really tie.
    assert (full[:, 1] == full[:, 4]).all() and (full[:, 1] == full[:, 6]).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_self_exclusion_and_clamp(backend):
    db = images(6, 16, 16, 9)
    q = db[[0, 3, 5]]
    s, i = ff.ssim_topk(q, db, k=200, exclude=torch.tensor([0, 3, 5]), backend=backend)
    assert i.shape == (3, 5)  # clamped to N - 1
    for row, self_id in zip(i.tolist(), [0, 3, 5]):
        assert self_id not in row
        assert sorted(row) == sorted(set(range(6)) - {self_id})
    # Without exclusion an image finds itself first with SSIM 1.
    s, i = ff.ssim_topk(q, db, k=1, backend=backend)
    assert i[:, 0].tolist() == [0, 3, 5]
    np.testing.assert_allclose(s.numpy(), 1.0, atol=1e-5)
    # -1 means "nothing to exclude" for that query.
    s, i = ff.ssim_topk(q, db, k=2, exclude=torch.tensor([-1, 3, -1]), backend=backend)
    assert i[0, 0].item() == 0 and i[1, 0].item() != 3


@pytest.mark.parametrize("backend", BACKENDS)
def test_topk_errors(backend):
    db = images(2, 16, 16, 1)
    with pytest.raises(ValueError, match="no neighbour"):
        ff.ssim_topk(db[:1], db[:1], k=3, exclude=torch.tensor([0]), backend=backend)
    with pytest.raises(ValueError, match="at least 11x11"):
        ff.ssim_topk(torch.rand(1, 1, 8, 8), torch.rand(3, 1, 8, 8), k=1, backend=backend)
    with pytest.raises(ValueError, match="one size"):
        ff.ssim_matrix(torch.rand(1, 1, 16, 16), torch.rand(3, 1, 17, 16))
    with pytest.raises(ValueError, match="mode"):
        ff.ssim_topk(db, db, k=1, mode="approximate")
