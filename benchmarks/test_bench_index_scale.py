"""The sharded real index at scale: build, disk, load, exact and prefilter top-200, recall.

A 10^6-entry index (``FREREC_BENCH_SCALE=1``; ``FREREC_BENCH_SCALE_N`` changes the
count) is built on disk in shards of 65,536 from synthetic *varied* 64x64 images
(a smooth random field, a finer random field, a soft ellipse on half of them, and
noise of random level; generated deterministically per block of 256 images, so any
shard can be made by any process), through the same shard writer as ``build_index``
(``frerec_fast.index.files.write_shard``; band statistics by ``band_stats``, the
float16 thumbnails, the stored prefilter embeddings, checksums, manifest). Decoding a
million files is left out on purpose: the build time here is the index's own cost.

Rows (group ``index-scale-<device>-n<N>``, ``extra_info`` holds every number):
- ``build``: building all shards in 2 processes (one round); generation time of the
  synthetic images is reported apart (``generate_s``, summed over processes); disk bytes.
- ``open-lazy``: ``RealIndex.load`` (reads the manifest only).
- ``map-all``: open + map and check every shard (SHA-256, shapes, value ranges), as a
  first exact query does; also without checksums (``map_no_verify_s``). The files were
  just written, so the page cache is warm: a cold disk adds its read time (~9 GB).
- ``exact``: exact top-200 of 16 queries (fresh images of the same generator) over the
  whole index through ``ShardedIndex.neighbours``; if one shard's time projects a full
  pass over ~10 minutes, only ``EXACT_SHARDS`` shards are searched and the rate is
  extrapolated (``extrapolated`` says so).
- ``prefilter-<C>``: the sharded prefilter (per-shard embedding GEMM, merged short list,
  exact re-rank) with the default short list (``max(4k, 1024)``) and with N/100
  candidates; recall@200 against the exact answer over the same index.
- ``recall-fields``: recall@200 on the first two shards (131,072 images) for short lists
  of the default, 1/100, 1/20 and 1/10 of the images, against exact top-200 there.
- ``recall-dcgan``: the same on *real-like* images: 10^5 head slices sampled from the
  project's DCGAN (``frerec_fast.synth``, shipped weights, CT and MRI), written as a
  second sharded index; queries are fresh samples. The fields above are a hard case for
  the prefilter (their fine detail is independent of their coarse layout, which is all
  a 16x16 embedding sees); medical images are not.

Without ``FREREC_BENCH_SCALE=1`` the same code runs on 868 images in shards of 256 (a
smoke test of seconds, as CI runs it with ``--benchmark-disable``). The full run:

    FREREC_BENCH_SCALE=1 pytest benchmarks/test_bench_index_scale.py --benchmark \\
        --benchmark-json=benchmarks/results/index-scale-<device>-<date>.json
"""
from __future__ import annotations

import hashlib
import multiprocessing
import os
import resource
import shutil
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from frerec_fast import backends, prefilter
from frerec_fast.index import IndexConfig, RealIndex, files as ifiles, search
from frerec_fast.ops import band_stats
from conftest import device_name

SCALE = os.environ.get("FREREC_BENCH_SCALE") == "1"
N = int(os.environ.get("FREREC_BENCH_SCALE_N", 1_000_000)) if SCALE else 3 * 256 + 100
SHARD = 65536 if SCALE else 256
N_Q = 16 if SCALE else 4
K = 200
SIZE = 64
BLOCK = 256              # images per generator seed (divides every shard size used here)
WORKERS = 2 if SCALE else 1
EXACT_BUDGET_S = 600     # above this projected time, exact runs on EXACT_SHARDS shards
EXACT_SHARDS = 2
CFG = IndexConfig(work_size=(SIZE, SIZE), retrieval_size=(SIZE, SIZE), channels=1)
STATE: dict = {}


def _bicubic(cells: int) -> torch.Tensor:
    """[SIZE, cells]: bicubic upsampling of a cells-long signal to SIZE (torch's own
    bicubic, applied to unit impulses), so a 2-D field is U @ Z @ U^T (bicubic is
    separable): one small matmul instead of ``F.interpolate`` per image."""
    impulses = torch.eye(cells)[:, None, :, None]                     # [cells, 1, cells, 1]
    return F.interpolate(impulses, size=(SIZE, 1), mode="bicubic",
                         align_corners=False)[:, 0, :, 0].t().contiguous()


def fields(start: int, n: int, seed: int = 0) -> torch.Tensor:
    """Images start..start+n-1 of the synthetic set [n, 1, 64, 64] float32 in [0, 1]; image
    i depends only on (seed, i). start must be a multiple of BLOCK."""
    assert start % BLOCK == 0
    u5, u12 = _bicubic(5), _bicubic(12)
    grid = torch.linspace(-1, 1, SIZE)
    out = []
    for b0 in range(start, start + n, BLOCK):
        g = torch.Generator().manual_seed(seed * 1_000_003 + b0 // BLOCK)
        m = BLOCK
        r = torch.rand(m, 8, generator=g)
        low = u5 @ torch.randn(m, 5, 5, generator=g) @ u5.t()          # [m, 64, 64]
        mid = u12 @ torch.randn(m, 12, 12, generator=g) @ u12.t()
        x = 0.5 + (0.06 + 0.12 * r[:, 0, None, None]) * low \
            + (0.01 + 0.06 * r[:, 1, None, None]) * mid
        # a soft ellipse (an organ, a skull) on half of the images
        e = r[:, 6] > 0.5
        dx = ((grid[None] - (r[e, 2:3] - 0.5)) / (0.2 + 0.6 * r[e, 4:5])) ** 2    # [e, 64]
        dy = ((grid[None] - (r[e, 3:4] - 0.5)) / (0.2 + 0.6 * r[e, 5:6])) ** 2
        x[e] += ((r[e, 7] - 0.5) * 0.6)[:, None, None] \
            * torch.sigmoid((1 - dy[:, :, None] - dx[:, None, :]) * 12)
        x += (0.003 + 0.03 * torch.rand(m, 1, 1, generator=g)) \
            * torch.randn(m, SIZE, SIZE, generator=g)
        out.append(x.clamp_(0, 1)[:, None])
    return torch.cat(out)[:n]


def make_shard(out: str, number: int, start: int, n: int) -> tuple:
    """Shard ``number`` = images start..start+n-1, written by the index's shard writer.
    Returns (manifest entry, seconds spent generating images)."""
    gen = 0.0
    thumbs, mus, sigmas = [], [], []
    for a in range(start, start + n, 4096):
        t0 = time.perf_counter()
        x = fields(a, min(4096, start + n - a))
        gen += time.perf_counter() - t0
        mu, sigma = band_stats(x, ratio=CFG.ratio, domain=CFG.domain)
        thumbs.append(x.half())          # retrieval size = working size: the image itself
        mus.append(mu.float())
        sigmas.append(sigma.float())
    keys = [f"synthetic/{i:07d}.png" for i in range(start, start + n)]
    hashes = [hashlib.sha256(k.encode()).hexdigest() for k in keys]  # stand-in file hashes
    entry = ifiles.write_shard(Path(out), number, CFG, torch.cat(thumbs), torch.cat(mus),
                               torch.cat(sigmas), keys, hashes, [])
    return entry, gen


def _one_thread():
    torch.set_num_threads(1)


def build(out: Path) -> dict:
    """All shards (WORKERS processes), then the manifest."""
    t0 = time.perf_counter()
    jobs = [(str(out), i, a, min(SHARD, N - a)) for i, a in enumerate(range(0, N, SHARD))]
    if WORKERS > 1:
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(WORKERS, mp_context=ctx, initializer=_one_thread) as pool:
            done = list(pool.map(make_shard, *zip(*jobs)))
    else:
        done = [make_shard(*j) for j in jobs]
    ifiles.write_manifest(out, CFG, [e for e, _ in done], SHARD)
    return {"build_s": time.perf_counter() - t0, "generate_s": sum(g for _, g in done)}


def disk_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def rss_mb() -> dict:
    """Peak RSS of this process and of the build processes, and the current split of
    this process's RSS: anonymous memory (its own) and file pages (the memory-mapped
    index, shared with the page cache)."""
    out = {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
           "peak_rss_children_mb":
               round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)}
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(("RssAnon:", "RssFile:")):
                name, kb = line.split()[:2]
                out[f"rss_{name[3:-1].lower()}_mb"] = round(int(kb) / 1024)
    except OSError:
        pass
    return out


def group() -> str:
    return f"index-scale-{'cuda' if torch.cuda.is_available() else 'cpu'}-n{N}"


@pytest.fixture(autouse=True)
def _group(benchmark):
    benchmark.group = group()  # before the run: pytest-benchmark reads it when timing


def info(benchmark, label: str, **kw) -> None:
    benchmark.extra_info.update(backend=label, n=N, shard_size=SHARD, shards=-(-N // SHARD),
                                size=SIZE, k=K, queries=N_Q, device=device_name(),
                                scale=SCALE, **rss_mb(), **kw)


@pytest.fixture(scope="module")
def root():
    base = os.environ.get("FREREC_BENCH_SCALE_DIR") or None
    d = Path(tempfile.mkdtemp(prefix="frerec-index-scale-", dir=base))
    yield d
    shutil.rmtree(d, ignore_errors=True)  # ~9 GB at full scale: never left behind


@pytest.fixture(scope="module")
def index_dir(root):
    if "build" not in STATE:
        STATE["build"] = build(root / "idx")
    return root / "idx"


@pytest.fixture(scope="module")
def q():
    return fields(0, N_Q, seed=1)  # fresh images of the same generator, not in the index


def test_build(benchmark, root):
    out = root / "idx"
    STATE["build"] = benchmark.pedantic(build, args=(out,), rounds=1, iterations=1)
    size = disk_bytes(out)
    info(benchmark, "build", items=N, workers=WORKERS, disk_bytes=size, disk_gb=size / 1e9,
         bytes_per_image=size / N, images_per_s=N / STATE["build"]["build_s"],
         **STATE["build"])
    assert len(RealIndex.load(out)) == N


def test_open_lazy(benchmark, index_dir):
    idx = benchmark.pedantic(RealIndex.load, args=(index_dir,), rounds=5, iterations=1)
    info(benchmark, "open-lazy")
    assert idx.shards_loaded == () and len(idx) == N


def _map_all(index_dir: Path, verify) -> RealIndex:
    idx = RealIndex.load(index_dir, verify=verify)
    for i in range(len(idx.manifest.shards)):
        idx.shard(i)
    return idx


def _mapped(index_dir: Path) -> RealIndex:
    """One mapped index for the query rows (a second mapping would count the same file
    pages twice in RSS)."""
    if STATE.get("mapped") is None:
        STATE["mapped"] = _map_all(index_dir, False)
    return STATE["mapped"]


def test_map_all_shards(benchmark, index_dir):
    t0 = time.perf_counter()
    _map_all(index_dir, False)
    no_verify = time.perf_counter() - t0
    idx = benchmark.pedantic(_map_all, args=(index_dir, "lazy"), rounds=1, iterations=1)
    STATE["mapped"] = idx
    info(benchmark, "map-all", map_no_verify_s=no_verify)
    assert idx.shards_loaded == tuple(range(len(idx.manifest.shards)))


def test_exact(benchmark, index_dir, q):
    idx = _mapped(index_dir)  # mapping and checks are the row above
    n_shards = len(idx.manifest.shards)
    t0 = time.perf_counter()
    n0 = idx.manifest.shards[0].count
    search.exact_topk(q, [(0, idx.shard(0)["thumbs"])], n0, K)  # one shard, untimed
    projected = (time.perf_counter() - t0) * N / n0
    if projected <= EXACT_BUDGET_S or n_shards <= EXACT_SHARDS:
        nb = benchmark.pedantic(idx.neighbours, args=(q, K), rounds=1, iterations=1)
        STATE["exact_ids"] = nb.ids
        searched, extrapolated = N, False
    else:
        n_sub = sum(e.count for e in idx.manifest.shards[:EXACT_SHARDS])
        parts = [(idx.shard_starts[i], idx.shard(i)["thumbs"]) for i in range(EXACT_SHARDS)]
        benchmark.pedantic(search.exact_topk, args=(q, parts, n_sub, K), rounds=1,
                           iterations=1)
        searched, extrapolated = n_sub, True
    secs = benchmark.stats.stats.median if benchmark.stats else time.perf_counter() - t0
    full_s = secs * N / searched
    info(benchmark, "exact", items=N_Q * searched / N,
         backend_op=backends.resolve_name("ssim_topk", "auto", "cpu"),
         searched=searched, extrapolated=extrapolated, projected_from_one_shard_s=projected,
         full_pass_s=full_s, queries_per_s=N_Q / full_s, pairs_per_s=N_Q * N / full_s)


@pytest.mark.parametrize("fraction", [None, 100])
def test_prefilter(benchmark, index_dir, q, fraction):
    idx = _mapped(index_dir)
    c = prefilter.default_candidates(K, N) if fraction is None else max(K, N // fraction)
    idx.neighbours(q[:1], K, mode="prefilter", candidates=c)  # warm-up
    nb = benchmark.pedantic(idx.neighbours, args=(q, K), kwargs={"mode": "prefilter",
                            "candidates": c}, rounds=3, iterations=1)
    extra = {}
    if "exact_ids" in STATE:
        extra["recall_at_200"] = prefilter.recall_at_k(nb.ids, STATE["exact_ids"])
        extra["recall_reference"] = f"exact top-{K} over all {N} images"
    secs = benchmark.stats.stats.median if benchmark.stats else None
    info(benchmark, f"prefilter-{c}", items=N_Q, candidates=c, ssim_pair_fraction=c / N,
         queries_per_s=N_Q / secs if secs else None, **extra)


def _curve(q, thumbs, emb, gather, n_sub, cands) -> tuple[dict, float]:
    """(recall@K per short-list length, exact seconds) over the given shards."""
    t0 = time.perf_counter()
    _, exact = search.exact_topk(q, thumbs, n_sub, K)
    exact_s = time.perf_counter() - t0
    recalls = {}
    for c in cands:
        _, got = search.prefilter_topk(q, emb, gather, n_sub, K, candidates=c)
        recalls[str(c)] = prefilter.recall_at_k(got, exact)
    return recalls, exact_s


def test_recall_subset(benchmark, index_dir, q):
    """recall@200 on the first two shards of the synthetic fields (131,072 images at full
    scale) for short lists of the default, 1/100, 1/20 and 1/10 of the images."""
    idx = _mapped(index_dir)
    m = min(2, len(idx.manifest.shards))
    n_sub = sum(e.count for e in idx.manifest.shards[:m])
    thumbs = [(idx.shard_starts[i], idx.shard(i)["thumbs"]) for i in range(m)]
    emb = [(idx.shard_starts[i], idx.shard(i)["embed"]) for i in range(m)]
    cands = sorted({prefilter.default_candidates(K, n_sub)}
                   | {min(n_sub, max(K, n_sub // f)) for f in (100, 20, 10)})
    recalls, exact_s = _curve(q, thumbs, emb, idx.thumbs_at, n_sub, cands)
    c100 = max(K, n_sub // 100)
    benchmark.pedantic(search.prefilter_topk, args=(q, emb, idx.thumbs_at, n_sub, K),
                       kwargs={"candidates": c100}, rounds=1, iterations=1)
    info(benchmark, "recall-fields", items=N_Q, subset=n_sub, candidates=c100,
         recall_at_200_by_candidates=recalls, exact_subset_s=exact_s,
         data="synthetic smooth fields (this index's first shards)",
         recall_queries=f"{N_Q} fresh images of the same generator")
    assert all(0 <= r <= 1 for r in recalls.values())


N_DCGAN = 100_000 if SCALE else 600


def dcgan_images(start: int, n: int, seed: int = 0) -> torch.Tensor:
    """The project's DCGAN (``frerec_fast.synth``, shipped weights; CT and MRI head
    slices) sampled: images start..start+n-1 [n, 1, 64, 64] in [0, 1], image i from
    (seed, i) only; classes in the training set's mix."""
    from frerec_fast.datasets import data_root
    from frerec_fast.synth.checkpoint import load_generator
    g = load_generator(data_root() / "dcgan.safetensors").eval()
    frac_ct = g.cfg.class_fractions[0] / sum(g.cfg.class_fractions)
    out = []
    with torch.no_grad():
        for b0 in range(start - start % BLOCK, start + n, BLOCK):
            gen = torch.Generator().manual_seed(seed * 1_000_003 + b0 // BLOCK)
            z = torch.randn(BLOCK, g.cfg.nz, generator=gen)
            labels = (torch.rand(BLOCK, generator=gen) >= frac_ct).long()
            out.append(g(z, labels).clamp(0, 1))
    x = torch.cat(out)
    return x[start % BLOCK:start % BLOCK + n]


def test_recall_dcgan(benchmark, root):
    """recall@200 on real-like images: an index of N_DCGAN (10^5 at full scale) DCGAN
    head slices, written as shards of 65,536 by the index's shard writer; queries are
    fresh samples (another seed)."""
    out = root / "dcgan"
    t0 = time.perf_counter()
    entries = []
    for j, a in enumerate(range(0, N_DCGAN, SHARD)):
        x = dcgan_images(a, min(SHARD, N_DCGAN - a))
        mu, sigma = band_stats(x, ratio=CFG.ratio, domain=CFG.domain)
        keys = [f"dcgan/{i:07d}.png" for i in range(a, a + x.shape[0])]
        entries.append(ifiles.write_shard(out, j, CFG, x.half(), mu, sigma, keys,
                                          [hashlib.sha256(k.encode()).hexdigest()
                                           for k in keys], []))
    ifiles.write_manifest(out, CFG, entries, SHARD)
    build_s = time.perf_counter() - t0
    idx = _map_all(out, False)
    q = dcgan_images(0, N_Q, seed=7)
    n = len(idx)
    thumbs = [(idx.shard_starts[i], idx.shard(i)["thumbs"]) for i in range(len(entries))]
    emb = [(idx.shard_starts[i], idx.shard(i)["embed"]) for i in range(len(entries))]
    cands = sorted({prefilter.default_candidates(K, n)}
                   | {min(n, max(K, n // f)) for f in (100, 50, 20, 10)})
    recalls, exact_s = _curve(q, thumbs, emb, idx.thumbs_at, n, cands)
    c = prefilter.default_candidates(K, n)
    benchmark.pedantic(idx.neighbours, args=(q, K), kwargs={"mode": "prefilter",
                       "candidates": c}, rounds=1, iterations=1)
    info(benchmark, "recall-dcgan", items=N_Q, subset=n, candidates=c,
         recall_at_200_by_candidates=recalls, exact_s=exact_s, build_with_sampling_s=build_s,
         data="DCGAN head slices (frerec_fast.synth, shipped weights), varied latents",
         recall_queries=f"{N_Q} fresh DCGAN samples (another seed)")
    assert all(0 <= r <= 1 for r in recalls.values())
