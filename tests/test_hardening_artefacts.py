"""Untrusted artefacts: index and checkpoint files that are truncated, bit-flipped,
forged with a recomputed checksum (oversized safetensors headers, wrong shapes and
dtypes, non-finite values, configs out of range) or plain garbage are refused with the
project's exception (IndexFileError, CheckpointError) saying what is wrong; never another
exception, never a large allocation, never pickle. Artefacts are made by the real code
(build_index, save_checkpoint) and then damaged."""
import hashlib
import io
import json
import pickle
import random
import struct
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import frerec_fast as ff
from frerec_fast.model import CheckpointError, load_rhm

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "fuzz"))
import targets  # noqa: E402  (fuzz/targets.py: seeds and targets shared with the harnesses)


@pytest.fixture(scope="module")
def index_files(tmp_path_factory) -> dict:
    return targets.read_seed_dir(targets.seed_index(tmp_path_factory.mktemp("seed")))


@pytest.fixture(scope="module")
def ckpt_files(tmp_path_factory) -> dict:
    stem = targets.seed_checkpoint(tmp_path_factory.mktemp("ck"))
    return {p.name: p.read_bytes() for p in (stem.with_suffix(".json"),
                                             stem.with_suffix(".safetensors"))}


def sha(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


class Payload:
    """Unpickling this creates the marker file: proof that something unpickled."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def pickles(marker: Path) -> list[bytes]:
    """A raw pickle and a torch.save (zip) file whose unpickling has a side effect."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:  # torch.save's layout: archive/data.pkl
        z.writestr("archive/data.pkl", pickle.dumps({"w": Payload(marker)}, protocol=2))
        z.writestr("archive/version", "3\n")
    return [pickle.dumps(Payload(marker)), buf.getvalue()]


# -- the index ------------------------------------------------------------------------------
def write_pair(d: Path, files: dict, stem: str, sha_key: str, meta=None, blob=None,
               fix_sha: bool = True) -> Path:
    """Write ``<stem>.json`` and ``<stem>.safetensors`` into a new folder d, from ``files``
    with the sidecar (``meta``) and/or the tensors (``blob``) replaced; the sidecar's
    ``sha_key`` is recomputed over the tensors when fix_sha. Returns d."""
    d.mkdir()
    blob = files[f"{stem}.safetensors"] if blob is None else blob
    m = json.loads(files[f"{stem}.json"]) if meta is None else meta
    if fix_sha and isinstance(m, dict):
        m = {**m, sha_key: sha(blob)}
    (d / f"{stem}.safetensors").write_bytes(blob)
    (d / f"{stem}.json").write_text(json.dumps(m))
    return d


def load_index(tmp_path: Path, files: dict, meta: dict | None = None, tensors: bytes | None = None,
               fix_sha: bool = True):
    """Write an index folder (meta and/or tensors replaced; tensors_sha256 recomputed
    when fix_sha) and load it."""
    d = write_pair(tmp_path / f"idx{len(list(tmp_path.iterdir()))}", files, "index",
                   "tensors_sha256", meta, tensors, fix_sha)
    return ff.RealIndex.load(d)


def test_the_seed_index_loads(index_files, tmp_path):
    idx = load_index(tmp_path, index_files)
    assert len(idx) == 3 and idx.config.retrieval_size == (16, 16)


def meta_cases(meta: dict) -> list[tuple[dict, str]]:
    cfg = meta["config"]
    c = lambda **kw: {**meta, "config": {**cfg, **kw}}  # noqa: E731
    drop = {k: v for k, v in cfg.items() if k != "ratio"}
    return [
        (c(ratio=2.0), "ratio must be a number in"), (c(ratio=float("nan")), "ratio must be"),
        (c(ratio="0.5"), "ratio must be"), (c(domain="phase"), "domain must be one of"),
        (c(domain=7), "domain must be a string"), (c(work_size=[0, 16]), "work_size must be two"),
        (c(work_size=[16]), r"work_size must be a list \[height, width\]"),
        (c(work_size=[16.5, 16]), "work_size must be an integer"),
        (c(work_size=[1, 1]), "high band of the"), (c(retrieval_size=[8, 8]), "must be two integers >= 11"),
        (c(channels=2), "channels must be 1 or 3"), (c(channels=True), "channels must be an integer"),
        ({**meta, "config": drop}, r"config lacks \['ratio'\]"), ({**meta, "config": [1]}, "must be a JSON object"),
        ({**meta, "count": 0}, "count must be a positive integer"),
        ({**meta, "count": "3"}, "count must be a positive"), ({**meta, "count": True}, "count must be"),
        ({**meta, "count": 10**9}, "keys must be a list of 1000000000 strings"),
        ({**meta, "keys": "r0.png"}, "keys must be a list"), ({**meta, "keys": meta["keys"][:2]}, "got 2 entries"),
        ({**meta, "keys": [1, 2, 3]}, "keys must be a list of 3 strings"),
        ({**meta, "keys": ["a", "a", "b"]}, "keys are not unique"),
        ({**meta, "hashes": None}, "hashes must be a list"), ({**meta, "skipped": {}}, "skipped must be a list"),
        ({**meta, "format": "other"}, "not a frerec_fast index"), ({**meta, "version": "1"}, "index version 1"),
    ]


def test_index_json_out_of_range_or_mistyped_is_refused(index_files, tmp_path):
    meta = json.loads(index_files["index.json"])
    for bad, msg in meta_cases(meta):
        with pytest.raises(ff.IndexFileError, match=msg):
            load_index(tmp_path, index_files, meta=bad)


@pytest.mark.parametrize("text,msg", [
    (b"[]", "a JSON list, not an object"), (b'"index"', "a JSON str"), (b"null", "a JSON NoneType"),
    (b"[" * 100_000, "not valid JSON .*RecursionError"), (b'{"format": "\xff\xfe"}', "not valid JSON"),
    (b"", "not valid JSON"), (b'{"format": NaN', "not valid JSON"),
])
def test_index_json_garbage_is_refused(index_files, tmp_path, text, msg):
    d = tmp_path / "idx"
    d.mkdir()
    (d / "index.safetensors").write_bytes(index_files["index.safetensors"])
    (d / "index.json").write_bytes(text)
    with pytest.raises(ff.IndexFileError, match=msg):
        ff.RealIndex.load(d)


def test_index_tensors_forged_with_a_valid_checksum_are_refused(index_files, tmp_path):
    blob = index_files["index.safetensors"]
    t = st_load(blob)
    n_header = struct.unpack("<Q", blob[:8])[0]
    cases = [
        (blob[:len(blob) // 2], "cannot read tensors"),
        (blob[:8 + n_header], "cannot read tensors"),
        (blob[:5], "cannot read tensors"),
        (struct.pack("<Q", 1 << 60) + blob[8:], "cannot read tensors"),  # oversized header
        (struct.pack("<Q", len(blob)) + blob[8:], "cannot read tensors"),
        (b"\0" * 8, "cannot read tensors"),
        (st_save({**t, "thumbs": t["thumbs"][:2]}), r"tensor 'thumbs' is torch.float16 of shape \(2, 1, 16, 16\)"),
        (st_save({**t, "thumbs": t["thumbs"].float()}), "tensor 'thumbs' is torch.float32"),
        (st_save({**t, "mu": t["mu"].repeat(1, 3)}), r"tensor 'mu' .* expected torch.float32 of shape \(3, 1\)"),
        (st_save({"thumbs": t["thumbs"], "mu": t["mu"]}), r"holds tensors \['mu', 'thumbs'\]"),
        (st_save({**t, "extra": torch.zeros(1)}), "holds tensors"),
        (st_save({**t, "mu": torch.full_like(t["mu"], float("nan"))}), "'mu' holds values from nan"),
        (st_save({**t, "sigma": -t["sigma"] - 1}), "'sigma' holds values from"),
        (st_save({**t, "thumbs": t["thumbs"] + 2}), "'thumbs' holds values from"),
        (st_save({**t, "thumbs": torch.full_like(t["thumbs"], float("inf"))}), "'thumbs' holds values"),
    ]
    for forged, msg in cases:
        with pytest.raises(ff.IndexFileError, match=msg):
            load_index(tmp_path, index_files, tensors=forged)


def test_index_files_are_never_unpickled(index_files, tmp_path):
    marker = tmp_path / "unpickled"
    for payload in pickles(marker):
        with pytest.raises(ff.IndexFileError, match="cannot read tensors"):
            load_index(tmp_path, index_files, tensors=payload)
    assert not marker.exists()


def test_index_random_damage_only_ever_gives_index_file_error(index_files, tmp_path):
    """Seeded random damage (cuts, bit flips, junk) of either file, with and without a
    recomputed checksum: a usable index or IndexFileError, nothing else."""
    rng = random.Random(14)
    seen = {"ok": 0, "error": 0}
    for i in range(150):
        name = ("index.json", "index.safetensors")[i % 2]
        data = bytes([(i % 2) | (2 * (i % 3 != 0))]) + targets.mutate(index_files[name], rng)
        seen[targets.index_input(data, index_files, tmp_path / f"w{i}")] += 1
    assert seen["error"] > 50


# -- the checkpoint -------------------------------------------------------------------------
def load_ckpt(tmp_path: Path, files: dict, meta=None, weights: bytes | None = None,
              fix_sha: bool = True):
    d = write_pair(tmp_path / f"ck{len(list(tmp_path.iterdir()))}", files, "rhm",
                   "weights_sha256", meta, weights, fix_sha)
    return load_rhm(d / "rhm")


def forged_weights(files: dict, config_changes: dict | None = None, tensors: dict | None = None,
                   ) -> tuple[dict, bytes]:
    """(sidecar, weights) with a config changed consistently in both files, as a
    forger who knows the format would make them."""
    meta = json.loads(files["rhm.json"])
    cfg = {**meta["config"], **(config_changes or {})}
    state = st_load(files["rhm.safetensors"]) if tensors is None else tensors
    blob = st_save(state, metadata={"format": "frerec_fast.rhm",
                                    "config": json.dumps(cfg, sort_keys=True)})
    return {**meta, "config": cfg}, blob


def test_the_seed_checkpoint_loads(ckpt_files, tmp_path):
    assert load_ckpt(tmp_path, ckpt_files).config.dim == 4


@pytest.mark.parametrize("change,msg", [
    ({"dim": 0}, "dim and heads must be >= 1"), ({"dim": 8.5}, "dim must be an integer"),
    ({"dim": "4"}, "dim must be an integer"), ({"heads": [1, 1, 1]}, "need 4 entries"),
    ({"heads": [3, 1, 1, 1]}, "not divisible by 3 heads"), ({"blocks": [1, 1, 1, -1]}, "blocks and refinement >= 0"),
    ({"blocks": "1111"}, "blocks must be a list of integers"), ({"n_rings": 0}, "n_rings and n_sectors must be >= 1"),
    ({"n_rings": 4096, "n_sectors": 4096}, "n_rings \\* n_sectors must be <= 65536"),
    ({"dft": "dct"}, "dft must be one of"), ({"ffn_expansion": 0}, "ffn_expansion must be > 0"),
    ({"ffn_expansion": float("inf")}, "ffn_expansion must be a finite number"),
    ({"in_channels": 2}, "in_channels must be 1 or 3"), ({"bias": "no"}, "bias must be true or false"),
    ({"surprise": 1}, "unknown RHMConfig fields"),
])
def test_checkpoint_config_out_of_range_is_refused(ckpt_files, tmp_path, change, msg):
    meta, blob = forged_weights(ckpt_files, change)
    with pytest.raises(CheckpointError, match=msg):
        load_ckpt(tmp_path, ckpt_files, meta=meta, weights=blob)


@pytest.mark.parametrize("change,msg", [
    ({"dim": 1 << 20}, "does not fit"), ({"dim": 4096}, "does not fit"),
    ({"blocks": [100_000, 1, 1, 1]}, "blocks, the file only"), ({"refinement": 10**9}, "blocks, the file only"),
    ({"ffn_expansion": 1e9}, "does not fit"), ({"ffn_expansion": 1e300}, "cannot build RHM"),
])
def test_a_config_claiming_a_huge_model_allocates_nothing(ckpt_files, tmp_path, change, msg):
    # Before the meta-device check these allocated the claimed model (3 GB for dim 4096)
    # or failed with the allocator's RuntimeError.
    meta, blob = forged_weights(ckpt_files, change)
    t0 = time.monotonic()
    with pytest.raises(CheckpointError, match=msg):
        load_ckpt(tmp_path, ckpt_files, meta=meta, weights=blob)
    assert time.monotonic() - t0 < 10


def test_checkpoint_weights_forged_with_a_valid_checksum_are_refused(ckpt_files, tmp_path):
    blob = ckpt_files["rhm.safetensors"]
    state = st_load(blob)
    name = sorted(state)[0]
    float_name = next(k for k in sorted(state) if state[k].is_floating_point()
                      and state[k].shape[0] > 1)
    cases = [
        (blob[:len(blob) // 2], "cannot load RHM checkpoint"),
        (struct.pack("<Q", 1 << 60) + blob[8:], "cannot load RHM checkpoint"),
        (b"", "cannot load RHM checkpoint"),
        (forged_weights(ckpt_files, tensors={k: v for k, v in state.items() if k != name})[1],
         f"missing \\['{name}'\\]"),
        (forged_weights(ckpt_files, tensors={**state, "evil": torch.zeros(1)})[1], r"unexpected \['evil'\]"),
        (forged_weights(ckpt_files, tensors={**state, float_name: state[float_name][:1]})[1],
         f"{float_name} is torch.float32"),
        (forged_weights(ckpt_files, tensors={**state, float_name: state[float_name].half()})[1],
         f"{float_name} is torch.float16 .* the model needs torch.float32"),
        (forged_weights(ckpt_files, tensors={
            **state, float_name: torch.full_like(state[float_name], float("nan"))})[1],
         "NaN or infinite"),
    ]
    for forged, msg in cases:
        with pytest.raises(CheckpointError, match=msg):
            load_ckpt(tmp_path, ckpt_files, weights=forged)
    # Weights of another model size, with its own consistent config, against this sidecar.
    meta, other = forged_weights(ckpt_files, {"dim": 8})
    with pytest.raises(CheckpointError, match="differs from the one saved inside"):
        load_ckpt(tmp_path, ckpt_files, weights=other)


@pytest.mark.parametrize("text,msg", [
    (b"[]", "a JSON list, not an object"), (b"[" * 100_000, "RecursionError"),
    (b"\xff\xfe{", "cannot read checkpoint sidecar"), (b"", "cannot read checkpoint sidecar"),
    (b'{"format": "frerec_fast.rhm", "format_version": "1"}', "format_version must be an integer"),
    (b'{"format": "frerec_fast.rhm", "format_version": 99}', "upgrade frerec_fast"),
    (b'{"format": "frerec_fast.rhm", "format_version": 1, "config": 5}', "SHA-256 differs"),
])
def test_checkpoint_sidecar_garbage_is_refused(ckpt_files, tmp_path, text, msg):
    (tmp_path / "rhm.safetensors").write_bytes(ckpt_files["rhm.safetensors"])
    (tmp_path / "rhm.json").write_bytes(text)
    with pytest.raises(CheckpointError, match=msg):
        load_rhm(tmp_path / "rhm")


def test_checkpoint_config_not_an_object_is_refused(ckpt_files, tmp_path):
    meta = json.loads(ckpt_files["rhm.json"])
    with pytest.raises(CheckpointError, match="cannot load RHM checkpoint"):
        load_ckpt(tmp_path, ckpt_files, meta={**meta, "config": [4, 4]})


def test_checkpoints_are_never_unpickled(ckpt_files, tmp_path):
    marker = tmp_path / "unpickled"
    for payload in pickles(marker):
        with pytest.raises(CheckpointError, match="cannot load RHM checkpoint"):
            load_ckpt(tmp_path, ckpt_files, weights=payload)
    assert not marker.exists()


def test_checkpoint_random_damage_only_ever_gives_checkpoint_error(ckpt_files, tmp_path):
    rng = random.Random(14)
    seen = {"ok": 0, "error": 0}
    for i in range(100):
        name = ("rhm.json", "rhm.safetensors")[i % 2]
        data = bytes([(i % 2) | (2 * (i % 3 != 0))]) + targets.mutate(ckpt_files[name], rng)
        w = tmp_path / f"w{i}"
        w.mkdir()
        seen[targets.checkpoint_input(data, ckpt_files, w)] += 1
    assert seen["error"] > 30
