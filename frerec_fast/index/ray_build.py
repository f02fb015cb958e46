"""``build_index_ray``: a sharded index built by Ray tasks, one task per shard.

The driver fixes the plan (``plan_shards``: configuration and numbered file lists, under
the index's build lock), runs ``build_shard`` for every shard as a Ray task, and commits
the manifest itself (``commit_shards``, one atomic write). A shard's bytes depend only
on its files and the configuration, so the index is byte for byte the one
``build_index`` writes with the same shard size (tested on a local cluster).

Why tasks here when calibration uses actors: a shard build loads nothing (no model, no
engine), so a task costs Ray's scheduling only; a task is also Ray's unit of retry: a
task lost with its worker or node is rerun (``max_retries``) to the same bytes, and a
killed task leaves at most a shard file pair no manifest lists (``commit_shards``
removes it). Python exceptions are not retried: they end the build, with no manifest
written.

Shared-storage assumption (as ``calibrate_dir_ray``): ``real_dir`` readable and ``out``
writable under the same paths on every node.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from ..optional import optional_import, ray_get
from ..progress import bar as progress_bar
from .build import (_Default, _Lock, build_shard, commit_shards, plan_shards)
from .realindex import ShardedIndex

log = logging.getLogger("frerec_fast")

MAX_RETRIES = 3


def _build_shard_task(torch_threads: int, *args, **kwargs):
    """``build_shard`` in a Ray worker with ``torch_threads`` torch threads (a worker
    process otherwise takes every core of its node)."""
    import torch
    torch.set_num_threads(max(1, int(torch_threads)))
    return build_shard(*args, **kwargs)


def build_index_ray(real_dir: str | os.PathLike, out: str | os.PathLike, *,
                    num_workers: int | None = None, cpus_per_worker: int = 1,
                    address: str | None = None, max_retries: int = MAX_RETRIES,
                    shard_size: int | None = None, append: bool = False,
                    ratio: float = _Default(0.5), domain: str = _Default("complex"),
                    work_size=None, retrieval_size=_Default(64), channels: int | None = None,
                    batch_size: int = 64, threads: int = 4, backend: str = "auto",
                    progress: bool = True) -> ShardedIndex:
    """Build (or, with append, extend) the sharded index at ``out`` from ``real_dir``
    with one Ray task per shard (module docstring). Always writes the sharded layout.

    num_workers: shard tasks running at once (default: as many as the cluster's CPUs
    allow, ``cpus_per_worker`` each). cpus_per_worker: CPUs reserved per task, and its
    torch threads. address: an existing Ray cluster ("auto", "ray://host:port"); None
    starts a local one for this call (shut down afterwards) unless Ray is already
    initialised in this process. max_retries: reruns of a task lost with its worker.
    The other arguments are ``build_index``'s. Returns the index, opened lazily.
    """
    ray = optional_import("ray", "building an index on Ray (pip install 'frerec_fast[ray]')")
    if int(cpus_per_worker) < 1:
        raise ValueError(f"cpus_per_worker must be >= 1, got {cpus_per_worker!r}")
    if num_workers is not None and int(num_workers) < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers!r}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with _Lock(out):
        plan = plan_shards(real_dir, out, shard_size=shard_size, append=append, ratio=ratio,
                           domain=domain, work_size=work_size, retrieval_size=retrieval_size,
                           channels=channels)
        started = not ray.is_initialized()
        if started:
            ray.init(address=address, include_dashboard=False, log_to_driver=False,
                     **({} if address else
                        {"num_cpus": max(int(cpus_per_worker), os.cpu_count() or 1)}))
        try:
            results = _run(ray, plan, num_workers, int(cpus_per_worker), int(max_retries),
                           batch_size, threads, backend, progress)
        finally:
            if started:
                ray.shutdown()
        return commit_shards(plan, results)


def _run(ray, plan, num_workers, cpus: int, max_retries: int, batch_size: int,
         threads: int, backend: str, progress: bool) -> list:
    """Submit the plan's shards, at most ``num_workers`` in flight; the results."""
    task = ray.remote(_build_shard_task).options(num_cpus=cpus, max_retries=max_retries)
    if num_workers is None:
        num_workers = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
    todo = list(plan.groups)
    bar = progress_bar(sum(len(f) for _, f in todo), "index (ray)", "file", progress)
    pending, results = {}, []
    try:
        while todo or pending:
            while todo and len(pending) < num_workers:
                number, files = todo.pop(0)
                ref = task.remote(cpus, str(plan.real_dir), list(files), str(plan.out),
                                  number, plan.config, batch_size=batch_size,
                                  backend=backend, threads=threads)
                pending[ref] = number
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                pending.pop(ref)
                r = ray_get(ray, ref)
                bar.update(r.files)
                for s in r.skipped:
                    log.warning("skipping %s", s["error"])
                results.append(r)
    except BaseException:
        for ref in pending:  # nothing more is committed: stop the rest
            ray.cancel(ref, force=True)
        raise
    finally:
        bar.close()
    return results
