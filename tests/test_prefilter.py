"""Prefilter SSIM top-K (frerec_fast/prefilter.py): exact when every image is a
candidate, measured recall@K on structured images otherwise, self-exclusion, K
clamping, ties and chunking (method §4). The exact reference is the torch
``ssim_topk_torch``, itself tested against scikit-image in tests/test_ssim.py."""
import numpy as np
import pytest
import torch

from frerec_fast import prefilter as pf
import frerec_fast.reference.ssim as ref_ssim
from frerec_fast.reference.ssim import ssim_matrix as ssim_matrix_torch, ssim_topk as ssim_topk_torch
from marks import needs_cpp


def blobs(n, h, w, seed, protos=8, noise=0.02):
    """[n, 1, h, w] structured test images in [0, 1], a stand-in for a real index:
    each is a jittered copy of one of ``protos`` layouts of 5 smooth Gaussian blobs,
    plus 3 blobs of its own and pixel noise. Images of one layout are near neighbours
    (SSIM ~0.5), others are not (~0.3), so the top-K is a real ranking problem."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float32),
                            torch.arange(w, dtype=torch.float32), indexing="ij")

    def draw(cx, cy, s, a):  # each [n, B] -> [n, h, w]
        d = (xx - cx[..., None, None]) ** 2 + (yy - cy[..., None, None]) ** 2
        return (a[..., None, None] * torch.exp(-d / (2 * s[..., None, None] ** 2))).sum(1)

    def rand(*shape):
        return torch.rand(*shape, generator=g)

    nb = 5
    proto = [rand(protos, nb) * w, rand(protos, nb) * h, 2 + 4 * rand(protos, nb),
             2 * rand(protos, nb) - 1]
    pid = torch.randint(0, protos, (n,), generator=g)
    jitter = (2.0, 2.0, 0.5, 0.2)
    cx, cy, s, a = (p[pid] + sd * torch.randn(n, nb, generator=g) for p, sd in zip(proto, jitter))
    img = draw(cx, cy, s.clamp_min(1), a)
    img = img + draw(rand(n, 3) * w, rand(n, 3) * h, 2 + 4 * rand(n, 3), 2 * rand(n, 3) - 1)
    img = 0.5 + 0.25 * img + noise * torch.randn(n, h, w, generator=g)
    return img.clamp(0, 1)[:, None]


def test_recall_at_k_by_hand():
    approx = torch.tensor([[1, 2, 3], [4, 5, 6]])
    exact = torch.tensor([[3, 2, 9], [7, 8, 6]])
    # Row 0 shares {2, 3}, row 1 shares {6}: (2 + 1) / (2 * 3); order does not matter.
    assert pf.recall_at_k(approx, exact) == pytest.approx(0.5)
    assert pf.recall_at_k(exact, exact) == 1.0
    assert pf.recall_at_k(exact.flip(1), exact) == 1.0
    assert pf.recall_at_k(torch.tensor([[0], [5]]), torch.tensor([[0], [4]])) == 0.5
    with pytest.raises(ValueError, match="one shape"):
        pf.recall_at_k(approx[:, :2], exact)


def test_default_candidates():
    assert pf.default_candidates(200, 100_000) == 1024
    assert pf.default_candidates(300, 100_000) == 1200
    assert pf.default_candidates(200, 500) == 500
    assert pf.default_candidates(1, 1) == 1


@pytest.mark.parametrize("h,w", [(32, 32), (23, 29)])
@pytest.mark.parametrize("k", [1, 10, 200])
def test_all_candidates_equals_exact(device, h, w, k):
    """On --device (CUDA: embedding, candidate GEMM and re-rank on the GPU), against the
    CPU reference."""
    db, q = blobs(60, h, w, 1), blobs(5, h, w, 2)
    q = torch.cat([q, db[[3, 59]]])
    for exclude in (None, torch.tensor([-1, 4, -1, 0, 59, 3, 59])):
        es, ei = ssim_topk_torch(q, db, k, exclude=exclude)
        for backend in ("torch", "auto"):
            ps, pi = pf.ssim_topk_prefilter(
                q.to(device), db.to(device), k, candidates=10_000, backend=backend,
                exclude=None if exclude is None else exclude.to(device))
            assert pi.dtype == torch.int64 and ps.dtype == torch.float32
            assert pi.shape == ei.shape == (7, min(k, 60 if exclude is None else 59))
            np.testing.assert_array_equal(pi.cpu().numpy(), ei.numpy())
            # Same formulas as the reference (bit-identical on CPU); allow rounding.
            np.testing.assert_allclose(ps.cpu().numpy(), es.numpy(), rtol=0, atol=1e-5)


def test_recall_on_structured_images():
    """Measured recall@20 with 300 images of 32x32 (fixed seeds; structure embedding):

    - 30 held-out queries, candidates = 4k = 80 (27% of the SSIM pairs): 0.797
      (seeds 0-2 of this set: 0.81-0.84); a random short-list of 80 would give
      80 / 300 = 0.27. Candidates = 150: 0.935 (0.94-0.97).
    - The index against itself with self-exclusion (the calibration use), 80
      candidates: 0.889 (0.89-0.94).
    The asserts leave ~0.05 of margin under these for platform rounding.
    """
    db, q = blobs(300, 32, 32, 10), blobs(30, 32, 32, 20)
    k = 20
    _, exact = ssim_topk_torch(q, db, k)
    recall = {c: pf.recall_at_k(pf.ssim_topk_prefilter(q, db, k, candidates=c)[1], exact)
              for c in (20, 80, 150, 300)}
    assert recall[80] >= 0.74 and recall[80] >= 2.5 * 80 / 300
    assert recall[150] >= 0.88
    assert recall[300] == 1.0
    assert recall[20] <= recall[80] <= recall[150] <= recall[300]
    ex = torch.arange(300)
    _, exact = ssim_topk_torch(db, db, k, exclude=ex)
    _, approx = pf.ssim_topk_prefilter(db, db, k, exclude=ex, candidates=80)
    assert not (approx == ex[:, None]).any()
    assert pf.recall_at_k(approx, exact) >= 0.84


def _embed_numpy(x: np.ndarray, t: int) -> np.ndarray:
    """Independent oracle of ``pf.embed``: block-mean thumbnail (numpy reshape), local
    statistics with scipy's Gaussian filter (edges 'nearest', radius 3 at sigma 1)."""
    from scipy.ndimage import gaussian_filter

    n, _, h, w = x.shape
    th = x[:, 0].astype(np.float64).reshape(n, t, h // t, t, w // t).mean(axis=(2, 4))
    out = np.zeros((n, t * t))
    for i, im in enumerate(th):
        blur = lambda a: gaussian_filter(a, pf.EMBED_SIGMA, mode="nearest", truncate=3.0)
        mu = blur(im)
        var = np.maximum(blur(im * im) - mu * mu, 0.0)
        e = ((im - mu) / np.sqrt(var + pf.EMBED_C)).ravel()
        flat = np.sqrt(((im - im.mean()) ** 2).mean()) <= pf.FLAT_RMS
        out[i] = 0.0 if flat else e / np.linalg.norm(e)
    return out


@pytest.mark.parametrize("h,w,t", [(64, 64, 16), (32, 48, 16), (16, 16, 8)])
def test_embed_matches_numpy_oracle(h, w, t):
    x = blobs(6, h, w, 3)
    x[2] = 0.4  # flat: the zero vector
    got = pf.embed(x, t).double().numpy()
    np.testing.assert_allclose(got, _embed_numpy(x.numpy(), t), atol=2e-5, rtol=0)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), [1, 1, 0, 1, 1, 1], atol=1e-5)


def test_precomputed_db_embedding_gives_the_same_answer():
    db, q = blobs(200, 32, 32, 4), blobs(9, 32, 32, 5)
    emb = pf.embed_db(db, db_chunk=64)
    assert emb.shape == (200, 256)
    torch.testing.assert_close(emb, pf.embed(db))
    ex = torch.tensor([3, -1, 7, -1, -1, 0, -1, 199, -1])
    a = pf.ssim_topk_prefilter(q, db, 10, exclude=ex, candidates=40)
    b = pf.ssim_topk_prefilter(q, db, 10, exclude=ex, candidates=40, db_embedding=emb)
    assert torch.equal(a[1], b[1]) and torch.equal(a[0], b[0])
    with pytest.raises(ValueError, match="db_embedding"):
        pf.ssim_topk_prefilter(q, db, 10, candidates=40, db_embedding=emb[:100])


def test_self_exclusion_in_both_stages():
    db = blobs(40, 24, 24, 3)
    ex = torch.tensor([0, 7, -1, 39])
    q = db[[0, 7, 7, 39]]
    s, c = pf.candidate_topk(q, db, 10, exclude=ex)
    assert not (c[[0, 1, 3]] == ex[[0, 1, 3], None]).any()
    assert c[2, 0].item() == 7  # no exclusion: the image itself has correlation 1
    # With every image a candidate, the excluded one is kept last at -inf...
    s, c = pf.candidate_topk(q, db, 40, exclude=ex)
    assert torch.isinf(s[[0, 1, 3], -1]).all() and (c[[0, 1, 3], -1] == ex[[0, 1, 3]]).all()
    # ...and the re-rank masks it again, so even k = N - 1 never returns it.
    s, i = pf.ssim_topk_prefilter(q, db, 100, exclude=ex, candidates=40)
    assert i.shape == (4, 39) and torch.isfinite(s).all()
    assert not (i[[0, 1, 3]] == ex[[0, 1, 3], None]).any()
    assert i[2, 0].item() == 7 and s[2, 0].item() == pytest.approx(1.0, abs=1e-5)
    with pytest.raises(ValueError, match="exclude"):
        pf.ssim_topk_prefilter(q, db, 3, exclude=torch.tensor([0, 1]))


def test_k_clamping_and_errors():
    db = blobs(12, 16, 16, 4)
    s, i = pf.ssim_topk_prefilter(db[:2], db, 500)
    assert i.shape == (2, 12) and sorted(i[0].tolist()) == list(range(12))
    s, i = pf.ssim_topk_prefilter(db[:2], db, 500, exclude=torch.tensor([0, 1]))
    assert i.shape == (2, 11)
    # A short-list shorter than k is raised to k.
    s, i = pf.ssim_topk_prefilter(db[:2], db, 5, candidates=2)
    assert i.shape == (2, 5)
    with pytest.raises(ValueError, match="k must be >= 1"):
        pf.ssim_topk_prefilter(db[:1], db, 0)
    with pytest.raises(ValueError, match="no neighbour"):
        pf.ssim_topk_prefilter(db[:1], db[:1], 3, exclude=torch.tensor([0]))
    with pytest.raises(ValueError, match="one size"):
        pf.ssim_topk_prefilter(db[:1], blobs(3, 16, 17, 4), 1)


def test_ties_go_to_the_lower_index():
    uniq = blobs(5, 20, 20, 5)
    db = uniq[[0, 1, 2, 3, 1, 4, 1, 2]]          # copies of uniq[1] at 1, 4, 6; uniq[2] at 2, 7
    q = torch.cat([uniq[[1]], blobs(2, 20, 20, 6)])
    s, i = pf.ssim_topk_prefilter(q, db, 8, candidates=8)
    assert i[0, :3].tolist() == [1, 4, 6] and (s[0, :3] == s[0, 0]).all()
    full = ssim_matrix_torch(q, db)
    for row in range(3):
        pos = {v: p for p, v in enumerate(i[row].tolist())}
        assert pos[2] < pos[7] and pos[1] < pos[4] < pos[6]
        np.testing.assert_allclose(s[row].numpy(), full[row].sort(descending=True).values.numpy(),
                                   rtol=0, atol=1e-6)
    # The copy at 4 ranks above 6 when 1 is excluded.
    s, i = pf.ssim_topk_prefilter(q[:1], db, 2, exclude=torch.tensor([1]), candidates=8)
    assert i[0].tolist() == [4, 6]


def test_chunking_does_not_change_the_answer():
    db, q = blobs(90, 20, 20, 7), blobs(9, 20, 20, 8)
    ex = torch.tensor([-1, 3, 89, -1, 0, 45, -1, 12, 60])
    ref = pf.ssim_topk_prefilter(q, db, 7, exclude=ex, candidates=25)
    # 7-image database chunks in both stages, and re-rank batches of 11 pairs.
    got = pf.ssim_topk_prefilter(q, db, 7, exclude=ex, candidates=25, db_chunk=7,
                                 max_block_elems=11 * 20 * 20)
    np.testing.assert_array_equal(got[1].numpy(), ref[1].numpy())
    np.testing.assert_allclose(got[0].numpy(), ref[0].numpy(), rtol=0, atol=1e-6)


def test_float16_database_and_constant_images():
    db = blobs(30, 16, 16, 9)
    db[[4, 5]] = torch.tensor([0.0, 0.6])[:, None, None, None]  # flat: zero embedding
    q = torch.cat([db[[4]], blobs(2, 16, 16, 10)])
    s, i = pf.ssim_topk_prefilter(q, db.half(), 6, candidates=12)
    ref = pf.ssim_topk_prefilter(q, db.half().float(), 6, candidates=12)
    assert torch.isfinite(s).all()
    np.testing.assert_array_equal(i.numpy(), ref[1].numpy())
    assert i[0, 0].item() == 4  # a flat image is found by the re-rank, SSIM 1 with itself
    assert torch.isfinite(pf.embed(db[[4, 5]])).all() and (pf.embed(db[[4, 5]]) == 0).all()


def test_measure_recall_reports():
    db, q = blobs(50, 16, 16, 11), blobs(4, 16, 16, 12)
    rep = pf.measure_recall(q, db, 5, candidates=50, backend="torch")
    assert rep == {"recall": 1.0, "k": 5, "candidates": 50, "n_db": 50, "ssim_pair_fraction": 1.0}
    rep = pf.measure_recall(q, db, 5, candidates=10, backend="torch")
    assert 0.0 <= rep["recall"] <= 1.0 and rep["ssim_pair_fraction"] == pytest.approx(0.2)


@needs_cpp
def test_cpp_rerank_matches_exact_and_torch_rerank():
    """The re-rank through the C++ all-pairs SSIM: with every image a candidate it is
    the C++ exact top-K; with a short list it agrees with the torch re-rank."""
    import frerec_fast as ff

    db, q = blobs(120, 32, 32, 3), blobs(6, 32, 32, 4)
    ex = torch.tensor([-1, 5, -1, 0, 119, -1])
    es, ei = ff.ssim_topk(q, db, 15, exclude=ex, backend="cpp")
    ps, pi = pf.ssim_topk_prefilter(q, db, 15, exclude=ex, candidates=10_000, backend="cpp")
    np.testing.assert_array_equal(pi.numpy(), ei.numpy())
    np.testing.assert_array_equal(ps.numpy(), es.numpy())
    # A short list: the same candidates, re-ranked by either backend's exact SSIM.
    ts, ti = pf.ssim_topk_prefilter(q, db, 15, exclude=ex, candidates=40, backend="torch")
    cs, ci = ff.ssim_topk(q, db, 15, exclude=ex, mode="prefilter", candidates=40, backend="cpp")
    # Each float32 path is ~2e-6 from float64 (tests/test_ssim.py), so up to ~4e-6 apart.
    np.testing.assert_allclose(cs.numpy(), ts.numpy(), rtol=0, atol=5e-6)
    assert (ci == ti).float().mean() >= 0.97  # only near-ties (< 5e-6 apart) may swap
    assert not (ci == ex[:, None]).any()


@needs_cpp
def test_cpp_ssim_pairs_matches_matrix_and_reference():
    from frerec_fast.fast.ssim_cpp import ssim_matrix as cpp_matrix
    from frerec_fast.fast.ssim_cpp import ssim_pairs as cpp_pairs

    db, q = blobs(40, 23, 29, 5), blobs(4, 23, 29, 6)
    g = torch.Generator().manual_seed(0)
    cand = torch.stack([torch.randperm(40, generator=g)[:9] for _ in range(4)])
    cand[1, 0] = cand[0, 0]  # an image short-listed by two queries
    got = cpp_pairs(q, db, cand)
    full = cpp_matrix(q, db)
    np.testing.assert_array_equal(got.numpy(), full.gather(1, cand).numpy())  # bit-identical
    np.testing.assert_allclose(got.numpy(), ref_ssim.ssim_pairs(q, db, cand).numpy(),
                               rtol=0, atol=5e-6)
    with pytest.raises(RuntimeError, match="outside"):
        cpp_pairs(q, db, cand + 40)
