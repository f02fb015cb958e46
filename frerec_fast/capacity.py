"""Capacity model of a calibration job: how many CPU cores (Ray workers) and GPUs a job of
N images needs to finish within a deadline, and which stage bounds it.

The model (docs/capacity.md has the numbers and their sources). Every image costs, per
stage s, ``t_s = 1 / r_s`` seconds of the unit that runs it (one CPU core, or one GPU),
where ``r_s`` is the stage's measured rate in images per second on one such unit:

    decode, encode          always on CPU cores (the reader and the writer)
    retrieval               exact:     t = M / p             (M index images, p SSIM pairs/s)
                            prefilter: t = M / e + C / r     (e embedding rows/s, C candidates,
                                                              r re-rank pairs/s)
    shr, rhm                on a GPU when the job has GPUs and the rates have GPU numbers
                            for the stage, else on CPU cores; rhm by engine

A job of N images with deadline D (less the workers' start, the index and model load,
``worker_start_s``) at utilisation u (the share of each unit's time spent on images:
stragglers, the tail and scheduling cost the rest) needs

    cores = N * sum(t_s, s on CPU) / ((D - start) * u)      -> workers = cores / cpus_per_worker
    GPUs  = N * sum(t_s, s on GPU) / ((D - start) * u)

and the bottleneck is the stage with the largest ``t_s`` on the unit that runs out
first. Each unit is assumed to scale linearly with its count (Ray workers share
nothing but the filesystem); one core per worker is what the CPU rates were measured
at. Rates are per work-size tile: an image cut into T tiles costs T times as much in
retrieval, SHR and the RHM.

``measure_rates`` times each stage on the bundled images (one torch thread: rates per
core), ``plan_capacity`` applies the model, ``format_plan`` prints it, and
``frerec capacity`` is the command (``register`` adds it to ``frerec``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path

RATES_VERSION = 1
STAGES = ("decode", "retrieval", "shr", "rhm", "encode")
GPU_STAGES = ("retrieval", "shr", "rhm")  # decode and encode stay on the host's cores

# Rates measured on this project's 2-core CI-size machine (shared AMD EPYC VM, torch 2.13
# CPU, one torch thread), shipped model at 64x64, micro-batch 8: ``frerec capacity
# --measure --seconds 3`` on 2026-11-29, load average about 3
# (benchmarks/results/capacity-rates-cpu-amd-epyc-x2-20261129.json, which also holds a
# repeat under heavier load; docs/capacity.md compares them with the committed benchmark
# JSONs). worker_start_s: a Ray worker's index + model load and OpenVINO build, 1.9-2.5 s
# (benchmarks/results/ray-shard-cost-cpu-amd-epyc-x2-20261129.json). No GPU numbers: no
# GPU was ever available to this project.
DEFAULT_RATES: dict = {
    "frerec_capacity_rates": RATES_VERSION,
    "source": "measured on the project's 2-core AMD EPYC VM, 1 thread, shipped RHM at 64x64 "
              "(benchmarks/results/capacity-rates-cpu-amd-epyc-x2-20261129.json)",
    "work_size": [64, 64],
    "index_size_measured": 171,
    "worker_start_s": 2.0,
    "cpu": {"decode": 5200.0, "encode": 700.0, "shr": 19000.0,
            "rhm": {"onnxruntime": 34.0, "openvino": 31.4, "eager": 31.0},
            "ssim_pairs_per_s": 72000.0, "embedding_rows_per_s": 1.59e7,
            # The prefilter's re-rank scores each short-listed image for one query only:
            # its local statistics are not shared across queries as the exact scan's are
            # (3 windowed filters per pair, not 1), so a pair costs ~3.5x more. Measured
            # 20,300 pairs/s, one thread, 32 DCGAN queries x 1,000 candidates over 10^5
            # (benchmarks/results/ann-compare-dcgan-n100000-cpu-amd-epyc-x1-threads-
            # 20261129.json; 13,100/s at 10^6 with 10^4 candidates read from mapped shards).
            "rerank_pairs_per_s": 20300.0},
}


# -- the model ------------------------------------------------------------------------------
def parse_duration(text: str | float) -> float:
    """Seconds from "2h", "90m", "45s", "1d", "1h30m" or a plain number of seconds."""
    if isinstance(text, (int, float)):
        secs = float(text)
    else:
        s = str(text).strip().lower()
        parts = re.fullmatch(r"((?:\d+(?:\.\d*)?|\.\d+)(?:[dhms])?)+", s) and \
            re.findall(r"(\d+(?:\.\d*)?|\.\d+)([dhms]?)", s)
        if not parts:
            raise ValueError(f"{text!r}: a deadline is a duration such as 2h, 90m, 1h30m, "
                             "3600s or 3600")
        unit = {"d": 86400.0, "h": 3600.0, "m": 60.0, "s": 1.0, "": 1.0}
        secs = sum(float(v) * unit[u] for v, u in parts)
    if not secs > 0:
        raise ValueError(f"a deadline must be positive, got {text!r}")
    return secs


def parse_count(text: str | float) -> int:
    """An image count from "1e6", "1000000", "10_000" or a number."""
    try:
        n = float(str(text).replace("_", "").replace(",", ""))
    except ValueError:
        raise ValueError(f"{text!r}: an image count such as 1e6 or 250000") from None
    if not (n >= 1 and n == int(n)):
        raise ValueError(f"an image count must be a whole number >= 1, got {text!r}")
    return int(n)


def check_rates(rates: dict) -> dict:
    """``rates`` if it is a rates document this module can use, else a ValueError
    saying what is wrong."""
    if not isinstance(rates, dict) or rates.get("frerec_capacity_rates") != RATES_VERSION:
        raise ValueError("not a rates file of this version: expected a JSON object with "
                         f'"frerec_capacity_rates": {RATES_VERSION} (write one with frerec '
                         "capacity --measure --save FILE)")
    if not isinstance(rates.get("cpu"), dict):
        raise ValueError('a rates file needs a "cpu" block (decode and encode run on CPU)')
    for unit in ("cpu", "gpu"):
        block = rates.get(unit)
        if block is None:
            continue
        if not isinstance(block, dict):
            raise ValueError(f'"{unit}" must be an object of rates')
        for key, v in block.items():
            vals = v.values() if key == "rhm" and isinstance(v, dict) else [v]
            for x in vals:
                if not isinstance(x, (int, float)) or isinstance(x, bool) or not x > 0:
                    raise ValueError(f'{unit}.{key}: rates are positive numbers (images, '
                                     f'pairs or rows per second), got {x!r}')
    for key in ("decode", "encode"):
        if key not in rates["cpu"]:
            raise ValueError(f'the "cpu" block needs "{key}" (images/s on one core)')
    return rates


def load_rates(path: str | os.PathLike) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except OSError as e:
        raise ValueError(f"{path}: cannot read the rates file ({e.strerror})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    try:
        return check_rates(data)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def _retrieval_seconds(block: dict, mode: str, index_size: int, candidates: int) -> float | None:
    pairs = block.get("ssim_pairs_per_s")
    if pairs is None:
        return None
    if mode == "exact":
        return index_size / pairs
    rows = block.get("embedding_rows_per_s")
    if rows is None:
        return None
    # Rates files written before the re-rank had its own rate fall back to the exact
    # scan's (optimistic: see DEFAULT_RATES).
    rerank = block.get("rerank_pairs_per_s", pairs)
    return index_size / rows + min(candidates, index_size) / rerank


def _engine_rate(block: dict, engine: str | None) -> tuple[str, float] | None:
    rhm = block.get("rhm")
    if not isinstance(rhm, dict) or not rhm:
        return None
    if engine in (None, "auto"):
        name = max(rhm, key=rhm.get)  # the fastest measured
        return name, rhm[name]
    return (engine, rhm[engine]) if engine in rhm else None


def stage_costs(rates: dict, unit: str, *, index_size: int, retrieval: str = "exact",
                candidates: int | None = None, k: int = 200,
                engine: str | None = None) -> dict:
    """Seconds per image of each stage on one ``unit`` ("cpu": a core, "gpu": a GPU);
    None where the rates have no number for it. Adds "rhm_engine"."""
    from .prefilter import default_candidates
    block = rates.get(unit) or {}
    cand = int(candidates or default_candidates(min(k, index_size), index_size))
    out: dict = {s: (1.0 / block[s] if s in block else None) for s in ("decode", "shr", "encode")}
    out["retrieval"] = _retrieval_seconds(block, retrieval, index_size, cand)
    eng = _engine_rate(block, engine)
    out["rhm"] = 1.0 / eng[1] if eng else None
    out["rhm_engine"] = eng[0] if eng else None
    return out


def plan_capacity(rates: dict, images: int, deadline_s: float, *, index_size: int,
                  retrieval: str = "exact", candidates: int | None = None, k: int = 200,
                  engine: str | None = None, rhm: bool = True, gpus: int | None = None,
                  cpus_per_worker: int = 1, utilization: float = 0.8) -> dict:
    """The capacity model (module docstring) for one job.

    rates: a rates document (``DEFAULT_RATES``, ``load_rates``, ``measure_rates``).
    index_size: real images in the index. retrieval: "exact" or "prefilter" (with
    ``candidates``, default max(4k, 1024)). engine: the RHM engine whose rate to use
    (default: the fastest in the rates); rhm=False plans an SHR-only job.
    gpus: None or 0 plans on CPU cores only; N > 0 puts retrieval, SHR and the RHM on
    GPUs (the rates must have a "gpu" block) and also says what N GPUs achieve.
    Returns a dict: per-stage rows (unit, seconds per image, units needed), cores,
    workers, gpus_needed, the bottleneck and the index sizes at which retrieval costs
    as much as the RHM.
    """
    check_rates(rates)
    if retrieval not in ("exact", "prefilter"):
        raise ValueError(f"retrieval must be 'exact' or 'prefilter', got {retrieval!r}")
    if not 0 < utilization <= 1:
        raise ValueError(f"utilization must be in (0, 1], got {utilization!r}")
    if int(index_size) < 1 or int(cpus_per_worker) < 1:
        raise ValueError("index_size and cpus_per_worker must be >= 1")
    use_gpu = bool(gpus)
    if use_gpu and not rates.get("gpu"):
        raise ValueError(
            'these rates have no "gpu" block: GPU rates were never measured for this project '
            "(no GPU was available). Measure yours (frerec capacity --measure --device cuda "
            '--save rates.json) or add {"gpu": {"ssim_pairs_per_s": P, '
            '"embedding_rows_per_s": E, "shr": S, "rhm": {"tensorrt": R}}} to a rates file: '
            "GPUs = images x (M/P + 1/S + 1/R) / (deadline x utilisation)")
    kw = dict(index_size=int(index_size), retrieval=retrieval, candidates=candidates, k=k,
              engine=engine)
    cpu = stage_costs(rates, "cpu", **kw)
    gpu = stage_costs(rates, "gpu", **kw) if use_gpu else {}
    start = float(rates.get("worker_start_s") or 0.0)
    usable = deadline_s - start
    if usable <= 0:
        raise ValueError(f"the deadline ({deadline_s:g} s) is shorter than a worker's start "
                         f"({start:g} s)")
    budget = usable * utilization
    rows = []
    for s in STAGES:
        if s == "rhm" and not rhm:
            continue
        on_gpu = use_gpu and s in GPU_STAGES and gpu.get(s) is not None
        secs = gpu[s] if on_gpu else cpu[s]
        if secs is None:
            what = {"retrieval": "ssim_pairs_per_s" + (" and embedding_rows_per_s"
                                                       if retrieval == "prefilter" else ""),
                    "rhm": f"rhm.{engine}" if engine not in (None, "auto") else "rhm"}.get(s, s)
            raise ValueError(f"the rates have no {what} for the {s} stage")
        rows.append({"stage": s, "unit": "gpu" if on_gpu else "cpu", "seconds": secs,
                     "units": images * secs / budget})
    t_cpu = sum(r["seconds"] for r in rows if r["unit"] == "cpu")
    t_gpu = sum(r["seconds"] for r in rows if r["unit"] == "gpu")
    for r in rows:
        r["share"] = r["seconds"] / (t_gpu if r["unit"] == "gpu" else t_cpu)
    cores = math.ceil(images * t_cpu / budget - 1e-9)  # 1e-9: 7.0000000001 is 7 cores
    rhm_unit = next((r["unit"] for r in rows if r["stage"] == "rhm"), None)
    out = {
        "images": images, "deadline_s": deadline_s, "worker_start_s": start,
        "utilization": utilization, "index_size": int(index_size), "retrieval": retrieval,
        "rhm_engine": {"gpu": gpu, "cpu": cpu}[rhm_unit]["rhm_engine"] if rhm_unit else None,
        "stages": rows, "cpu_seconds_per_image": t_cpu, "gpu_seconds_per_image": t_gpu,
        "cores": cores, "cpus_per_worker": int(cpus_per_worker),
        "workers": math.ceil(cores / int(cpus_per_worker)),
        "cpu_core_hours": images * t_cpu / 3600.0,
        "source": rates.get("source"),
    }
    cpu_rows = [r for r in rows if r["unit"] == "cpu"]
    out["bottleneck_cpu"] = max(cpu_rows, key=lambda r: r["seconds"])["stage"]
    if t_gpu:
        gpu_rows = [r for r in rows if r["unit"] == "gpu"]
        out["gpus_needed"] = math.ceil(images * t_gpu / budget - 1e-9)
        out["gpu_hours"] = images * t_gpu / 3600.0
        out["bottleneck_gpu"] = max(gpu_rows, key=lambda r: r["seconds"])["stage"]
        out["cores_per_gpu"] = t_cpu / t_gpu  # to keep one GPU busy
        n = int(gpus)
        out["gpus"] = n
        out["hours_with_gpus"] = (images * t_gpu / (n * utilization) + start) / 3600.0
        out["cores_for_gpus"] = math.ceil(n * t_cpu / t_gpu - 1e-9)
    out["bottleneck"] = _bottleneck(out)
    out["crossover"] = _crossovers(cpu, rates.get("cpu") or {}, candidates, k) if rhm else {}
    return out


def _bottleneck(plan: dict) -> str:
    """The stage that bounds the job: on CPU, the costliest CPU stage; with GPUs, the
    costliest GPU stage while the GPUs given are too few, else the costliest CPU stage
    (the GPUs then wait for the cores that feed them)."""
    if not plan.get("gpu_seconds_per_image"):
        return plan["bottleneck_cpu"]
    if plan["gpus"] < plan["gpus_needed"]:
        return plan["bottleneck_gpu"]
    return plan["bottleneck_cpu"]


def _crossovers(cpu: dict, block: dict, candidates, k: int) -> dict:
    """Index sizes at which retrieval on one core costs as much as the RHM on one core."""
    t_rhm = cpu.get("rhm")
    pairs, rows = block.get("ssim_pairs_per_s"), block.get("embedding_rows_per_s")
    out = {}
    if t_rhm and pairs:
        out["exact"] = t_rhm * pairs
        if rows:
            from .prefilter import MIN_CANDIDATES
            cand = int(candidates or max(4 * k, MIN_CANDIDATES))
            left = t_rhm - cand / block.get("rerank_pairs_per_s", pairs)
            out["prefilter"] = left * rows if left > 0 else 0.0
    return out


def _hms(secs: float) -> str:
    h, rem = divmod(int(round(secs)), 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" + (f"{s:02d}s" if s else "")


def format_plan(plan: dict) -> str:
    """The plan as the text ``frerec capacity`` prints."""
    p = plan
    eng = f", RHM engine {p['rhm_engine']}" if p.get("rhm_engine") else ", no RHM (SHR only)"
    lines = [f"capacity for {p['images']:,} images in {_hms(p['deadline_s'])} "
             f"(less {p['worker_start_s']:.2g} s worker start; utilisation "
             f"{p['utilization']:.0%})",
             f"index {p['index_size']:,} images, retrieval {p['retrieval']}{eng}",
             f"rates: {p['source'] or 'given'}",
             f"  {'stage':<10}{'unit':<6}{'ms/image':>10}{'share':>8}{'units for deadline':>20}"]
    for r in p["stages"]:
        unit = "cores" if r["unit"] == "cpu" else "GPUs"
        lines.append(f"  {r['stage']:<10}{r['unit']:<6}{r['seconds'] * 1e3:>10.3f}"
                     f"{r['share']:>8.0%}{r['units']:>14.2f} {unit}")
    lines.append(f"CPU: {p['cpu_seconds_per_image'] * 1e3:.2f} ms per image, "
                 f"{p['cpu_core_hours']:,.1f} core-hours -> {p['cores']:,} cores = "
                 f"{p['workers']:,} Ray workers of {p['cpus_per_worker']} CPU(s)")
    if p.get("gpu_seconds_per_image"):
        lines.append(f"GPU: {p['gpu_seconds_per_image'] * 1e3:.3f} ms per image, "
                     f"{p['gpu_hours']:,.2f} GPU-hours -> {p['gpus_needed']:,} GPU(s) for the "
                     f"deadline; {p['cores_per_gpu']:.1f} cores keep one GPU busy")
        lines.append(f"with {p['gpus']} GPU(s): {p['hours_with_gpus']:.2f} h of GPU work "
                     f"({'meets' if p['gpus'] >= p['gpus_needed'] else 'misses'} the deadline), "
                     f"fed by {p['cores_for_gpus']:,} cores")
    lines.append(f"bottleneck: {p['bottleneck']}" + (
        f" (the costliest CPU stage, {_share(p, p['bottleneck'])} of the CPU time per image)"
        if p['bottleneck'] == p['bottleneck_cpu'] and not p.get("gpu_seconds_per_image")
        else ""))
    c = p.get("crossover") or {}
    if c:
        parts = [f"{mode} at {n:,.0f} index images" if n > 0 else
                 f"{mode} always (its re-rank alone costs more)" for mode, n in c.items()]
        lines.append("retrieval costs as much as the RHM (one core each): " + "; ".join(parts))
    return "\n".join(lines)


def _share(plan: dict, stage: str) -> str:
    return next(f"{r['share']:.0%}" for r in plan["stages"] if r["stage"] == stage)


# -- memory and disk of the real index ------------------------------------------------------
# Peak extra RAM of the prefilter re-rank per short-listed (query, candidate) image, in
# bytes per retrieval pixel: measured, not derived. Over a 10^6 index at 64x64 with 16
# queries, raising the short list from 1,024 to 10,000 candidates raised the peak RSS by
# 5,664 MiB (15,649 - 9,985; benchmarks/results/index-scale-cpu-amd-epyc-x2-threads-
# 20261129.json, rows prefilter-1024 and prefilter-10000): 5664 MiB / (16 x 8,976 x
# 4096 px) = 10.1 bytes per pixel (the 1,024 row, 630 MiB over the exact row, gives 9.8).
# The gathered float16 thumbnails are 2 of those; the rest are the re-rank's float32
# copies, per-image local statistics and pair temporaries.
RERANK_BYTES_PER_PIXEL = 5664 * 2 ** 20 / (16 * (10_000 - 1024) * 64 * 64)
# Bytes of a shard pair and of its manifest entry beyond the per-image payload: the
# safetensors header (~330 B), the shard JSON's config and checksum fields (~420 B) and
# the manifest entry (~250 B); measured on small indexes (tests/test_capacity.py).
SHARD_OVERHEAD_BYTES = 1000
MANIFEST_BYTES = 300


def index_bytes_per_image(retrieval_size=(64, 64), channels: int = 1, key_chars: int = 24,
                          thumb: int | None = None) -> dict:
    """Disk bytes per real image of a sharded index (``frerec_fast.index.files``), by part.

    thumbs: h * w float16; stats: mu and sigma, C float32 each; embed: the prefilter
    embedding, min(t, h) * min(t, w) float32 (t = 16); keys: the key and its file's
    SHA-256 in the shard JSON, ``"key", "sha", `` = key_chars + 72 bytes (ASCII keys;
    the benchmark's ``synthetic/0000000.png`` is 21). At 64x64 grey with 21-char keys:
    8192 + 8 + 1024 + 93 = 9317 bytes, the 10^6 benchmark's measured 9317.0 per image.
    """
    from .prefilter import DEFAULT_THUMB
    t = DEFAULT_THUMB if thumb is None else int(thumb)
    h, w = (retrieval_size, retrieval_size) if isinstance(retrieval_size, int) \
        else retrieval_size
    parts = {"thumbs": 2 * h * w, "stats": 8 * int(channels),
             "embed": 4 * min(t, h) * min(t, w), "keys": int(key_chars) + 72}
    parts["total"] = sum(parts.values())
    return parts


def index_footprint(index_size: int, *, retrieval_size=(64, 64), channels: int = 1,
                    key_chars: int = 24, shard_size: int = 65536, queries: int = 16,
                    candidates: int | None = None, k: int = 200) -> dict:
    """Disk and RAM of a sharded real index of ``index_size`` images, and of searching it.

    Returns bytes: ``disk`` (shards + manifest: ``index_bytes_per_image`` x M plus
    SHARD_OVERHEAD_BYTES per shard), ``embeddings`` (what the prefilter's GEMM reads,
    memory-mapped: M x t^2 x 4), ``thumbs_mapped`` (what an exact search maps: every
    thumbnail, M x h x w x 2; file-backed pages, shared with the page cache and other
    workers on the node), ``stats`` (mu and sigma of every image, gathered per
    neighbour: held in RAM, M x C x 8), ``rerank_peak`` (the prefilter re-rank's extra
    peak for one batch of ``queries`` x ``candidates``: RERANK_BYTES_PER_PIXEL x h x w per
    pair, measured) and ``ram_prefilter`` / ``ram_exact`` (what one worker needs resident
    for each mode: embeddings + stats + re-rank peak; thumbnails + stats).
    """
    from .prefilter import default_candidates
    m = int(index_size)
    h, w = (retrieval_size, retrieval_size) if isinstance(retrieval_size, int) \
        else retrieval_size
    per = index_bytes_per_image((h, w), channels, key_chars)
    shards = max(1, math.ceil(m / int(shard_size)))
    c = int(candidates or default_candidates(min(k, m), m))
    out = {"index_size": m, "bytes_per_image": per["total"], "parts": per,
           "shards": shards, "disk": per["total"] * m + shards * SHARD_OVERHEAD_BYTES
           + MANIFEST_BYTES,
           "embeddings": per["embed"] * m, "thumbs_mapped": per["thumbs"] * m,
           "stats": per["stats"] * m, "queries": int(queries), "candidates": c,
           "rerank_peak": int(RERANK_BYTES_PER_PIXEL * h * w * int(queries) * c)}
    out["ram_prefilter"] = out["embeddings"] + out["stats"] + out["rerank_peak"]
    out["ram_exact"] = out["thumbs_mapped"] + out["stats"]
    return out


def _gb(n: float) -> str:
    return f"{n / 1e9:,.2f} GB" if n >= 1e8 else f"{n / 1e6:,.1f} MB"


def format_footprint(f: dict) -> str:
    """The footprint lines ``frerec capacity`` prints."""
    p = f["parts"]
    return "\n".join([
        f"index of {f['index_size']:,} images: {_gb(f['disk'])} on disk in {f['shards']:,} "
        f"shard(s) ({f['bytes_per_image']:,} B/image: thumbnails {p['thumbs']:,}, "
        f"embedding {p['embed']:,}, stats {p['stats']}, keys ~{p['keys']})",
        f"  RAM per worker, prefilter: {_gb(f['ram_prefilter'])} (embeddings "
        f"{_gb(f['embeddings'])} mapped, stats {_gb(f['stats'])}, re-rank peak "
        f"{_gb(f['rerank_peak'])} for {f['queries']} queries x {f['candidates']:,} "
        f"candidates)",
        f"  RAM per worker, exact: {_gb(f['ram_exact'])} (every thumbnail mapped, "
        f"{_gb(f['thumbs_mapped'])}; file pages, shared by the workers of a node)"])


# -- measuring ------------------------------------------------------------------------------
def _rate(fn, seconds: float, items: int, sync=None, rounds: int = 3) -> float:
    """Items per second of ``fn``: called repeatedly for about ``seconds`` (at least
    ``rounds`` times, after one warm-up call), median of the per-call times."""
    fn()
    if sync:
        sync()
    times = []
    t_end = time.perf_counter() + seconds
    while len(times) < rounds or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    return items / statistics.median(times)


def measure_rates(seconds: float = 2.0, *, device: str = "cpu", index=None, model=None,
                  engines=("auto", "eager"), db_size: int = 4096, rows: int = 65536,
                  micro: int = 8, k: int = 200) -> dict:
    """Time each stage on the bundled DCGAN images for about ``seconds`` each, with one
    torch thread (CPU rates are per core). Returns a rates document.

    device "cpu": every stage on one core. A CUDA device: retrieval, SHR and the RHM
    on it (the "gpu" block), decode and encode on one core (never run: no GPU was
    available to this project). index: a RealIndex or its path (default: built from the
    bundled real training slices, which sets the working size); model: an RHM or its
    checkpoint (default the shipped one; False: no RHM). engines: the RHM engines to time
    (unavailable ones are listed under "not_measured"). db_size and rows: database sizes
    for the exact SSIM and embedding rates (the index's thumbnails repeated: timing only).
    """
    import torch

    from . import io as fio
    from .datasets import real_dir, synthetic_dir
    from .devices import resolve_device
    from .index import RealIndex, build_index, resample
    from .ops import shr, ssim_topk
    from .pipeline.run import compute_threads
    from .prefilter import candidate_topk, default_candidates, embed_db, rerank_with
    from .reference.checks import inputs_checked_upstream
    from .seeding import sample_eps

    dev = resolve_device(device)
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else None
    host_block: dict = {}
    dev_block: dict = host_block if dev.type == "cpu" else {}
    skipped: dict = {}
    # One thread (rates per core); the ops' value checks skipped as the calibrator skips them.
    with tempfile.TemporaryDirectory(prefix="frerec_capacity_") as tmp, compute_threads(1), \
            inputs_checked_upstream():
        tmp = Path(tmp)
        if index is None:
            index = build_index(real_dir("train"), tmp / "idx", progress=False)
        elif not isinstance(index, RealIndex):
            index = RealIndex.load(index)
        cfg = index.config
        src = synthetic_dir()
        rels = [p.relative_to(src).as_posix() for p in sorted(src.rglob("*.png"))]

        # decode: the reader's work per file (hash, then decode)
        state = {"i": 0}

        def decode_one():
            rel = rels[state["i"] % len(rels)]
            state["i"] += 1
            fio.file_sha256(src / rel)
            return fio.read_images(src, rel)
        host_block["decode"] = _rate(decode_one, seconds, 1)

        decoded = [decode_one()[0] for _ in range(micro)]
        x = torch.stack([torch.as_tensor(d.pixels, dtype=torch.float32) for d in decoded])
        if x.shape[1] != cfg.channels:
            x = x.mean(1, keepdim=True).expand(-1, cfg.channels, -1, -1).contiguous()
        x = resample(x, tuple(cfg.work_size)).clamp(0, 1).to(dev)

        # retrieval: exact SSIM pairs per second, and embedding rows per second
        # Up to 4096 of the index's thumbnails, stored type (a sharded index reads only those).
        thumbs = index.thumbs_at(torch.arange(min(len(index), 4096))).to(dev)  # float16
        q = index.thumbnails(x)
        db = thumbs.repeat(max(1, -(-db_size // thumbs.shape[0])), 1, 1, 1)[:db_size]
        kk = min(k, db.shape[0])
        dev_block["ssim_pairs_per_s"] = _rate(lambda: ssim_topk(q, db, kk), seconds,
                                              micro * db.shape[0], sync)
        # The scan reads only the cached embeddings (as an index does): the database
        # itself is a view of the right length, never read.
        emb = embed_db(thumbs).repeat(-(-rows // thumbs.shape[0]), 1)[:rows]
        view = thumbs[:1].expand(rows, -1, -1, -1)
        cand = default_candidates(min(k, rows), rows)
        dev_block["embedding_rows_per_s"] = _rate(
            lambda: candidate_topk(q, view, cand, db_embedding=emb), seconds, micro * rows,
            sync)

        # the prefilter's re-rank: exact SSIM of each query against its own short list.
        # Over a large index different queries short-list different images, so each
        # query gets its own disjoint slice of a database of Q x C images (shared
        # candidates would let the op reuse their statistics: 37k against 24k pairs/s
        # here when 8 queries drew 1,024 each from 4,096).
        c = default_candidates(min(k, rows), rows)
        n_q = q.shape[0]
        db_r = thumbs.repeat(-(-n_q * c // thumbs.shape[0]), 1, 1, 1)[:n_q * c]
        g = torch.Generator().manual_seed(0)
        short = torch.randperm(n_q * c, generator=g).view(n_q, c).to(dev)
        dev_block["rerank_pairs_per_s"] = _rate(
            lambda: rerank_with(q, db_r, short, min(kk, c)), seconds, n_q * c, sync)

        # SHR with the banks of the real neighbours
        nb = index.neighbours(x, k=min(k, len(index)))
        eps = [e.to(dev) for e in sample_eps(0, rels[:micro], cfg.channels)]
        dev_block["shr"] = _rate(lambda: shr(x, nb.mu_bank, nb.sigma_bank, *eps,
                                             ratio=cfg.ratio, domain=cfg.domain),
                                 seconds, micro, sync)

        # RHM, per engine
        if model is not False:
            rhm_rates, build = _measure_rhm(model, dev, engines, x, micro, seconds, sync,
                                            skipped)
            if rhm_rates:
                dev_block["rhm"] = rhm_rates
        else:
            build = None

        # encode: the writer's work per file (encode like the source, atomic write, hash)
        out = tmp / "out"
        out.mkdir()
        y = decoded[0].pixels

        def encode_one():
            path = out / f"{state['i'] % 64}.png"
            state["i"] += 1
            fio.write_like(decoded[0], y, path, src / rels[0])
            fio.file_sha256(path)
        host_block["encode"] = _rate(encode_one, seconds, 1)

    rates = {"frerec_capacity_rates": RATES_VERSION,
             "source": f"frerec capacity --measure on {_machine()} ({time.strftime('%Y-%m-%d')})",
             "work_size": list(cfg.work_size), "index_size_measured": len(index),
             "micro_batch": micro, "threads": 1, "cpu": host_block}
    if dev.type != "cpu":
        rates["gpu"] = dev_block
        rates["device_name"] = torch.cuda.get_device_name(dev)
    if build is not None:
        rates["worker_start_s"] = build
    if skipped:
        rates["not_measured"] = skipped
    return rates


def _measure_rhm(model, dev, engines, x, micro: int, seconds: float, sync, skipped: dict):
    """({engine: images/s}, seconds to load the model and build the fastest engine)."""
    import torch

    from .engine import RHMEngine
    from .model import load_rhm
    if model is None:
        from .training.default import default_model_path
        model = default_model_path()
    t0 = time.perf_counter()
    net = load_rhm(model, device=dev) if not isinstance(model, torch.nn.Module) else \
        model.to(dev).eval()
    load = time.perf_counter() - t0
    rates, builds = {}, {}
    for name in engines:
        try:
            t0 = time.perf_counter()
            eng = RHMEngine(net, name, "fp32", dev, micro_batch=micro)
            if eng.engine in rates:
                continue
            eng.runner(*x.shape[-2:])
            builds[eng.engine] = time.perf_counter() - t0

            def run(eng=eng):
                with torch.inference_mode():
                    return eng(x)
            rates[eng.engine] = _rate(run, seconds, micro, sync)
        except Exception as e:  # noqa: BLE001 - an engine not installed here
            skipped[f"rhm.{name}"] = f"{type(e).__name__}: {e}"
    fastest = max(rates, key=rates.get) if rates else None
    return rates, (load + builds[fastest]) if fastest else None


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores"


# -- the command ----------------------------------------------------------------------------
def cmd_capacity(a) -> int:
    if a.rates and a.measure:
        raise ValueError("--rates and --measure are alternatives: give one")
    if a.measure:
        rates = measure_rates(a.seconds, device=a.device, index=a.index,
                              model=False if a.model == "none" else a.model,
                              engines=tuple(a.engines))
        if a.save:
            Path(a.save).write_text(json.dumps(rates, indent=1) + "\n")
            print(f"rates saved to {a.save}", file=sys.stderr)
    elif a.rates:
        rates = load_rates(a.rates)
    else:
        rates = DEFAULT_RATES
    index_size = a.index_size
    if index_size is None:
        index_size = rates.get("index_size_measured") or 171
    plan = plan_capacity(rates, parse_count(a.images), parse_duration(a.deadline),
                         index_size=parse_count(index_size), retrieval=a.retrieval,
                         candidates=a.candidates, k=a.k, engine=a.engine,
                         rhm=not a.shr_only, gpus=a.gpus, cpus_per_worker=a.cpus_per_worker,
                         utilization=a.utilization)
    ws = rates.get("work_size") or [64, 64]
    foot = index_footprint(parse_count(index_size), retrieval_size=tuple(ws),
                           candidates=a.candidates, k=a.k, queries=a.queries)
    if a.json:
        print(json.dumps({"plan": plan, "rates": rates, "index_footprint": foot}, indent=1))
    else:
        print(format_plan(plan))
        print(format_footprint(foot))
    return 0


def register(sub) -> None:
    """Add ``frerec capacity`` to the ``frerec`` subcommands."""
    s = sub.add_parser(
        "capacity", help="cores, Ray workers and GPUs a job needs for a deadline",
        description="The capacity model of docs/capacity.md: per-stage rates (decode, "
        "retrieval, SHR, RHM, encode) per CPU core and per GPU -> how many cores (Ray "
        "workers) and GPUs calibrate N images within a deadline, and the bottleneck stage. "
        "Rates: --rates FILE (from --measure --save), --measure (time the stages here on "
        "the bundled images, a few seconds each), or the rates measured on this project's "
        "2-core machine (no GPU rates exist: measure yours).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--images", required=True, help="images to calibrate (e.g. 1e6)")
    s.add_argument("--deadline", required=True, help="wall-clock budget (e.g. 2h, 90m, 1h30m)")
    s.add_argument("--rates", default=None, help="a rates JSON (frerec capacity --measure --save)")
    s.add_argument("--measure", action="store_true", help="measure the rates on this machine")
    s.add_argument("--seconds", type=float, default=2.0, help="--measure: seconds per stage")
    s.add_argument("--save", default=None, help="--measure: write the rates here")
    s.add_argument("--device", default="cpu", help="--measure: cpu, or cuda for GPU rates")
    s.add_argument("--index", default=None,
                   help="--measure: an index (default: built from the bundled real slices)")
    s.add_argument("--model", default=None,
                   help="--measure: RHM checkpoint (default the shipped one; 'none': no RHM)")
    s.add_argument("--engines", nargs="+", default=["auto", "eager"],
                   help="--measure: RHM engines to time")
    s.add_argument("--gpus", type=int, default=None,
                   help="GPUs of the job (retrieval, SHR and RHM on them; needs GPU rates)")
    s.add_argument("--index-size", default=None,
                   help="real images in the job's index (default: the measured index's)")
    s.add_argument("--retrieval", choices=("exact", "prefilter"), default="exact")
    s.add_argument("--candidates", type=int, default=None,
                   help="prefilter short-list per image (default max(4k, 1024))")
    s.add_argument("-k", type=int, default=200, help="neighbours per image")
    s.add_argument("--engine", default=None,
                   help="RHM engine whose rate to use (default: the fastest in the rates)")
    s.add_argument("--shr-only", action="store_true", help="plan an SHR-only job (no RHM)")
    s.add_argument("--cpus-per-worker", type=int, default=1)
    s.add_argument("--utilization", type=float, default=0.8,
                   help="share of each unit's time spent on images (stragglers, tail)")
    s.add_argument("--queries", type=int, default=16,
                   help="queries per re-rank batch (the footprint's re-rank peak)")
    s.add_argument("--json", action="store_true", help="print the plan and rates as JSON")
    s.set_defaults(fn=cmd_capacity)
