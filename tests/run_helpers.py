"""Shared pieces of the end-to-end tests: a small input folder from the shipped DCGAN
set, the digests of a run's outputs, and one torch thread for byte comparisons."""
import hashlib
import shutil
from pathlib import Path

import pytest
import torch

from frerec_fast.datasets import synthetic_dir


def copy_synth_sample(dst: Path, every: int = 32) -> Path:
    """Every ``every``-th shipped synthetic PNG (both modalities: 8 at the default)
    copied under ``dst``, keeping its modality sub-folder. Returns dst."""
    for f in sorted(synthetic_dir().rglob("*.png"))[::every]:
        (dst / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst / f.parent.name / f.name)
    return dst


def png_digests(root: Path) -> dict:
    """{relative path: SHA-256} of every PNG under root."""
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for the module: outputs are reproducible for one thread count,
    and on a small shared CI box OpenMP teams stall on the model's many small ops."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def ray_cluster():
    """A real local Ray cluster of 2 CPUs for one test module (one torch thread per
    worker), shut down after it."""
    ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'frerec_fast[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1"}})
    yield ray
    ray.shutdown()
