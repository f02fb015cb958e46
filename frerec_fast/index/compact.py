"""``compact_index``: a sharded index's shards rewritten as full shards.

Every append adds shards of its own files only, so an index grown by many small appends
holds many small shards (each a file pair to open, check and map, and a per-shard
step of every search). Compaction regroups the index's files, in index order, into
shards of ``shard_size`` files, exactly as a build of the same files at once would
group them (a file's images stay together; unreadable files recorded as skipped count
as files, as in a build), so the result is that build's shards byte for byte (only
the shard names, which number on, differ) and every search answers as before.

**Crash safety.** Old shard files are never changed. The new shards are written under
new numbers (each file atomically), then the new manifest in one atomic write, and only
then are the shard files it no longer lists removed. A kill before the manifest write
leaves the old index (plus unlisted new files, removed by the next build, append or
compaction); a kill after it leaves the new one (plus unlisted old files, likewise).
Either way the index loads and answers.

**Readers.** Unlike an append, a compaction removes shard files: a process that opened
the old manifest and has not yet mapped a shard it then needs gets ``IndexFileError``
("missing"); shards it already mapped stay readable (on POSIX an unlinked file lives
while mapped). Compact while no job reads the index, or reopen it afterwards.

Every old shard is checked in full first (sizes, SHA-256, shapes, value ranges, keys):
a damaged or tampered shard stops the compaction with ``IndexFileError`` naming it,
before anything is written. One build, append or compaction per index at a time (the
build lock).
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

from . import files as ifiles
from .build import _key_base, _Lock, _remove_unlisted
from .config import IndexFileError
from .realindex import RealIndex, ShardedIndex

log = logging.getLogger("frerec_fast")


def _files_of(keys: list, skipped: list) -> list:
    """A shard's files in build order, each (relative path, image rows in the shard,
    skipped entry or None). A shard holds a run of the sorted scan, so sorting its
    file names restores that order (``fio.scan_images`` sorts plain POSIX paths)."""
    rows: dict[str, list] = {}
    for j, k in enumerate(keys):
        rows.setdefault(_key_base(k), []).append(j)
    skip = {s["path"]: s for s in skipped}
    names = sorted(set(rows) | set(skip))
    return [(n, rows.get(n, []), skip.get(n)) for n in names]


def compact_index(path: str | os.PathLike, shard_size: int | None = None) -> ShardedIndex:
    """Rewrite the sharded index at ``path`` into shards of ``shard_size`` files
    (default: the index's own shard size; a new size is recorded in the manifest and
    kept by later appends). Shards already equal to a shard of the new grouping are kept
    as they are; if all are, nothing is written (shard files no manifest lists, left by
    an interrupted build or compaction, are removed either way). Returns the index,
    opened lazily.

    Raises IndexFileError (naming the file) for a damaged or tampered shard and for a
    single-file index (nothing to compact).
    """
    root = Path(path)
    if shard_size is not None and (isinstance(shard_size, bool) or int(shard_size) < 1):
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    if not (root / ifiles.META_FILE).is_file():
        raise FileNotFoundError(f"{root / ifiles.META_FILE}: no index there")
    with _Lock(root):
        index = RealIndex.load(root, verify="eager")  # every checksum, before any write
        if not isinstance(index, ShardedIndex):
            raise IndexFileError(f"{root / ifiles.META_FILE}: a single-file index "
                                 "(version 1) has no shards to compact")
        m = index.manifest
        size = int(shard_size or m.shard_size)
        # Every file of the index in order: (old shard, its files), then new groups.
        files, old_groups = [], {}
        for i, e in enumerate(m.shards):
            keys, _, skipped = index._shard_meta(i)
            mine = _files_of(keys, skipped)
            files += [(i, f) for f in mine]
            old_groups[tuple(f[0] for f in mine)] = e
        groups = [files[a:a + size] for a in range(0, len(files), size)]
        if m.embedding != ifiles.EMBEDDING:
            # Shards of other embedding settings: every one is rewritten (a kept one
            # would carry stale embeddings under a manifest that says they are current).
            old_groups = {}
        elif size == m.shard_size and len(groups) == len(m.shards) and all(
                tuple(f[0] for _, f in g) in old_groups for g in groups):
            # Already compact: only the leftovers of an interrupted step (shard files
            # no manifest lists) are removed.
            _remove_unlisted(root, {e.name for e in m.shards}, single=False)
            return index
        number = 1 + max((int(e.name.split("-")[1]) for e in m.shards), default=-1)
        entries = []
        for g in groups:
            names = tuple(f[0] for _, f in g)
            if names in old_groups:  # an old shard holds exactly this group: keep it
                entries.append(old_groups[names])
                continue
            entries.append(_write_group(index, root, number, g))
            number += 1
        ifiles.write_manifest(root, index.config, entries, size, ifiles.EMBEDDING)
        _remove_unlisted(root, {e.name for e in entries}, single=False)
        log.info("compacted %s: %d shards -> %d", root, len(m.shards), len(entries))
        return ShardedIndex.open(root)


def _write_group(index: ShardedIndex, root: Path, number: int, group: list):
    """One new shard from a group of (old shard, (file, rows, skipped)) in index order:
    its images' tensors and keys gathered from the old shards (memory-mapped), written by
    the same shard writer as a build (so its prefilter embeddings are recomputed the way
    a build computes them)."""
    thumbs, mu, sigma, keys, hashes, skipped = [], [], [], [], [], []
    for i, (name, rows, skip) in group:
        if skip is not None:
            skipped.append(skip)
        if not rows:
            continue
        t = index.shard(i)
        k, h, _ = index._shard_meta(i)
        sel = torch.tensor(rows, dtype=torch.long)
        thumbs.append(t["thumbs"][sel])
        mu.append(t["mu"][sel])
        sigma.append(t["sigma"][sel])
        keys += [k[r] for r in rows]
        hashes += [h[r] for r in rows]
    cfg = index.config
    if thumbs:
        th, m_, s_ = torch.cat(thumbs), torch.cat(mu), torch.cat(sigma)
    else:
        th = torch.zeros(0, 1, *cfg.retrieval_size, dtype=torch.float16)
        m_ = s_ = torch.zeros(0, cfg.channels)
    return ifiles.write_shard(root, number, cfg, th, m_, s_, keys, hashes, skipped)
