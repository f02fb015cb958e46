"""The capacity model (``frerec_fast.capacity``, docs/capacity.md): its arithmetic against
hand-computed cases, ``frerec capacity`` end to end with a rates file, and ``--measure``
on a tiny model for a fraction of a second per stage."""
import json
import math
import subprocess
import sys

import pytest
import torch

import frerec_fast as ff
from frerec_fast.capacity import (DEFAULT_RATES, check_rates, parse_count, parse_duration,
                                  plan_capacity)
from frerec_fast.datasets import real_dir
from frerec_fast.model import RHM, RHMConfig, save_checkpoint
from tiny_models import TINY

# Round numbers, so that every expected value below is worked out by hand.
RATES = {"frerec_capacity_rates": 1, "source": "test", "worker_start_s": 0.0,
         "cpu": {"decode": 1000.0, "encode": 500.0, "shr": 2000.0,
                 "rhm": {"eager": 10.0, "openvino": 20.0},
                 "ssim_pairs_per_s": 100_000.0, "embedding_rows_per_s": 1_000_000.0}}
GPU = {"ssim_pairs_per_s": 1e7, "shr": 1e5, "rhm": {"tensorrt": 1000.0}}


def _stage(plan, name):
    return next(r for r in plan["stages"] if r["stage"] == name)


def test_cpu_only_exact_retrieval():
    # per image: decode 1 ms, retrieval 1000/1e5 = 10 ms, shr 0.5 ms, rhm 1/20 = 50 ms
    # (the fastest engine), encode 2 ms: 63.5 ms. 1e6 images in 10,000 s: 6.35 cores.
    p = plan_capacity(RATES, 1_000_000, 10_000, index_size=1000, utilization=1.0,
                      cpus_per_worker=2)
    assert p["cpu_seconds_per_image"] == pytest.approx(0.0635)
    assert [r["stage"] for r in p["stages"]] == ["decode", "retrieval", "shr", "rhm", "encode"]
    assert _stage(p, "retrieval")["seconds"] == pytest.approx(0.010)
    assert _stage(p, "rhm")["units"] == pytest.approx(5.0)
    assert _stage(p, "rhm")["share"] == pytest.approx(50 / 63.5)
    assert p["cores"] == 7 and p["workers"] == 4 and p["rhm_engine"] == "openvino"
    assert p["cpu_core_hours"] == pytest.approx(63_500 / 3600)
    assert p["bottleneck"] == "rhm" and "gpus_needed" not in p
    # retrieval on one core costs the RHM's 50 ms at 0.05 * 1e5 = 5000 index images
    # (exact), and at (0.05 - max(4*200, 1024)/1e5) * 1e6 = 39,760 (prefilter).
    assert p["crossover"]["exact"] == pytest.approx(5000)
    assert p["crossover"]["prefilter"] == pytest.approx(39_760)
    # A named engine (eager: 100 ms, 113.5 ms in all); the worker start and the
    # utilisation shrink the budget: (10,000 - 100) s * 0.5 = 4950 s for
    # 1e6 * 0.1135 s = 113,500 core-seconds.
    slow = plan_capacity({**RATES, "worker_start_s": 100.0}, 1_000_000, 10_000,
                         index_size=1000, engine="eager", utilization=0.5)
    assert slow["cpu_seconds_per_image"] == pytest.approx(0.1135)
    assert slow["cores"] == math.ceil(113_500 / 4950) == 23
    # SHR only: no RHM stage.
    shr_only = plan_capacity(RATES, 1_000_000, 10_000, index_size=1000, rhm=False,
                             utilization=1.0)
    assert "rhm" not in [r["stage"] for r in shr_only["stages"]]
    assert shr_only["cores"] == math.ceil(13_500 / 10_000) == 2
    assert shr_only["bottleneck"] == "retrieval"


def test_prefilter_at_a_million_index_images_moves_the_bottleneck_to_retrieval():
    # retrieval = 1e6 / 1e6 + 1000 / 1e5 = 1.01 s per image: 1.0635 s with the rest.
    p = plan_capacity(RATES, 1_000_000, 10_000, index_size=1_000_000, retrieval="prefilter",
                      candidates=1000, utilization=1.0)
    assert _stage(p, "retrieval")["seconds"] == pytest.approx(1.01)
    assert p["cores"] == math.ceil(1_000_000 * 1.0635 / 10_000) == 107
    assert p["bottleneck"] == "retrieval"
    # The default short list is max(4k, 1024) = 1024 at k = 200.
    d = plan_capacity(RATES, 1_000_000, 10_000, index_size=1_000_000, retrieval="prefilter",
                      utilization=1.0)
    assert _stage(d, "retrieval")["seconds"] == pytest.approx(1 + 1024 / 1e5)


def test_prefilter_rerank_has_its_own_rate():
    # retrieval = 1e6 / 1e6 + 1000 / 2.5e4 = 1.04 s; the crossover with the RHM (50 ms):
    # (0.05 - 1000 / 2.5e4) * 1e6 = 10,000 index images (the rest of the RHM's 50 ms,
    # 10 ms, buys 10^4 embedding rows).
    rates = {**RATES, "cpu": {**RATES["cpu"], "rerank_pairs_per_s": 25_000.0}}
    p = plan_capacity(rates, 1_000_000, 10_000, index_size=1_000_000, retrieval="prefilter",
                      candidates=1000, utilization=1.0)
    assert _stage(p, "retrieval")["seconds"] == pytest.approx(1.04)
    assert p["crossover"]["prefilter"] == pytest.approx(10_000)


def test_gpus_take_retrieval_shr_and_rhm_and_the_bottleneck_moves_to_the_cores():
    rates = {**RATES, "gpu": GPU}
    # GPU per image: 1000/1e7 + 1/1e5 + 1/1000 = 1.11 ms; CPU: decode 1 + encode 2 = 3 ms.
    p = plan_capacity(rates, 1_000_000, 10_000, index_size=1000, gpus=2, utilization=1.0)
    units = {r["stage"]: r["unit"] for r in p["stages"]}
    assert units == {"decode": "cpu", "retrieval": "gpu", "shr": "gpu", "rhm": "gpu",
                     "encode": "cpu"}
    assert p["gpu_seconds_per_image"] == pytest.approx(0.00111)
    assert p["cpu_seconds_per_image"] == pytest.approx(0.003)
    assert p["gpus_needed"] == 1 and p["cores"] == 1 and p["rhm_engine"] == "tensorrt"
    assert p["cores_per_gpu"] == pytest.approx(3 / 1.11)
    assert p["cores_for_gpus"] == math.ceil(2 * 3 / 1.11) == 6
    assert p["hours_with_gpus"] == pytest.approx(1_000_000 * 0.00111 / 2 / 3600)
    assert p["bottleneck"] == "encode"  # enough GPUs: the cores that feed them bound it
    # Too few GPUs for 1e8 images in 10,000 s (111,000 GPU-s: 12 GPUs): the GPU bounds it.
    big = plan_capacity(rates, 100_000_000, 10_000, index_size=1000, gpus=2, utilization=1.0)
    assert big["gpus_needed"] == 12 and big["bottleneck"] == "rhm"
    # A stage without a GPU rate stays on the cores.
    no_shr = plan_capacity({**RATES, "gpu": {k: v for k, v in GPU.items() if k != "shr"}},
                           1_000_000, 10_000, index_size=1000, gpus=1, utilization=1.0)
    assert _stage(no_shr, "shr")["unit"] == "cpu"
    assert no_shr["cpu_seconds_per_image"] == pytest.approx(0.0035)


def test_gpus_without_gpu_rates_and_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="never measured"):
        plan_capacity(RATES, 1000, 3600, index_size=100, gpus=1)
    with pytest.raises(ValueError, match="rhm.compile"):
        plan_capacity(RATES, 1000, 3600, index_size=100, engine="compile")
    with pytest.raises(ValueError, match="shorter than a worker's start"):
        plan_capacity({**RATES, "worker_start_s": 10}, 1000, 5, index_size=100)
    with pytest.raises(ValueError, match="frerec_capacity_rates"):
        check_rates({"cpu": {}})
    with pytest.raises(ValueError, match="positive"):
        check_rates({**RATES, "cpu": {**RATES["cpu"], "shr": -1}})
    check_rates(DEFAULT_RATES)


def test_durations_and_counts():
    assert parse_duration("2h") == 7200 and parse_duration("1h30m") == 5400
    assert parse_duration("90m") == 5400 and parse_duration("45") == 45
    assert parse_duration("1d") == 86400 and parse_duration("0.5h") == 1800
    assert parse_count("1e6") == 1_000_000 and parse_count("10_000") == 10_000
    for bad in ("two hours", "", "0", "-1h"):
        with pytest.raises(ValueError):
            parse_duration(bad)
    for bad in ("1.5", "x", "0"):
        with pytest.raises(ValueError):
            parse_count(bad)


def _frerec(*args):
    return subprocess.run([sys.executable, "-m", "frerec_fast.cli", *map(str, args)],
                          capture_output=True, text=True, timeout=300)


def test_cli_with_a_rates_file(tmp_path):
    path = tmp_path / "rates.json"
    path.write_text(json.dumps(RATES))
    r = _frerec("capacity", "--images", "1e6", "--deadline", "2h46m40s", "--rates", path,
                "--index-size", "1000", "--utilization", "1", "--cpus-per-worker", "2")
    assert r.returncode == 0, r.stderr
    assert "7 cores = 4 Ray workers of 2 CPU(s)" in r.stdout  # 2h46m40s = 10,000 s
    assert "bottleneck: rhm" in r.stdout and "exact at 5,000 index images" in r.stdout
    j = _frerec("capacity", "--images", "1e6", "--deadline", "10000", "--rates", path,
                "--index-size", "1e6", "--retrieval", "prefilter", "--candidates", "1000",
                "--utilization", "1", "--json")
    plan = json.loads(j.stdout)["plan"]
    assert plan["cores"] == 107 and plan["bottleneck"] == "retrieval"
    bad = _frerec("capacity", "--images", "1e6", "--deadline", "2h", "--rates", path,
                  "--gpus", "1")
    assert bad.returncode == 2 and "never measured" in bad.stderr
    path.write_text(json.dumps({**RATES, "gpu": GPU}))
    g = _frerec("capacity", "--images", "1e8", "--deadline", "10000s", "--rates", path,
                "--index-size", "1000", "--gpus", "2", "--utilization", "1")
    assert g.returncode == 0, g.stderr
    assert "12 GPU(s) for the deadline" in g.stdout and "misses the deadline" in g.stdout


def test_measure_on_a_tiny_model(tmp_path):
    ff.build_index(real_dir("train"), tmp_path / "idx", progress=False)
    torch.manual_seed(0)
    save_checkpoint(tmp_path / "tiny", RHM(RHMConfig(**TINY)).eval())
    out = tmp_path / "measured.json"
    r = _frerec("capacity", "--images", "1e7", "--deadline", "1d", "--measure", "--seconds",
                "0.02", "--index", tmp_path / "idx", "--model", tmp_path / "tiny.safetensors",
                "--engines", "eager", "--save", out)
    assert r.returncode == 0, r.stderr
    rates = check_rates(json.loads(out.read_text()))
    cpu = rates["cpu"]
    assert set(cpu) == {"decode", "encode", "shr", "rhm", "ssim_pairs_per_s",
                        "embedding_rows_per_s", "rerank_pairs_per_s"}
    assert list(cpu["rhm"]) == ["eager"] and rates["work_size"] == [64, 64]
    assert rates["index_size_measured"] == 171 and rates["worker_start_s"] > 0
    assert "10,000,000 images in 24h00m" in r.stdout and "bottleneck:" in r.stdout
    # The saved file plans the same job again.
    again = _frerec("capacity", "--images", "1e7", "--deadline", "1d", "--rates", out)
    assert again.returncode == 0 and again.stdout == r.stdout


def test_index_footprint_formula_against_an_index_on_disk(tmp_path):
    """Disk bytes per image (thumbnails, embedding, stats, keys) and per shard, from the
    shard layout, against the sizes of a real sharded index's files; RAM parts by hand."""
    from frerec_fast.capacity import index_bytes_per_image, index_footprint
    idx = ff.build_index(real_dir("train"), tmp_path / "idx", shard_size=50, workers=1,
                         progress=False)
    n, shards = len(idx), len(idx.manifest.shards)
    assert (n, shards) == (171, 4)
    per = index_bytes_per_image((64, 64), 1, key_chars=21)
    assert per == {"thumbs": 8192, "stats": 8, "embed": 1024, "keys": 93, "total": 9317}
    # The per-image payload of the tensor files is exact; each header is under 400 B.
    tens = sum(p.stat().st_size for p in (idx.path / "shards").glob("*.safetensors"))
    assert 0 < tens - n * (8192 + 8 + 1024) < 400 * shards
    # Shard JSONs: key + hash cost key length + 72 per image, plus under 500 B per shard.
    js = sum(p.stat().st_size for p in (idx.path / "shards").glob("*.json"))
    assert 0 < js - sum(len(k) + 72 for k in idx.keys) < 500 * shards
    mean_key = sum(len(k) for k in idx.keys) / n
    disk = sum(p.stat().st_size for p in idx.path.rglob("*") if p.is_file()
               and not p.name.startswith("."))
    f = index_footprint(n, key_chars=round(mean_key), shard_size=50, queries=4,
                        candidates=100)
    assert f["shards"] == 4
    assert f["disk"] == pytest.approx(disk, rel=0.01)
    assert f["embeddings"] == n * 1024 and f["thumbs_mapped"] == n * 8192
    assert f["stats"] == n * 8
    assert f["ram_prefilter"] == f["embeddings"] + f["stats"] + f["rerank_peak"]
    # 10^6 images with the benchmark's 21-character keys: the measured 9.317 GB.
    big = index_footprint(1_000_000, key_chars=21)
    assert big["disk"] == pytest.approx(9_317_016_545, rel=1e-4)
    # The re-rank peak grows with queries x candidates x pixels: the measured 16 x 10,000
    # is about 5.6 GB over the index (10.1 B per pixel of each short-listed pair).
    assert index_footprint(1_000_000, candidates=10_000)["rerank_peak"] / 1e9 == \
        pytest.approx(6.6, abs=0.1)
    r = _frerec("capacity", "--images", "1e7", "--deadline", "1d", "--index-size", "1e7",
                "--retrieval", "prefilter")
    assert r.returncode == 0, r.stderr
    assert "index of 10,000,000 images: 93.20 GB on disk in 153 shard(s)" in r.stdout
    # 10^7 x 1024 B of embeddings + 80 MB of stats + 16 x 1024 x 4096 x 10.1 B of re-rank
    assert "RAM per worker, prefilter: 11.00 GB" in r.stdout
