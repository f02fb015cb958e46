"""Building an index: ``build_index`` (one file pair or shards, in parallel processes,
appendable) and its unit of work, ``build_shard``.

**Layout.** ``build_index`` writes a sharded index (``frerec_fast.index.files``) when
asked for one (``shard_size=``, ``append=True``) or when ``real_dir`` holds more than
``DEFAULT_SHARD_SIZE`` (65,536) image files; otherwise the single file pair of earlier
versions, which every reader of a sharded index also reads. A shard holds the images of
``shard_size`` consecutive files of the sorted scan (the last shard fewer; a NIfTI
volume puts all its slices into its file's shard).

**Parallel build.** The configuration is fixed first (from the arguments, or the first
readable image, or the existing index when appending); then every shard is built from
its list of files by ``build_shard``, a plain function, in ``workers`` processes
(``concurrent.futures.ProcessPoolExecutor``, spawned); the manifest is written last, in
one atomic write. A shard's bytes depend only on its files and the configuration, not
on which process, thread count or batch split made it (tested byte for byte).

**Append.** ``append=True`` builds shards from the new files only, numbered after the
existing ones, and commits a new manifest listing old and new shards: old shard files
are never rewritten, and a reader that opened the old manifest keeps a consistent view.
Keys (paths relative to ``real_dir``) must stay unique: files whose key is already in
the index are refused. Appending to a single-file index converts it (its entries become
the first shards; its tensor file is removed after the new manifest is in place).
One build or append per index directory at a time (an ``flock`` on
``OUT/.frerec_index.lock``).

**On a Ray cluster** the same pieces run as tasks (``out`` on a shared filesystem);
``frerec_fast.index.ray_build.build_index_ray`` (``frerec index --ray``) does this::

    plan = plan_shards(real_dir, out, shard_size=65536)          # config + file lists
    task = ray.remote(num_cpus=4)(build_shard)
    done = ray.get([task.remote(real_dir, files, out, number, plan.config)
                    for number, files in plan.groups])
    index = commit_shards(plan, done)                             # the manifest, atomically

A failed or killed task leaves at most a shard file pair that no manifest lists; rerun
that shard (same arguments, same bytes) before ``commit_shards``.
"""
from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

import torch

from .. import io as fio
from ..channels import to_channels
from ..ops import band_stats
from ..progress import bar as progress_bar
from . import files as ifiles
from .config import IndexConfig, IndexFileError, _pair, resample, thumbnails
from .realindex import RealIndex, ShardedIndex

log = logging.getLogger("frerec_fast")

DEFAULT_SHARD_SIZE = 65536
LOCK_FILE = ".frerec_index.lock"


class _Default:
    """A default that appending does not check against the index (shown as its value)."""

    def __init__(self, value):
        self.value = value

    def __repr__(self) -> str:
        return repr(self.value)


def _value(v):
    return v.value if isinstance(v, _Default) else v


# -- decoding and computing entries --------------------------------------------------------
def _decode(root: Path, rel: str):
    try:
        items = fio.read_images(root, rel)
        return rel, items, fio.file_sha256(root / rel), None
    except (fio.ImageReadError, ImportError, OSError) as e:
        return rel, [], None, str(e)


def _windows(seq: Sequence, size: int) -> Iterable[Sequence]:
    for i in range(0, len(seq), size):
        yield seq[i:i + size]


@dataclass
class Entries:
    """What a list of files gives: per image thumbnail, statistics, key and file hash."""
    thumbs: torch.Tensor          # [n, 1, h, w] float16
    mu: torch.Tensor              # [n, C] float32
    sigma: torch.Tensor
    keys: list = field(default_factory=list)
    hashes: list = field(default_factory=list)
    skipped: list = field(default_factory=list)
    resized: int = 0
    converted: int = 0


def first_config(root: Path, rels: Sequence[str], ratio=0.5, domain="complex", work_size=None,
                 retrieval_size=64, channels=None) -> IndexConfig:
    """The configuration: from the arguments, completed by the first readable image's
    size and channel count (work_size / retrieval_size / channels None)."""
    ratio, domain, retrieval_size = _value(ratio), _value(domain), _value(retrieval_size)
    if work_size is not None and channels is not None:
        return IndexConfig(ratio, domain, _pair(work_size), _pair(retrieval_size), int(channels))
    first_error = None
    for rel in rels:
        _, items, _, err = _decode(root, rel)
        if items:
            px = items[0].pixels
            return IndexConfig(ratio, domain, _pair(work_size) or tuple(px.shape[-2:]),
                               _pair(retrieval_size) or tuple(px.shape[-2:]),
                               int(channels or px.shape[0]))
        first_error = first_error or err
    raise ValueError(f"{root}: none of {len(rels)} files could be read; first error: "
                     f"{first_error or '?'}")


def index_files(root: Path, rels: Sequence[str], cfg: IndexConfig, batch_size: int = 64,
                backend: str = "auto", threads: int = 4, bar=None) -> Entries:
    """Decode ``rels`` (relative to ``root``) on ``threads`` threads, convert channels,
    resample to the working size, and compute band statistics (``band_stats``, in batches
    of ``batch_size``) and the float16 luma thumbnails. Unreadable files are skipped and
    listed."""
    e = Entries(None, None, None)
    thumbs, mus, sigmas, batch = [], [], [], []

    def flush():
        if not batch:
            return
        x = torch.stack(batch)
        mu, sigma = band_stats(x, ratio=cfg.ratio, domain=cfg.domain, backend=backend)
        mus.append(mu.float().cpu())
        sigmas.append(sigma.float().cpu())
        thumbs.append(thumbnails(x, cfg.retrieval_size).half())
        batch.clear()

    with ThreadPoolExecutor(max_workers=max(1, threads)) as pool:
        for window in _windows(rels, max(batch_size, 16)):
            for rel, items, digest, err in pool.map(lambda r: _decode(root, r), window):
                if bar is not None:
                    bar.update(1)
                if err is not None:
                    log.warning("skipping %s", err)
                    e.skipped.append({"path": rel, "error": err})
                    continue
                for d in items:
                    px = torch.from_numpy(d.pixels)
                    if px.shape[0] != cfg.channels:
                        e.converted += 1
                        px = to_channels(px[None], cfg.channels)[0]
                    if tuple(px.shape[-2:]) != cfg.work_size:
                        e.resized += 1
                        px = resample(px[None], cfg.work_size)[0]
                    batch.append(px)
                    e.keys.append(d.key)
                    e.hashes.append(digest)
                    if len(batch) >= batch_size:
                        flush()
    flush()
    h, w = cfg.retrieval_size
    e.thumbs = torch.cat(thumbs) if thumbs else torch.zeros(0, 1, h, w, dtype=torch.float16)
    e.mu = torch.cat(mus) if mus else torch.zeros(0, cfg.channels)
    e.sigma = torch.cat(sigmas) if sigmas else torch.zeros(0, cfg.channels)
    return e


# -- one shard ---------------------------------------------------------------------------
@dataclass
class ShardResult:
    """What ``build_shard`` made: the manifest entry and what to tell the user."""
    number: int
    entry: ifiles.ShardEntry
    files: int
    skipped: list
    resized: int
    converted: int


def build_shard(real_dir: str | os.PathLike, files: Sequence[str], out: str | os.PathLike,
                number: int, config: IndexConfig, *, batch_size: int = 64,
                backend: str = "auto", threads: int = 4) -> ShardResult:
    """Build shard ``number`` of the index at ``out`` from ``files`` (paths relative to
    ``real_dir``) with ``config``: writes ``out/shards/shard-NNNNNN.{safetensors,json}``
    (each atomically) and returns the entry for the manifest. A plain function of its
    arguments (picklable in, picklable out), so a process pool or a Ray task can run it;
    the same arguments give the same bytes."""
    e = index_files(Path(real_dir), list(files), config, batch_size, backend, threads)
    entry = ifiles.write_shard(Path(out), number, config, e.thumbs, e.mu, e.sigma, e.keys,
                               e.hashes, e.skipped)
    return ShardResult(number, entry, len(files), e.skipped, e.resized, e.converted)


def write_shards_from_tensors(out: str | os.PathLike, config: IndexConfig, first_number: int,
                              shard_size: int, thumbs: torch.Tensor, mu: torch.Tensor,
                              sigma: torch.Tensor, keys: list, hashes: list) -> list:
    """Entries already computed (e.g. a single-file index being converted) written as
    shards of ``shard_size`` images, numbered from ``first_number``. Returns the
    manifest entries."""
    entries = []
    for j, a in enumerate(range(0, len(keys), shard_size)):
        b = a + shard_size
        entries.append(ifiles.write_shard(Path(out), first_number + j, config, thumbs[a:b],
                                          mu[a:b], sigma[a:b], keys[a:b], hashes[a:b], []))
    return entries


# -- planning and committing a sharded build -------------------------------------------------
@dataclass
class ShardPlan:
    """A sharded build before its shards are made (``plan_shards``)."""
    real_dir: Path
    out: Path
    config: IndexConfig
    shard_size: int
    kept: list                     # ShardEntry of the index's existing shards (append)
    groups: list                   # (shard number, [relative paths]) to build


def _key_base(key: str) -> str:
    return key.rsplit("#z=", 1)[0] if "#z=" in key else key


def _existing(out: Path) -> RealIndex | None:
    if not (out / ifiles.META_FILE).is_file():
        return None
    return RealIndex.load(out)


def _check_settings(index: RealIndex, out: Path, settings: dict) -> None:
    cfg = index.config
    for name, v in settings.items():
        if v is None or isinstance(v, _Default):
            continue
        want = _pair(v) if name in ("work_size", "retrieval_size") else v
        if want != getattr(cfg, name):
            raise ValueError(f"the index at {out} was built with {name}="
                             f"{getattr(cfg, name)!r}, not {want!r}: an append keeps the "
                             f"index's settings (leave {name} out, or pass that value)")


def plan_shards(real_dir: str | os.PathLike, out: str | os.PathLike, *,
                shard_size: int | None = None, append: bool = False, ratio=_Default(0.5),
                domain=_Default("complex"), work_size=None, retrieval_size=_Default(64),
                channels=None, _rels: Sequence[str] | None = None) -> ShardPlan:
    """Fix the configuration and the numbered file list of every new shard.

    append=True keeps the index at ``out`` (its config and shard size; settings given
    here must equal them) and refuses files whose key it already holds; a single-file
    index there is converted now (its entries are written as the first shards).
    Without append, an index at ``out`` is replaced when ``commit_shards`` runs.
    """
    root, out = Path(real_dir), Path(out)
    rels = fio.scan_images(root) if _rels is None else list(_rels)
    if not rels:
        raise FileNotFoundError(f"{root}: no supported images found "
                                f"(looked for {', '.join(fio.SUPPORTED_EXTS)})")
    if shard_size is not None and (isinstance(shard_size, bool) or int(shard_size) < 1):
        raise ValueError(f"shard_size must be a positive integer, got {shard_size!r}")
    old = _existing(out) if append else None
    kept = []
    if old is None:
        cfg = first_config(root, rels, ratio, domain, work_size, retrieval_size, channels)
        size = int(shard_size or DEFAULT_SHARD_SIZE)
    else:
        _check_settings(old, out, {"ratio": ratio, "domain": domain, "work_size": work_size,
                                   "retrieval_size": retrieval_size, "channels": channels})
        cfg = old.config
        have = {_key_base(k) for k in old.keys}
        dups = [r for r in rels if r in have]
        if dups:
            raise ValueError(f"{len(dups)} of the {len(rels)} image files under {root} are "
                             f"already in the index at {out} (first: {dups[:3]}): keys must "
                             "stay unique; append a directory that holds only the new "
                             "images (keys are paths relative to it)")
        if isinstance(old, ShardedIndex):
            m = old.manifest
            if shard_size is not None and int(shard_size) != m.shard_size:
                raise ValueError(f"the index at {out} has shards of {m.shard_size} files; "
                                 f"an append keeps that size (got shard_size={shard_size})")
            if m.embedding != ifiles.EMBEDDING:
                raise IndexFileError(f"{out / ifiles.META_FILE}: its prefilter embeddings "
                                     "were made with other settings; rebuild the index "
                                     "rather than append to it")
            size, kept = m.shard_size, list(m.shards)
        else:  # a single-file index: its entries become the first shards
            size = int(shard_size or DEFAULT_SHARD_SIZE)
            kept = write_shards_from_tensors(out, cfg, 0, size, old.thumbs, old.mu,
                                             old.sigma, old.keys, old.hashes)
    first = 1 + max((int(e.name.split("-")[1]) for e in kept), default=-1)
    groups = [(first + j, rels[a:a + size]) for j, a in enumerate(range(0, len(rels), size))]
    return ShardPlan(root, out, cfg, size, kept, groups)


def commit_shards(plan: ShardPlan, results: Iterable[ShardResult]) -> ShardedIndex:
    """Write the manifest of ``plan`` with its kept shards and the built ones (one
    atomic write), then remove files no manifest lists (earlier shards of a replaced
    index, an interrupted build's leftovers, a converted single file). Returns the index,
    opened lazily."""
    results = {r.number: r for r in results}
    missing = [n for n, _ in plan.groups if n not in results]
    if missing:
        raise ValueError(f"shards {missing[:5]} of the plan were not built")
    entries = plan.kept + [results[n].entry for n, _ in plan.groups]
    if not sum(e.count for e in entries):
        first = next((s for r in results.values() for s in r.skipped), {})
        raise ValueError(f"{plan.real_dir}: none of {sum(len(f) for _, f in plan.groups)} "
                         f"files could be read; first error: {first.get('error', '?')}")
    resized = sum(r.resized for r in results.values())
    converted = sum(r.converted for r in results.values())
    if resized:
        log.warning("%d image(s) resampled to the working size %s", resized,
                    plan.config.work_size)
    if converted:
        log.warning("%d image(s) converted to %d channel(s)", converted, plan.config.channels)
    ifiles.write_manifest(plan.out, plan.config, entries, plan.shard_size)
    _remove_unlisted(plan.out, {e.name for e in entries}, single=True)
    return ShardedIndex.open(plan.out)


def _remove_unlisted(out: Path, names: set, single: bool) -> None:
    """Delete shard files whose name is not in ``names`` and, with single, a version-1
    tensor file: only files of this package's own naming, inside ``out``."""
    d = out / ifiles.SHARD_DIR
    if d.is_dir():
        for p in d.iterdir():
            if p.suffix in (".safetensors", ".json") and ifiles.SHARD_NAME.fullmatch(p.stem) \
                    and p.stem not in names:
                p.unlink()
        if not names and not any(d.iterdir()):
            d.rmdir()
    if single and (out / ifiles.TENSORS_FILE).exists():
        (out / ifiles.TENSORS_FILE).unlink()


class _Lock:
    """One build or append per index directory (flock; a no-op where flock is absent)."""

    def __init__(self, out: Path):
        self.path, self.fh = out / LOCK_FILE, None

    def __enter__(self):
        try:
            import fcntl
        except ImportError:
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.fh = open(self.path, "a")
        try:
            fcntl.flock(self.fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.fh.close()
            raise RuntimeError(f"{self.path}: another build or append of this index is "
                               "running; wait for it to finish") from None
        return self

    def __exit__(self, *exc):
        if self.fh is not None:
            self.fh.close()  # closing drops the lock


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def run_shards(plan: ShardPlan, *, workers: int | None = None, threads: int = 4,
               batch_size: int = 64, backend: str = "auto", progress: bool = True) -> list:
    """Build the plan's shards: in this process (workers=1) or in ``workers`` spawned
    processes (default: one per CPU, at most one per shard), each with CPUs // workers
    torch threads and ``threads`` decode threads. Returns the ShardResults."""
    n_files = sum(len(f) for _, f in plan.groups)
    w = min(len(plan.groups), int(workers or os.cpu_count() or 1))
    bar = progress_bar(n_files, "index", "file", progress)
    done = []
    try:
        if w <= 1:
            for number, files in plan.groups:
                e = index_files(plan.real_dir, files, plan.config, batch_size, backend,
                                threads, bar)
                entry = ifiles.write_shard(plan.out, number, plan.config, e.thumbs, e.mu,
                                           e.sigma, e.keys, e.hashes, e.skipped)
                done.append(ShardResult(number, entry, len(files), e.skipped, e.resized,
                                        e.converted))
            return done
        per = max(1, (os.cpu_count() or 1) // w)
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=w, mp_context=ctx, initializer=_init_worker,
                                 initargs=(per,)) as pool:
            futures = [pool.submit(build_shard, str(plan.real_dir), files, str(plan.out),
                                   number, plan.config, batch_size=batch_size,
                                   backend=backend, threads=threads)
                       for number, files in plan.groups]
            try:
                for f in as_completed(futures):
                    r = f.result()
                    bar.update(r.files)
                    for s in r.skipped:
                        log.warning("skipping %s", s["error"])
                    done.append(r)
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
        return done
    finally:
        bar.close()


# -- the entry point -------------------------------------------------------------------------
def build_index(real_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                ratio: float = _Default(0.5), domain: str = _Default("complex"),
                work_size=None, retrieval_size=_Default(64), channels: int | None = None,
                batch_size: int = 64, workers: int | None = None, threads: int = 4,
                shard_size: int | None = None, append: bool = False, backend: str = "auto",
                progress: bool = True) -> RealIndex:
    """Scan ``real_dir`` recursively and build (and, with ``out``, save) an index.

    work_size: (H, W) or int at which band statistics are computed; None takes the
    first image's size (images of other sizes are resampled to it, and a warning
    says how many). channels: 1 or 3; None takes the first image's count (others
    are converted: grey -> RGB by replication, RGB -> grey by luma).
    Unreadable files are skipped, logged, and listed under ``skipped``.

    Layout (module docstring): sharded when ``shard_size`` is given, when appending,
    or when ``real_dir`` holds more than DEFAULT_SHARD_SIZE (65,536) files; else one
    file pair. Sharded builds run ``workers`` processes (default: one per CPU, at most
    one per shard); ``threads`` decode threads per builder. ``append=True`` adds the
    images under ``real_dir`` to the index at ``out`` (created if absent) as new shards,
    with the index's settings (settings given must match them); keys already in the
    index are refused. ``out=None`` builds a one-file index in memory.
    Returns: a ``RealIndex`` (one file pair or in memory) or a ``ShardedIndex``.
    """
    sharded = append or shard_size is not None
    if out is None:
        if sharded:
            raise ValueError("a sharded index (shard_size=, append=True) is built on disk: "
                             "pass out")
    else:
        out = Path(out)
    root = Path(real_dir)
    settings = dict(ratio=ratio, domain=domain, work_size=work_size,
                    retrieval_size=retrieval_size, channels=channels)
    rels = fio.scan_images(root)
    if out is not None and len(rels) > DEFAULT_SHARD_SIZE:
        sharded = True
    if sharded:
        out.mkdir(parents=True, exist_ok=True)
        with _Lock(out):
            plan = plan_shards(root, out, shard_size=shard_size, append=append, _rels=rels,
                               **settings)
            results = run_shards(plan, workers=workers, threads=threads,
                                 batch_size=batch_size, backend=backend, progress=progress)
            return commit_shards(plan, results)
    if not rels:
        raise FileNotFoundError(f"{root}: no supported images found "
                                f"(looked for {', '.join(fio.SUPPORTED_EXTS)})")
    cfg = first_config(root, rels, **settings)
    bar = progress_bar(len(rels), "index", "file", progress)
    e = index_files(root, rels, cfg, batch_size, backend, threads, bar)
    bar.close()
    if e.resized:
        log.warning("%d image(s) resampled to the working size %s", e.resized, cfg.work_size)
    if e.converted:
        log.warning("%d image(s) converted to %d channel(s)", e.converted, cfg.channels)
    index = RealIndex(cfg, e.thumbs, e.mu, e.sigma, e.keys, e.hashes, e.skipped)
    if out is not None:
        with _Lock(out):
            index.save(out)
            _remove_unlisted(out, set(), single=False)  # a sharded index replaced here
    return index
