"""Untrusted input trees: symbolic links leading outside ``src`` are skipped and
reported unless the user asks to follow them; files that vanish after the scan fail
alone; an empty or junk-only ``src`` is a clean, explained run (real files, real runs)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import frerec_fast as ff
from frerec_fast import io as fio
from frerec_fast.datasets import real_dir, synthetic_dir
from frerec_fast.pipeline import REPORT, calibrate_dir
from run_helpers import one_thread  # noqa: F401 - a fixture

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.skipif(os.name == "nt", reason="POSIX symbolic links")]


def pngs(n: int) -> list[Path]:
    return sorted(synthetic_dir().rglob("*.png"))[:n]


@pytest.fixture
def tree(tmp_path):
    """src/: a.png, sub/b.png; links: out.png -> a file outside, outdir -> a folder
    outside, inlink.png -> a.png, indir -> sub, broken.png -> nowhere, loop -> src."""
    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "sub").mkdir(parents=True)
    outside.mkdir()
    a, b, c, d = pngs(4)
    (src / "a.png").write_bytes(a.read_bytes())
    (src / "sub" / "b.png").write_bytes(b.read_bytes())
    (outside / "secret.png").write_bytes(c.read_bytes())
    (outside / "deep.png").write_bytes(d.read_bytes())
    (src / "out.png").symlink_to(outside / "secret.png")
    (src / "outdir").symlink_to(outside)
    (src / "inlink.png").symlink_to(src / "a.png")
    (src / "indir").symlink_to(src / "sub")
    (src / "broken.png").symlink_to(tmp_path / "nowhere.png")
    (src / "sub" / "loop").symlink_to(src)
    return src


def test_scan_tree_skips_links_that_leave_src(tree):
    rels, excluded = fio.scan_tree(tree)
    assert rels == ["a.png", "inlink.png", "sub/b.png"]
    assert sorted(excluded) == ["broken.png", "indir", "out.png", "outdir", "sub/loop"]
    assert "outside the input directory" in excluded["out.png"]
    assert "outside the input directory" in excluded["outdir"]
    assert "broken" in excluded["broken.png"]
    assert "inside the input directory" in excluded["indir"]
    assert "--follow-symlinks" in excluded["out.png"]


def test_scan_tree_follows_when_asked_and_cuts_loops(tree):
    rels, excluded = fio.scan_tree(tree, follow_symlinks=True)
    assert {"out.png", "outdir/secret.png", "outdir/deep.png", "broken.png",
            "a.png", "sub/b.png"} <= set(rels)
    # Each folder is scanned once: "indir" (= sub) and "sub/loop" (= src) are cut.
    assert len(rels) == len(set(rels)) and not any(r.startswith("sub/loop/") for r in rels)
    assert {"indir", "sub/loop"} <= set(excluded)
    assert "inside the input directory" in excluded["indir"]


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return ff.build_index(real_dir("train"), tmp_path_factory.mktemp("idx") / "idx",
                          progress=False)


def test_calibrate_dir_never_reads_outside_src_unless_asked(tree, index, tmp_path):
    dst = tmp_path / "dst"
    rep = calibrate_dir(tree, dst, index=index, model=False, device="cpu", k=8, progress=False)
    assert rep["ok"] == 3 and rep["failed"] == 0
    assert sorted(rep["excluded"]) == ["broken.png", "indir", "out.png", "outdir", "sub/loop"]
    assert not (dst / "out.png").exists() and not (dst / "outdir").exists()
    assert json.loads((dst / REPORT).read_text())["excluded"] == rep["excluded"]
    with pytest.raises(ValueError, match="follow-symlinks"):
        calibrate_dir(tree, tmp_path / "d2", index=index, model=False, device="cpu", k=8,
                      progress=False, files=["out.png"])

    rep = calibrate_dir(tree, tmp_path / "d3", index=index, model=False, device="cpu", k=8,
                        progress=False, follow_symlinks=True)
    assert (tmp_path / "d3" / "out.png").is_file()
    assert (tmp_path / "d3" / "outdir" / "secret.png").is_file()
    assert rep["errors"].keys() == {"broken.png"}  # followed, and unreadable: a file error


def test_cli_reports_what_it_left_out(tree, index, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "frerec_fast.cli", "shr", str(tree),
                           str(tmp_path / "dst"), "--index", str(index.path), "--device", "cpu",
                           "-k", "8", "-q"], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "3 written" in proc.stdout and "5 left out" in proc.stdout
    assert any(ln.strip().startswith("left out out.png:") and "outside" in ln
               for ln in proc.stderr.splitlines())


def test_a_file_gone_after_the_scan_fails_alone_with_its_name(index, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for p in pngs(2):
        (src / p.name).write_bytes(p.read_bytes())
    rels = fio.scan_images(src)
    (src / rels[0]).unlink()  # vanishes between the scan and the read
    rep = calibrate_dir(src, tmp_path / "dst", index=index, model=False, device="cpu", k=8,
                        progress=False, files=rels)
    assert rep["ok"] == 1 and rep["failed"] == 1
    assert "file not found" in rep["errors"][rels[0]] and rels[0] in rep["errors"][rels[0]]


def test_empty_src_is_a_clean_run_and_the_cli_says_so(index, tmp_path):
    src = tmp_path / "src"
    (src / ".hidden").mkdir(parents=True)
    (src / ".DS_Store").write_bytes(b"\0")
    (src / "Thumbs.db").write_bytes(b"\0")
    (src / "notes.txt").write_text("x")
    rep = calibrate_dir(src, tmp_path / "dst", index=index, model=False, device="cpu",
                        progress=False)
    assert (rep["ok"], rep["failed"], rep["files"], rep["excluded"]) == (0, 0, 0, {})
    proc = subprocess.run([sys.executable, "-m", "frerec_fast.cli", "shr", str(src),
                           str(tmp_path / "dst2"), "--index", str(index.path), "--device", "cpu",
                           "-q"], capture_output=True, text=True)
    assert proc.returncode == 0 and "no supported image found" in proc.stderr
