"""The calibrator: tiles in, calibrated tiles out, through retrieval -> SHR -> RHM on
micro-batches of one fixed size; no file I/O.

Why fixed micro-batches: convolution and GEMM libraries (oneDNN/MKL on CPU, cuDNN and
cuBLAS on GPU) pick algorithms by tensor shape, so the same tile in a batch of 1 and in
a batch of 16 can differ in the last float bits. Every compute call therefore sees
exactly ``micro`` tiles, the last batch padded with copies of its last tile whose
results are dropped, and an output's bytes never depend on batching or resumption.
"""
from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import torch

from ..ops import restat
from ..ops import shr as shr_op
from ..seeding import sample_eps
from ..reference.checks import inputs_checked_upstream
from .reader import Job
from .record import GAP_SAMPLE

# torch.OutOfMemoryError since torch 2.5; torch.cuda.OutOfMemoryError before (same class).
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


@dataclass
class Stages:
    """Seconds per stage (decode and encode: summed over their threads)."""
    decode: float = 0.0
    retrieval: float = 0.0
    shr: float = 0.0
    rhm: float = 0.0
    encode: float = 0.0


@dataclass(frozen=True)
class Compute:
    """What the calibrator computes with (resolved from the run's config)."""
    index: object                  # RealIndex
    net: Callable | None           # the RHM engine, or None for SHR only
    device: torch.device
    micro: int                     # tiles per compute call
    k: int
    seed: int
    backend: str                   # SHR's and the recall check's backend
    search_backend: str            # retrieval's (the prefilter may need another)
    retrieval: str
    candidates: int | None
    calibrate_real: bool
    shr: bool
    keep_shr_stats: bool = False   # set SHR's target statistics again on the RHM's output


class Calibrator:
    """Queue of pending tiles and the micro-batches that compute them.

    ``on_done(job)`` is called when every tile of a job has its result (job.out filled),
    ``on_fail(job, why)`` once when a job's computation fails (its other tiles are then
    dropped). ``recall`` holds the prefilter's recall check (method §4), ``stages`` the
    compute times, ``sample_in``/``sample_out`` up to GAP_SAMPLE first tiles for the
    report's gaps.
    """

    def __init__(self, c: Compute, on_done: Callable[[Job], None],
                 on_fail: Callable[[Job, str], None], stages: Stages, recall: dict):
        self.c, self.on_done, self.on_fail = c, on_done, on_fail
        self.stages, self.recall = stages, recall
        self.pending: deque = deque()       # (job, item index, tile index)
        self.sample_in: list = []
        self.sample_out: list = []
        self.cuda = c.device.type == "cuda"
        self._timers: list = []             # CUDA: (start, after retrieval, after SHR, after RHM)
        self._in_flight: deque = deque()    # CUDA: computed batches whose copy to the host runs

    def add(self, job: Job) -> None:
        for i, tiles in enumerate(job.tiles):
            if len(self.sample_in) < GAP_SAMPLE:
                self.sample_in.append(tiles[0].clone())  # not a view of all its tiles
            self.pending.extend((job, i, t) for t in range(tiles.shape[0]))

    def run(self, step: int) -> None:
        """Compute while at least ``step`` tiles (a multiple of micro) are pending."""
        while len(self.pending) >= step:
            for _ in range(step // self.c.micro):
                self._run_micro()

    def flush(self) -> None:
        """Compute every pending tile and wait for all results."""
        while self.pending:
            self._run_micro()
        self._drain()
        if self.cuda:
            torch.cuda.synchronize(self.c.device)
            for t0, t1, t2, t3 in self._timers:
                self.stages.retrieval += t0.elapsed_time(t1) / 1e3
                self.stages.shr += t1.elapsed_time(t2) / 1e3
                self.stages.rhm += t2.elapsed_time(t3) / 1e3
            self._timers.clear()

    # -- one micro-batch ------------------------------------------------------------------
    def _run_micro(self) -> None:
        """Up to ``micro`` pending tiles as one batch of exactly ``micro`` tiles."""
        batch = []
        while self.pending and len(batch) < self.c.micro:
            item = self.pending.popleft()
            if not item[0].failed:  # tiles of a file that already failed are dropped
                batch.append(item)
        if not batch:
            return
        real = len(batch)
        batch += [batch[-1]] * (self.c.micro - real)
        try:
            self._compute(batch, real)
        except Exception as e:  # noqa: BLE001 - one bad micro-batch must not end the run
            # Every file with a tile here is recorded as failed (a resumed run retries it);
            # other files never shared this computation, so their bytes are unaffected.
            self._fail_batch(batch, real, e)

    def _compute(self, batch: list, real: int) -> None:
        """On CUDA nothing here waits for the GPU on purpose: the result is copied to
        pinned host memory asynchronously and delivered after the next micro-batch has
        been queued, so the host prepares batch i+1 while the GPU still runs batch i."""
        c = self.c
        x = torch.stack([job.tiles[i][t] for job, i, t in batch])
        # Stage marks and the copy's done-event belong to dev's stream, not the current
        # device's (device="cuda:1" with cuda:0 current).
        x = x.pin_memory().to(c.device, non_blocking=True) if self.cuda else x
        eps = self._eps(batch) if c.shr else None
        t0 = self._mark()
        # Inputs are validated where they are made (pixels at decode, the index at
        # load) and results per tile (_deliver): the ops' own checks would sync CUDA.
        with inputs_checked_upstream():
            nb = self._retrieve(x, batch, real) if c.shr else None
            t1 = self._mark()
            y = shr_op(x, nb.mu_bank, nb.sigma_bank, *eps, ratio=c.index.config.ratio,
                       domain=c.index.config.domain, backend=c.backend) if c.shr else x
        t2 = self._mark()
        if c.net is not None:
            with torch.inference_mode():
                y = c.net(y)
            if c.keep_shr_stats:
                with inputs_checked_upstream():
                    y = restat(y.float(), nb.mu_bank, nb.sigma_bank, *eps,
                               ratio=c.index.config.ratio, domain=c.index.config.domain,
                               backend=c.backend)
        y = y[:real].clamp(0.0, 1.0).float()
        t3 = self._mark()
        if not self.cuda:
            self.stages.retrieval += t1 - t0
            self.stages.shr += t2 - t1
            self.stages.rhm += t3 - t2
            self._deliver(batch, real, y)
            return
        self._timers.append((t0, t1, t2, t3))
        host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
        host.copy_(y, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(c.device))
        self._in_flight.append((batch, real, host, done))
        self._drain(keep=1)

    def _eps(self, batch: list) -> tuple[torch.Tensor, torch.Tensor]:
        """SHR's noise per tile, from (seed, key, tile): [micro, C] each."""
        c = self.c
        eps = [sample_eps(c.seed, [job.items[i].key], c.index.config.channels, t)
               for job, i, t in batch]
        return (torch.cat([e[0] for e in eps]).to(c.device, non_blocking=True),
                torch.cat([e[1] for e in eps]).to(c.device, non_blocking=True))

    def _retrieve(self, x: torch.Tensor, batch: list, real: int):
        """Top-K neighbours of one micro-batch x [micro, C, h, w] (``Neighbours``)."""
        c = self.c
        exclude = [job.exclude[i] for job, i, _ in batch] if c.calibrate_real else None
        nb = c.index.neighbours(x, k=c.k, exclude=exclude, backend=c.search_backend,
                                mode=c.retrieval, candidates=c.candidates)
        if c.retrieval == "prefilter" and "recall_queries" not in self.recall:
            self._measure_recall(x[:real], nb.ids[:real],
                                 None if exclude is None else exclude[:real])
        return nb

    def _measure_recall(self, x, ids, exclude) -> None:
        """method §4: an approximate mode reports its recall@k against exact mode, here on
        the run's first micro-batch (its exact search counts as retrieval time). Tried
        once; a failure is reported and never fails the files it was measured on."""
        from ..prefilter import recall_at_k
        self.recall["recall_queries"] = x.shape[0]
        try:
            ref = self.c.index.neighbours(x, k=self.c.k, exclude=exclude, backend=self.c.backend)
            self.recall["recall_sample"] = recall_at_k(ids, ref.ids)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory on a large index
            self.recall["recall_error"] = f"{type(e).__name__}: {e}"

    def _mark(self):
        if not self.cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(torch.cuda.current_stream(self.c.device))
        return ev

    # -- results --------------------------------------------------------------------------
    def _drain(self, keep: int = 0) -> None:
        while len(self._in_flight) > keep:
            batch, real, y, done = self._in_flight.popleft()
            try:
                done.synchronize()
            except Exception as e:  # noqa: BLE001 - an asynchronous CUDA error of this batch
                self._fail_batch(batch, real, e)
                continue
            self._deliver(batch, real, y)

    def _deliver(self, batch: list, real: int, y: torch.Tensor) -> None:
        """Hand finished tiles to their jobs; a job whose tiles are all done goes on."""
        for (job, i, t), out in zip(batch[:real], y):
            if job.failed:
                continue
            if not bool(torch.isfinite(out).all()):
                self._fail(job, f"{job.where}: calibration produced non-finite values "
                                f"(NaN/inf; tile {t})")
                continue
            job.out[i][t] = out
            job.remaining -= 1
            if job.remaining == 0:
                self.on_done(job)
                for tiles in job.out:  # the same tiles that sample_in took
                    if len(self.sample_out) < GAP_SAMPLE:
                        self.sample_out.append(tiles[0].clone())  # not a view of the batch

    def _fail(self, job: Job, why: str) -> None:
        if not job.failed:
            job.failed = True
            self.on_fail(job, why)

    def _fail_batch(self, batch: list, real: int, e: Exception) -> None:
        for job in {id(j): j for j, _, _ in batch[:real]}.values():
            why = f"{job.where}: calibration failed ({type(e).__name__}: {e})"
            if isinstance(e, _OOM):
                why += (f"; out of memory at model_batch={self.c.micro}: rerun with a smaller "
                        "--model-batch (a new fingerprint: every file is then redone)")
            self._fail(job, why)
