"""RHM forward per engine against eager torch (the reference) in the same run: the
shipped model at its 64x64 working size, a micro-batch as calibrate_dir feeds it."""
import warnings

import pytest
import torch

from conftest import sync


@pytest.fixture(scope="module")
def shipped():
    from frerec_fast.model import load_rhm
    from frerec_fast.training import default_model_path
    return load_rhm(default_model_path())


@pytest.mark.parametrize("engine", ["torch", "onnxruntime"])
@pytest.mark.parametrize("batch", [8])
def test_rhm_engine(benchmark, bench_device, shipped, engine, batch, tmp_path):
    from frerec_fast.engine import build_engine

    if engine == "onnxruntime":
        pytest.importorskip("onnxruntime", reason="onnxruntime is not installed")
        if bench_device.type == "cuda":
            import onnxruntime as ort
            if "CUDAExecutionProvider" not in ort.get_available_providers():
                pytest.skip("onnxruntime has no CUDA provider here (onnxruntime-gpu)")
    model = shipped.to(bench_device)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's tracer warnings
        net = build_engine(model, engine, (64, 64), bench_device, cache_dir=tmp_path)
    x = torch.rand(batch, 1, 64, 64, device=bench_device)

    def run():
        with torch.inference_mode():
            y = net(x)
        sync(bench_device)
        return y

    benchmark.group = f"rhm-{bench_device.type}-64x64-b{batch}"
    benchmark.extra_info.update(backend="torch" if engine == "torch" else engine, items=batch,
                                size=64, device=str(bench_device))
    benchmark.pedantic(run, rounds=5, iterations=1, warmup_rounds=1)
