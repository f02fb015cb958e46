"""The GPU-scale job: ``calibrate_dir`` at 256x256 with the paper-size RHM (method §5
defaults: dim 48, blocks 2/4/6/8, about 254 GFLOP per image) against the RHM engine's
own rate, in the same run. The issue's goal on an H100-class GPU: end to end >= 600
img/s, close to the engine's rate (decode, retrieval, SHR and encode hidden behind it).

Data: the shipped real train slices and DCGAN images enlarged to 256x256 (bicubic) and
written as 16-bit PNGs; an index of the 171 enlarged real slices at 256x256. Weights
are random (speed does not depend on them).

Rows of group ``calibrate-<device>-256x256-<model>`` (``extra_info["backend"]``):
``torch`` is the RHM forward alone at fp32 over the same images in the pipeline's
micro-batches (the engine's own rate: every ratio divides it), ``bf16`` the same under
autocast, ``e2e-fp32`` / ``e2e-bf16`` the whole job (decode -> retrieval -> SHR -> RHM ->
encode, manifest and report), with per-stage seconds in ``extra_info`` (decode and
encode: summed over their threads, so their images/s there is per thread). A ratio of
e2e-bf16 near that of bf16 means the pipeline keeps the GPU busy.

On CPU the paper-size model would take seconds per image, so the CPU rows use a tiny
RHM (the rows' ``model`` says which) on a few images: they keep the code path alive.
"""
import os
import statistics

import pytest
import torch

import frerec_fast as ff
from frerec_fast import io as fio
from frerec_fast.datasets import load_images
from frerec_fast.index import resample
from frerec_fast.model import RHM, RHMConfig
from frerec_fast.pipeline import MODEL_BATCH, calibrate_dir
from conftest import sync

SIZE = 256
TINY = RHMConfig(dim=8, heads=(1, 1, 1, 1), blocks=(1, 1, 1, 1), refinement=0,
                 n_rings=4, n_sectors=8)


def _write(batch: torch.Tensor, root, prefix: str, copies: int = 1) -> int:
    big = resample(batch, (SIZE, SIZE)).numpy()
    n = 0
    for c in range(copies):
        (root / f"{prefix}{c}").mkdir(parents=True, exist_ok=True)
        for i, img in enumerate(big):
            fio.write_png(root / f"{prefix}{c}" / f"{i:04d}.png", img, 16)
            n += 1
    return n


@pytest.fixture(scope="module")
def setup256(tmp_path_factory, request):
    """(device, model config name, model, index, src dir, image count)."""
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    disabled = request.config.getoption("benchmark_disable", False) and \
        not request.config.getoption("--benchmark", False)
    root = tmp_path_factory.mktemp("p256")
    _write(load_images("train"), root / "real", "r")
    index = ff.build_index(root / "real", root / "idx", work_size=SIZE, progress=False)
    synth = load_images("synthetic")
    if dev.type == "cuda" and not disabled:
        # 512 images: ~1 s at the 600 img/s goal, and the whole file stays within the
        # GPU check's few minutes if fp32 runs at only ~50 img/s.
        name, cfg, n_in, copies = "paper", RHMConfig(), len(synth), 2
    else:
        name, cfg, n_in, copies = "tiny", TINY, (4 if disabled else 16), 1
    n = _write(synth[:n_in], root / "src", "s", copies)
    torch.manual_seed(0)
    model = RHM(cfg).to(dev).eval()
    return dev, name, model, index, root / "src", n


def _group(dev, name):
    return f"calibrate-{dev.type}-{SIZE}x{SIZE}-{name}"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_rhm_engine_rate(benchmark, setup256, precision):
    from frerec_fast.engine import RHMEngine

    dev, name, model, _, _, n = setup256
    micro = MODEL_BATCH.get(dev.type, 8)
    net = RHMEngine(model, "eager", precision, dev, micro_batch=micro)
    x = torch.rand(micro, 1, SIZE, SIZE, device=dev)
    steps = -(-n // micro)

    def run():
        with torch.inference_mode():
            for _ in range(steps):
                y = net(x)
        sync(dev)
        return y

    benchmark.group = _group(dev, name)
    benchmark.extra_info.update(backend="torch" if precision == "fp32" else precision,
                                items=steps * micro, size=SIZE, model=name, device=str(dev),
                                device_name=torch.cuda.get_device_name(dev)
                                if dev.type == "cuda" else "cpu")
    benchmark.pedantic(run, rounds=2, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_calibrate_256(benchmark, setup256, tmp_path, precision):
    dev, name, model, index, src, n = setup256
    workers = max(4, min(16, os.cpu_count() or 4))
    reports = []

    def timed():
        rep = calibrate_dir(src, tmp_path / "dst", index=index, model=model, device=dev,
                            precision=precision, resume=False, workers=workers,
                            batch_size=2 * MODEL_BATCH.get(dev.type, 8), progress=False)
        sync(dev)
        assert rep["ok"] == n and rep["failed"] == 0, rep["errors"]
        reports.append(rep)

    benchmark.group = _group(dev, name)
    benchmark.pedantic(timed, rounds=2, iterations=1, warmup_rounds=1)
    timed_reps = reports[-2:]
    stages = {s: statistics.median(r["stage_seconds"][s] for r in timed_reps)
              for s in timed_reps[-1]["stage_seconds"]}
    benchmark.extra_info.update(
        backend=f"e2e-{precision}", items=n, size=SIZE, model=name, device=str(dev),
        workers=workers, backends=timed_reps[-1]["backends"],
        model_batch=timed_reps[-1]["model_batch"], stage_seconds=stages,
        stage_images_per_s={s: (n / v if v > 0 else None) for s, v in stages.items()},
        report_images_per_s=statistics.median(r["images_per_s"] for r in timed_reps))
