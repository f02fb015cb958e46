"""The sharded index: manifest + shards on disk, lazy loading, checksums, append, the
parallel build, and top-K over shards equal to the single-file index (method §4).

Everything runs on real files: the bundled real slices (64x64 16-bit PNGs), copied into
small folders, with duplicated images so that SSIM ties cross shard boundaries.
"""
import json
import shutil
from pathlib import Path

import pytest
import torch

import frerec_fast as ff
from frerec_fast import backends
from frerec_fast.datasets import real_dir
from frerec_fast.index import SHARD_DIR, ShardedIndex, search
from frerec_fast.ops import ssim_topk
from run_helpers import copy_synth_sample, one_thread, png_digests  # noqa: F401 - a fixture

SHARD = 7  # files per shard in these tests: several shards from a few dozen images
EXACT_BACKENDS = [b for b in ("torch", "cpp")
                  if backends.unavailable_reason("ssim_topk", b, "cpu") is None]


def make_real(dst: Path, files: list[Path]) -> Path:
    """Copy bundled real slices under dst, keeping their modality folder."""
    for f in files:
        (dst / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst / f.parent.name / f.name)
    return dst


def real_files(every: int = 5) -> list[Path]:
    return sorted(real_dir("train").rglob("*.png"))[::every]


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    """35 real slices, and three copies of one CT slice under names that sort into
    other shards (ties at SSIM level: identical thumbnails score identically)."""
    d = make_real(tmp_path_factory.mktemp("real") / "real", real_files())
    src = sorted((d / "ct").glob("*.png"))[3]
    for name in ("a_dup/x.png", "ct/cranium_z030b.png", "zz_dup/y.png"):
        (d / name).parent.mkdir(exist_ok=True)
        shutil.copy(src, d / name)
    return d


@pytest.fixture(scope="module")
def pair(real, tmp_path_factory):
    """(single-file index, sharded index) of the same images."""
    root = tmp_path_factory.mktemp("idx")
    single = ff.build_index(real, root / "single", progress=False)
    sharded = ff.build_index(real, root / "sharded", shard_size=SHARD, workers=1,
                             progress=False)
    return single, sharded


def files_of(index_dir: Path) -> dict:
    """{relative path: bytes} of an index directory's files (lock file left out)."""
    return {p.relative_to(index_dir).as_posix(): p.read_bytes()
            for p in sorted(index_dir.rglob("*")) if p.is_file() and p.name[0] != "."}


def queries(single) -> torch.Tensor:
    """Index images (one of them the duplicated slice) and two blends, as [B, 1, 64, 64]."""
    t = single.thumbs.float()
    dup = single.position("a_dup/x.png")
    return torch.cat([t[[0, dup, 9, 20, len(single) - 1]],
                      (0.5 * t[3] + 0.5 * t[30])[None], (0.7 * t[12] + 0.3 * t[25])[None]])


# -- layout -----------------------------------------------------------------------------------
def test_layout_and_contents(real, pair):
    single, sharded = pair
    assert type(single) is ff.RealIndex and isinstance(sharded, ShardedIndex)
    assert isinstance(sharded, ff.RealIndex)  # usable wherever an index is taken
    n = len(single)
    assert n == 38 and len(sharded) == n
    meta = json.loads((sharded.path / "index.json").read_text())
    assert meta["version"] == 2 and meta["shard_size"] == SHARD and meta["count"] == n
    assert [s["count"] for s in meta["shards"]] == [7, 7, 7, 7, 7, 3]
    assert not (sharded.path / "index.safetensors").exists()
    assert sorted(p.name for p in (sharded.path / SHARD_DIR).iterdir()) == sorted(
        f"shard-{i:06d}.{ext}" for i in range(6) for ext in ("json", "safetensors"))
    # Same entries in the same global order as the single-file index.
    assert sharded.keys == single.keys and sharded.hashes == single.hashes
    assert torch.equal(sharded.thumbs, single.thumbs)
    assert torch.equal(sharded.mu, single.mu) and torch.equal(sharded.sigma, single.sigma)
    ids = torch.tensor([37, 0, 8, 7, 14])
    assert torch.equal(sharded.thumbs_at(ids), single.thumbs[ids])
    assert sharded.position("zz_dup/y.png") == single.position("zz_dup/y.png") == n - 1
    # Stored prefilter embeddings = those the single-file index computes.
    assert torch.equal(sharded.embedding_on("cpu"), single.embedding_on("cpu"))


# -- exact top-K over shards ------------------------------------------------------------------
@pytest.mark.parametrize("backend", EXACT_BACKENDS)
def test_sharded_exact_topk_equals_unsharded_with_ties_and_exclusion(pair, backend):
    single, sharded = pair
    q = queries(single)
    n = len(single)
    h = single.hashes[single.position("a_dup/x.png")]  # the slice and its three copies
    dup = [i for i, d in enumerate(single.hashes) if d == h]
    assert len(dup) == 4 and len({i // SHARD for i in dup}) == 3  # in three shards
    own = torch.tensor([0, dup[0], 9, 20, n - 1, -1, -1])
    for k in (1, 8, n - 1, 200):
        for exclude in (None, own, torch.tensor([dup[1]] * 7)):
            a = single.neighbours(q, k, exclude=exclude, backend=backend)
            b = sharded.neighbours(q, k, exclude=exclude, backend=backend)
            assert torch.equal(a.ids, b.ids), (k, exclude)
            assert torch.equal(a.scores, b.scores), (k, exclude)  # same backend: same bits
            assert torch.equal(a.mu_bank, b.mu_bank) and torch.equal(a.sigma_bank, b.sigma_bank)
    # The tie is really there and goes to the lower global position, across shards.
    nb = sharded.neighbours(q[1:2], 4, backend=backend)
    assert nb.ids[0].tolist() == dup and torch.unique(nb.scores[0]).numel() == 1
    nb = sharded.neighbours(q[1:2], 3, exclude=[dup[1]], backend=backend)
    assert nb.ids[0].tolist() == [dup[0]] + dup[2:]


def test_merge_over_any_split_equals_the_op_with_many_ties():
    """search.exact_topk on tensors: a database of 6 distinct images repeated (every
    score is tied several times), cut into shards of uneven sizes, with exclusions in
    every shard and k above the shard sizes."""
    g = torch.Generator().manual_seed(0)
    base = torch.rand(6, 1, 16, 16, generator=g)
    db = base[torch.randint(0, 6, (41,), generator=g)].half()
    q = torch.cat([base[:3], torch.rand(2, 1, 16, 16, generator=g)])
    for cuts in ([1, 40], [5, 5, 5, 26], [13, 0, 13, 15], [2] * 20 + [1]):
        starts = [sum(cuts[:i]) for i in range(len(cuts))]
        for exclude in (None, torch.tensor([0, 40, 12, -1, 5])):
            for k in (1, 11, 40):
                want = ssim_topk(q, db, k, exclude=exclude, backend="torch")
                parts = ((s, db[s:s + c]) for s, c in zip(starts, cuts))
                got = search.exact_topk(q, parts, db.shape[0], k, exclude, backend="torch")
                assert torch.equal(got[1], want[1]) and torch.equal(got[0], want[0]), \
                    (cuts, exclude, k)


def test_top_c_keeps_what_a_stable_sort_keeps():
    """The prefilter's linear-time per-shard selection against a stable sort, on scores
    with many ties and -inf (an excluded position)."""
    g = torch.Generator().manual_seed(0)
    for trial in range(200):
        n_q, n = torch.randint(1, 5, (2,), generator=g).tolist()[0], trial % 37 + 1
        x = torch.randint(0, 5, (n_q, n), generator=g).float()
        x[0, trial % n] = float("-inf")
        c = trial % (n + 2) + 1
        s, i = search.top_c(x, c, offset=3)
        want_s, want_i = torch.sort(x, dim=1, descending=True, stable=True)
        assert torch.equal(s, want_s[:, :c]) and torch.equal(i, want_i[:, :c] + 3), (x, c)


def test_sharded_prefilter(pair):
    """Candidates >= N: equal to exact. Fewer: the same short list and answer as the
    single-file prefilter (the GEMM per shard, merged, then the exact re-rank)."""
    single, sharded = pair
    q = queries(single)
    n = len(single)
    exact = single.neighbours(q, 10, exclude=[0, 1, 2, 3, 4, 5, 6])
    got = sharded.neighbours(q, 10, exclude=[0, 1, 2, 3, 4, 5, 6], mode="prefilter",
                             candidates=n)
    assert torch.equal(got.ids, exact.ids)
    for c in (10, 15, 25):
        a = single.neighbours(q, 10, mode="prefilter", candidates=c)
        b = sharded.neighbours(q, 10, mode="prefilter", candidates=c)
        assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)
    with pytest.raises(ValueError, match="mode 'approx' is not available"):
        sharded.neighbours(q, 3, mode="approx")
    with pytest.raises(ValueError, match="exclude holds database positions"):
        sharded.neighbours(q[:1], 3, exclude=[n])


# -- lazy loading -----------------------------------------------------------------------------
def test_open_reads_only_the_manifest(real, tmp_path):
    out = tmp_path / "idx"
    ff.build_index(real, out, shard_size=SHARD, workers=1, progress=False)
    # With every shard file moved away, opening still works: it reads index.json only.
    shutil.move(out / SHARD_DIR, tmp_path / "away")
    idx = ff.RealIndex.load(out)
    assert isinstance(idx, ShardedIndex) and len(idx) == 38 and idx.shards_loaded == ()
    assert idx.config.work_size == (64, 64)
    shutil.move(tmp_path / "away", out / SHARD_DIR)
    # A look-up maps only the shards it needs.
    assert idx.thumbs_at([0, 8]).shape == (2, 1, 64, 64) and idx.shards_loaded == (0, 1)
    # A shard nobody needs can be missing until a search reaches it.
    for p in (out / SHARD_DIR).glob("shard-000004.*"):
        p.unlink()
    idx.thumbs_at([3, 20])
    assert idx.shards_loaded == (0, 1, 2)
    with pytest.raises(ff.IndexFileError, match=r"shard-000004\.safetensors: missing \(shard "
                       r"5 of 6 listed in .*index\.json\)"):
        idx.neighbours(idx.thumbs_at([0]).float(), 5)
    # eager verification finds it at open
    with pytest.raises(ff.IndexFileError, match=r"shard-000004\.safetensors: missing"):
        ff.RealIndex.load(out, verify=True)


# -- damage -----------------------------------------------------------------------------------
def test_tampered_and_missing_shards_are_refused(real, tmp_path):
    out = tmp_path / "idx"
    ff.build_index(real, out, shard_size=SHARD, workers=1, progress=False)
    clean = files_of(out)
    q = torch.rand(1, 1, 64, 64)

    tensors = out / SHARD_DIR / "shard-000002.safetensors"
    blob = bytearray(tensors.read_bytes())
    blob[len(blob) // 2] ^= 0x01  # one bit of one thumbnail
    tensors.write_bytes(bytes(blob))
    idx = ff.RealIndex.load(out)  # lazy: the damage is found when the shard is first used
    with pytest.raises(ff.IndexFileError, match=r"shard-000002\.safetensors: checksum "
                       r"mismatch .*shard 3 of 6.*the file is corrupt or was changed"):
        idx.neighbours(q, 5)
    with pytest.raises(ff.IndexFileError, match=r"shard-000002\.safetensors: checksum mismatch"):
        ff.RealIndex.load(out, verify=True)
    with pytest.raises(ff.IndexFileError, match=r"shard-000002\.safetensors: checksum mismatch"):
        ShardedIndex.open(out, verify="eager")
    tensors.write_bytes(clean[f"{SHARD_DIR}/shard-000002.safetensors"])

    meta = out / SHARD_DIR / "shard-000001.json"
    meta.write_bytes(meta.read_bytes().replace(b"cranium", b"Cranium", 1))
    idx = ff.RealIndex.load(out)
    idx.neighbours(q, 5)  # the tensors are intact
    with pytest.raises(ff.IndexFileError, match=r"shard-000001\.json: checksum mismatch"):
        idx.keys
    meta.write_bytes(clean[f"{SHARD_DIR}/shard-000001.json"][:-10])  # truncated
    with pytest.raises(ff.IndexFileError, match=r"shard-000001\.json: \d+ bytes but the "
                       "manifest says"):
        ff.RealIndex.load(out).hashes
    meta.write_bytes(clean[f"{SHARD_DIR}/shard-000001.json"])

    tensors.unlink()
    with pytest.raises(ff.IndexFileError, match=r"shard-000002\.safetensors: missing .*the "
                       "index is incomplete"):
        ff.RealIndex.load(out).neighbours(q, 5)
    tensors.write_bytes(clean[f"{SHARD_DIR}/shard-000002.safetensors"])

    # A forged manifest: a path instead of a shard name, a count that does not add up.
    m = json.loads(clean["index.json"])
    for bad, msg in (({**m, "shards": [{**m["shards"][0], "name": "../../etc/passwd"}]},
                      "shard 0 of the manifest is malformed"),
                     ({**m, "count": 39}, "the shards hold 38 images but count says 39"),
                     ({**m, "shards": []}, "shards must be a non-empty list"),
                     ({**m, "shards": m["shards"] + m["shards"][:1]}, "is listed twice")):
        (out / "index.json").write_text(json.dumps(bad))
        with pytest.raises(ff.IndexFileError, match=msg):
            ff.RealIndex.load(out)
    (out / "index.json").write_bytes(clean["index.json"])
    idx = ff.RealIndex.load(out, verify=True)
    assert len(idx.keys) == 38


# -- building ---------------------------------------------------------------------------------
def test_parallel_build_is_byte_identical_to_serial(real, tmp_path):
    ff.build_index(real, tmp_path / "serial", shard_size=SHARD, workers=1, progress=False)
    idx = ff.build_index(real, tmp_path / "parallel", shard_size=SHARD, workers=2,
                         progress=False)
    assert files_of(tmp_path / "serial") == files_of(tmp_path / "parallel")
    assert len(idx) == 38


def test_append_then_query_equals_build_at_once(real, pair, tmp_path):
    single, at_once = pair
    files = sorted(p.relative_to(real) for p in real.rglob("*.png"))
    q = queries(single)

    def split(n_first: int, name: str) -> ShardedIndex:
        a, b = tmp_path / f"{name}_a", tmp_path / f"{name}_b"
        for rel in files[:n_first]:
            make_real(a / rel.parent.parent, [real / rel])
        for rel in files[n_first:]:
            make_real(b / rel.parent.parent, [real / rel])
        out = tmp_path / name
        ff.build_index(a, out, shard_size=SHARD, workers=1, progress=False)
        kept = files_of(out)
        idx = ff.build_index(b, out, append=True, workers=1, progress=False)
        now = files_of(out)
        assert {k: v for k, v in now.items() if k in kept and k != "index.json"} == \
            {k: v for k, v in kept.items() if k != "index.json"}  # old shards untouched
        return idx

    # Split on a shard boundary: every file, the manifest included, equals build-at-once.
    idx = split(3 * SHARD, "aligned")
    assert files_of(idx.path) == files_of(at_once.path)
    # Off the boundary: other shards, same overlapping bytes, same answers.
    idx = split(10, "offset")
    assert [e.count for e in idx.manifest.shards] == [7, 3, 7, 7, 7, 7]
    assert files_of(idx.path)[f"{SHARD_DIR}/shard-000000.safetensors"] == \
        files_of(at_once.path)[f"{SHARD_DIR}/shard-000000.safetensors"]
    assert idx.keys == at_once.keys
    for k, exclude in ((5, None), (37, torch.arange(7))):
        a, b = at_once.neighbours(q, k, exclude=exclude), idx.neighbours(q, k, exclude=exclude)
        assert torch.equal(a.ids, b.ids) and torch.equal(a.scores, b.scores)


def test_append_refuses_duplicates_and_other_settings_and_converts_a_single_file(real, tmp_path):
    out = tmp_path / "idx"
    ff.build_index(real, out, shard_size=SHARD, workers=1, progress=False)
    before = files_of(out)
    part = make_real(tmp_path / "part", real_files(20))  # already indexed under these keys
    with pytest.raises(ValueError, match=r"9 of the 9 image files under .* are already in "
                       r"the index .*keys must stay unique"):
        ff.build_index(part, out, append=True, progress=False)
    new = tmp_path / "new"  # keys sort after the index's: appending = building at once
    make_real(new / "zzz", real_files(7)[:3])
    with pytest.raises(ValueError, match="built with ratio=0.5, not 0.25"):
        ff.build_index(new, out, append=True, ratio=0.25, progress=False)
    with pytest.raises(ValueError, match="has shards of 7 files"):
        ff.build_index(new, out, append=True, shard_size=8, progress=False)
    assert files_of(out) == before  # nothing written by a refused append
    idx = ff.build_index(new, out, append=True, ratio=0.5, progress=False)
    assert len(idx) == 41 and idx.keys[-3:] == sorted(f"zzz/ct/{p.name}" for p in real_files(7)[:3])

    # Appending to a single-file index converts it: same answers as building at once.
    one = tmp_path / "one"
    ff.build_index(real, one, progress=False)
    assert (one / "index.safetensors").exists()
    idx = ff.build_index(new, one, append=True, shard_size=SHARD, progress=False)
    assert not (one / "index.safetensors").exists() and len(idx) == 41
    both = tmp_path / "both"
    shutil.copytree(real, both)
    shutil.copytree(new, both, dirs_exist_ok=True)
    ref = ff.build_index(both, None, progress=False)
    assert ref.keys == idx.keys
    q = queries(ref)
    got, want = idx.neighbours(q, 6), ref.neighbours(q, 6)
    assert torch.equal(got.ids, want.ids) and torch.equal(got.scores, want.scores)


def test_cli_index_shards_and_append(real, tmp_path):
    from frerec_fast.cli import main

    new = make_real(tmp_path / "new" / "more", real_files(7)[:2]).parent
    out = tmp_path / "idx"
    assert main(["index", str(real), str(out), "--shard-size", "20", "--workers", "1",
                 "-q"]) == 0
    assert main(["index", str(new), str(out), "--append", "-q"]) == 0
    idx = ff.RealIndex.load(out, verify=True)
    assert [e.count for e in idx.manifest.shards] == [20, 18, 2]
    assert main(["index", str(new), str(out), "--append", "-q", "--ratio", "0.3"]) == 2


# -- the batch job on a sharded index --------------------------------------------------------
@pytest.mark.usefixtures("one_thread")
def test_calibrate_dir_writes_the_same_bytes_with_a_sharded_index(tmp_path):
    from frerec_fast.pipeline import calibrate_dir

    single = ff.build_index(real_dir("train"), tmp_path / "single", progress=False)
    sharded = ff.build_index(real_dir("train"), tmp_path / "sharded", shard_size=50,
                             workers=1, progress=False)
    assert [e.count for e in sharded.manifest.shards] == [50, 50, 50, 21]
    synth = copy_synth_sample(tmp_path / "synth", every=64)
    real = make_real(tmp_path / "real", real_files(40))
    runs = {"synth-exact": (synth, {}),
            "synth-prefilter": (synth, {"retrieval": "prefilter", "candidates": 60}),
            "real-self-excluded": (real, {"calibrate_real": True})}
    for name, (src, kw) in runs.items():
        out = {}
        for kind, index in (("single", tmp_path / "single"), ("sharded", tmp_path / "sharded")):
            dst = tmp_path / f"{name}-{kind}"
            rep = calibrate_dir(src, dst, index=index, model=False, device="cpu", k=20,
                                progress=False, workers=1, **kw)
            assert rep["failed"] == 0 and rep["ok"] == len(png_digests(src))
            out[kind] = (png_digests(dst), rep["frequency_gap"])
        assert out["single"] == out["sharded"], name
