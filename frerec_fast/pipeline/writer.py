"""The writer: finished jobs stitched, converted back to the source's channels and
encoded in its format, each written atomically, on a bounded thread pool; results come
back in submission order, so the manifest keeps the input order."""
from __future__ import annotations

import os
import tempfile
import time
import unicodedata
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Iterator

import torch

from .. import io as fio
from ..channels import from_channels
from ..tiles import stitch
from .reader import Job


def encode_job(job: Job, src: Path, dst: Path, overlap: float) -> tuple[str, float]:
    """Write ``job``'s result to ``dst`` under its relative path, like its source.
    Returns (SHA-256 of the written file, seconds)."""
    t0 = time.perf_counter()
    outs = []
    for d, tiles, offs in zip(job.items, job.out, job.offsets):
        y = stitch(torch.stack(tiles), offs, tuple(d.pixels.shape[-2:]), overlap)
        outs.append(from_channels(y[None], d.pixels.shape[0])[0].numpy())
    out = dst / job.rel
    check_out_folder(out, src, dst)
    if job.items[0].fmt == "NIFTI":
        fio.write_nifti_like(src / job.rel, job.items, outs, out)
    else:
        fio.write_like(job.items[0], outs[0], out, src / job.rel)
    return fio.file_sha256(out), time.perf_counter() - t0


def check_out_folder(out: Path, src: Path, dst: Path) -> None:
    """Refuse an output whose folder resolves outside ``dst`` or into ``src`` (a
    symbolic link to a folder inside dst could lead anywhere, even into src)."""
    real_parent = out.parent.resolve()
    if real_parent != dst and dst not in real_parent.parents:
        raise ValueError(f"output folder {out.parent} resolves to {real_parent}, outside "
                         f"the output directory {dst} (a symlink?)")
    if real_parent == src or src in real_parent.parents:
        raise ValueError(f"output folder {out.parent} resolves into the input directory {src}")


def name_key(name: str) -> str:
    """A file name as a case-insensitive filesystem compares it: case folded, Unicode
    composed (NFC), so 'A.png' and 'a.png' (or a composed and a decomposed 'é') meet."""
    return unicodedata.normalize("NFC", name).casefold()


def folds_case(folder: Path) -> bool:
    """Whether ``folder``'s filesystem ignores case in names (macOS and Windows
    defaults, casefolded ext4): a probe file is made, looked up under its other case,
    and removed. A folder that cannot be probed counts as case-sensitive (its writes
    fail anyway, each named)."""
    try:
        fd, probe = tempfile.mkstemp(prefix=".frerec-case-probe-", suffix=fio.TMP_SUFFIX,
                                     dir=folder)
    except OSError:
        return False
    os.close(fd)
    try:
        p = Path(probe)
        return os.path.lexists(p.with_name(p.name.swapcase()))
    finally:
        os.unlink(probe)


class CaseGuard:
    """One output file per input on case-insensitive output filesystems.

    ``src`` on Linux may hold ``A.png`` and ``a.png``; on a case-insensitive ``dst`` both
    outputs would be one file, the second silently replacing the first. Per output
    folder (by device and inode, so ``Sub/`` and ``sub/`` are one) the guard probes the
    filesystem once; where it ignores case, an output whose name matches (``name_key``)
    another one already there (from this run or an earlier one) under a different
    spelling is refused, naming it. On a case-sensitive ``dst`` (Linux's default) both
    are written. Claims happen in submission order (the main thread), so which of two
    colliding files is written does not depend on thread timing.
    """

    def __init__(self, src: Path, dst: Path):
        self.src, self.dst = src, dst
        self._folders: dict[tuple[int, int], dict[str, str] | None] = {}

    def claim(self, rel: str) -> None:
        out = self.dst / rel
        check_out_folder(out, self.src, self.dst)
        out.parent.mkdir(parents=True, exist_ok=True)
        st = os.stat(out.parent)
        ident = (st.st_dev, st.st_ino)
        if ident not in self._folders:
            self._folders[ident] = ({name_key(n): n for n in os.listdir(out.parent)}
                                    if folds_case(out.parent) else None)
        names = self._folders[ident]
        if names is None:
            return
        key = name_key(out.name)
        other = names.setdefault(key, out.name)
        if other != out.name:
            raise ValueError(f"{out} would overwrite {out.with_name(other)}: the output "
                             "filesystem ignores case in file names; not written (rename one "
                             "of the two inputs, or write to a case-sensitive filesystem)")


class Writer:
    """Encodes jobs on ``workers`` threads (at least 2). Use as a context manager."""

    def __init__(self, src: Path, dst: Path, overlap: float, workers: int):
        self.src, self.dst, self.overlap = src, dst, overlap
        self._pool = ThreadPoolExecutor(max(2, workers))
        self._queue: deque = deque()  # (job, Future[(sha256, seconds)])
        self._case = CaseGuard(src, dst)

    def submit(self, job: Job) -> None:
        try:
            self._case.claim(job.rel)
        except (OSError, ValueError) as e:  # this file's problem: reported in order
            fut: Future = Future()
            fut.set_exception(e)
        else:
            fut = self._pool.submit(encode_job, job, self.src, self.dst, self.overlap)
        self._queue.append((job, fut))

    def finished(self, block: bool) -> Iterator[tuple[Job, str | None, float, str | None]]:
        """(job, output sha256, seconds, error) of written jobs in submission order: the
        ones already done, or (block=True) all of them. An encoder error names the file."""
        while self._queue and (block or self._queue[0][1].done()):
            job, fut = self._queue.popleft()
            try:
                out_hash, secs = fut.result()
                yield job, out_hash, secs, None
            except Exception as e:  # an encoder error names the file; the run goes on
                yield job, None, 0.0, f"{job.where}: cannot write output ({e})"

    def __enter__(self) -> "Writer":
        return self

    def __exit__(self, *exc) -> None:
        self._pool.shutdown(wait=True)
