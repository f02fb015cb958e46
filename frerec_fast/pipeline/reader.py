"""The reader: which files a run takes, decoding them in a bounded thread pool, and
cutting each decoded image into work-size tiles (a ``Job``) for the calibrator."""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Sequence

import torch

from .. import io as fio
from ..channels import to_channels
from ..index import IndexConfig, RealIndex
from ..tiles import cut
from .record import checked_files


def input_files(src: Path, files: Sequence[str] | None,
                follow_symlinks: bool = False) -> tuple[list[str], dict[str, str]]:
    """The run's files, relative to ``src`` and sorted: every image under it (symbolic
    links by ``fio.scan_tree``'s policy), or the listed ``files`` (refused when outside
    ``src``). Returns (files, {path: why it was left out})."""
    if files is not None:
        return checked_files(src, files, follow_symlinks), {}
    return fio.scan_tree(src, follow_symlinks)


@dataclass
class Read:
    """One file's decode outcome. done: the manifest already has it (nothing decoded);
    error: why it cannot be read (items is None)."""
    rel: str
    digest: str | None
    items: list | None          # list[fio.Decoded]
    seconds: float
    done: bool = False
    error: str | None = None


def _read_one(src: Path, rel: str, is_done: Callable[[str, str], bool]) -> Read:
    t0 = time.perf_counter()
    digest = None
    try:
        digest = fio.file_sha256(src / rel)
        if is_done(rel, digest):
            return Read(rel, digest, None, time.perf_counter() - t0, done=True)
        return Read(rel, digest, fio.read_images(src, rel), time.perf_counter() - t0)
    except FileNotFoundError:
        return Read(rel, None, None, time.perf_counter() - t0,
                    error=f"{src / rel}: file not found (removed or renamed after the scan?)")
    except (fio.ImageReadError, ImportError, OSError) as e:
        return Read(rel, None, None, time.perf_counter() - t0, error=str(e))
    except Exception as e:  # a decoder's own error type: still this file's problem only
        return Read(rel, None, None, time.perf_counter() - t0,
                    error=f"{src / rel}: cannot decode ({type(e).__name__}: {e})")


def read_files(src: Path, rels: Sequence[str], pool: ThreadPoolExecutor, prefetch: int,
               is_done: Callable[[str, str], bool]) -> Iterator[Read]:
    """Decode ``rels`` on ``pool``, at most ``prefetch`` files ahead, in input order.
    is_done(rel, sha256): True when the manifest says the file needs no work."""
    ahead: deque[Future] = deque()
    it = iter(rels)
    for rel in it:
        ahead.append(pool.submit(_read_one, src, rel, is_done))
        if len(ahead) >= prefetch:
            break
    while ahead:
        got = ahead.popleft().result()
        nxt = next(it, None)
        if nxt is not None:
            ahead.append(pool.submit(_read_one, src, nxt, is_done))
        yield got


@dataclass
class Job:
    """One input file in flight: its decoded images, their tiles and finished tiles."""
    rel: str
    where: str                       # the file's path, for messages
    digest: str
    items: list                      # list[fio.Decoded]
    exclude: list                    # per item: its own index position (self-exclusion) or -1
    tiles: list = field(default_factory=list)     # per item: [T, C, h, w] model input
    offsets: list = field(default_factory=list)   # per item: tile offsets
    out: list = field(default_factory=list)       # per item: [T, C, h, w] results (filled)
    remaining: int = 0
    failed: bool = False             # a compute error was recorded: drop its remaining tiles

    @property
    def n_tiles(self) -> int:
        return sum(len(o) for o in self.offsets)


class SelfExclusion:
    """method §6 self-exclusion: the index entry of a real image being calibrated.

    By key and file hash (as for each slice of an indexed NIfTI volume), else the first
    entry with the same file content (a real image copied under another name). Off
    (always -1) unless ``enabled``.
    """

    def __init__(self, index: RealIndex, enabled: bool):
        self.index, self.enabled = index, enabled
        self.by_hash: dict[str, int] = {}
        if enabled:
            for i, h in enumerate(index.hashes):
                self.by_hash.setdefault(h, i)

    def __call__(self, key: str, digest: str) -> int:
        if not self.enabled:
            return -1
        pos = self.index.position(key)
        if pos >= 0 and self.index.hashes[pos] == digest:
            return pos
        return -1 if "#z=" in key else self.by_hash.get(digest, -1)


def make_job(src: Path, read: Read, cfg: IndexConfig, own: SelfExclusion,
             overlap: float) -> Job:
    """The tiles of a decoded file at the index's working size and channels; a file
    smaller than the working size, or colour against a grey index, raises ValueError."""
    where = str(src / read.rel)
    job = Job(read.rel, where, read.digest, read.items,
              [own(d.key, read.digest) for d in read.items])
    h0, w0 = cfg.work_size
    for d in read.items:
        h, w = d.pixels.shape[-2:]
        if h < h0 or w < w0:
            raise ValueError(f"{where}: image is {h}x{w}, smaller than the working size "
                             f"{h0}x{w0} of the index")
        px = to_channels(torch.from_numpy(d.pixels)[None], cfg.channels, strict=where)[0]
        tiles, offsets = cut(px, (h0, w0), overlap)
        job.tiles.append(tiles)
        job.offsets.append(offsets)
        job.out.append([None] * tiles.shape[0])
        job.remaining += tiles.shape[0]
    return job
