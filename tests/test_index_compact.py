"""Compaction of a sharded index (``frerec_fast.index.compact``): after several appends,
the compacted index equals a build of the same files at once (same shard bytes, keys,
answers), a tampered shard is refused before anything is written, and a kill at either
side of the manifest switch leaves a loadable index (the old one or the new one).

Real files: the bundled real slices, one unreadable file (a skipped file counts as a
file in a shard, as in a build) and duplicated slices (SSIM ties across shards).
"""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import frerec_fast as ff
from frerec_fast.cli import main
from frerec_fast.index import SHARD_DIR, IndexFileError, ShardedIndex
from frerec_fast.index.compact import compact_index
from run_helpers import one_thread  # noqa: F401 - a fixture
from test_index_shards import files_of, make_real, real_files

SHARD = 7
PARTS = (9, 3, 1, 5, 2)  # files per append after the first build: small shards


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """29 real slices, two duplicates sorting into other shards, one unreadable file."""
    d = make_real(tmp_path_factory.mktemp("real") / "real", real_files(every=6))
    src = sorted((d / "ct").glob("*.png"))[2]
    for name in ("a_dup/x.png", "zz_dup/y.png"):
        (d / name).parent.mkdir(exist_ok=True)
        (d / name).write_bytes(src.read_bytes())
    (d / "mri" / "broken.png").write_bytes(b"not a png")
    return d


@pytest.fixture(scope="module")
def at_once(real, tmp_path_factory):
    return ff.build_index(real, tmp_path_factory.mktemp("once") / "idx", shard_size=SHARD,
                          workers=1, progress=False)


def appended(real: Path, root: Path, first: int = 10) -> ShardedIndex:
    """The files of ``real`` in sorted order: the first ``first`` built, the rest appended
    in parts of PARTS files (each part a folder with the same relative paths, so keys and
    order equal a build at once)."""
    files = sorted(p.relative_to(real) for p in real.rglob("*") if p.is_file())
    cuts = [0, first]
    for n in PARTS:
        cuts.append(cuts[-1] + n)
    cuts[-1] = len(files)
    out = root / "idx"
    for j, (a, b) in enumerate(zip(cuts, cuts[1:])):
        part = root / f"part{j}"
        for rel in files[a:b]:
            (part / rel).parent.mkdir(parents=True, exist_ok=True)
            (part / rel).write_bytes((real / rel).read_bytes())
        idx = ff.build_index(part, out, shard_size=SHARD if j == 0 else None, append=j > 0,
                             workers=1, progress=False)
    return idx


def shard_bytes(idx: ShardedIndex) -> list:
    """(tensor file bytes, shard JSON) of every shard, in manifest order. A skipped
    file's error message names the absolute path it was read from (another folder for
    an append than for a build at once): the JSON is compared without it."""
    d = idx.path / SHARD_DIR
    out = []
    for e in idx.manifest.shards:
        meta = json.loads((d / f"{e.name}.json").read_bytes())
        for s in meta["skipped"]:
            assert "not a readable image" in s.pop("error")
        out.append(((d / f"{e.name}.safetensors").read_bytes(), meta))
    return out


def manifest_without_names(path: Path) -> dict:
    """The manifest without shard names and JSON checksums (see ``shard_bytes``)."""
    m = json.loads((path / "index.json").read_text())
    for s in m["shards"]:
        for k in ("name", "meta_sha256", "meta_bytes"):
            s.pop(k)
    return m


def queries(idx) -> torch.Tensor:
    t = idx.thumbs.float()
    return torch.cat([t[[0, 5, len(idx) - 1]], (0.6 * t[3] + 0.4 * t[20])[None]])


def test_compact_after_appends_equals_build_at_once(real, at_once, tmp_path):
    idx = appended(real, tmp_path)
    assert len(idx.manifest.shards) > len(at_once.manifest.shards)  # small shards
    q = queries(at_once)
    before = {m: idx.neighbours(q, 12, mode=m) for m in ("exact", "prefilter")}
    old_names = {e.name for e in idx.manifest.shards}

    got = compact_index(idx.path)
    assert [e.count for e in got.manifest.shards] == [e.count for e in at_once.manifest.shards]
    assert shard_bytes(got) == shard_bytes(at_once)  # byte for byte, names aside
    same_json = [a.meta_sha256 == b.meta_sha256
                 for a, b in zip(got.manifest.shards, at_once.manifest.shards)]
    assert same_json.count(False) == 1  # the shard with the skipped file's message
    assert manifest_without_names(got.path) == manifest_without_names(at_once.path)
    assert got.keys == at_once.keys and got.hashes == at_once.hashes
    assert [s["path"] for s in got.skipped] == [s["path"] for s in at_once.skipped] \
        == ["mri/broken.png"]
    # The first build's full shard (files 0-6) is kept as it was, not rewritten.
    assert got.manifest.shards[0].name == "shard-000000"
    # Only listed shard files remain.
    listed = {e.name for e in got.manifest.shards}
    assert {p.stem for p in (got.path / SHARD_DIR).iterdir()} == listed
    assert listed - old_names  # new shards under new numbers
    for m in ("exact", "prefilter"):
        a, b = before[m], got.neighbours(q, 12, mode=m)
        ref = at_once.neighbours(q, 12, mode=m)
        assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)
        assert torch.equal(ref.ids, b.ids) and torch.equal(ref.scores, b.scores)
    ex = torch.arange(4)
    assert torch.equal(got.neighbours(q, 40, exclude=ex).ids,
                       at_once.neighbours(q, 40, exclude=ex).ids)
    # Compacting again writes nothing; another size regroups, and the old size returns.
    snap = files_of(got.path)
    compact_index(got.path)
    assert files_of(got.path) == snap
    big = compact_index(got.path, shard_size=100)
    assert len(big.manifest.shards) == 1 and big.manifest.shard_size == 100
    assert torch.equal(big.neighbours(q, 12).ids, before["exact"].ids)
    back = compact_index(got.path, shard_size=SHARD)
    assert shard_bytes(back) == shard_bytes(at_once)


def test_compact_refuses_a_tampered_shard_and_writes_nothing(real, tmp_path):
    idx = appended(real, tmp_path)
    victim = idx.path / SHARD_DIR / f"{idx.manifest.shards[-2].name}.safetensors"
    data = bytearray(victim.read_bytes())
    data[-3] ^= 0x01  # one bit of a tensor value: same size, other checksum
    victim.write_bytes(bytes(data))
    snap = files_of(idx.path)
    with pytest.raises(IndexFileError, match=r"checksum mismatch.*shard \d+ of \d+ listed"):
        compact_index(idx.path)
    assert files_of(idx.path) == snap
    # The CLI says so too (exit 2), and refuses a second directory or a missing OUT.
    assert main(["index", str(idx.path), "--compact"]) == 2
    assert main(["index", str(real), str(idx.path), "--compact"]) == 2
    assert main(["index", str(real)]) == 2
    assert files_of(idx.path) == snap
    one = ff.build_index(real, tmp_path / "one", progress=False)  # a single file pair
    with pytest.raises(IndexFileError, match="single-file index"):
        compact_index(one.path)


KILL = """
import os, signal, sys
import frerec_fast.index.compact as c
from frerec_fast.index import files as ifiles
def die(*a, **k):
    os.kill(os.getpid(), signal.SIGKILL)
where = sys.argv[2]
if where == "before-manifest":  # the new shards are written, the manifest is not
    ifiles.write_manifest = die
else:  # the manifest is switched, the old shard files are not removed yet
    c._remove_unlisted = die
c.compact_index(sys.argv[1])
"""


@pytest.mark.parametrize("where", ["before-manifest", "after-manifest"])
def test_a_kill_mid_compaction_leaves_a_loadable_index(real, at_once, tmp_path, where):
    """SIGKILL of a compacting process (a real kill, at a chosen step): before the
    manifest switch the old index is intact; after it the new one is complete. Either
    loads, passes a full check and answers as a build at once; the next compaction
    cleans up the leftovers."""
    idx = appended(real, tmp_path)
    old_manifest = (idx.path / "index.json").read_bytes()
    q = queries(at_once)
    proc = subprocess.run([sys.executable, "-c", KILL, str(idx.path), where],
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    now = ff.RealIndex.load(idx.path, verify="eager")
    if where == "before-manifest":
        assert (idx.path / "index.json").read_bytes() == old_manifest
    else:
        assert shard_bytes(now) == shard_bytes(at_once)
    stray = {p.stem for p in (idx.path / SHARD_DIR).iterdir()} - \
        {e.name for e in now.manifest.shards}
    assert stray  # leftovers of the interrupted step, listed by no manifest
    ref = at_once.neighbours(q, 12)
    assert torch.equal(now.neighbours(q, 12).ids, ref.ids)
    assert main(["index", str(idx.path), "--compact", "-q"]) == 0
    done = ff.RealIndex.load(idx.path)
    assert shard_bytes(done) == shard_bytes(at_once)
    assert {p.stem for p in (idx.path / SHARD_DIR).iterdir()} == \
        {e.name for e in done.manifest.shards}
