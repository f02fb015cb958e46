"""Candidate generators for the SSIM prefilter: the project's exact GEMM short list
against FAISS (Flat, IVF-Flat, IVF-PQ, HNSW) on the same embeddings, and better
embeddings; every short list is re-ranked by the same exact SSIM to top-200 (issue 15).

    OMP_NUM_THREADS=1 python benchmarks/ann_compare.py --set dcgan --n 100000
    OMP_NUM_THREADS=1 python benchmarks/ann_compare.py --set fields --n 1000000 \\
        --store /tmp/ann-fields            # thumbnails memory-mapped from disk (8 GB)

Data: ``dcgan`` = head slices sampled from the project's DCGAN (real-like; the
generator of ``test_bench_index_scale.py``'s recall-dcgan row), ``fields`` = that
benchmark's synthetic smooth fields (a hard case: fine detail independent of the
coarse layout). Queries: fresh samples of the same generator (another seed).

Per method (rows of ``results``): recall@200 of the re-ranked answer against exact SSIM
top-200 over all N (``search.exact_topk``), recall of the short list against the exact
inner-product top-C of the same embedding (``shortlist_recall``: what an ANN loses),
candidate-stage and total seconds per query (one thread), build (train + add) seconds,
and the index's bytes. Everything runs with one torch / FAISS thread.
JSON: ``benchmarks/results/ann-compare-<set>-n<N>-<device>-<date>.json``.
"""
from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from frerec_fast import prefilter  # noqa: E402
from frerec_fast.index import search  # noqa: E402

K = 200


def _rss_mb() -> dict:
    return {"peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}


def make_data(name: str, n: int, store: str | None, n_q: int):
    """thumbs [N, 1, 64, 64] float16 (in RAM, or a memory-mapped file under ``store``),
    queries [Q, 1, 64, 64] float32. Generated in blocks of 4096 (one thread)."""
    import test_bench_index_scale as tb
    gen = tb.dcgan_images if name == "dcgan" else tb.fields
    if store:
        Path(store).mkdir(parents=True, exist_ok=True)
        path = Path(store) / f"{name}-{n}.f16"
        mm = np.lib.format.open_memmap(path, mode="w+", dtype=np.float16,
                                       shape=(n, 1, 64, 64))
        thumbs = torch.from_numpy(mm)
    else:
        thumbs = torch.empty(n, 1, 64, 64, dtype=torch.float16)
    for a in range(0, n, 4096):
        thumbs[a:a + 4096] = gen(a, min(4096, n - a)).half()
    if store:
        mm.flush()
    q = gen(0, n_q, seed=7 if name == "dcgan" else 1)
    return thumbs, q


def exact_truth(q, thumbs):
    """Exact SSIM top-K over all N, shard-sized pieces (the sharded index's exact path)."""
    n = thumbs.shape[0]
    parts = ((a, thumbs[a:a + 65536]) for a in range(0, n, 65536))
    return search.exact_topk(q, parts, n, K)[1]


def rerank(q, thumbs, cand):
    """Stage 2 of ``search.prefilter_topk`` on a given short list [Q, C] of global ids:
    the short-listed thumbnails gathered once, exact SSIM, top-K. FAISS pads a short
    list with -1 where it found fewer than C: such rows are re-ranked one by one on
    their real ids (and may return fewer than K; the rest count as misses)."""
    if not bool((cand < 0).any()):
        uniq = torch.unique(cand)
        local = torch.searchsorted(uniq, cand)
        _, i = prefilter.rerank_with(q, thumbs[uniq], local, K, None, "auto")
        return uniq[i]
    out = torch.full((cand.shape[0], K), -1, dtype=torch.long)
    for r in range(cand.shape[0]):
        ids = torch.unique(cand[r][cand[r] >= 0])
        if ids.numel() == 0:
            continue
        kk = min(K, ids.numel())
        _, i = prefilter.rerank_with(q[r:r + 1], thumbs[ids],
                                     torch.arange(ids.numel())[None], kk, None, "auto")
        out[r, :kk] = ids[i[0]]
    return out


def shortlist_recall(got: torch.Tensor, ref: torch.Tensor) -> float:
    """|got row & ref row| / C averaged over rows (FAISS -1 padding counts as a miss)."""
    hits = 0
    for a, b in zip(got.tolist(), ref.tolist()):
        hits += len(set(a) & set(b))
    return hits / ref.numel()


def gemm_shortlist(eq: torch.Tensor, emb: torch.Tensor, c: int) -> torch.Tensor:
    """The project's candidate stage: exact inner products per shard (chunks of
    DEFAULT_DB_CHUNK), ``top_c`` per shard, merged (``search.prefilter_topk`` stage 1)."""
    from frerec_fast.reference.ssim import merge_topk
    n_q, n = eq.shape[0], emb.shape[0]
    best_s = torch.empty(n_q, 0)
    best_i = torch.empty(n_q, 0, dtype=torch.long)
    for start in range(0, n, 65536):
        e = emb[start:start + 65536]
        block = torch.empty(n_q, e.shape[0])
        for j in range(0, e.shape[0], prefilter.DEFAULT_DB_CHUNK):
            block[:, j:j + prefilter.DEFAULT_DB_CHUNK] = \
                eq @ e[j:j + prefilter.DEFAULT_DB_CHUNK].t()
        s, i = search.top_c(block, c, start)
        best_s, best_i = merge_topk(best_s, best_i, s, i, c)
    return best_i


def pca_embed(thumbs, q, thumb: int, dim: int, n_fit: int = 20000, chunk: int = 8192):
    """``prefilter.embed`` at ``thumb`` then PCA (fit on n_fit evenly spaced rows) to
    ``dim`` and L2-normalised. Returns (db [N, dim], q [Q, dim], fit seconds)."""
    t0 = time.perf_counter()
    n = thumbs.shape[0]
    step = max(1, n // n_fit)
    fit = prefilter.embed(thumbs[::step][:n_fit].float(), thumb)
    mean = fit.mean(0)
    # Principal axes from the [t^2, t^2] covariance (cheaper than an SVD of the rows).
    x = fit - mean
    _, vecs = torch.linalg.eigh(x.t() @ x)                            # ascending
    basis = vecs[:, -dim:].flip(1).contiguous()                       # [t^2, dim]

    def proj(x):
        e = (prefilter.embed(x.float(), thumb) - mean) @ basis
        return e / e.norm(dim=1, keepdim=True).clamp_min(1e-30)
    db = torch.cat([proj(thumbs[a:a + chunk]) for a in range(0, n, chunk)])
    return db, proj(q), time.perf_counter() - t0


def plain_embed(thumbs, q, thumb: int, chunk: int = 8192):
    t0 = time.perf_counter()
    db = torch.cat([prefilter.embed(thumbs[a:a + chunk].float(), thumb)
                    for a in range(0, thumbs.shape[0], chunk)])
    return db, prefilter.embed(q, thumb), time.perf_counter() - t0


def timed(fn, *a, **kw):
    t0 = time.perf_counter()
    out = fn(*a, **kw)
    return out, time.perf_counter() - t0


def run_embeddings(args, q, thumbs, truth, base, c, log) -> None:
    """The GEMM short list over each of ``args.embeddings``, then the same re-rank."""
    for name in args.embeddings:
        if name.startswith("t") and "pca" in name:
            t, dim = (int(v) for v in name[1:].split("pca"))
            db2, q2, b = pca_embed(thumbs, q, t, dim)
        else:
            t = int(name[1:])
            db2, q2, b = plain_embed(thumbs, q, t)
        cand, t_c = timed(gemm_shortlist, q2, db2, c)
        got, t_r = timed(rerank, q, thumbs, cand)
        log({**base, "method": "gemm (project, exact inner product)", "embedding": name,
             "dim": db2.shape[1], "recall_at_200": prefilter.recall_at_k(got, truth),
             "cand_s_per_q": t_c / args.queries, "rerank_s_per_q": t_r / args.queries,
             "queries_per_s": args.queries / (t_c + t_r), "build_s": b,
             "index_bytes": db2.numel() * 4})
        del db2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--set", choices=["dcgan", "fields"], default="dcgan")
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--queries", type=int, default=32)
    ap.add_argument("--fractions", type=int, nargs="+", default=[100],
                    help="short list = N / f candidates (1/f of the exact SSIM work)")
    ap.add_argument("--store", default=None, help="memory-map the thumbnails from here")
    ap.add_argument("--nprobe", type=int, nargs="+", default=[4, 8, 16, 32, 64, 128])
    ap.add_argument("--hnsw-m", type=int, default=32)
    ap.add_argument("--ef", type=float, nargs="+", default=[1.0, 2.0, 4.0],
                    help="HNSW efSearch as multiples of C (FAISS needs efSearch >= C)")
    ap.add_argument("--no-hnsw", action="store_true")
    ap.add_argument("--no-faiss", action="store_true",
                    help="only the GEMM short list and the --embeddings")
    ap.add_argument("--embeddings", nargs="*", default=["t32", "t32pca256", "t64pca256"],
                    help="extra embeddings (exact GEMM short list only)")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()

    import faiss
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    from conftest import device_name

    res = {"set": args.set, "n": args.n, "queries": args.queries, "k": K,
           "device": device_name(), "torch_threads": torch.get_num_threads(),
           "faiss": faiss.__version__, "date": datetime.datetime.utcnow().isoformat(),
           "results": []}

    def log(row):
        row.update(_rss_mb())
        res["results"].append(row)
        print(json.dumps(row), flush=True)

    (thumbs, q), gen_s = timed(make_data, args.set, args.n, args.store, args.queries)
    res["generate_s"] = gen_s
    truth, exact_s = timed(exact_truth, q, thumbs)
    res["exact_s"] = exact_s
    res["exact_queries_per_s"] = args.queries / exact_s
    print(f"data {gen_s:.1f}s, exact {exact_s:.1f}s", flush=True)
    n = args.n
    emb, build_s = timed(prefilter.embed_db, thumbs)
    eq = prefilter.embed(q)
    d = emb.shape[1]
    emb_np = emb.numpy()
    eq_np = eq.numpy()

    for f in args.fractions:
        c = max(K, n // f)
        ref, t_c = timed(gemm_shortlist, eq, emb, c)
        got, t_r = timed(rerank, q, thumbs, ref)
        base = {"candidates": c, "ssim_fraction": c / n}
        log({**base, "method": "gemm (project, exact inner product)", "embedding": "t16",
             "recall_at_200": prefilter.recall_at_k(got, truth), "shortlist_recall": 1.0,
             "cand_s_per_q": t_c / args.queries, "rerank_s_per_q": t_r / args.queries,
             "queries_per_s": args.queries / (t_c + t_r), "build_s": build_s,
             "index_bytes": emb.numel() * 4})

        if args.no_faiss:
            run_embeddings(args, q, thumbs, truth, base, c, log)
            continue

        def run_faiss(label, index, build, **extra):
            (_, ids), t_c = timed(index.search, eq_np, c)
            ids = torch.from_numpy(ids).long()
            got, t_r = timed(rerank, q, thumbs, ids)
            log({**base, "method": label, "embedding": "t16",
                 "recall_at_200": prefilter.recall_at_k(got, truth),
                 "shortlist_recall": shortlist_recall(ids, ref),
                 "cand_s_per_q": t_c / args.queries, "rerank_s_per_q": t_r / args.queries,
                 "queries_per_s": args.queries / (t_c + t_r), "build_s": build,
                 "index_bytes": int(faiss.serialize_index(index).nbytes), **extra})

        flat = faiss.IndexFlatIP(d)
        _, b = timed(flat.add, emb_np)
        run_faiss("faiss IndexFlatIP", flat, b)
        del flat

        nlist = int(4 * math.sqrt(n))
        ivf = faiss.IndexIVFFlat(faiss.IndexFlatIP(d), d, nlist, faiss.METRIC_INNER_PRODUCT)
        train = emb_np[:: max(1, n // (64 * nlist))]
        _, t_train = timed(ivf.train, train)
        _, t_add = timed(ivf.add, emb_np)
        for p in args.nprobe:
            ivf.nprobe = p
            run_faiss(f"faiss IVF{nlist},Flat nprobe={p}", ivf, t_train + t_add,
                      nlist=nlist, nprobe=p, train_rows=int(train.shape[0]))
        del ivf

        pq = faiss.IndexIVFPQ(faiss.IndexFlatIP(d), d, nlist, 32, 8,
                              faiss.METRIC_INNER_PRODUCT)
        _, t_train = timed(pq.train, train)
        _, t_add = timed(pq.add, emb_np)
        for p in args.nprobe:
            pq.nprobe = p
            run_faiss(f"faiss IVF{nlist},PQ32 nprobe={p}", pq, t_train + t_add,
                      nlist=nlist, nprobe=p)
        del pq

        if not args.no_hnsw:
            h = faiss.IndexHNSWFlat(d, args.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            h.hnsw.efConstruction = 40
            _, b = timed(h.add, emb_np)
            for m in args.ef:
                h.hnsw.efSearch = int(m * c)
                run_faiss(f"faiss HNSW{args.hnsw_m},Flat efSearch={int(m * c)}", h, b,
                          efSearch=int(m * c), efConstruction=40)
            del h

        run_embeddings(args, q, thumbs, truth, base, c, log)

    stamp = datetime.date.today().strftime("%Y%m%d")
    dev = "".join(ch if ch.isalnum() else "-" for ch in res["device"].lower()).strip("-")
    while "--" in dev:
        dev = dev.replace("--", "-")
    out = Path(args.out) if args.out else \
        HERE / "results" / f"ann-compare-{args.set}-n{n}-{dev}-{stamp}.json"
    out.write_text(json.dumps(res, indent=1))
    print("wrote", out)
    if args.store:
        os.remove(Path(args.store) / f"{args.set}-{n}.f16")


if __name__ == "__main__":
    main()
