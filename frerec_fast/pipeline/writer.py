"""The writer: finished jobs stitched, converted back to the source's channels and
encoded in its format, each written atomically, on a bounded thread pool; results come
back in submission order, so the manifest keeps the input order."""
from __future__ import annotations

import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
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
    # A symlinked folder inside dst could lead outside it, even into src.
    real_parent = out.parent.resolve()
    if real_parent != dst and dst not in real_parent.parents:
        raise ValueError(f"output folder {out.parent} resolves to {real_parent}, outside "
                         f"the output directory {dst} (a symlink?)")
    if real_parent == src or src in real_parent.parents:
        raise ValueError(f"output folder {out.parent} resolves into the input directory {src}")
    if job.items[0].fmt == "NIFTI":
        fio.write_nifti_like(src / job.rel, job.items, outs, out)
    else:
        fio.write_like(job.items[0], outs[0], out, src / job.rel)
    return fio.file_sha256(out), time.perf_counter() - t0


class Writer:
    """Encodes jobs on ``workers`` threads (at least 2). Use as a context manager."""

    def __init__(self, src: Path, dst: Path, overlap: float, workers: int):
        self.src, self.dst, self.overlap = src, dst, overlap
        self._pool = ThreadPoolExecutor(max(2, workers))
        self._queue: deque = deque()  # (job, Future[(sha256, seconds)])

    def submit(self, job: Job) -> None:
        self._queue.append((job, self._pool.submit(encode_job, job, self.src, self.dst,
                                                   self.overlap)))

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
