"""What a shard costs to start on Ray: the index, model and engine load against the compute.

    .venv/bin/python scripts/measure_shard_cost.py --shards 32 64 128 --engine auto eager \
        --json benchmarks/results/ray-shard-cost-<machine>-<date>.json

On the 256 bundled DCGAN images with the shipped RHM, a local Ray cluster of ``--cpus``
CPUs, one torch thread per worker, for each engine and shard size:

* ``tasks``: one Ray task per shard that loads the index and the model, builds the RHM
  engine and runs the shard (``calibrate_shard``, what ``calibrate_dir_ray`` did before
  it moved to actors); each task reports its load and compute seconds.
* ``actors``: ``calibrate_dir_ray(shard_size=...)``, whose long-lived workers load once
  and take shards from the driver; its report has the load seconds summed over worker
  starts.

Prints a table (per-task load, per-task compute, load share, job seconds) and saves the
rows with the machine's description. Numbers on a shared machine move with its load:
the script records the load average at the start and the end.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path


def _task(src: str, dst: str, index: str, cfg, shard: str) -> dict:
    """One shard as one Ray task: load, then compute (timed apart)."""
    t0 = time.perf_counter()
    fresh = "frerec_fast.pipeline.run" not in sys.modules
    import torch
    torch.set_num_threads(1)
    from frerec_fast.pipeline.run import ShardRunner
    t1 = time.perf_counter()
    runner = ShardRunner(src, dst, index, None, cfg, shard)
    t2 = time.perf_counter()
    rep = runner(cfg.files)
    runner.close()
    t3 = time.perf_counter()
    return {"import_s": t1 - t0 if fresh else 0.0, "load_s": t2 - t1, "compute_s": t3 - t2,
            "ok": rep["ok"], "engine": rep["engine"]}


def run_tasks(ray, src: Path, dst: Path, index: Path, engine: str, shard: int) -> dict:
    from frerec_fast.distributed import shard_files
    from frerec_fast.io import scan_tree
    from frerec_fast.pipeline import make_config

    rels, _ = scan_tree(src)
    cfg = make_config(device="cpu", engine=engine, progress=False)
    t0 = time.perf_counter()
    task = ray.remote(num_cpus=1)(_task)
    refs = [task.remote(str(src), str(dst), str(index), cfg.replace(files=tuple(files)),
                        f"task{i:04d}") for i, files in enumerate(shard_files(rels, 1, shard))]
    got = ray.get(refs)
    wall = time.perf_counter() - t0
    assert sum(g["ok"] for g in got) == len(rels), got
    load = [g["load_s"] for g in got]
    comp = [g["compute_s"] for g in got]
    return {"mode": "tasks", "engine": got[0]["engine"], "shard": shard, "shards": len(got),
            "load_s_per_shard": statistics.median(load), "compute_s_per_shard":
            statistics.median(comp), "load_s_total": sum(load), "compute_s_total": sum(comp),
            "import_s_total": sum(g["import_s"] for g in got), "wall_s": wall,
            "images": len(rels), "images_per_s": len(rels) / wall}


def run_actors(src: Path, dst: Path, index: Path, engine: str, shard: int,
               workers: int) -> dict:
    from frerec_fast.distributed import calibrate_dir_ray

    t0 = time.perf_counter()
    rep = calibrate_dir_ray(src, dst, index, None, num_workers=workers, shard_size=shard,
                            engine=engine, progress=False)
    wall = time.perf_counter() - t0
    assert rep["ok"] == rep["files"], rep["errors"]
    compute = rep["shard_seconds"]
    return {"mode": "actors", "engine": rep["engine"], "shard": shard, "shards": rep["shards"],
            "workers": rep["workers"], "worker_starts": rep["worker_starts"],
            "load_s_per_worker": rep["load_seconds"] / rep["worker_starts"],
            "load_s_total": rep["load_seconds"], "compute_s_total": compute,
            "compute_s_per_shard": compute / rep["shards"], "wall_s": wall,
            "images": rep["files"], "images_per_s": rep["files"] / wall}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shards", type=int, nargs="+", default=[32, 64, 128])
    p.add_argument("--engine", nargs="+", default=["auto", "eager"])
    p.add_argument("--cpus", type=int, default=2, help="CPUs of the local cluster (workers)")
    p.add_argument("--modes", nargs="+", default=["tasks", "actors"])
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import ray
    import torch

    import frerec_fast as ff
    from frerec_fast.datasets import real_dir, synthetic_dir

    work = Path(tempfile.mkdtemp(prefix="frerec_shard_cost_"))
    ff.build_index(real_dir("train"), work / "idx", progress=False)
    load_before = os.getloadavg()
    ray.init(num_cpus=a.cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    rows = []
    try:
        for engine in a.engine:
            for shard in a.shards:
                for mode in a.modes:
                    dst = work / f"{mode}-{engine}-{shard}"
                    row = (run_tasks(ray, synthetic_dir(), dst, work / "idx", engine, shard)
                           if mode == "tasks" else
                           run_actors(synthetic_dir(), dst, work / "idx", engine, shard, a.cpus))
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    print(f"\n{'mode':<7}{'engine':<10}{'shard':>6}{'load/shard s':>13}{'compute/shard s':>17}"
          f"{'load share':>12}{'job s':>8}{'img/s':>7}")
    for r in rows:
        load = r.get("load_s_per_shard", r["load_s_total"] / r["shards"])
        share = r["load_s_total"] / (r["load_s_total"] + r["compute_s_total"])
        print(f"{r['mode']:<7}{r['engine']:<10}{r['shard']:>6}{load:>13.2f}"
              f"{r['compute_s_per_shard']:>17.2f}{share:>12.0%}{r['wall_s']:>8.1f}"
              f"{r['images_per_s']:>7.1f}")
    if a.json:
        a.json.parent.mkdir(parents=True, exist_ok=True)
        a.json.write_text(json.dumps({
            "machine": {"cpu": platform.processor() or platform.machine(),
                        "cores": os.cpu_count(), "torch": torch.__version__,
                        "ray": ray.__version__, "python": platform.python_version(),
                        "loadavg_before": load_before, "loadavg_after": os.getloadavg()},
            "setup": {"images": 256, "model": "shipped RHM", "cluster_cpus": a.cpus,
                      "threads_per_worker": 1, "date": time.strftime("%Y-%m-%d %H:%M")},
            "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
