"""Filesystem faults: a dst that cannot be written fails with a clear error before any
work; the temp files of atomic outputs are made beside each output (the rename never
crosses filesystems, and nothing goes to $TMPDIR); a dst on another filesystem gives the
same bytes. (Disk full: tests/test_disk_full.py; two runs at once: tests/test_run_lock.py.)"""
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

import frerec_fast as ff
from frerec_fast import io as fio
from frerec_fast.datasets import real_dir
from frerec_fast.pipeline import MANIFEST, calibrate_dir, check_dirs
from frerec_fast.pipeline import record
from hardening_helpers import ROOT, fill, run_without_permission_override
from run_helpers import one_thread, png_digests  # noqa: F401 - a fixture

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(os.name != "posix", reason="POSIX permissions and mounts")]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return ff.build_index(real_dir("train"), tmp_path_factory.mktemp("idx") / "idx",
                          progress=False)


def run(src, dst, index, **kw):
    return calibrate_dir(src, dst, index=index, model=False, device="cpu", k=8,
                         progress=False, **kw)


def test_a_dst_through_a_file_is_refused_before_any_work(tmp_path):
    src = fill(tmp_path / "src", ["a.png"])
    (tmp_path / "file").write_text("x")
    # index=a path that does not exist: the dst check comes first, so it is never read.
    with pytest.raises(NotADirectoryError, match="file is not a folder"):
        calibrate_dir(src, tmp_path / "file" / "out", index=tmp_path / "no-index",
                      model=False, device="cpu")
    with pytest.raises(NotADirectoryError, match="cannot be the output directory"):
        check_dirs(src, tmp_path / "file")


def test_the_writable_check_message(tmp_path, monkeypatch):
    src = fill(tmp_path / "src", ["a.png"])
    monkeypatch.setattr(record.os, "access", lambda *a, **k: False)
    with pytest.raises(PermissionError, match="dst: the output directory is not writable"):
        check_dirs(src, tmp_path / "dst")  # missing: its parent is checked
    (tmp_path / "dst").mkdir()
    with pytest.raises(PermissionError, match=r"not writable \(it is read-only"):
        check_dirs(src, tmp_path / "dst")


READ_ONLY = """
import json, sys
from pathlib import Path
from frerec_fast.cli import main
from frerec_fast.pipeline import calibrate_dir
src, index, cli, dsts = sys.argv[1], sys.argv[2], sys.argv[3] == "cli", sys.argv[4:]
out = {}
for dst in dsts:
    try:
        calibrate_dir(src, dst, index=index + "-missing", model=False, device="cpu")
        out[dst] = "ran"
    except PermissionError as e:
        out[dst] = str(e)
if cli:
    out["cli"] = main(["shr", src, dsts[0], "--index", index, "--device", "cpu", "-q"])
print(json.dumps(out))
"""


def test_a_read_only_dst_is_refused_before_any_work(index, tmp_path):
    src = fill(tmp_path / "src", ["a.png"])
    ro, parent = tmp_path / "ro", tmp_path / "ro_parent"
    ro.mkdir()
    parent.mkdir()
    os.chmod(ro, 0o555)
    os.chmod(parent, 0o555)
    try:
        proc = run_without_permission_override(READ_ONLY, str(src), str(index.path), "cli",
                                               str(ro), str(parent / "dst"))
    finally:
        os.chmod(ro, stat.S_IRWXU)
        os.chmod(parent, stat.S_IRWXU)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out[str(ro)] == "ran":
        pytest.skip("chmod 555 did not block writes here (permissions not enforced)")
    assert "the output directory is not writable" in out[str(ro)]
    assert f"the folder {parent} it would be made in" in out[str(parent / 'dst')]
    # The index (a missing path) was never read: the check comes before any work.
    assert out["cli"] == 2 and "not writable" in proc.stderr
    assert list(ro.iterdir()) == [] and not (parent / "dst").exists()


def test_a_read_only_filesystem_is_refused_before_any_work(index, tmp_path):
    """A real read-only mount (EROFS, which binds root too): a bind mount remounted
    read-only in a private user and mount namespace (unshare)."""
    unshare = shutil.which("unshare")
    if unshare is None or subprocess.run([unshare, "-rm", "true"]).returncode != 0:
        pytest.skip("unshare cannot make a user and mount namespace here (needed to mount "
                    "a read-only filesystem without privileges)")
    src = fill(tmp_path / "src", ["a.png"])
    ro = tmp_path / "ro"
    ro.mkdir()
    script = (f'mount --bind "{ro}" "{ro}" && mount -o remount,bind,ro "{ro}" && '
              f'exec "{sys.executable}" -c "$0" "$@"')
    env = {**os.environ, "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([unshare, "-rm", "sh", "-c", script, READ_ONLY, str(src),
                           str(index.path), "no-cli", str(ro)], capture_output=True, text=True,
                          timeout=120, env=env)
    if proc.returncode != 0 and "mount" in proc.stderr and "Traceback" not in proc.stderr:
        pytest.skip(f"cannot remount read-only here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "the output directory is not writable" in out[str(ro)] and "read-only" in out[str(ro)]


def test_temp_files_are_made_beside_each_output_never_in_tmpdir(index, tmp_path, monkeypatch):
    src = fill(tmp_path / "src", ["a.png", "sub/b.png", "sub/deeper/c.png"])
    dst = tmp_path / "dst"
    elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    made = []
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*a, **kw):
        fd, path = real_mkstemp(*a, **kw)
        made.append(Path(path))
        return fd, path

    try:
        monkeypatch.setenv("TMPDIR", str(elsewhere))
        monkeypatch.setattr(tempfile, "tempdir", str(elsewhere))
        monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
        rep = run(src, dst, index)
        assert rep["ok"] == 3
        assert list(elsewhere.iterdir()) == []
    finally:
        shutil.rmtree(elsewhere)
    outputs = {dst / r for r in ("a.png", "sub/b.png", "sub/deeper/c.png")}
    # One temp file per output (and the report), each in its output's folder; plus one
    # case probe per output folder, in that folder too.
    written = [p for p in made if ".frerec-case-probe-" not in p.name]
    assert {p.parent for p in written} == {o.parent for o in outputs}
    for o in outputs:
        assert any(p.parent == o.parent and p.name.startswith(fio.tmp_prefix(o.name))
                   for p in written), o
    assert all(dst in p.parents for p in made)
    assert not list(dst.rglob(f"*{fio.TMP_SUFFIX}"))


def test_a_dst_on_another_filesystem_gives_the_same_bytes(index, tmp_path):
    shm = Path("/dev/shm")
    if not shm.is_dir() or os.stat(shm).st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("no second filesystem (/dev/shm) next to the test's temp folder")
    src = fill(tmp_path / "src", ["a.png", "sub/b.png"])
    here = tmp_path / "dst"
    there = Path(tempfile.mkdtemp(dir=shm)) / "dst"
    try:
        assert run(src, here, index)["ok"] == 2
        rep = run(src, there, index)
        assert rep["ok"] == 2 and (there / MANIFEST).is_file()
        assert png_digests(there) == png_digests(here)
        assert not list(there.rglob(f"*{fio.TMP_SUFFIX}"))
    finally:
        shutil.rmtree(there.parent)
