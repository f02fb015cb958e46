"""Two runs into one output directory: the second is refused naming the first, and a
run killed with SIGKILL leaves no stale lock (real processes, real flock)."""
import os
import signal
import subprocess
import sys
import time

import pytest

import frerec_fast as ff
from frerec_fast.datasets import real_dir, synthetic_dir
from frerec_fast.pipeline import MANIFEST, RunLock, RunLocked, calibrate_dir
from run_helpers import one_thread  # noqa: F401 - a fixture

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(os.name == "nt", reason="flock is POSIX")]

HOLD = """
import sys, time
from pathlib import Path
from frerec_fast.pipeline import RunLock
with RunLock(Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def holder(tmp_path):
    dst = tmp_path / "dst"
    dst.mkdir()
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(dst)], stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield dst, proc
    proc.kill()
    proc.wait()


def test_second_run_is_refused_then_runs_after_a_kill(holder, tmp_path):
    dst, proc = holder
    src = tmp_path / "src"
    src.mkdir()
    for p in sorted(synthetic_dir().rglob("*.png"))[:3]:
        (src / p.name).write_bytes(p.read_bytes())
    index = ff.build_index(real_dir("train"), progress=False)
    with pytest.raises(RunLocked, match=f"pid {proc.pid} "):
        calibrate_dir(src, dst, index=index, model=False, device="cpu", k=8, progress=False)
    assert not (dst / MANIFEST).exists()  # refused before touching anything

    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    rep = calibrate_dir(src, dst, index=index, model=False, device="cpu", k=8, progress=False)
    assert rep["ok"] == 3


def test_lock_is_released_on_exit_and_reentrant_runs_follow_each_other(tmp_path):
    with RunLock(tmp_path):
        with pytest.raises(RunLocked, match="another frerec run"):
            RunLock(tmp_path).__enter__()
    with RunLock(tmp_path):  # released by the first exit
        pass


def test_cli_exit_2_names_the_other_run(holder, tmp_path):
    dst, proc = holder
    src = tmp_path / "src"
    src.mkdir()
    p = sorted(synthetic_dir().rglob("*.png"))[0]
    (src / p.name).write_bytes(p.read_bytes())
    idx = tmp_path / "idx"
    ff.build_index(real_dir("train"), idx, progress=False)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-m", "frerec_fast.cli", "shr", str(src), str(dst),
                          "--index", str(idx), "--device", "cpu", "-k", "8", "-q"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert out.returncode == 2 and f"pid {proc.pid}" in out.stderr, out.stderr
    assert time.monotonic() - t0 < 100  # refused at once, never waits for the holder
