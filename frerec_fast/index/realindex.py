"""The loaded index: ``RealIndex`` (all tensors at hand: built in memory, or a
version-1 file pair) and ``ShardedIndex`` (a version-2 index, opened lazily: only the
manifest is read at open, each shard is checked and memory-mapped the first time a
query or a look-up needs it). Both answer ``neighbours`` with the same results (method
§4) and can be passed anywhere an index is taken."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from .. import prefilter
from ..ops import ssim_topk
from ..reference.checks import checks_skipped, inputs_checked_upstream, require_finite
from . import files as ifiles
from .config import IndexConfig, IndexFileError, thumbnails
from .search import check_exclude, exact_topk, prefilter_topk

log = logging.getLogger("frerec_fast")

VERIFY_MODES = ("lazy", True, "eager", False)


@dataclass
class Neighbours:
    """Top-K neighbours of a query batch and their statistics, ready for ``shr``.

    ids, scores: [B, K]; mu_bank, sigma_bank: [B, K, C].
    """
    ids: torch.Tensor
    scores: torch.Tensor
    mu_bank: torch.Tensor
    sigma_bank: torch.Tensor


def _check_mode(mode: str) -> None:
    if mode not in ("exact", "prefilter"):
        raise ValueError(f"mode {mode!r} is not available; use mode='exact' or 'prefilter'")


@dataclass
class RealIndex:
    """A real-image index with every tensor at hand (see the package docstring)."""
    config: IndexConfig
    thumbs: torch.Tensor          # [N, 1, h, w] float16
    mu: torch.Tensor              # [N, C] float32
    sigma: torch.Tensor           # [N, C] float32
    keys: list[str]
    hashes: list[str]
    skipped: list[dict] = field(default_factory=list)
    path: Path | None = None

    def __post_init__(self):
        self._positions = {k: i for i, k in enumerate(self.keys)}
        # Per-device copies of the tensors, made once: a GPU job must not re-upload the
        # whole index for every batch. Not a dataclass field, so dataclasses.replace()
        # (which may swap a tensor) starts with an empty cache and no file checksum.
        self._device_copies: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        self._embeddings: dict[str, torch.Tensor] = {}
        self._tensors_sha256: str | None = None

    def tensors_on(self, device: torch.device | str):
        """(thumbs, mu, sigma) on ``device``, copied once and cached (CPU: no copy)."""
        key = str(torch.device(device))
        got = self._device_copies.get(key)
        if got is None:
            with torch.inference_mode(False):  # cached: must outlive an inference-mode caller
                got = (self.thumbs.to(device), self.mu.to(device), self.sigma.to(device))
            self._device_copies[key] = got
        return got

    def stats_on(self, device: torch.device | str):
        """(mu, sigma) [N, C] on ``device``, cached."""
        return self.tensors_on(device)[1:]

    def embedding_on(self, device: torch.device | str) -> torch.Tensor:
        """The prefilter embeddings of the thumbnails [N, t * t] on ``device``, computed
        once and cached (``prefilter.embed_db``)."""
        key = str(torch.device(device))
        got = self._embeddings.get(key)
        if got is None:
            with torch.inference_mode(False):
                got = prefilter.embed_db(self.tensors_on(device)[0], device=device)
            self._embeddings[key] = got
        return got

    def thumbs_at(self, ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Thumbnails of the given positions [U, 1, h, w] float16 (on CPU)."""
        return self.thumbs[torch.as_tensor(ids, dtype=torch.long).cpu()]

    def __len__(self) -> int:
        return len(self.keys)

    def position(self, key: str) -> int:
        """Index position of a real image by its key (relative path), or -1."""
        return self._positions.get(key, -1)

    def thumbnails(self, x: torch.Tensor) -> torch.Tensor:
        """x: [B, C, H, W] -> [B, 1, h, w] float32 at this index's retrieval size."""
        return thumbnails(x, self.config.retrieval_size)

    def digest(self) -> str:
        """What identifies the index's data: the SHA-256 of its tensor file when it was
        saved or loaded as one, else a hash of its config, tensors and keys."""
        if self._tensors_sha256 is not None:
            return self._tensors_sha256
        h = hashlib.sha256(json.dumps(self.config.to_dict(), sort_keys=True).encode())
        for t in (self.thumbs, self.mu, self.sigma):
            h.update(t.detach().cpu().contiguous().numpy().tobytes())
        h.update("\x1f".join(self.keys).encode("utf-8", "surrogateescape"))  # non-UTF-8 names
        return h.hexdigest()

    def neighbours(self, queries: torch.Tensor, k: int = 200,
                   exclude: torch.Tensor | Sequence[int] | None = None,
                   backend: str = "auto", mode: str = "exact",
                   candidates: int | None = None) -> Neighbours:
        """Top-k real neighbours by SSIM of each query and their band statistics.

        queries: [B, C, H, W] float in [0, 1] (any size; thumbnailed here).
        exclude: optional [B] index positions to skip (self-exclusion; -1 for none).
        mode: "exact" or "prefilter" (``candidates`` short-listed per query by the
        cached embeddings, then exact SSIM; see ``frerec_fast.prefilter``).
        Returns: Neighbours with ids, scores [B, k'] and banks [B, k', C],
        k' = min(k, N) (N - 1 with exclude).
        """
        q = self.thumbnails(queries)
        if exclude is not None:
            exclude = torch.as_tensor(exclude, dtype=torch.long, device=q.device)
        thumbs, mu, sigma = self.tensors_on(q.device)
        extra = {}
        if mode == "prefilter":
            extra = {"candidates": candidates, "db_embedding": self.embedding_on(q.device)}
        scores, ids = ssim_topk(q, thumbs, k, exclude=exclude, mode=mode, backend=backend,
                                **extra)
        # Gather on the queries' device: no round trip of the ids through the host.
        return Neighbours(ids, scores, mu[ids], sigma[ids])

    # -- persistence -------------------------------------------------------
    def save(self, out: str | os.PathLike) -> Path:
        """Write ``out/index.safetensors`` and ``out/index.json`` atomically (the
        version-1 layout; ``build_index`` writes sharded indexes)."""
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self._tensors_sha256 = ifiles.write_single(out, self.config, self.thumbs, self.mu,
                                                   self.sigma, self.keys, self.hashes,
                                                   self.skipped)
        self.path = out
        return out

    @classmethod
    def load(cls, path: str | os.PathLike, mmap: bool = True,
             verify: bool | str = "lazy") -> "RealIndex":
        """Load an index directory (or its index.json / index.safetensors), either layout.

        A version-1 index (one file pair) is read at once: mmap=True maps the tensor
        file (pages load on demand), mmap=False copies it into memory; its SHA-256 is
        checked unless verify=False. A sharded index opens as a ``ShardedIndex``
        (``ShardedIndex.open``): only its manifest is read now; verify="lazy" (default)
        checks each shard's files the first time they are used, True (or "eager") all of
        them now, False never.

        The files are untrusted input: never unpickled (safetensors and JSON only), and
        every field is checked (types, config ranges, tensor names, dtypes and shapes,
        finite values, sigma >= 0, thumbnails in [0, 1], unique keys) before use, so a
        damaged or forged index raises IndexFileError saying what is wrong.
        """
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        path = Path(path)
        root = path.parent if path.is_file() else path
        meta_p = root / ifiles.META_FILE
        if not meta_p.is_file():
            raise IndexFileError(f"{meta_p}: missing; build an index with "
                                 "`frerec index REAL_DIR OUT`")
        meta = ifiles.read_json(meta_p)
        if ifiles.check_version(meta_p, meta) == ifiles.SHARDED_VERSION:
            return ShardedIndex(root, ifiles.read_manifest(meta_p, meta), mmap, verify)
        f = ifiles.read_single(root, meta, mmap, verify is not False)
        index = RealIndex(f.config, f.thumbs, f.mu, f.sigma, f.keys, f.hashes, f.skipped, root)
        index._tensors_sha256 = f.tensors_sha256
        return index


class ShardedIndex(RealIndex):
    """A sharded (version-2) index, opened lazily (see ``frerec_fast.index.files``).

    Opening reads the manifest only. A shard's tensor file is checked (size, SHA-256 with
    verify, names, shapes, value ranges) and memory-mapped the first time a search or a
    look-up reaches it; its JSON (keys, hashes) the first time ``keys``, ``hashes``,
    ``skipped`` or ``position`` is asked for. ``shards_loaded`` says which tensor files
    are open. ``neighbours`` searches shard by shard (``frerec_fast.index.search``) and
    returns exactly what the same images as one ``RealIndex`` return.

    ``thumbs`` and ``tensors_on`` concatenate every shard into one tensor (a copy of
    ~8 KiB per image at 64x64): the searches never do; use ``thumbs_at`` for a few rows.
    """

    def __init__(self, root: Path, manifest: "ifiles.Manifest", mmap: bool = True,
                 verify: bool | str = "lazy"):
        if verify not in VERIFY_MODES:
            raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
        self.config = manifest.config
        self.path = Path(root)
        self.manifest = manifest
        self._mmap = mmap
        self._verify = verify is not False
        starts, s = [], 0
        for e in manifest.shards:
            starts.append(s)
            s += e.count
        self._starts = starts
        self._starts_t = torch.tensor(starts, dtype=torch.long)
        self._tensors: dict[int, dict] = {}
        self._metas: dict[int, tuple] = {}
        self._verified: set[tuple[int, str]] = set()
        self._on_device: dict[tuple[int, str], dict] = {}
        self._stats: dict[str, tuple] = {}
        self._device_copies: dict[str, tuple] = {}
        self._tensors_sha256 = None
        self._positions_map: dict | None = None
        self._lock = threading.RLock()
        self._embedding_stale = manifest.embedding != ifiles.EMBEDDING
        if verify in (True, "eager"):
            for i, e in enumerate(manifest.shards):
                ifiles.check_shard_files(self.path, e, self._what(i), verify=True)
                self._verified |= {(i, "tensors"), (i, "meta")}

    @classmethod
    def open(cls, path: str | os.PathLike, mmap: bool = True,
             verify: bool | str = "lazy") -> "ShardedIndex":
        """Open a sharded index directory (reads its manifest only; see ``load``)."""
        index = RealIndex.load(path, mmap, verify)
        if not isinstance(index, ShardedIndex):
            raise IndexFileError(f"{index.path / ifiles.META_FILE}: a single-file index "
                                 "(version 1), not a sharded one: load it with "
                                 "RealIndex.load, or convert it by appending to it "
                                 "(build_index(..., append=True))")
        return index

    __eq__ = object.__eq__
    __hash__ = object.__hash__

    def __repr__(self) -> str:
        return (f"ShardedIndex({str(self.path)!r}, {len(self)} images in "
                f"{len(self.manifest.shards)} shards, {len(self._tensors)} loaded)")

    # -- shards -----------------------------------------------------------------------
    def _what(self, i: int) -> str:
        return (f"shard {i + 1} of {len(self.manifest.shards)} listed in "
                f"{self.path / ifiles.META_FILE}")

    @property
    def shard_starts(self) -> tuple[int, ...]:
        """Global position of each shard's first image."""
        return tuple(self._starts)

    @property
    def shards_loaded(self) -> tuple[int, ...]:
        """Numbers (manifest order) of the shards whose tensor file is open."""
        return tuple(sorted(self._tensors))

    def shard(self, i: int) -> dict:
        """Shard ``i``'s tensors {thumbs, mu, sigma, embed} (CPU), checked and mapped
        on first use."""
        got = self._tensors.get(i)
        if got is None:
            with self._lock:
                got = self._tensors.get(i)
                if got is None:
                    e = self.manifest.shards[i]
                    got = ifiles.read_shard_tensors(
                        self.path, e, self.config, self._what(i), self._mmap,
                        self._verify and (i, "tensors") not in self._verified)
                    if self._embedding_stale:  # made by another version's embedding
                        log.warning("%s: stored prefilter embeddings are of other settings; "
                                    "recomputing them", self._what(i))
                        got["embed"] = prefilter.embed_db(got["thumbs"])
                    self._tensors[i] = got
        return got

    def _shard_meta(self, i: int) -> tuple:
        got = self._metas.get(i)
        if got is None:
            with self._lock:
                got = self._metas.get(i)
                if got is None:
                    got = ifiles.read_shard_meta(
                        self.path, self.manifest.shards[i], self.config, self._what(i),
                        self._verify and (i, "meta") not in self._verified)
                    self._metas[i] = got
        return got

    def _shard_on(self, i: int, device: torch.device) -> dict:
        if device.type == "cpu":
            return self.shard(i)
        key = (i, str(device))
        got = self._on_device.get(key)
        if got is None:
            with torch.inference_mode(False):
                got = {k: v.to(device) for k, v in self.shard(i).items()
                       if k in ("thumbs", "embed")}
            self._on_device[key] = got
        return got

    def _parts(self, name: str, device: torch.device):
        for i, e in enumerate(self.manifest.shards):
            if e.count:
                yield self._starts[i], self._shard_on(i, device)[name]

    # -- the RealIndex interface ------------------------------------------------------
    def __len__(self) -> int:
        return self.manifest.count

    def _cat(self, name: str) -> torch.Tensor:
        return torch.cat([self.shard(i)[name] for i in range(len(self.manifest.shards))])

    @property
    def thumbs(self) -> torch.Tensor:
        """Every thumbnail [N, 1, h, w] float16: a concatenated copy (see class doc)."""
        return self._cat("thumbs")

    @property
    def mu(self) -> torch.Tensor:
        return self.stats_on("cpu")[0]

    @property
    def sigma(self) -> torch.Tensor:
        return self.stats_on("cpu")[1]

    def _meta_list(self, j: int) -> list:
        out = []
        for i in range(len(self.manifest.shards)):
            out.extend(self._shard_meta(i)[j])
        return out

    @property
    def keys(self) -> list[str]:
        return self._meta_list(0)

    @property
    def hashes(self) -> list[str]:
        return self._meta_list(1)

    @property
    def skipped(self) -> list[dict]:
        return self._meta_list(2)

    def position(self, key: str) -> int:
        if self._positions_map is None:
            keys = self.keys
            if len(set(keys)) != len(keys):
                raise IndexFileError(f"{self.path / ifiles.META_FILE}: keys are not unique "
                                     "across shards (one entry per image)")
            self._positions_map = {k: i for i, k in enumerate(keys)}
        return self._positions_map.get(key, -1)

    def stats_on(self, device: torch.device | str):
        key = str(torch.device(device))
        got = self._stats.get(key)
        if got is None:
            with torch.inference_mode(False):
                got = (self._cat("mu").to(device), self._cat("sigma").to(device))
            self._stats[key] = got
        return got

    def tensors_on(self, device: torch.device | str):
        """(thumbs, mu, sigma) on ``device``: the thumbnails concatenated (a copy; the
        searches do not use this), cached."""
        key = str(torch.device(device))
        got = self._device_copies.get(key)
        if got is None:
            with torch.inference_mode(False):
                got = (self.thumbs.to(device), *self.stats_on(device))
            self._device_copies[key] = got
        return got

    def embedding_on(self, device: torch.device | str) -> torch.Tensor:
        """The stored prefilter embeddings of every shard [N, t * t] on ``device``."""
        dev = torch.device(device)
        return torch.cat([self._shard_on(i, dev)["embed"]
                          for i in range(len(self.manifest.shards))])

    def thumbs_at(self, ids: torch.Tensor | Sequence[int]) -> torch.Tensor:
        """Thumbnails of the given global positions [U, 1, h, w] float16 (CPU), read
        from their shards only."""
        ids = torch.as_tensor(ids, dtype=torch.long).cpu().reshape(-1)
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= len(self)):
            raise IndexError(f"positions must be in 0..{len(self) - 1}")
        out = torch.empty(ids.shape[0], 1, *self.config.retrieval_size, dtype=torch.float16)
        owner = torch.searchsorted(self._starts_t, ids, right=True) - 1
        for i in torch.unique(owner).tolist():
            sel = owner == i
            out[sel] = self.shard(i)["thumbs"][ids[sel] - self._starts[i]]
        return out

    def digest(self) -> str:
        """A hash of the config, the embedding settings and every shard's count and
        checksums (as the manifest lists them)."""
        m = self.manifest
        blob = json.dumps({"config": m.config.to_dict(), "embedding": m.embedding,
                           "shards": [[e.count, e.tensors_sha256, e.meta_sha256]
                                      for e in m.shards]}, sort_keys=True)
        return "sharded:" + hashlib.sha256(blob.encode()).hexdigest()

    def neighbours(self, queries: torch.Tensor, k: int = 200,
                   exclude: torch.Tensor | Sequence[int] | None = None,
                   backend: str = "auto", mode: str = "exact",
                   candidates: int | None = None) -> Neighbours:
        """As ``RealIndex.neighbours``, shard by shard (``frerec_fast.index.search``):
        the same ids (and, per backend, the same score bits) as the unsharded index."""
        _check_mode(mode)
        q = self.thumbnails(queries)
        dev = q.device
        if checks_skipped():
            ex = None if exclude is None else torch.as_tensor(exclude, dtype=torch.long,
                                                              device=dev).reshape(-1)
        else:
            require_finite(q=q)
            ex = check_exclude(exclude, q.shape[0], len(self), dev)
        with inputs_checked_upstream():  # the shards were checked when they were loaded
            if mode == "exact":
                scores, ids = exact_topk(q, self._parts("thumbs", dev), len(self), k, ex,
                                         backend)
            else:
                scores, ids = prefilter_topk(q, self._parts("embed", dev), self.thumbs_at,
                                             len(self), k, ex, candidates, backend)
        mu, sigma = self.stats_on(dev)
        return Neighbours(ids, scores, mu[ids], sigma[ids])

    def save(self, out: str | os.PathLike) -> Path:
        """Copy the index (manifest and shard files, each checked first) to ``out``."""
        out = Path(out)
        if out.resolve() == self.path.resolve():
            return out
        (out / ifiles.SHARD_DIR).mkdir(parents=True, exist_ok=True)
        for i, e in enumerate(self.manifest.shards):
            ifiles.check_shard_files(self.path, e, self._what(i), verify=True)
            for p in ifiles.shard_files(self.path, e.name):
                shutil.copyfile(p, out / ifiles.SHARD_DIR / p.name)
        ifiles.write_manifest(out, self.config, self.manifest.shards, self.manifest.shard_size,
                              self.manifest.embedding)
        return out
