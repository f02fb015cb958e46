"""The Ray twin of calibrate_dir on a real local Ray cluster (no mocks): same bytes as
the local job, one merged report, resumable by either."""
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import frerec_fast as ff
from frerec_fast.datasets import real_dir, synthetic_dir
from frerec_fast.model import RHM, RHMConfig, save_checkpoint
from frerec_fast.pipeline import REPORT, calibrate_dir
from tiny_models import TINY

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'frerec_fast[ray]')")


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray")
    ff.build_index(real_dir("train"), root / "idx", progress=False)
    torch.manual_seed(0)
    save_checkpoint(root / "tiny", RHM(RHMConfig(**TINY)).eval())
    files = sorted(synthetic_dir().rglob("*.png"))[::16]  # 16 images, both modalities
    for f in files:
        rel = f.relative_to(synthetic_dir())
        (root / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / "src" / rel)
    return root


def _bytes(root):
    return {p.relative_to(root).as_posix(): p.read_bytes()
            for p in sorted(root.rglob("*.png"))}


def test_ray_run_equals_local_run_and_resumes(cluster, work, tmp_path):
    from frerec_fast.distributed import calibrate_dir_ray

    model = str(work / "tiny.safetensors")
    rep = calibrate_dir_ray(work / "src", tmp_path / "ray", work / "idx", model=model,
                            num_workers=2, k=8, progress=False)
    assert rep["ok"] == 16 and rep["failed"] == 0 and rep["workers"] == 2
    assert len(list(tmp_path.glob("ray/frerec_manifest.shard*.jsonl"))) == 2
    saved = json.loads((tmp_path / "ray" / REPORT).read_text())
    assert saved["ok"] == 16 and saved["frequency_gap"]["sample"] == 16
    # The local job at the same thread count writes the same bytes.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = calibrate_dir(work / "src", tmp_path / "local", work / "idx", model=model,
                              device="cpu", k=8, progress=False)
        assert local["ok"] == 16
        assert _bytes(tmp_path / "ray") == _bytes(tmp_path / "local")
        # Merged gaps equal the local run's (profiles are means over the same images).
        for side in ("inputs_vs_index", "outputs_vs_index"):
            assert saved["frequency_gap"][side]["high_band"] == pytest.approx(
                local["frequency_gap"][side]["high_band"], abs=1e-9)
        # A local run resumes the distributed one: nothing left to do.
        again = calibrate_dir(work / "src", tmp_path / "ray", work / "idx", model=model,
                              device="cpu", k=8, progress=False)
        assert again["skipped"] == 16 and again["ok"] == 0
    finally:
        torch.set_num_threads(n)
    # And a Ray run with another worker count resumes too.
    rep3 = calibrate_dir_ray(work / "src", tmp_path / "ray", work / "idx", model=model,
                             num_workers=3, k=8, progress=False)
    assert rep3["skipped"] == 16 and rep3["ok"] == 0


def test_ray_records_bad_files_and_refuses_in_memory_models(cluster, work, tmp_path):
    from frerec_fast.distributed import calibrate_dir_ray

    src = tmp_path / "src"
    shutil.copytree(work / "src", src)
    (src / "broken.png").write_bytes(b"not a png")
    rep = calibrate_dir_ray(src, tmp_path / "out", work / "idx", model=False, num_workers=2,
                            k=8, progress=False)
    assert rep["failed"] == 1 and "broken.png" in rep["errors"] and rep["ok"] == 16
    with pytest.raises(ValueError, match="save_checkpoint"):
        calibrate_dir_ray(src, tmp_path / "o2", work / "idx",
                          model=RHM(RHMConfig(**TINY)), progress=False)


def test_cli_ray_flag(work, tmp_path):
    """`frerec calibrate --ray` starts its own local cluster and exits 0."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "frerec_fast.cli", "shr", str(work / "src"),
                        str(tmp_path / "out"), "--index", str(work / "idx"), "-k", "8",
                        "--ray", "--ray-workers", "2", "-q"],
                       capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "16 written" in r.stdout
