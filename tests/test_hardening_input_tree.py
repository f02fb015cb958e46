"""Untrusted input trees, continued (tests/test_input_tree.py has links, vanished files,
empty src): names that are not UTF-8, 255-byte names, names that differ only in case
(and a case-insensitive dst), hidden files and OS junk, FIFOs and devices, unreadable
files and folders. Real files, real runs."""
import faulthandler
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

import frerec_fast as ff
from frerec_fast import io as fio
from frerec_fast.datasets import real_dir
from frerec_fast.pipeline import MANIFEST, REPORT, calibrate_dir
from frerec_fast.pipeline import writer as pwriter
from hardening_helpers import assert_blocked, fill, run_without_permission_override
from run_helpers import one_thread  # noqa: F401 - a fixture

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(os.name != "posix", reason="POSIX file names and permissions")]

ODD = [b"\xff\xfe.png",                       # not UTF-8 (Latin-1 bytes)
       b"x" * 251 + b".png",                 # 255 bytes: the longest name a folder takes
       "é-ü ∂.png".encode(),                 # UTF-8, not ASCII
       b"new\nline.png",                     # a newline in a name
       b"A.png", b"a.png"]                   # differ only in case


def run(src, dst, index, **kw):
    return calibrate_dir(src, dst, index=index, model=False, device="cpu", k=8,
                         progress=False, **kw)


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return ff.build_index(real_dir("train"), tmp_path_factory.mktemp("idx") / "idx",
                          progress=False)


def names(d: Path) -> set:
    return {n for n in os.listdir(os.fsencode(d)) if not n.startswith(b".")
            and not n.startswith(b"frerec_")}


def test_odd_names_are_written_under_their_own_names_and_resume(index, tmp_path):
    src, dst = fill(tmp_path / "src", ODD), tmp_path / "dst"
    rels, excluded = fio.scan_tree(src)
    assert len(rels) == len(ODD) and not excluded
    rep = run(src, dst, index)
    assert rep["ok"] == len(ODD) and rep["failed"] == 0, rep["errors"]
    assert names(dst) == set(ODD)  # byte for byte the input names
    digests = {fio.file_sha256(os.path.join(os.fsencode(dst), n)) for n in ODD}
    assert len(digests) == len(ODD)  # six distinct outputs: nothing overwritten
    # The manifest and report are valid JSON holding the names (non-UTF-8 as escapes).
    lines = (dst / MANIFEST).read_text().splitlines()
    assert {json.loads(ln)["path"] for ln in lines} == {os.fsdecode(n) for n in ODD}
    assert json.loads((dst / REPORT).read_text())["ok"] == len(ODD)
    again = run(src, dst, index)
    assert (again["ok"], again["skipped"], again["failed"]) == (0, len(ODD), 0)


def test_a_temp_name_fits_beside_a_255_byte_name(tmp_path):
    long = "é" * 125 + ".png"  # 254 bytes in UTF-8: the cut must not split a character badly
    for name in (long, "x" * 251 + ".png", os.fsdecode(b"\xff" * 251 + b".png")):
        prefix = fio.tmp_prefix(name)
        assert len(os.fsencode(prefix)) + 8 + len(fio.TMP_SUFFIX) <= 255
        fio.atomic_write_bytes(tmp_path / name, b"data")
        assert (tmp_path / name).read_bytes() == b"data"
    assert not list(tmp_path.glob(f"*{fio.TMP_SUFFIX}"))


def test_case_only_names_on_a_case_insensitive_dst_are_not_overwritten(index, tmp_path,
                                                                      monkeypatch):
    """Here dst is case-sensitive (both written, test above). A case-insensitive one is
    simulated: the probe says so, and the guard must refuse the second spelling, in this
    run, on resume, and against an output an earlier run left."""
    assert pwriter.folds_case(tmp_path) is False  # ext4/tmpfs; the probe leaves nothing
    assert not list(tmp_path.iterdir())
    monkeypatch.setattr(pwriter, "folds_case", lambda folder: True)
    src = fill(tmp_path / "src", [b"A.png", b"a.png", b"sub/B.png", b"Sub/b.png", b"c.png"])
    dst = tmp_path / "dst"
    rep = run(src, dst, index)
    assert rep["ok"] == 4 and set(rep["errors"]) == {"a.png"}
    assert "would overwrite" in rep["errors"]["a.png"] and str(dst / "A.png") in rep["errors"]["a.png"]
    assert "ignores case" in rep["errors"]["a.png"]
    assert names(dst) == {b"A.png", b"sub", b"Sub", b"c.png"}  # Sub/ and sub/ differ on ext4
    again = run(src, dst, index)
    assert (again["skipped"], set(again["errors"])) == (4, {"a.png"})
    # An output left by an earlier run, spelled another way, is not overwritten either.
    (src / "A.png").unlink()
    later = run(src, dst, index, resume=False)
    assert set(later["errors"]) == {"a.png"} and "A.png" in later["errors"]["a.png"]


def test_name_key_folds_case_and_unicode_composition():
    key = pwriter.name_key
    assert key("A.PNG") == key("a.png") and key("e\u0301.png") == key("\u00e9.png")
    assert key("a.png") != key("b.png")
    assert key(os.fsdecode(b"\xff.png")) == os.fsdecode(b"\xff.png")  # undecodable: as is


def test_hidden_files_and_os_junk_are_skipped_consistently(index, tmp_path):
    src = fill(tmp_path / "src", ["a.png", "b.PNG", "__MACOSX/c.png"])
    for junk in (".DS_Store", "Thumbs.db", "desktop.ini", "._a.png", "__MACOSX/._c.png",
                 ".hidden/d.png", ".Trashes/e.png", "notes.txt"):
        (src / junk).parent.mkdir(parents=True, exist_ok=True)
        (src / junk).write_bytes(b"\0\0junk")
    # Hidden names (dot files: .DS_Store, AppleDouble ._*, hidden folders) and other
    # types are never images of the tree: both scanners skip them, and say nothing.
    want = ["__MACOSX/c.png", "a.png", "b.PNG"]
    assert fio.scan_images(src) == want
    assert fio.scan_tree(src) == (want, {})
    rep = run(src, tmp_path / "dst", index)
    assert (rep["ok"], rep["failed"], rep["excluded"]) == (3, 0, {})


def test_fifos_and_devices_are_left_out_not_read(index, tmp_path):
    src = fill(tmp_path / "src", ["a.png"])
    os.mkfifo(src / "pipe.png")
    (src / "zero.png").symlink_to("/dev/zero")  # endless, if it were read
    faulthandler.dump_traceback_later(120, exit=True)  # a hang fails, it does not stall CI
    try:
        rels, excluded = fio.scan_tree(src, follow_symlinks=True)
        assert rels == ["a.png"]
        assert "not a regular file" in excluded["pipe.png"]
        assert "not a regular file" in excluded["zero.png"]
        rep = run(src, tmp_path / "dst", index, follow_symlinks=True)
        assert rep["ok"] == 1 and set(rep["excluded"]) == {"pipe.png", "zero.png"}
        # Named explicitly, the FIFO is a per-file error, not a blocked open.
        rep = run(src, tmp_path / "dst2", index, files=["pipe.png", "a.png"])
        assert rep["ok"] == 1 and "not a regular file" in rep["errors"]["pipe.png"]
        with pytest.raises(fio.ImageReadError, match="not a regular file"):
            fio.file_sha256("/dev/zero")
        with pytest.raises(fio.ImageReadError, match="zero.png: not a regular file"):
            fio.read_images(src, "zero.png")
    finally:
        faulthandler.cancel_dump_traceback_later()


def test_a_folder_that_cannot_be_listed_is_reported(tmp_path, monkeypatch):
    """os.walk drops such a folder silently; the scan reports it (simulated: the real
    permissions are tested below, where they can be)."""
    src = fill(tmp_path / "src", ["a.png", "locked/b.png"])
    real_scandir = os.scandir

    def scandir(path="."):
        if Path(path) == (src / "locked").resolve():
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    rels, excluded = fio.scan_tree(src)
    assert rels == ["a.png"]
    assert "cannot list this folder (Permission denied)" in excluded["locked"]
    with pytest.raises(OSError, match="cannot list the input directory"):
        monkeypatch.setattr(os, "scandir", lambda path=".": (_ for _ in ()).throw(
            PermissionError(13, "Permission denied", str(path))))
        fio.scan_tree(src)


UNREADABLE = """
import json, sys
import torch
torch.set_num_threads(1)
from frerec_fast.pipeline import calibrate_dir
rep = calibrate_dir(sys.argv[1], sys.argv[2], index=sys.argv[3], model=False, device="cpu",
                    k=8, progress=False)
print(json.dumps({k: rep[k] for k in ("ok", "failed", "errors", "excluded")}))
"""


def test_unreadable_files_and_folders_fail_alone_or_are_reported(index, tmp_path):
    src = fill(tmp_path / "src", ["a.png", "secret.png", "locked/b.png"])
    os.chmod(src / "secret.png", 0)
    os.chmod(src / "locked", 0)
    try:
        assert_blocked(src / "secret.png")
        proc = run_without_permission_override(UNREADABLE, str(src), str(tmp_path / "dst"),
                                               str(index.path))
    finally:
        os.chmod(src / "locked", stat.S_IRWXU)
        os.chmod(src / "secret.png", stat.S_IRUSR | stat.S_IWUSR)
    assert proc.returncode == 0, proc.stderr
    rep = json.loads(proc.stdout.strip().splitlines()[-1])
    assert (rep["ok"], rep["failed"]) == (1, 1)
    assert "Permission denied" in rep["errors"]["secret.png"]
    assert str(src / "secret.png") in rep["errors"]["secret.png"]
    assert "cannot list this folder" in rep["excluded"]["locked"]


def test_cli_prints_odd_names_without_crashing(index, tmp_path):
    src = fill(tmp_path / "src", [b"\xff\xfe.png", b"ok.png"])
    (src / os.fsdecode(b"\xfe.png")).write_bytes(b"\x89PNG broken")
    proc = subprocess.run([sys.executable, "-m", "frerec_fast.cli", "shr", str(src),
                           str(tmp_path / "dst"), "--index", str(index.path), "--device",
                           "cpu", "-k", "8", "-q"], capture_output=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 1, proc.stderr  # one file failed; the others written
    assert b"Traceback" not in proc.stderr and b"2 written" in proc.stdout
    assert names(tmp_path / "dst") == {b"\xff\xfe.png", b"ok.png"}


def test_a_file_changed_after_the_scan_is_read_as_it_then_is(index, tmp_path, monkeypatch):
    """Changed between the scan and the read: processed as it is at the read, or failed
    alone when it became unreadable. Changed between its hash and its decode (two reads),
    the manifest holds the earlier hash, so resume sees a change and redoes the file."""
    from frerec_fast.pipeline import reader
    from hardening_helpers import pngs
    src = fill(tmp_path / "src", ["a.png", "b.png", "c.png"])
    rels = fio.scan_images(src)
    new_a = pngs(4)[3].read_bytes()
    (src / "a.png").write_bytes(new_a)
    (src / "b.png").write_bytes(b"\x89PNG cut")
    rep = run(src, tmp_path / "dst", index, files=rels)
    assert rep["ok"] == 2 and set(rep["errors"]) == {"b.png"}
    assert str(src / "b.png") in rep["errors"]["b.png"]
    done = {e["path"]: e for e in map(json.loads, (tmp_path / "dst" / MANIFEST).read_text().splitlines())}
    assert done["a.png"]["input_sha256"] == fio.file_sha256(src / "a.png")

    real_read = reader.fio.read_images

    def changed_in_between(root, rel):  # the file is rewritten after it was hashed
        if rel == "c.png":
            (src / "c.png").write_bytes(new_a)
        return real_read(root, rel)

    monkeypatch.setattr(reader.fio, "read_images", changed_in_between)
    old_c = fio.file_sha256(src / "c.png")
    rep = run(src, tmp_path / "dst2", index, files=["c.png"])
    assert rep["ok"] == 1
    entry = json.loads((tmp_path / "dst2" / MANIFEST).read_text().splitlines()[-1])
    assert entry["input_sha256"] == old_c != fio.file_sha256(src / "c.png")
    monkeypatch.undo()
    again = run(src, tmp_path / "dst2", index, files=["c.png"])
    assert (again["ok"], again["skipped"]) == (1, 0)  # redone: its hash changed
