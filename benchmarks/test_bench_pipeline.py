"""End-to-end ``calibrate_dir`` throughput (decode -> retrieval -> SHR -> RHM -> encode,
manifest, report) on the shipped synthetic set: 256 64x64 16-bit PNGs against an
index of the shipped real train set (171 images, so K = 200 clamps to 171).

Rows per group: ``torch`` (SHR only, torch reference backends: the ratio baseline),
``shr_only`` (SHR only, auto backends), ``rhm_small`` (a tiny random RHM: the
pipeline's overhead around a model) and ``rhm_default`` (the shipped default RHM,
skipped where the package has none). ``items`` is the image count, so the ratio
table's items/s is images/s end to end. ``extra_info["stage_seconds"]`` holds the
median per-stage seconds of the timed rounds from the run report; decode and encode
run in thread pools overlapping the compute stages, so stages do not sum to the wall
time. On CPU each case also runs with one torch thread: on small shared machines
OpenMP teams stall on the model's many small ops.

With ``--benchmark-disable`` (CI) each case runs once on a 16-image subset.
"""
import shutil
import statistics

import pytest
import torch

import frerec_fast as ff
from frerec_fast.datasets import real_dir, synthetic_dir
from frerec_fast.model import RHM, RHMConfig, load_rhm
from frerec_fast.pipeline import calibrate_dir
from conftest import sync

SMALL = RHMConfig(dim=8, heads=(1, 1, 1, 1), blocks=(1, 1, 1, 1), refinement=0,
                  n_rings=4, n_sectors=8)
SMOKE_IMAGES = 16
KINDS = ["torch", "shr_only", "rhm_small", "rhm_default"]


@pytest.fixture(scope="module")
def real_index(tmp_path_factory):
    return ff.build_index(real_dir("train"), tmp_path_factory.mktemp("idx"), progress=False)


def _copy_inputs(dst, limit=None):
    files = sorted(synthetic_dir().rglob("*.png"))
    if limit:
        files = files[:: max(1, len(files) // limit)][:limit]
    for p in files:
        out = dst / p.relative_to(synthetic_dir())
        out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, out)
    return len(files)


def _model(kind, device):
    if kind in ("torch", "shr_only"):
        return False
    if kind == "rhm_small":
        torch.manual_seed(0)
        return RHM(SMALL).to(device).eval()
    from frerec_fast.training.default import default_model_path
    try:
        return load_rhm(default_model_path(), device=device)
    except FileNotFoundError as e:
        pytest.skip(f"no shipped default RHM: {e}")


@pytest.mark.parametrize("threads", [None, 1], ids=["default_threads", "1thread"])
@pytest.mark.parametrize("kind", KINDS)
def test_calibrate_dir(benchmark, bench_device, real_index, tmp_path, kind, threads):
    if threads is not None and bench_device.type != "cpu":
        pytest.skip("the torch thread count only matters for CPU runs")
    src, dst = tmp_path / "src", tmp_path / "dst"
    n = _copy_inputs(src, SMOKE_IMAGES if benchmark.disabled else None)
    model = _model(kind, bench_device)
    reports = []

    def timed():
        rep = calibrate_dir(src, dst, index=real_index, model=model, device=bench_device,
                            backend="torch" if kind == "torch" else "auto", resume=False,
                            batch_size=32, workers=4, progress=False)
        sync(bench_device)
        assert rep["ok"] == n and rep["failed"] == 0, rep["errors"]
        reports.append(rep)
        return rep

    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        used = torch.get_num_threads()
        benchmark.group = f"calibrate-{bench_device.type}-64x64-t{used}"
        benchmark.pedantic(timed, rounds=3, iterations=1, warmup_rounds=1)
    finally:
        torch.set_num_threads(before)

    timed_reps = reports[-3:]
    stages = {s: statistics.median(r["stage_seconds"][s] for r in timed_reps)
              for s in timed_reps[-1]["stage_seconds"]}
    last = timed_reps[-1]
    gap = last["frequency_gap"]
    benchmark.extra_info.update(
        backend=kind, items=n, size=64, device=str(bench_device), torch_threads=used,
        backends=last["backends"], model_batch=last["model_batch"], k=last["k"],
        stage_seconds=stages,
        stage_images_per_s={s: (n / v if v > 0 and (s != "rhm" or last["rhm"]) else None)
                            for s, v in stages.items()},
        report_images_per_s=statistics.median(r["images_per_s"] for r in timed_reps),
        gap_high_in=gap["inputs_vs_index"]["high_band"],
        gap_high_out=gap["outputs_vs_index"]["high_band"])
