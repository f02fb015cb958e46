"""``calibrate_dir_ray``: the Ray twin of ``calibrate_dir``, for when one box is not enough.

The driver lists the files, cleans ``dst`` and splits the list into ``num_workers``
shards (round-robin over the sorted paths, so shards are balanced and deterministic).
Each shard is one Ray task that runs the local job's parts (``calibrate_shard``: the same
plan, reader, calibrator and writer as ``calibrate_dir``) on its files into the same
``dst``, appending to its own manifest (``frerec_manifest.<shard>.jsonl``), so no two
processes ever write one file. The settings are one ``CalibrateConfig``, validated by
the driver before any task starts. The driver merges the shard reports into one
``frerec_report.json``.

Every output's bytes depend only on its input and the run settings (see
``frerec_fast.pipeline``), so a distributed run writes exactly what a local run with the
same device, backends, thread count and ``model_batch`` writes. Resume reads every
manifest in ``dst``: a local run resumes a distributed one and the reverse, whatever
the number of workers.

Shared-storage assumption: ``src``, ``dst``, the index and the model must be readable
(``dst`` writable) under the same paths on every node, as on one machine or a cluster
with a shared filesystem.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import torch

from . import io as fio
from .optional import optional_import
from .pipeline import (MANIFEST, REPORT, CalibrateConfig, check_dirs, gaps_from_profiles,
                       make_config, manifest_paths, prepare_dst)
from .pipeline.record import RunLock
from .progress import bar as progress_bar


def _shard_task(src: str, dst: str, shard: str, index: str, model, threads: int,
                cfg: CalibrateConfig) -> dict:
    """One Ray task: the local job's parts on a subset of files (runs in a Ray worker)."""
    torch.set_num_threads(threads)
    from .pipeline import calibrate_shard

    return calibrate_shard(src, dst, index, model, cfg, shard)


def calibrate_dir_ray(src: str | os.PathLike, dst: str | os.PathLike, index, model=None, *,
                      num_workers: int | None = None, cpus_per_worker: int = 1,
                      gpus_per_worker: float = 0, address: str | None = None,
                      config: CalibrateConfig | None = None, **settings) -> dict:
    """Calibrate ``src`` into ``dst`` with ``num_workers`` Ray tasks (see module docstring).

    index: path of a saved index (or a RealIndex loaded from one). model: a checkpoint
    path, None for the shipped model, or False for SHR only (an in-memory module cannot
    be shipped to other nodes: save it with ``save_checkpoint`` first).
    num_workers: shards (default: the cluster's CPUs // cpus_per_worker, or its GPUs //
    gpus_per_worker). cpus_per_worker: CPU threads per task (torch threads too).
    gpus_per_worker > 0 runs on CUDA. address: an existing Ray cluster ("auto", or
    "ray://host:port"); None starts a local one for this call (shut down afterwards).
    config / settings: the local job's ``CalibrateConfig`` (workers = decode and encode
    threads per task); ``device`` and ``files`` are set per task here, ``progress`` and
    ``resume`` apply to the whole job.
    Returns the merged report (also ``dst/frerec_report.json``).
    """
    ray = optional_import("ray", "distributed calibration (pip install 'frerec_fast[ray]')")
    t0 = time.perf_counter()
    for key in ("device", "files"):
        if key in settings:
            raise ValueError(f"calibrate_dir_ray sets {key!r} itself")
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
    with RunLock(dst):  # the driver holds it for the whole job; shards do not lock
        return _run_shards(ray, src, dst, index_path, model, cfg, task_cfg, num_workers,
                           cpus_per_worker, gpus_per_worker, address, t0)


def _run_shards(ray, src: Path, dst: Path, index_path, model, cfg: CalibrateConfig,
                task_cfg: CalibrateConfig, num_workers, cpus_per_worker: int,
                gpus_per_worker: float, address, t0: float) -> dict:
    prepare_dst(dst, cfg.resume)
    rels, excluded = fio.scan_tree(src, cfg.follow_symlinks)
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False,
                 **({} if address else {"num_cpus": max(cpus_per_worker, os.cpu_count() or 1)}))
    try:
        if num_workers is None:
            res = ray.cluster_resources()
            num_workers = int(res.get("GPU", 0) // gpus_per_worker if gpus_per_worker
                              else res.get("CPU", 1) // cpus_per_worker)
        num_workers = max(1, min(int(num_workers), len(rels) or 1))
        shards = [rels[i::num_workers] for i in range(num_workers)]
        task = ray.remote(num_cpus=cpus_per_worker, num_gpus=gpus_per_worker)(_shard_task)
        refs = [task.remote(str(src), str(dst), f"shard{i:04d}", str(index_path), model,
                            cpus_per_worker, task_cfg.replace(files=tuple(files)))
                for i, files in enumerate(shards) if files]
        reports = _wait(ray, refs, dst, len(rels), cfg.progress)
    finally:
        if started:
            ray.shutdown()
    report = merge_reports(reports, time.perf_counter() - t0, ratio=_ratio(index_path))
    report.update({"files": len(rels), "excluded": excluded, "workers": len(refs),
                   "cpus_per_worker": cpus_per_worker,
                   "gpus_per_worker": gpus_per_worker})
    fio.atomic_write_text(dst / REPORT, json.dumps(report, indent=1))
    return report


def _ratio(index_path) -> float:
    meta = json.loads((Path(index_path) / "index.json").read_text())
    return float(meta["config"]["ratio"])


def _wait(ray, refs: list, dst: Path, total: int, progress: bool) -> list[dict]:
    """Results in shard order; a progress bar fed by the manifests' line counts."""
    bar = progress_bar(total, "calibrate (ray)", "img", progress)
    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=1.0)
        if progress:
            done = sum(sum(1 for _ in open(m)) for m in manifest_paths(dst) if m.name != MANIFEST)
            bar.update(max(0, min(done, total) - bar.n))
    bar.close()
    return ray.get(refs)


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
    for key in ("device", "device_name", "backends", "rhm", "shr", "engine", "precision", "k", "seed",
                "batch_size", "model_batch", "run", "index", "retrieval"):
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
