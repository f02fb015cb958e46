"""The Ray twin of calibrate_dir on a real local Ray cluster (no mocks): same bytes as
the local job, one merged report, resumable by either; a worker killed mid-run (SIGKILL
of its process, or ``ray.kill``) is restarted and the job ends as an uninterrupted run
would; a driver killed mid-run resumes from the manifests."""
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time

import pytest
import torch

import frerec_fast as ff
from frerec_fast.datasets import real_dir, synthetic_dir
from frerec_fast.model import RHM, RHMConfig, save_checkpoint
from frerec_fast.pipeline import REPORT, calibrate_dir
from run_helpers import ray_cluster  # noqa: F401 - a fixture
from tiny_models import TINY

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'frerec_fast[ray]')")


@pytest.fixture(scope="module")
def cluster(ray_cluster):
    yield ray_cluster


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
    assert len(list(tmp_path.glob("ray/frerec_manifest.worker*.jsonl"))) == 2
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


# -- failures: a worker killed mid-run, a driver killed mid-run -----------------------------
# 64 images in shards of 4 with the tiny model, one thread per worker: long enough that a
# kill after the first 8 outputs lands mid-run, short enough for CI.
KILL_AFTER = 8
SHARD = 4


def _manifest_lines(dst) -> list[dict]:
    """Every manifest line in dst, sorted; a line torn by a kill is dropped, as the
    Manifest reader drops it."""
    out = []
    for m in sorted(dst.glob("frerec_manifest*.jsonl")):
        for line in m.read_text(errors="replace").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return sorted(out, key=lambda e: json.dumps(e, sort_keys=True))


def _done(dst) -> set:
    return {e["path"] for e in _manifest_lines(dst) if e["status"] == "ok"}


@pytest.fixture(scope="module")
def big(work, tmp_path_factory):
    """64 inputs and their uninterrupted local run (one thread, as each Ray worker)."""
    root = tmp_path_factory.mktemp("ray_big")
    for f in sorted(synthetic_dir().rglob("*.png"))[::4]:
        rel = f.relative_to(synthetic_dir())
        (root / "src" / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, root / "src" / rel)
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        rep = calibrate_dir(root / "src", root / "ref", work / "idx",
                            model=str(work / "tiny.safetensors"), device="cpu", k=8,
                            progress=False)
    finally:
        torch.set_num_threads(n)
    assert rep["ok"] == 64
    return root


def _assert_equals_uninterrupted(dst, ref):
    assert _bytes(dst) == _bytes(ref)
    got, want = _manifest_lines(dst), _manifest_lines(ref)
    assert got == want, "the manifests differ from an uninterrupted run's"
    assert not [p for p in dst.rglob("*") if p.name.endswith(".frerec-tmp")]


@pytest.fixture(scope="module")
def psutil():
    return pytest.importorskip("psutil", reason="the kill tests find Ray's processes with "
                               "psutil (pip install psutil; in the dev extra)")


def _is_worker(p) -> bool:
    """A calibration worker of ``calibrate_dir_ray`` (Ray titles its process
    "ray::_Worker" or "ray::_Worker.<method>")."""
    try:
        return p.cmdline()[:1] != [] and p.cmdline()[0].startswith("ray::_Worker")
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess: it has just ended
        return False


class _Killer(threading.Thread):
    """Kills one calibration worker of this process's Ray cluster once KILL_AFTER files
    are recorded: by SIGKILL of its process (a crash), or by ``ray.kill`` (Ray's API)."""

    def __init__(self, dst, how: str, psutil):
        super().__init__(daemon=True)
        self.dst, self.how, self.psutil = dst, how, psutil
        self.done_at_kill = None
        self.error = None

    def run(self):
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                if self.dst.exists() and len(_done(self.dst)) >= KILL_AFTER:
                    if self._kill():
                        self.done_at_kill = len(_done(self.dst))
                        return
                time.sleep(0.01)
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.error = e

    def _kill(self) -> bool:
        if self.how == "ray.kill":
            names = sorted(n for n in ray.util.list_named_actors()
                           if n.startswith("frerec-calibrate-"))
            if names:
                ray.kill(ray.get_actor(names[0]), no_restart=False)
            return bool(names)
        # Only this test process's own workers (other runs may share the machine).
        mine = [p for p in self.psutil.Process().children(recursive=True) if _is_worker(p)]
        if mine:
            os.kill(mine[0].pid, signal.SIGKILL)
        return bool(mine)


@pytest.mark.parametrize("how", ["sigkill", "ray.kill"])
def test_a_killed_worker_is_restarted_and_the_job_equals_an_uninterrupted_run(
        cluster, work, big, tmp_path, how, psutil):
    from frerec_fast.distributed import calibrate_dir_ray

    dst = tmp_path / "ray"
    killer = _Killer(dst, how, psutil)
    killer.start()
    rep = calibrate_dir_ray(big / "src", dst, work / "idx", model=str(work / "tiny.safetensors"),
                            num_workers=2, shard_size=SHARD, k=8, progress=False)
    killer.join(timeout=5)
    assert killer.error is None, killer.error
    assert killer.done_at_kill is not None, "no worker was killed"
    assert killer.done_at_kill < 64, f"the kill came after the job ({killer.done_at_kill} done)"
    # The worker was restarted: every start opens a manifest of its own (this dst was
    # empty), so three manifests mean two workers and one restart; its shards were run
    # again.
    assert rep["workers"] == 2
    assert len(list(dst.glob("frerec_manifest.worker*.jsonl"))) == 3
    assert rep["ok"] + rep["skipped"] == 64 and rep["failed"] == 0, rep["errors"]
    assert rep["shards"] == 64 // SHARD
    _assert_equals_uninterrupted(dst, big / "ref")
    # Every file recorded once: files finished before the kill were not redone.
    paths = [e["path"] for e in _manifest_lines(dst) if e["status"] == "ok"]
    assert len(paths) == len(set(paths)) == 64


def test_a_killed_driver_resumes_from_the_manifests(work, big, tmp_path, psutil):
    """`frerec calibrate --ray` SIGKILLed with its local cluster mid-run; the same command
    again skips what was recorded, redoes nothing else twice and ends byte-identical to
    an uninterrupted run."""
    dst = tmp_path / "ray"
    cmd = [sys.executable, "-m", "frerec_fast.cli", "calibrate", str(big / "src"), str(dst),
           "--index", str(work / "idx"), "--model", str(work / "tiny.safetensors"),
           "--device", "cpu", "-k", "8", "--ray", "--ray-workers", "2",
           "--shard-size", str(SHARD), "-q"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    tree = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline and proc.poll() is None:
            if dst.exists() and len(_done(dst)) >= KILL_AFTER:
                break
            time.sleep(0.01)
        alive = proc.poll() is None
        tree = psutil.Process(proc.pid).children(recursive=True) if alive else []
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        out, err = proc.communicate()
        # The driver's cluster dies with it (Ray ties its processes to the driver, the
        # workers going within seconds): wait for the workers, so that none still writes
        # while the rerun starts; Ray's agents, slower to notice, are then ended here.
        _, left = psutil.wait_procs([p for p in tree if _is_worker(p)], timeout=60)
        assert not left, "a Ray worker outlived its killed driver by a minute"
        for p in tree:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()
        psutil.wait_procs(tree, timeout=10)
    assert alive, f"the run ended before it could be killed:\n{out.decode()}\n{err.decode()}"
    before = _done(dst)
    assert 0 < len(before) < 64, f"{len(before)} of 64 done at the kill"

    again = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    rep = json.loads((dst / REPORT).read_text())
    assert rep["skipped"] == len(before) and rep["ok"] == 64 - len(before), rep
    assert f"{len(before)} already done" in again.stdout
    _assert_equals_uninterrupted(dst, big / "ref")


def test_more_workers_than_the_cluster_can_place_do_not_hold_shards_back(cluster, work, tmp_path):
    """Three workers on two CPUs: the third never starts; its share is run by the others."""
    from frerec_fast.distributed import calibrate_dir_ray

    rep = calibrate_dir_ray(work / "src", tmp_path / "out", work / "idx", model=False,
                            num_workers=3, shard_size=2, k=8, progress=False)
    assert rep["ok"] == 16 and rep["shards"] == 8 and rep["worker_starts"] == 2


def test_a_worker_that_cannot_start_raises_its_own_error(cluster, work, tmp_path):
    from frerec_fast.distributed import calibrate_dir_ray
    from frerec_fast.model import CheckpointError

    with pytest.raises(CheckpointError, match="not found"):
        calibrate_dir_ray(work / "src", tmp_path / "out", work / "idx",
                          model=str(tmp_path / "missing.safetensors"), num_workers=2,
                          progress=False)
