"""The index's files: their formats, writers and checked readers.

Two layouts share one ``index.json`` name and ``format`` field, told apart by ``version``:

- **Version 1, one file pair** (``RealIndex.save``): ``index.safetensors`` (``thumbs
  [N, 1, h, w] f16``, ``mu [N, C] f32``, ``sigma [N, C] f32``) and ``index.json``
  (config, count, keys, hashes, skipped files, SHA-256 of the tensor file).
- **Version 2, sharded**: ``index.json`` is a small manifest (config, prefilter embedding
  settings, count, shard size, and per shard its name, image count, and the size and
  SHA-256 of both of its files); the shards live in ``shards/``, each a pair
  ``shard-NNNNNN.safetensors`` (``thumbs``, ``mu``, ``sigma`` as above and ``embed
  [n, t * t] f32``, the prefilter's embeddings of the thumbnails) and
  ``shard-NNNNNN.json`` (config, count, keys, hashes, skipped files, SHA-256 of its
  tensor file). A global position is shard order, then position in the shard.

Every file is untrusted input: JSON and safetensors only (never unpickled), every
field checked (types, config ranges, names, dtypes, shapes, finite values in range,
unique keys) before use, so a damaged or forged file raises ``IndexFileError`` naming
the file and what is wrong. All writes are atomic (temp file, fsync, rename).
"""
from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

from .. import io as fio
from .. import prefilter
from .config import IndexConfig, IndexFileError

FORMAT = "frerec_fast.index"
VERSION = 1                 # one file pair
SHARDED_VERSION = 2         # manifest + shards
TENSORS_FILE = "index.safetensors"
META_FILE = "index.json"
SHARD_DIR = "shards"
SHARD_FORMAT = "frerec_fast.index.shard"
SHARD_VERSION = 1
SHARD_NAME = re.compile(r"shard-\d{6}")
# The prefilter embedding stored in shards: if the code's settings ever differ from a
# shard's, the shard's embeddings are recomputed from its thumbnails instead of used.
EMBEDDING = {"kind": "local-structure", "thumb": prefilter.DEFAULT_THUMB,
             "sigma": prefilter.EMBED_SIGMA, "c": prefilter.EMBED_C,
             "flat_rms": prefilter.FLAT_RMS}
REBUILD = "rebuild the index with `frerec index`"


def shard_name(number: int) -> str:
    return f"shard-{number:06d}"


def embed_dim(cfg: IndexConfig, thumb: int = prefilter.DEFAULT_THUMB) -> int:
    h, w = cfg.retrieval_size
    return min(thumb, h) * min(thumb, w)


# -- shared checks ------------------------------------------------------------------------
def read_json(p: Path, what: str = "a frerec_fast index") -> dict:
    """A JSON object from an untrusted file, or IndexFileError naming it."""
    try:
        meta = json.loads(p.read_bytes())
    except OSError as e:
        raise IndexFileError(f"{p}: cannot read ({e}); {REBUILD}") from e
    except (ValueError, RecursionError) as e:  # bad JSON or UTF-8, nesting too deep
        raise IndexFileError(f"{p}: not valid JSON ({type(e).__name__}: "
                             f"{str(e)[:200]}); rebuild the index") from e
    if not isinstance(meta, dict):
        raise IndexFileError(f"{p}: not {what} (a JSON {type(meta).__name__}, not an object)")
    return meta


def _config(p: Path, meta: dict) -> IndexConfig:
    try:
        return IndexConfig.from_dict(meta.get("config"))
    except (ValueError, TypeError) as e:
        raise IndexFileError(f"{p}: bad config: {e}") from e


def _count(p: Path, meta: dict, least: int = 1) -> int:
    n = meta.get("count")
    if isinstance(n, bool) or not isinstance(n, int) or n < least:
        kind = "a positive integer" if least else "a non-negative integer"
        raise IndexFileError(f"{p}: count must be {kind}, got {n!r}")
    return n


def _entries(p: Path, meta: dict, n: int):
    """(keys, hashes, skipped) of an index or shard JSON, each checked."""
    lists = {}
    for name in ("keys", "hashes"):
        v = meta.get(name)
        if not isinstance(v, list) or len(v) != n or not all(isinstance(x, str) for x in v):
            what = f"{len(v)} entries" if isinstance(v, list) else repr(type(v).__name__)
            raise IndexFileError(f"{p}: {name} must be a list of {n} strings (one per "
                                 f"image), got {what}")
        lists[name] = list(v)
    if len(set(lists["keys"])) != n:
        raise IndexFileError(f"{p}: keys are not unique (one entry per image)")
    skipped = meta.get("skipped", [])
    if not isinstance(skipped, list):
        raise IndexFileError(f"{p}: skipped must be a list, got {type(skipped).__name__}")
    return lists["keys"], lists["hashes"], skipped


def _load_tensors(p: Path, expect: dict, ranges: tuple, mmap: bool) -> dict:
    """safetensors file -> {name: tensor}, names, dtypes, shapes and value ranges checked.
    expect: {name: (shape, dtype)}; ranges: ((name, lo, hi), ...)."""
    from safetensors.torch import load_file

    try:
        t = load_file(str(p))
    except Exception as e:  # safetensors' own errors: header size, offsets, dtypes
        raise IndexFileError(f"{p}: cannot read tensors ({e}); rebuild the index") from e
    if set(t) != set(expect):
        raise IndexFileError(f"{p}: holds tensors {sorted(t)}, expected {sorted(expect)}")
    for name, (shape, dtype) in expect.items():
        if tuple(t[name].shape) != shape or t[name].dtype != dtype:
            raise IndexFileError(f"{p}: tensor {name!r} is {t[name].dtype} of shape "
                                 f"{tuple(t[name].shape)}, expected {dtype} of shape {shape}")
    for name, lo, hi in ranges:
        if t[name].numel() == 0:
            continue
        least, most = (float(v) for v in torch.aminmax(t[name]))
        if not (math.isfinite(least) and math.isfinite(most) and lo <= least and most <= hi):
            raise IndexFileError(f"{p}: tensor {name!r} holds values from {least} to "
                                 f"{most}, expected finite values in [{lo}, {hi}]; "
                                 "rebuild the index")
    return t if mmap else {k: v.clone() for k, v in t.items()}


STAT_RANGES = (("thumbs", 0.0, 1.0), ("mu", -math.inf, math.inf), ("sigma", 0.0, math.inf))


def _expect(cfg: IndexConfig, n: int) -> dict:
    return {"thumbs": ((n, 1, *cfg.retrieval_size), torch.float16),
            "mu": ((n, cfg.channels), torch.float32),
            "sigma": ((n, cfg.channels), torch.float32)}


def check_version(meta_p: Path, meta: dict) -> int:
    """The layout version of an index.json (format checked), or IndexFileError."""
    if meta.get("format") != FORMAT:
        raise IndexFileError(f"{meta_p}: not a frerec_fast index (format {meta.get('format')!r})")
    v = meta.get("version")
    if v not in (VERSION, SHARDED_VERSION) or isinstance(v, bool):
        raise IndexFileError(f"{meta_p}: index version {v} but this frerec_fast reads "
                             f"versions {VERSION} (one file pair) and {SHARDED_VERSION} "
                             f"(sharded); {REBUILD}")
    return v


# -- version 1: one file pair ---------------------------------------------------------------
@dataclass
class SingleFile:
    """The contents of a version-1 index, checked."""
    config: IndexConfig
    thumbs: torch.Tensor
    mu: torch.Tensor
    sigma: torch.Tensor
    keys: list
    hashes: list
    skipped: list
    tensors_sha256: str | None


def write_single(out: Path, cfg: IndexConfig, thumbs, mu, sigma, keys, hashes,
                 skipped) -> str:
    """Write ``out/index.safetensors`` and ``out/index.json``; returns the tensor file's
    SHA-256."""
    from safetensors.torch import save

    blob = save({"thumbs": thumbs.contiguous(), "mu": mu.contiguous(),
                 "sigma": sigma.contiguous()})
    fio.atomic_write_bytes(out / TENSORS_FILE, blob)
    digest = hashlib.sha256(blob).hexdigest()
    meta = {"format": FORMAT, "version": VERSION, "config": cfg.to_dict(),
            "count": len(keys), "tensors_sha256": digest,
            "keys": keys, "hashes": hashes, "skipped": skipped}
    fio.atomic_write_text(out / META_FILE, json.dumps(meta, indent=1))
    return digest


def read_single(root: Path, meta: dict, mmap: bool, verify: bool) -> SingleFile:
    """A version-1 index from its checked index.json (``meta``) and tensor file."""
    meta_p, tens_p = root / META_FILE, root / TENSORS_FILE
    if not tens_p.is_file():
        raise IndexFileError(f"{tens_p}: missing; build an index with `frerec index REAL_DIR OUT`")
    n = _count(meta_p, meta)
    cfg = _config(meta_p, meta)
    keys, hashes, skipped = _entries(meta_p, meta, n)
    if verify:
        digest = fio.file_sha256(tens_p)
        if digest != meta.get("tensors_sha256"):
            raise IndexFileError(f"{tens_p}: checksum mismatch (file {digest[:12]}..., "
                                 f"index.json says {str(meta.get('tensors_sha256'))[:12]}...): "
                                 f"the file is corrupt or was changed; rebuild the index")
    t = _load_tensors(tens_p, _expect(cfg, n), STAT_RANGES, mmap)
    sha = meta.get("tensors_sha256")
    return SingleFile(cfg, t["thumbs"], t["mu"], t["sigma"], keys, hashes, skipped,
                      sha if isinstance(sha, str) else None)


# -- version 2: manifest and shards -------------------------------------------------------
@dataclass(frozen=True)
class ShardEntry:
    """One shard as the manifest lists it."""
    name: str
    count: int
    tensors_sha256: str | None
    tensors_bytes: int
    meta_sha256: str
    meta_bytes: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Manifest:
    """A checked version-2 index.json."""
    config: IndexConfig
    count: int
    shard_size: int
    embedding: dict
    shards: tuple           # ShardEntry, in global order


def shard_files(root: Path, name: str) -> tuple[Path, Path]:
    """(tensor file, JSON file) of a shard."""
    return root / SHARD_DIR / f"{name}.safetensors", root / SHARD_DIR / f"{name}.json"


def shard_blobs(cfg: IndexConfig, thumbs: torch.Tensor, mu: torch.Tensor,
                sigma: torch.Tensor, keys: list, hashes: list, skipped: list):
    """The bytes of a shard pair (tensor file, JSON): deterministic, so equal inputs give
    equal files whatever process, thread count or batch split made them."""
    from safetensors.torch import save

    emb = prefilter.embed_db(thumbs, EMBEDDING["thumb"]) if len(keys) else \
        torch.zeros(0, embed_dim(cfg), dtype=torch.float32)
    tensors = save({"thumbs": thumbs.contiguous(), "mu": mu.float().contiguous(),
                    "sigma": sigma.float().contiguous(), "embed": emb.contiguous()})
    meta = {"format": SHARD_FORMAT, "version": SHARD_VERSION, "config": cfg.to_dict(),
            "embedding": EMBEDDING, "count": len(keys),
            "tensors_sha256": hashlib.sha256(tensors).hexdigest(),
            "keys": keys, "hashes": hashes, "skipped": skipped}
    return tensors, json.dumps(meta).encode("utf-8")


def write_shard(root: Path, number: int, cfg: IndexConfig, thumbs, mu, sigma, keys, hashes,
                skipped) -> ShardEntry:
    """Write shard ``number``'s file pair under ``root/shards`` (atomically, each file);
    returns its manifest entry."""
    tensors, meta = shard_blobs(cfg, thumbs, mu, sigma, keys, hashes, skipped)
    name = shard_name(number)
    tens_p, meta_p = shard_files(root, name)
    fio.atomic_write_bytes(tens_p, tensors)
    fio.atomic_write_bytes(meta_p, meta)
    return ShardEntry(name, len(keys), hashlib.sha256(tensors).hexdigest(), len(tensors),
                      hashlib.sha256(meta).hexdigest(), len(meta))


def write_manifest(root: Path, cfg: IndexConfig, shards, shard_size: int,
                   embedding: dict | None = None) -> None:
    """Commit a sharded index: one atomic write of ``root/index.json``."""
    meta = {"format": FORMAT, "version": SHARDED_VERSION, "config": cfg.to_dict(),
            "embedding": EMBEDDING if embedding is None else embedding,
            "count": sum(s.count for s in shards), "shard_size": shard_size, "shards": [s.to_dict() for s in shards]}
    fio.atomic_write_text(root / META_FILE, json.dumps(meta, indent=1))


def _sha(v) -> bool:
    return isinstance(v, str) and re.fullmatch(r"[0-9a-f]{64}", v) is not None


def _size(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 0


def read_manifest(meta_p: Path, meta: dict) -> Manifest:
    """The checked manifest of a version-2 index.json (format and version checked)."""
    cfg = _config(meta_p, meta)
    n = _count(meta_p, meta)
    size = meta.get("shard_size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 1:
        raise IndexFileError(f"{meta_p}: shard_size must be a positive integer, got {size!r}")
    emb = meta.get("embedding")
    if not isinstance(emb, dict):
        raise IndexFileError(f"{meta_p}: embedding must be a JSON object, got {emb!r}")
    raw = meta.get("shards")
    if not isinstance(raw, list) or not raw:
        raise IndexFileError(f"{meta_p}: shards must be a non-empty list, got "
                             f"{type(raw).__name__}")
    shards, names = [], set()
    for i, s in enumerate(raw):
        ok = isinstance(s, dict) and isinstance(s.get("name"), str) \
            and SHARD_NAME.fullmatch(s["name"]) is not None \
            and all(_size(s.get(k)) for k in ("count", "tensors_bytes", "meta_bytes")) \
            and _sha(s.get("tensors_sha256")) and _sha(s.get("meta_sha256"))
        if not ok:
            raise IndexFileError(f"{meta_p}: shard {i} of the manifest is malformed (needs "
                                 "name shard-NNNNNN, count, tensors_sha256, tensors_bytes, "
                                 f"meta_sha256, meta_bytes): {str(s)[:200]}")
        if s["name"] in names:
            raise IndexFileError(f"{meta_p}: shard {s['name']} is listed twice")
        names.add(s["name"])
        shards.append(ShardEntry(**{k: s[k] for k in ShardEntry.__dataclass_fields__}))
    if sum(s.count for s in shards) != n:
        raise IndexFileError(f"{meta_p}: the shards hold {sum(s.count for s in shards)} "
                             f"images but count says {n}")
    return Manifest(cfg, n, size, emb, tuple(shards))


def _check_file(p: Path, what: str, size: int, sha: str, verify: bool) -> None:
    """A shard file exists, has the manifest's size and (verify) its SHA-256."""
    if not p.is_file():
        raise IndexFileError(f"{p}: missing ({what}): the index is incomplete; restore "
                             f"the file or {REBUILD}")
    got = p.stat().st_size
    if got != size:
        raise IndexFileError(f"{p}: {got} bytes but the manifest says {size} ({what}): "
                             f"the file was truncated or changed; {REBUILD}")
    if verify:
        digest = fio.file_sha256(p)
        if digest != sha:
            raise IndexFileError(f"{p}: checksum mismatch (file {digest[:12]}..., the "
                                 f"manifest says {sha[:12]}...; {what}): the file is "
                                 f"corrupt or was changed; {REBUILD}")


def check_shard_files(root: Path, entry: ShardEntry, what: str, verify: bool,
                      tensors: bool = True, meta: bool = True) -> None:
    """Existence, size and (verify) checksum of a shard's files, without reading them
    into tensors."""
    tens_p, meta_p = shard_files(root, entry.name)
    if tensors:
        _check_file(tens_p, what, entry.tensors_bytes, entry.tensors_sha256, verify)
    if meta:
        _check_file(meta_p, what, entry.meta_bytes, entry.meta_sha256, verify)


def read_shard_tensors(root: Path, entry: ShardEntry, cfg: IndexConfig, what: str,
                       mmap: bool, verify: bool) -> dict:
    """A shard's tensors {thumbs, mu, sigma, embed}, checked (see module docstring)."""
    check_shard_files(root, entry, what, verify, meta=False)
    tens_p = shard_files(root, entry.name)[0]
    expect = {**_expect(cfg, entry.count),
              "embed": ((entry.count, embed_dim(cfg)), torch.float32)}
    # Embeddings are L2-normalised (or zero): entries in [-1, 1] up to rounding.
    return _load_tensors(tens_p, expect, STAT_RANGES + (("embed", -1.001, 1.001),), mmap)


def read_shard_meta(root: Path, entry: ShardEntry, cfg: IndexConfig, what: str,
                    verify: bool):
    """(keys, hashes, skipped) of a shard, checked against the manifest."""
    check_shard_files(root, entry, what, verify, tensors=False)
    meta_p = shard_files(root, entry.name)[1]
    meta = read_json(meta_p, "a frerec_fast index shard")
    if meta.get("format") != SHARD_FORMAT or meta.get("version") != SHARD_VERSION:
        raise IndexFileError(f"{meta_p}: not a version-{SHARD_VERSION} index shard (format "
                             f"{meta.get('format')!r}, version {meta.get('version')!r}); "
                             f"{REBUILD}")
    n = _count(meta_p, meta, least=0)
    if n != entry.count:
        raise IndexFileError(f"{meta_p}: holds {n} images but the manifest says "
                             f"{entry.count} ({what})")
    if _config(meta_p, meta) != cfg:
        raise IndexFileError(f"{meta_p}: built with another config than the index ({what})")
    if meta.get("tensors_sha256") != entry.tensors_sha256:
        raise IndexFileError(f"{meta_p}: names another tensor file than the manifest does "
                             f"({what}); {REBUILD}")
    return _entries(meta_p, meta, n)
