"""SSIM top-K (method §4): exact top-K per backend and the prefilter mode, against a naive
torch baseline (the full ``ssim_matrix_torch`` matrix, then ``torch.topk``).

Data is the retrieval use case: the shipped DCGAN slices query a database of the
shipped real CT/MRI slices (64x64), grown to N by light augmentation (shifts of up to
3 pixels, mirror, gain 0.9-1.1, noise sd 0.01), so that the prefilter's recall is
measured on medical images rather than noise. Every row records its recall@K against
an exact reference (the ``auto`` exact backend; cpp and torch agree on 100% of the
top-200 on this data) in ``extra_info``; exact backends must reach 1.0.

Labels (``extra_info["backend"]``, the row names of benchmarks/ratios.py): ``torch`` is
the naive baseline that every ratio divides; ``exact-<backend>`` is
``frerec_fast.ssim_topk(mode="exact", backend=...)``; ``prefilter`` and
``prefilter-<C>`` are ``frerec_fast.prefilter.ssim_topk_prefilter`` with the default
and a fixed short-list of C candidates. Triton is skipped on CPU: its interpreter is a
correctness tool, not a performance path.
"""
import functools

import pytest
import torch

import frerec_fast as ff
from frerec_fast import backends, prefilter
from frerec_fast.reference.checks import clamp_k
from frerec_fast.reference.ssim import ssim_matrix as ssim_matrix_torch
from conftest import sync

SIZE, K = 64, 200
CASES = {"cpu": (64, 2048), "cuda": (256, 16384)}  # (queries, database images)


@functools.lru_cache(maxsize=2)
def _data(n_q: int, n_db: int):
    """Queries [n_q, 1, 64, 64] (DCGAN slices) and database [n_db, 1, 64, 64] (real
    slices, then augmented copies), float32 on CPU, deterministic."""
    from frerec_fast.datasets import load_images

    real = torch.cat([load_images("train"), load_images("heldout")]).float()
    syn = load_images("synthetic").float()
    g = torch.Generator().manual_seed(0)
    parts, have = [real], real.shape[0]
    while have < n_db:
        dy, dx = torch.randint(-3, 4, (2,), generator=g).tolist()
        x = torch.roll(real, (dy, dx), dims=(-2, -1))
        if torch.rand(1, generator=g).item() < 0.5:
            x = x.flip(-1)
        gain = 0.9 + 0.2 * torch.rand(real.shape[0], 1, 1, 1, generator=g)
        parts.append((x * gain + 0.01 * torch.randn(x.shape, generator=g)).clamp(0, 1))
        have += real.shape[0]
    q = syn[torch.arange(n_q) % syn.shape[0]]
    return q, torch.cat(parts)[:n_db]


@functools.lru_cache(maxsize=2)
def _reference(device_type: str, n_q: int, n_db: int):
    """Exact top-K indices [Q, K] from the fastest exact backend here (outside timing)."""
    q, db = _inputs(device_type, n_q, n_db)
    name = backends.resolve_name("ssim_topk", "auto", q.device)
    return name, ff.ssim_topk(q, db, K, backend=name)[1]


def _inputs(device_type: str, n_q: int, n_db: int):
    q, db = _data(n_q, n_db)
    return q.to(device_type), db.to(device_type)


def _case(device):
    n_q, n_db = CASES[device.type]
    return n_q, n_db, f"ssim-{device.type}-{SIZE}-q{n_q}-n{n_db}-k{K}"


def _run(benchmark, fn, device, group, label, n_q, n_db, **info):
    def timed():
        out = fn()
        sync(device)
        return out

    benchmark.group = group
    benchmark.extra_info.update(backend=label, items=n_q, size=SIZE, n_db=n_db, k=K,
                                device=str(device), **info)
    # A CPU call takes seconds, so 3 rounds without warm-up keep a --benchmark run to a
    # few minutes; GPU rounds are short and the first launch compiles, hence a warm-up.
    rounds, warmup = (5, 1) if device.type == "cuda" else (3, 0)
    return benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=warmup)


def _record_recall(benchmark, device, n_q, n_db, idx):
    ref_name, ref = _reference(device.type, n_q, n_db)
    recall = prefilter.recall_at_k(idx, ref)
    benchmark.extra_info.update(recall=recall, recall_reference=ref_name)
    return recall


def test_naive_baseline(benchmark, bench_device):
    n_q, n_db, group = _case(bench_device)
    q, db = _inputs(bench_device.type, n_q, n_db)
    k = clamp_k(K, n_db, False)
    s, i = _run(benchmark, lambda: torch.topk(ssim_matrix_torch(q, db), k, dim=1), bench_device,
                group, "torch", n_q, n_db, mode="naive", ssim_pair_fraction=1.0)
    # torch.topk orders ties arbitrarily, so only the set is compared.
    assert _record_recall(benchmark, bench_device, n_q, n_db, i) >= 0.999


@pytest.mark.parametrize("backend", ["torch", "cpp", "triton", "cuda"])
def test_exact(benchmark, bench_device, backend):
    if backend == "triton" and bench_device.type == "cpu":
        pytest.skip("triton on CPU runs in its interpreter, a correctness tool, not a "
                    "performance path (run the benchmarks on a CUDA machine)")
    why = backends.unavailable_reason("ssim_topk", backend, bench_device.type)
    if why:
        pytest.skip(why)
    n_q, n_db, group = _case(bench_device)
    q, db = _inputs(bench_device.type, n_q, n_db)
    s, i = _run(benchmark, lambda: ff.ssim_topk(q, db, K, backend=backend), bench_device,
                group, f"exact-{backend}", n_q, n_db, mode="exact", ssim_pair_fraction=1.0)
    # Exact backends agree up to float32 near-ties at the K-th place.
    assert _record_recall(benchmark, bench_device, n_q, n_db, i) >= 0.999


@pytest.mark.parametrize("rerank", ["torch", "auto"])
@pytest.mark.parametrize("candidates", [None, 512])
def test_prefilter(benchmark, bench_device, candidates, rerank):
    n_q, n_db, group = _case(bench_device)
    q, db = _inputs(bench_device.type, n_q, n_db)
    c = prefilter.default_candidates(K, n_db) if candidates is None else candidates
    label = "prefilter" if candidates is None else f"prefilter-{candidates}"
    if rerank != "torch":  # the re-rank through the fastest exact backend here
        label += "-" + backends.resolve_name("ssim_pairs", rerank, bench_device)
    s, i = _run(benchmark, lambda: prefilter.ssim_topk_prefilter(q, db, K, candidates=c,
                                                                 backend=rerank),
                bench_device, group, label, n_q, n_db, mode="prefilter", candidates=c,
                ssim_pair_fraction=c / n_db)
    recall = _record_recall(benchmark, bench_device, n_q, n_db, i)
    # Measured on the CPU case: 0.991 (C = 1024) and 0.914 (C = 512). A floor guards
    # against a broken candidate stage without pinning the number.
    assert recall >= (0.95 if c >= 1024 else 0.8)


SCALE = {"cpu": (32, 131072), "cuda": (256, 131072)}  # (queries, database) at scale


@pytest.fixture(scope="module")
def scale_reference(request):
    """(queries, database, exact top-K, exact seconds) of the at-scale case, once."""
    import time
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    n_q, n_db = SCALE[dev.type]
    q, db = _inputs(dev.type, n_q, n_db)
    ff.ssim_topk(q[:2], db[:1024], K, backend="auto")  # first-call costs (JIT, NVRTC) untimed
    sync(dev)
    t = time.perf_counter()
    exact = ff.ssim_topk(q, db, K, backend="auto")[1]
    sync(dev)
    return q, db, exact, time.perf_counter() - t


@pytest.mark.parametrize("fraction", [100, 50])
def test_prefilter_at_scale(benchmark, bench_device, request, fraction):
    """The kernels issue's target: recall@200 >= 0.99 at >= 100x less exact SSIM work.
    Needs N >> 100 * K, so N = 131072 (the shipped slices, augmented): one exact
    search (``auto`` backend, timed once, outside pytest-benchmark) is the reference;
    rows ``prefilter-1/<fraction>`` record recall and the speed-up over it. The
    database embedding is computed once (as RealIndex caches it), outside the timing.
    Not run with --benchmark-disable (the exact reference takes ~20 s on 2 CPU cores)."""
    if benchmark.disabled:
        pytest.skip("at-scale recall needs an exact search over 131072 images: "
                    "run with --benchmark")
    q, db, exact, exact_s = request.getfixturevalue("scale_reference")
    n_q, n_db = q.shape[0], db.shape[0]
    c = n_db // fraction
    emb = prefilter.embed_db(db)
    s, i = _run(benchmark, lambda: prefilter.ssim_topk_prefilter(
        q, db, K, candidates=c, backend="auto", db_embedding=emb), bench_device,
        f"ssim-{bench_device.type}-{SIZE}-q{n_q}-n{n_db}-scale",
        f"prefilter-1/{fraction}", n_q, n_db, mode="prefilter", candidates=c,
        ssim_pair_fraction=c / n_db, exact_seconds=exact_s)
    recall = prefilter.recall_at_k(i, exact)
    benchmark.extra_info.update(recall=recall, recall_reference="exact-auto",
                                speedup_vs_exact=exact_s / benchmark.stats.stats.median)
    # Measured on CPU: 0.997 (1/100) and 1.000 (1/50); the floor guards the embedding.
    assert recall >= 0.97
