"""Disk full while a run writes (a per-file size limit, RLIMIT_FSIZE, in a real
subprocess): the run stops with a clear message, everything recorded stays intact, and
the same command resumes to the bytes of an uninterrupted run."""
import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import frerec_fast as ff
from frerec_fast import io as fio
from frerec_fast.datasets import real_dir, synthetic_dir
from frerec_fast.pipeline import MANIFEST, calibrate_dir
from run_helpers import one_thread  # noqa: F401 - a fixture

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(os.name != "posix", reason="RLIMIT_FSIZE is POSIX")]

RUN = """
import resource, signal, sys
import torch
torch.set_num_threads(1)
from frerec_fast.pipeline import calibrate_dir
src, dst, idx, limit = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # EFBIG instead of a kill
resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
calibrate_dir(src, dst, index=idx, model=False, device="cpu", k=8, progress=False)
"""


def digests(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*.png"))}


def test_manifest_write_failure_stops_cleanly_and_resume_finishes(tmp_path):
    src = tmp_path / "src"
    for p in sorted(synthetic_dir().rglob("*.png"))[::4]:  # 64 files, both modalities
        (src / p.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(p, src / p.parent.name / p.name)
    idx = tmp_path / "idx"
    ff.build_index(real_dir("train"), idx, progress=False)
    biggest = max(p.stat().st_size for p in src.rglob("*.png"))
    limit = biggest + 2048  # outputs (about input-sized) fit; the manifest (64 x ~300 B) not
    dst = tmp_path / "dst"
    proc = subprocess.run([sys.executable, "-c", RUN, str(src), str(dst), str(idx), str(limit)],
                          capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "cannot append to the manifest" in proc.stderr and "rerun the same command" in proc.stderr

    lines = (dst / MANIFEST).read_bytes().split(b"\n")
    whole = [json.loads(ln) for ln in lines[:-1]]
    assert 0 < len(whole) < 64
    for e in whole:  # every recorded output is there, complete
        assert e["status"] == "ok" and e["output_sha256"] == fio.file_sha256(dst / e["output"])

    rep = calibrate_dir(src, dst, index=idx, model=False, device="cpu", k=8, progress=False)
    assert rep["failed"] == 0 and rep["skipped"] == len(whole) and rep["ok"] == 64 - len(whole)
    ref = tmp_path / "ref"
    calibrate_dir(src, ref, index=idx, model=False, device="cpu", k=8, progress=False)
    assert digests(dst) == digests(ref) and len(digests(ref)) == 64
    assert not list(dst.rglob(f"*{fio.TMP_SUFFIX}"))
