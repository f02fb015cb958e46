"""``calibrate_dir_ray``: the Ray twin of ``calibrate_dir``, for when one box is not enough.

The driver lists the files, cleans ``dst``, takes the run lock and cuts the sorted list
into shards of ``shard_size`` files. ``num_workers`` long-lived Ray actors (``_Worker``)
each load the index and the RHM once (a ``ShardRunner``: the plan of ``calibrate_dir``
and a manifest of its own, ``frerec_manifest.workerNNNN-<id>.jsonl``, so no two
processes ever write one file) and take shards from the driver, two in flight each, until
none is left. The settings are one ``CalibrateConfig``, validated by the driver before
any worker starts. The driver merges the shard reports into one ``frerec_report.json``.

Why actors and not one task per shard: a task would load the index and the model and
build the RHM engine for every shard (1.8-2.1 s for the shipped model with OpenVINO on
the 2-core CI machine, against 2.8 s of compute for a shard of 32 images on one core:
docs/capacity.md, scripts/measure_shard_cost.py), so small shards, which balance load
and bound what a failure redoes, would spend much of their time loading.

Failures. A worker that dies (killed, out of memory, its node lost) is restarted by Ray
up to ``max_retries`` times and its unfinished shards are submitted again; a restarted
worker reads the manifests afresh, so files finished before the kill are skipped and the
rest are redone, to the same bytes (an output is written atomically, then recorded). A
worker whose restarts are used up leaves its shards to the others; a shard lost more than
``max_retries`` times ends the job with an error (rerun to resume). Python exceptions
(disk full, a bad index) are not retried: they end the job as in ``calibrate_dir``. A
driver killed outright takes its workers with it; the same call again resumes from the
manifests.

Every output's bytes depend only on its input and the run settings (see
``frerec_fast.pipeline``), so a distributed run writes exactly what a local run with the
same device, backends, thread count and ``model_batch`` writes. Resume reads every
manifest in ``dst``: a local run resumes a distributed one and the reverse, whatever
the number of workers or the shard size.

Shared-storage assumption: ``src``, ``dst``, the index and the model must be readable
(``dst`` writable) under the same paths on every node, as on one machine or a cluster
with a shared filesystem.
"""
from __future__ import annotations

import json
import logging
import math
import os
import time
import uuid
from collections import Counter, deque
from pathlib import Path

import torch

from . import io as fio
from .optional import optional_import, ray_get
from .pipeline import (REPORT, CalibrateConfig, ShardRunner, check_dirs, gaps_from_profiles,
                       make_config, prepare_dst)
from .pipeline.record import RunLock
from .progress import bar as progress_bar

SHARD_SIZE = 256   # files per shard at most (default): what a lost worker redoes at worst
MAX_RETRIES = 3    # restarts per worker, and times one shard may be lost
IN_FLIGHT = 2      # shards queued per worker, so that none waits for the driver
START_WARNING_S = 120.0  # a warning when no worker has started by then (nothing to place it)

log = logging.getLogger(__name__)


class _Worker:
    """A Ray actor (made remote in ``_run_shards``): one ``ShardRunner`` for the job."""

    def __init__(self, src: str, dst: str, index: str, model, threads: int,
                 cfg: CalibrateConfig, name: str):
        torch.set_num_threads(threads)
        # A restarted worker runs this again: a manifest of its own, never its
        # predecessor's (which may hold a line torn by the kill).
        self.runner, self.error = None, None
        self.id = f"{name}-{uuid.uuid4().hex[:8]}"
        try:
            self.runner = ShardRunner(src, dst, index, model, cfg, self.id)
        except Exception as e:  # noqa: BLE001 - raised by ready(), to the driver as it is
            self.error = e      # (a constructor's error would only say "actor died")

    def ready(self) -> bool:
        """Answers once the worker has started; raises what its start raised (a bad
        index or model), which ends the job as it ends ``calibrate_dir``."""
        if self.error is not None:
            raise self.error
        return True

    def calibrate(self, files: list[str], refresh: bool = False) -> dict:
        report = self.runner(files, refresh)
        # Which start of which worker ran it (a restart is a new id), and its load.
        report["worker"] = self.id
        report["load_seconds"] = self.runner.load_seconds
        return report


def calibrate_dir_ray(src: str | os.PathLike, dst: str | os.PathLike, index, model=None, *,
                      num_workers: int | None = None, cpus_per_worker: int = 1,
                      gpus_per_worker: float = 0, address: str | None = None,
                      shard_size: int | None = None, max_retries: int = MAX_RETRIES,
                      config: CalibrateConfig | None = None, **settings) -> dict:
    """Calibrate ``src`` into ``dst`` with ``num_workers`` Ray actors (see module docstring).

    index: path of a saved index (or a RealIndex loaded from one). model: a checkpoint
    path, None for the shipped model, or False for SHR only (an in-memory module cannot
    be shipped to other nodes: save it with ``save_checkpoint`` first).
    num_workers: actors (default: the cluster's CPUs // cpus_per_worker, or its GPUs //
    gpus_per_worker; never more than there are shards). cpus_per_worker: CPU threads per
    worker (torch threads too). gpus_per_worker > 0 runs on CUDA. address: an existing
    Ray cluster ("auto", or "ray://host:port"); None starts a local one for this call
    (shut down afterwards). shard_size: files per shard (default: a quarter of a
    worker's share, at most 256); it never changes the outputs. max_retries: restarts
    of a worker, and times a shard may be lost with its worker, before the job fails.
    config / settings: the local job's ``CalibrateConfig`` (workers = decode and encode
    threads per worker); ``device`` and ``files`` are set per shard here, ``progress``
    and ``resume`` apply to the whole job.
    Returns the merged report (also ``dst/frerec_report.json``), with ``workers``,
    ``shards``, ``worker_starts`` (starts of workers that finished a shard: more than
    ``workers`` after a restart), ``load_seconds`` (index, model and engine loading,
    summed over those starts) and ``shard_seconds`` (the workers' time on shards, summed).
    """
    ray = optional_import("ray", "distributed calibration (pip install 'frerec_fast[ray]')")
    t0 = time.perf_counter()
    for key in ("device", "files"):
        if key in settings:
            raise ValueError(f"calibrate_dir_ray sets {key!r} itself")
    if shard_size is not None and int(shard_size) < 1:
        raise ValueError(f"shard_size must be >= 1, got {shard_size!r}")
    if int(max_retries) < 0:
        raise ValueError(f"max_retries must be >= 0, got {max_retries!r}")
    cfg = make_config(config, **settings)
    if cfg.files is not None:
        raise ValueError("calibrate_dir_ray takes every image under src (a files list is a "
                         "local-run setting)")
    src, dst = check_dirs(src, dst)
    index_path = getattr(index, "path", index)
    if index_path is None:
        raise ValueError("calibrate_dir_ray needs an index saved on disk (RealIndex.save)")
    if isinstance(model, torch.nn.Module):
        raise ValueError("calibrate_dir_ray ships a model to workers by path: save it with "
                         "frerec_fast.model.save_checkpoint and pass the .safetensors path")
    task_cfg = cfg.replace(device="cuda" if gpus_per_worker > 0 else "cpu", progress=False,
                           resume=True)  # the driver's prepare_dst honours resume=False

    dst.mkdir(parents=True, exist_ok=True)
    with RunLock(dst):  # the driver holds it for the whole job; workers do not lock
        return _run_shards(ray, src, dst, index_path, model, cfg, task_cfg, num_workers,
                           cpus_per_worker, gpus_per_worker, address, shard_size,
                           int(max_retries), t0)


def shard_files(rels: list[str], num_workers: int, shard_size: int | None) -> list[list[str]]:
    """Consecutive runs of the sorted list: ``shard_size`` files each, by default a
    quarter of a worker's share (so that the last shards balance), at most SHARD_SIZE."""
    if not rels:
        return []
    size = int(shard_size or max(1, min(SHARD_SIZE, math.ceil(len(rels) / (4 * num_workers)))))
    return [rels[i:i + size] for i in range(0, len(rels), size)]


def _run_shards(ray, src: Path, dst: Path, index_path, model, cfg: CalibrateConfig,
                task_cfg: CalibrateConfig, num_workers, cpus_per_worker: int,
                gpus_per_worker: float, address, shard_size, max_retries: int,
                t0: float) -> dict:
    prepare_dst(dst, cfg.resume)
    rels, excluded = fio.scan_tree(src, cfg.follow_symlinks)
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": max(cpus_per_worker, os.cpu_count() or 1)}))
    actors = []
    try:
        if num_workers is None:
            res = ray.cluster_resources()
            num_workers = int(res.get("GPU", 0) // gpus_per_worker if gpus_per_worker
                              else res.get("CPU", 1) // cpus_per_worker)
        num_workers = max(1, int(num_workers))
        shards = shard_files(rels, num_workers, shard_size)
        num_workers = min(num_workers, len(shards))
        worker = ray.remote(_Worker)
        token = uuid.uuid4().hex[:8]
        actors = [worker.options(
            name=f"frerec-calibrate-{token}-{i:04d}", num_cpus=cpus_per_worker,
            num_gpus=gpus_per_worker, max_restarts=max_retries,
            max_task_retries=max_retries).remote(
            str(src), str(dst), str(index_path), model, cpus_per_worker, task_cfg,
            f"worker{i:04d}") for i in range(num_workers)]
        bar = progress_bar(len(rels), "calibrate (ray)", "img", cfg.progress)
        try:
            reports = _dispatch(ray, actors, shards, bar, max_retries)
        finally:
            bar.close()
    finally:
        for a in actors:  # free their resources on a cluster that outlives this call
            ray.kill(a, no_restart=True)
        if started:
            ray.shutdown()
    # Temp files of writes cut short by a killed worker (its shard was redone since):
    # no worker runs now, so every one left is stale.
    prepare_dst(dst, resume=True)
    report = merge_reports(reports, time.perf_counter() - t0, ratio=_ratio(index_path))
    loads = {r["worker"]: r["load_seconds"] for r in reports}  # one per worker start
    report.update({"files": len(rels), "excluded": excluded, "workers": len(actors),
                   "shards": len(shards), "shard_size": len(shards[0]) if shards else 0,
                   "worker_starts": len(loads), "load_seconds": sum(loads.values()),
                   "shard_seconds": sum(r["seconds"] for r in reports),
                   "cpus_per_worker": cpus_per_worker, "gpus_per_worker": gpus_per_worker})
    fio.atomic_write_text(dst / REPORT, json.dumps(report, indent=1))
    return report


def _ratio(index_path) -> float:
    meta = json.loads((Path(index_path) / "index.json").read_text())
    return float(meta["config"]["ratio"])


def _dispatch(ray, actors: list, shards: list[list[str]], bar, max_retries: int) -> list[dict]:
    """Shards to workers, IN_FLIGHT at a time each, until every shard has a report (in
    shard order). A worker gets shards only once it has answered ``ready``: one that the
    cluster cannot place (more workers than CPUs or GPUs) never holds a shard back, and
    one that failed to start (a bad index or model) fails alone, its error kept for the
    message if none starts. A shard whose worker died for good (restarts used up) goes
    back to the queue for another worker, which first re-reads the manifests."""
    queue = deque((i, False) for i in range(len(shards)))
    lost = Counter()
    starting = {a.ready.remote(): w for w, a in enumerate(actors)}
    live: dict = {}
    busy = Counter()
    flying: dict = {}  # ObjectRef -> (worker, shard)
    reports: list = [None] * len(shards)
    last_error = None
    t_start, warned = time.monotonic(), False

    def submit(w: int) -> None:
        i, refresh = queue.popleft()
        flying[live[w].calibrate.remote(shards[i], refresh)] = (w, i)
        busy[w] += 1

    while queue or flying:
        # One shard for every idle worker first; a second, queued behind it, only while
        # more shards wait than workers still starting (a few shards are never all
        # queued on the first worker to start).
        for w in live:
            if queue and not busy[w]:
                submit(w)
        for w in live:
            while queue and busy[w] < IN_FLIGHT and len(queue) > len(starting):
                submit(w)
        if not flying and not starting:
            raise RuntimeError(f"no Ray worker is left to run {len(queue)} shard(s) (last "
                               f"error: {last_error}); the files done are kept: rerun the "
                               "same command to resume") from last_error
        done, _ = ray.wait(list(flying) + list(starting), num_returns=1, timeout=10.0)
        if not live and not warned and time.monotonic() - t_start > START_WARNING_S:
            warned = True
            log.warning("no Ray worker has started after %.0f s: can the cluster place a "
                        "worker (its CPUs and GPUs per worker)? Waiting for one.",
                        time.monotonic() - t_start)
        for ref in done:
            if ref in starting:
                w = starting.pop(ref)
                try:
                    ray_get(ray, ref)
                    live[w] = actors[w]
                except ray.exceptions.RayActorError as e:
                    last_error = e
                continue
            w, i = flying.pop(ref)
            busy[w] -= 1
            try:
                reports[i] = ray_get(ray, ref)
            except ray.exceptions.RayActorError as e:
                last_error = e
                if not isinstance(e, ray.exceptions.ActorUnavailableError):
                    live.pop(w, None)  # dead for good: its restarts are used up
                lost[i] += 1
                if lost[i] > max_retries:
                    raise RuntimeError(
                        f"shard {i} ({len(shards[i])} files from {shards[i][0]}) was lost "
                        f"with its worker {lost[i]} times ({e}); the files done are kept: "
                        "rerun the same command to resume") from e
                queue.appendleft((i, True))
                continue
            r = reports[i]
            bar.update(r["ok"] + r["failed"] + r["skipped"])
    return reports


def merge_reports(reports: list[dict], seconds: float, ratio: float = 0.5) -> dict:
    """One report from the shards': counts and stage seconds add up, errors merge, the
    frequency gaps are recomputed from the sample-weighted mean profiles."""
    out = {"ok": 0, "failed": 0, "skipped": 0, "errors": {}, "seconds": seconds,
           "stage_seconds": {}}
    for r in reports:
        for key in ("ok", "failed", "skipped"):
            out[key] += r[key]
        out["errors"].update(r["errors"])
        for stage, secs in r["stage_seconds"].items():
            out["stage_seconds"][stage] = out["stage_seconds"].get(stage, 0.0) + secs
    out["images_per_s"] = out["ok"] / seconds if seconds else 0.0
    first = reports[0] if reports else {}
    for key in ("device", "device_name", "backends", "rhm", "shr", "rhm_stats", "engine",
                "precision", "k", "seed", "batch_size", "model_batch", "run", "index",
                "retrieval", "rhm_fit"):
        out[key] = first.get(key)
    # Each shard measured the prefilter's recall on its first micro-batch: pool them.
    samples = [r["retrieval"] for r in reports if "recall_sample" in (r.get("retrieval") or {})]
    if samples:
        n = sum(s["recall_queries"] for s in samples)
        out["retrieval"] = {**samples[0], "recall_queries": n, "recall_sample": sum(
            s["recall_sample"] * s["recall_queries"] for s in samples) / n}
    out["frequency_gap"] = _merge_gaps([r.get("frequency_gap") or {} for r in reports], ratio)
    return out


def _merge_gaps(gaps: list[dict], ratio: float) -> dict:
    parts = [g["profiles"] for g in gaps if g.get("profiles")]
    if not parts:
        return {}
    n_in = sum(p["n_inputs"] for p in parts)
    n_out = sum(p["n_outputs"] for p in parts)
    pi = sum(torch.tensor(p["inputs"], dtype=torch.float64) * p["n_inputs"] for p in parts) / n_in
    po = sum(torch.tensor(p["outputs"], dtype=torch.float64) * p["n_outputs"] for p in parts) / n_out
    ref = torch.tensor(parts[0]["index"], dtype=torch.float64)
    out = gaps_from_profiles(pi, po, ref, ratio)
    out["sample"] = min(n_in, n_out)
    return out
