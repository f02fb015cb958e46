"""The glibc allocator setting (frerec_fast/allocator.py): with it, repeatedly allocating
and freeing activation-sized tensors stops costing page faults; it can be turned off."""
import subprocess
import sys

import pytest

PROBE = r"""
import os, resource, sys, torch
if sys.argv[1] == "tuned":
    from frerec_fast.allocator import tune
    print("STATE", tune())
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
torch.set_num_threads(1)
from frerec_fast.model import RHM, RHMConfig, rhm_loss
torch.manual_seed(0)
m = RHM(RHMConfig(dim=8, heads=(1, 1, 1, 1), blocks=(1, 1, 1, 1), refinement=0,
                  n_rings=4, n_sectors=8))
x = torch.rand(8, 1, 64, 64)
def step():
    rhm_loss(m(x), x).backward()
step()  # warm up: the heap grows once
f0 = faults()
for _ in range(5):
    step()
print("FAULTS", faults() - f0)
"""


def _run(mode: str, env_extra: dict | None = None) -> tuple[int, str]:
    import os
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    env.update(env_extra or {})
    r = subprocess.run([sys.executable, "-c", PROBE, mode], capture_output=True, text=True,
                       env=env, timeout=120)
    assert r.returncode == 0, r.stderr
    faults = int(r.stdout.split("FAULTS")[1].split()[0])
    return faults, r.stdout


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc setting, Linux only")
def test_tuning_removes_the_page_faults_of_repeated_allocations():
    plain, _ = _run("plain")
    tuned, out = _run("tuned")
    assert "'applied': True" in out
    # A training step's activations are fresh mappings by default, faulted page by page
    # on every step; kept in the heap, they are reused.
    assert tuned < plain / 5, (tuned, plain)


def test_it_can_be_turned_off():
    _, out = _run("tuned", {"FREREC_MALLOC": "system"})
    assert "'applied': False" in out and "FREREC_MALLOC=system" in out
