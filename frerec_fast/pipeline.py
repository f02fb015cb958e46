"""``calibrate_dir``: the streaming, resumable batch job that is the product's main use.

files -> decode (thread pool, bounded prefetch) -> work-size tiles -> retrieval
(SSIM top-K against the real index) -> SHR (per-tile noise from (seed, path, tile))
-> RHM -> clip -> stitch -> encode in the source's format (writer threads, atomic
temp-file + fsync + rename) -> one manifest line per finished file.

Every tile is processed independently of the others in its batch, so the bytes of
an output depend only on its input, the index, the model, the seed and the backend:
not on batch size, order, or how often the run was interrupted and resumed.

"Independently" needs care: convolution and GEMM libraries (oneDNN/MKL on CPU, cuDNN
and cuBLAS on GPU) pick algorithms and blockings by tensor shape, so the same tile in
a batch of 1 and in a batch of 16 can differ in the last float bits, which flips a
few rounded 8/16-bit output values. So every compute stage (retrieval, SHR, RHM) runs
on micro-batches of one fixed size (``model_batch``), the last one padded with copies
of its last tile whose results are dropped. Shapes then never depend on ``batch_size``
or on where a run was resumed; ``batch_size`` only says how many tiles are gathered
per step (rounded up to a multiple of ``model_batch``).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch

from . import backends
from . import io as fio
from .index import RealIndex, resample
from .ops import shr as shr_op
from .seeding import sample_eps
from .spectral import frequency_gap, luma, spectral_profile
from .ssim import clamp_k
from .tiles import cut, stitch

MANIFEST = "frerec_manifest.jsonl"
# torch.OutOfMemoryError since torch 2.5; torch.cuda.OutOfMemoryError before (same class).
_OOM = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
REPORT = "frerec_report.json"
GAP_SAMPLE = 256
# SPEC 8 asks every reported gap to name its protocol. One run sees only its own outputs
# and the index, so its gap is always "against raw real"; the deployed protocol needs the
# real held-out images calibrated too, which ``frerec eval`` does.
GAP_PROTOCOL = ("against raw real: a sample of this run's inputs and outputs vs the index's "
                "real images (uncalibrated), luma at the retrieval size")
# Default micro-batch (tiles per compute call) per device type; see the module docstring.
MODEL_BATCH = {"cpu": 8, "cuda": 32}


def manifest_paths(dst: Path) -> list[Path]:
    """The manifests in ``dst``: the local run's and those of distributed shards."""
    return sorted(Path(dst).glob("frerec_manifest*.jsonl"))


class Manifest:
    """Append-only JSON-lines record of finished files, fsynced after each line.

    Appends go to ``path``; what is done is read from every manifest in its folder
    (``frerec_manifest*.jsonl``), so a local run resumes a distributed one and vice
    versa. A line cut short by a kill is dropped on opening, so the file stays usable.
    """

    def __init__(self, path: Path):
        self.path = path
        self.entries: dict[str, list[dict]] = {}
        others = [p for p in manifest_paths(path.parent) if p != path]
        for p in others + ([path] if path.exists() else []):
            data = p.read_bytes()
            if p == path and data and not data.endswith(b"\n"):
                # A line torn by a crash: drop it, or the next append would be glued to
                # it and lost as well.
                data = data[:data.rfind(b"\n") + 1]
                with open(path, "r+b") as fh:
                    fh.truncate(len(data))
            for line in data.decode("utf-8", errors="replace").splitlines():
                try:
                    e = json.loads(line)
                    self.entries.setdefault(e["path"], []).append(e)
                except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
                    continue
        self._fh = open(path, "a")

    def done(self, rel: str, digest: str, dst: Path, run: str | None = None) -> bool:
        """True if ``rel`` was written with this input hash by a run of the same
        settings (``run``: fingerprint of seed, k, index, model, ...), and its output
        still exists."""
        return any(e.get("status") == "ok" and e.get("input_sha256") == digest
                   and (run is None or e.get("run") == run)
                   and (dst / e.get("output", rel)).is_file()
                   for e in self.entries.get(rel, ()))

    def append(self, entry: dict) -> None:
        self.entries.setdefault(entry["path"], []).append(entry)
        self._fh.write(json.dumps(entry) + "\n")
        self._fh.flush()
        os.fsync(self._fh.fileno())

    def close(self) -> None:
        self._fh.close()


@dataclass
class _Job:
    """One input file in flight: its decoded images, their tiles and finished tiles."""
    rel: str
    digest: str
    items: list                      # list[fio.Decoded]
    exclude: list                    # per item: its own index position (self-exclusion) or -1
    tiles: list = field(default_factory=list)     # per item: [T, C, h, w] model input
    offsets: list = field(default_factory=list)   # per item: tile offsets
    out: list = field(default_factory=list)       # per item: [T, C, h, w] results (filled)
    remaining: int = 0
    failed: bool = False             # a compute error was recorded: drop its remaining tiles


@dataclass
class _Stages:
    decode: float = 0.0
    retrieval: float = 0.0
    shr: float = 0.0
    rhm: float = 0.0
    encode: float = 0.0


def _resolve_device(device) -> torch.device:
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device='cuda' was requested but no CUDA GPU is visible to torch; "
                         "pass device='cpu' (CLI: --device cpu)")
    return dev


def _load_model(model, device: torch.device):
    if model is False:
        return None
    if isinstance(model, torch.nn.Module):
        return model.to(device).eval()
    from .model import load_rhm

    if model is None:
        from .training.default import default_model_path
        model = default_model_path()
    return load_rhm(model, device=device)


def _model_channels(model) -> int | None:
    cfg = getattr(model, "config", None)
    return getattr(cfg, "in_channels", None) if cfg is not None else None


def _to_channels(px: torch.Tensor, c: int, where: str) -> torch.Tensor:
    """Source [C0, H, W] -> [c, H, W]; grey -> RGB by replication; RGB -> grey only when
    the three channels are equal (a grey image stored as RGB)."""
    if px.shape[0] == c:
        return px
    if c == 3:
        return px.expand(3, -1, -1)
    if (px[0] == px[1]).all() and (px[1] == px[2]).all():
        return px[:1]
    raise fio.ImageReadError(f"{where}: colour image, but the index/model are 1-channel "
                             f"(build a 3-channel index and model for colour data)")


def _from_channels(y: torch.Tensor, c0: int) -> torch.Tensor:
    if y.shape[0] == c0:
        return y
    return y[:1].expand(3, -1, -1) if c0 == 3 else luma(y[None])[0]


def _output_rel(rel: str) -> str:
    return rel


def calibrate_dir(src: str | os.PathLike, dst: str | os.PathLike, index=None, model=None,
                  device: str | torch.device = "cuda", batch_size: int = 16, seed: int = 0,
                  backend: str = "auto", resume: bool = True, k: int = 200,
                  calibrate_real: bool = False, workers: int = 4, progress: bool = True,
                  overlap: float = 0.25, model_batch: int | None = None,
                  files: Sequence[str] | None = None, engine: str = "torch",
                  precision: str = "fp32", retrieval: str = "exact",
                  candidates: int | None = None, shr: bool = True,
                  _shard: str | None = None) -> dict:
    """Calibrate every image under ``src`` into ``dst`` (same relative paths, formats and
    bit depths) with FreRec: top-K real neighbours by SSIM, SHR, then RHM (SPEC 6).

    index: a RealIndex or the path of one (required). model: a loaded RHM, a checkpoint
    path, None for the shipped default model, or False for SHR only (no RHM).
    Images larger than the index's working size are processed in overlapping tiles of
    that size (see ``frerec_fast.tiles``); smaller ones are reported as errors.
    calibrate_real=True excludes each image's own index entry (matched by content hash)
    when it is a real image of the index (SPEC 6).
    resume=True skips files that the manifest in ``dst`` records as done with the same
    input hash and the same run settings (seed, k, calibrate_real, overlap, model_batch,
    index and model contents); any other file, failed ones included, is (re)done.
    batch_size: tiles gathered per step, rounded up to a multiple of ``model_batch``;
    it never changes the output bytes. model_batch: tiles per compute call (retrieval,
    SHR, RHM), fixed so that outputs do not depend on batch shapes (module docstring);
    default 8 on CPU, 32 on CUDA. Outputs are reproducible for one device, backend and
    model_batch.
    files: only these paths relative to ``src`` (default: every image under it).
    workers: decode threads, and encode threads (at least 2); a 256x256 16-bit PNG
    costs about 5 ms to encode, so a fast GPU needs several (the manifest keeps the
    input order whatever the thread count).
    engine: how the RHM runs: "torch" (the module, default) or "onnxruntime" (exported
    once to ONNX at the working size; about 3x faster on CPU; outputs agree with torch
    to float tolerance, not bit for bit). See ``frerec_fast.engine``.
    precision: the torch engine's arithmetic: "fp32" (default), "bf16" (CPU or CUDA) or
    "fp16" (CUDA), the RHM under autocast; the fast setting on tensor-core GPUs. Outputs
    differ from fp32 by the reduced rounding, reproducibly.
    retrieval: "exact" (default: SSIM against every index image) or "prefilter"
    (``candidates`` per tile short-listed by embedding correlation, default
    max(4k, 1024), then exact SSIM; see ``frerec_fast.prefilter``): for large indexes.
    Its recall@k against exact mode is measured on the first micro-batch and reported
    under ``report["retrieval"]``.
    shr: False skips retrieval and SHR and runs the RHM on the decoded input (the
    ablation "RHM with FESA, no SHR at inference" of the paper's Table 3; needs a model).
    Returns the run report (also written to ``dst/frerec_report.json``): ``ok``,
    ``failed``, ``skipped``, ``errors`` {path: reason}, timings and gaps.
    (``_shard``: used by ``frerec_fast.distributed``; a shard appends to its own
    manifest, leaves temp-file cleanup and the report to the driver.)
    """
    t_start = time.perf_counter()
    from .allocator import tune
    tune()  # glibc: page faults otherwise cost more than the RHM's arithmetic (allocator.py)
    src, dst = check_dirs(src, dst)
    if not 0.0 <= overlap < 1.0:
        raise ValueError(f"overlap must be in [0, 1), got {overlap!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size!r}")
    if index is None:
        raise ValueError("an index is required: build one with frerec_fast.build_index "
                         "(CLI: frerec index REAL_DIR OUT)")
    dev = _resolve_device(device)
    index = index if isinstance(index, RealIndex) else RealIndex.load(index)
    cfg = index.config
    net = _load_model(model, dev)
    use_shr = bool(shr)
    if not use_shr and net is None:
        raise ValueError("shr=False with model=False leaves nothing to compute: pass a model "
                         "(RHM without SHR) or keep shr=True")
    mc = _model_channels(net)
    if mc is not None and mc != cfg.channels:
        raise ValueError(f"the model takes {mc} channel(s) but the index has {cfg.channels}")
    used = {op: backends.resolve_name(op, backend, dev) for op in ("ssim_topk", "shr")}
    from .engine import ENGINES, check_precision
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    if net is not None:
        check_precision(precision, dev)
    kk = clamp_k(k, len(index), calibrate_real)  # before dst is touched: a bad k fails here
    if retrieval not in ("exact", "prefilter"):
        raise ValueError(f"retrieval must be 'exact' or 'prefilter', got {retrieval!r}")
    if candidates is not None and (retrieval != "prefilter" or int(candidates) < 1):
        raise ValueError("candidates needs retrieval='prefilter' and must be >= 1, "
                         f"got {candidates!r}")
    recall = {"mode": retrieval}
    search_backend = backend
    if retrieval == "prefilter":
        from .prefilter import default_candidates
        recall["candidates"] = min(max(int(candidates or default_candidates(kk, len(index))),
                                       kk), len(index))
        # The short list is re-ranked by the "ssim_pairs" op (torch, cpp): a backend
        # without one (triton, cuda) re-ranks with the fastest here, named in the report.
        try:
            used["ssim_pairs"] = backends.resolve_name("ssim_pairs", backend, dev)
        except backends.BackendUnavailable:
            search_backend = "auto"
            used["ssim_pairs"] = backends.resolve_name("ssim_pairs", "auto", dev)
    if net is not None and engine != "torch" and precision != "fp32":
        raise ValueError(f"engine {engine!r} runs fp32 only; precision={precision!r} "
                         "needs engine='torch'")
    if net is not None and hasattr(net, "modules") and engine == "torch":
        # backend= reaches the RHM's ring pooling too (this sets it on the model passed in).
        from .model.fesa import set_ring_backend
        set_ring_backend(net, backend)
        if any(hasattr(m, "n_rings") for m in net.modules()):
            for op in ("ring_pool_amplitude", "ring_scatter"):
                used[op] = backends.resolve_name(op, backend, dev)
    def own_position(key: str, digest: str) -> int:
        """SPEC 6 self-exclusion: the index entry of this very image (same key and file, as
        for each slice of an indexed NIfTI volume), else the first entry with the same
        file content (a real image copied under another name)."""
        if not calibrate_real:
            return -1
        pos = index.position(key)
        if pos >= 0 and index.hashes[pos] == digest:
            return pos
        return -1 if "#z=" in key else by_hash.get(digest, -1)

    by_hash: dict[str, int] = {}
    if calibrate_real:
        for i, h in enumerate(index.hashes):
            by_hash.setdefault(h, i)
    micro = int(model_batch or MODEL_BATCH.get(dev.type, 8))
    if micro < 1:
        raise ValueError(f"model_batch must be >= 1, got {model_batch!r}")
    step = micro * -(-batch_size // micro)
    from . import __version__
    # Everything that can change an output's bytes: the settings, the data, the code and
    # the arithmetic (device type, backends, CPU thread count: float sums are split by it).
    run_id = _run_fingerprint(seed=seed, k=k, calibrate_real=calibrate_real, overlap=overlap,
                              model_batch=micro, index=_index_digest(index),
                              model=_model_digest(net), engine=engine if net is not None else None,
                              precision=precision if net is not None else None,
                              retrieval=retrieval, candidates=recall.get("candidates"),
                              **({} if use_shr else {"shr": False}), device=dev.type, backends=used,
                              threads=torch.get_num_threads() if dev.type == "cpu" else None,
                              torch=torch.__version__, frerec_fast=__version__)

    if net is not None and (engine != "torch" or precision != "fp32"):
        from .engine import build_engine
        net = build_engine(net, engine, tuple(cfg.work_size), dev, precision=precision)
    dst.mkdir(parents=True, exist_ok=True)
    if _shard is None:  # a shard must not delete the temp files its siblings are writing
        prepare_dst(dst, resume)
    manifest = Manifest(dst / (MANIFEST if _shard is None else
                               MANIFEST.replace(".jsonl", f".{_shard}.jsonl")))
    rels = fio.scan_images(src) if files is None else _checked_files(src, files)
    stages = _Stages()
    report = {"ok": 0, "failed": 0, "skipped": 0, "errors": {}}
    sample_in, sample_out = [], []
    bar = _bar(len(rels), progress)

    def decode(rel: str):
        t0 = time.perf_counter()
        try:
            digest = fio.file_sha256(src / rel)
            if resume and manifest.done(rel, digest, dst, run_id):
                return rel, digest, None, "done", time.perf_counter() - t0
            return rel, digest, fio.read_images(src, rel), None, time.perf_counter() - t0
        except (fio.ImageReadError, ImportError, OSError) as e:
            return rel, None, None, str(e), time.perf_counter() - t0
        except Exception as e:  # a decoder's own error type: still this file's problem only
            return (rel, None, None, f"{src / rel}: cannot decode ({type(e).__name__}: {e})",
                    time.perf_counter() - t0)

    def fail(rel: str, digest, err: str):
        report["failed"] += 1
        report["errors"][rel] = err
        manifest.append({"path": rel, "input_sha256": digest, "status": "error",
                         "error": err, "seed": seed, "run": run_id})

    def fail_job(job: _Job, err: str):
        """A file whose compute failed: recorded once; its other tiles are dropped."""
        if not job.failed:
            job.failed = True
            fail(job.rel, job.digest, err)
            bar.update(1)

    pending: deque = deque()      # (job, item index, tile index)
    writes: deque = deque()       # (job, Future[output sha256])

    def finish_ready(block: bool):
        while writes and (block or writes[0][1].done()):
            job, fut = writes.popleft()
            try:
                out_hash, secs = fut.result()
                stages.encode += secs
                manifest.append({"path": job.rel, "output": _output_rel(job.rel),
                                 "input_sha256": job.digest, "output_sha256": out_hash,
                                 "status": "ok", "seed": seed, "run": run_id,
                                 "tiles": sum(len(o) for o in job.offsets)})
                report["ok"] += 1
            except Exception as e:  # an encoder error names the file; the run goes on
                fail(job.rel, job.digest, f"{src / job.rel}: cannot write output ({e})")
            bar.update(1)

    def encode(job: _Job):
        t0 = time.perf_counter()
        outs = []
        for d, tiles, offs in zip(job.items, job.out, job.offsets):
            y = stitch(torch.stack(tiles), offs, tuple(d.pixels.shape[-2:]), overlap)
            outs.append(_from_channels(y, d.pixels.shape[0]).numpy())
        out = dst / _output_rel(job.rel)
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

    def measure_recall(x, ids, exclude):
        """SPEC 4: an approximate mode reports its recall@k against exact mode, here on
        the run's first micro-batch (its exact search counts as retrieval time). Tried
        once; a failure is reported and never fails the files it was measured on."""
        from .prefilter import recall_at_k
        recall["recall_queries"] = x.shape[0]
        try:
            ref = index.neighbours(x, k=k, exclude=exclude, backend=backend)
            recall["recall_sample"] = recall_at_k(ids, ref.ids)
        except Exception as e:  # noqa: BLE001 - e.g. out of memory on a large index
            recall["recall_error"] = f"{type(e).__name__}: {e}"

    cuda = dev.type == "cuda"
    timers: list = []           # CUDA: (start, after retrieval, after SHR, after RHM) events
    in_flight: deque = deque()  # CUDA: computed micro-batches whose copy to the host runs

    def mark():
        if not cuda:
            return time.perf_counter()
        ev = torch.cuda.Event(enable_timing=True)
        ev.record(torch.cuda.current_stream(dev))
        return ev

    def deliver(batch, real: int, y: torch.Tensor, writer: ThreadPoolExecutor):
        """Hand finished tiles to their jobs; a job whose tiles are all done is encoded."""
        for (job, i, t), out in zip(batch[:real], y):
            if job.failed:
                continue
            if not bool(torch.isfinite(out).all()):
                fail_job(job, f"{src / job.rel}: calibration produced non-finite values "
                              f"(NaN/inf; tile {t})")
                continue
            job.out[i][t] = out
            job.remaining -= 1
            if job.remaining == 0:
                writes.append((job, writer.submit(encode, job)))
                for tiles in job.out:  # the same tiles that sample_in took
                    if len(sample_out) < GAP_SAMPLE:
                        sample_out.append(tiles[0].clone())  # not a view of the whole batch

    def compute_error(job: _Job, e: Exception) -> str:
        why = f"{src / job.rel}: calibration failed ({type(e).__name__}: {e})"
        if isinstance(e, _OOM):
            why += (f"; out of memory at model_batch={micro}: rerun with a smaller "
                    "--model-batch (a new fingerprint: every file is then redone)")
        return why

    def drain(writer: ThreadPoolExecutor, keep: int = 0):
        while len(in_flight) > keep:
            batch, real, y, done = in_flight.popleft()
            try:
                done.synchronize()
            except Exception as e:  # noqa: BLE001 - an asynchronous CUDA error of this batch
                for job in {id(j): j for j, _, _ in batch[:real]}.values():
                    fail_job(job, compute_error(job, e))
                continue
            deliver(batch, real, y, writer)

    def run_micro(writer: ThreadPoolExecutor):
        """Compute up to ``micro`` pending tiles as one batch of exactly ``micro`` tiles
        (padded with copies of the last one; their results are dropped).

        On CUDA nothing here waits for the GPU on purpose: the result is copied to pinned
        host memory asynchronously and delivered after the next micro-batch has been
        queued, so the host prepares batch i+1 (stacking, upload, noise) while the GPU
        still runs batch i. Stage times come from CUDA events, summed at the end.
        """
        batch = []
        while pending and len(batch) < micro:
            item = pending.popleft()
            if not item[0].failed:  # tiles of a file that already failed are dropped
                batch.append(item)
        if not batch:
            return
        real = len(batch)
        batch += [batch[-1]] * (micro - real)
        try:
            compute(batch, real, writer)
        except Exception as e:  # noqa: BLE001 - one bad micro-batch must not end the run
            # Every file with a tile here is recorded as failed (a resumed run retries it);
            # other files never shared this computation, so their bytes are unaffected.
            for job in {id(j): j for j, _, _ in batch[:real]}.values():
                fail_job(job, compute_error(job, e))

    def compute(batch, real: int, writer: ThreadPoolExecutor):
        x = torch.stack([job.tiles[i][t] for job, i, t in batch])
        keys = [job.items[i].key for job, i, _ in batch]
        # Stage marks and the copy's done-event belong to dev's stream, not the current
        # device's (device="cuda:1" with cuda:0 current).
        x = x.pin_memory().to(dev, non_blocking=True) if cuda else x
        eps = [sample_eps(seed, [key], cfg.channels, t) for key, (_, _, t) in zip(keys, batch)]
        eps_mu = torch.cat([e[0] for e in eps]).to(dev, non_blocking=True)
        eps_sigma = torch.cat([e[1] for e in eps]).to(dev, non_blocking=True)
        t0 = mark()
        if use_shr:
            exclude = [job.exclude[i] for job, i, _ in batch] if calibrate_real else None
            nb = index.neighbours(x, k=k, exclude=exclude, backend=search_backend,
                                  mode=retrieval, candidates=recall.get("candidates"))
            if retrieval == "prefilter" and "recall_queries" not in recall:
                measure_recall(x[:real], nb.ids[:real],
                               None if exclude is None else exclude[:real])
        t1 = mark()
        y = shr_op(x, nb.mu_bank, nb.sigma_bank, eps_mu, eps_sigma, ratio=cfg.ratio,
                domain=cfg.domain, backend=backend) if use_shr else x
        t2 = mark()
        if net is not None:
            with torch.inference_mode():
                y = net(y)
        y = y[:real].clamp(0.0, 1.0).float()
        t3 = mark()
        if not cuda:
            stages.retrieval += t1 - t0
            stages.shr += t2 - t1
            stages.rhm += t3 - t2
            deliver(batch, real, y, writer)
            return
        timers.append((t0, t1, t2, t3))
        host = torch.empty(y.shape, dtype=y.dtype, pin_memory=True)
        host.copy_(y, non_blocking=True)
        done = torch.cuda.Event()
        done.record(torch.cuda.current_stream(dev))
        in_flight.append((batch, real, host, done))
        drain(writer, keep=1)

    prefetch = max(2 * step, 2 * workers)
    try:
        with ThreadPoolExecutor(max(1, workers)) as pool, \
                ThreadPoolExecutor(max(2, workers)) as writer:
            inflight: deque[Future] = deque()
            it = iter(rels)
            for rel in it:
                inflight.append(pool.submit(decode, rel))
                if len(inflight) >= prefetch:
                    break
            while inflight:
                rel, digest, items, err, secs = inflight.popleft().result()
                nxt = next(it, None)
                if nxt is not None:
                    inflight.append(pool.submit(decode, nxt))
                stages.decode += secs
                if err == "done":
                    report["skipped"] += 1
                    bar.update(1)
                    continue
                if err is not None:
                    fail(rel, digest, err)
                    bar.update(1)
                    continue
                try:
                    job = _prepare(rel, digest, items, cfg, own_position, overlap, src)
                except Exception as e:  # any per-file problem is recorded; the run goes on
                    fail(rel, digest, str(e) if isinstance(e, (fio.ImageReadError, ValueError))
                         else f"{src / rel}: cannot prepare ({type(e).__name__}: {e})")
                    bar.update(1)
                    continue
                for i, tiles in enumerate(job.tiles):
                    if len(sample_in) < GAP_SAMPLE:
                        sample_in.append(tiles[0].clone())  # not a view of all its tiles
                    pending.extend((job, i, t) for t in range(tiles.shape[0]))
                while len(pending) >= step:
                    for _ in range(step // micro):
                        run_micro(writer)
                finish_ready(block=False)
            while pending:
                run_micro(writer)
            drain(writer)
            finish_ready(block=True)
    finally:
        manifest.close()
        bar.close()

    if cuda:
        torch.cuda.synchronize(dev)
        for t0, t1, t2, t3 in timers:
            stages.retrieval += t0.elapsed_time(t1) / 1e3
            stages.shr += t1.elapsed_time(t2) / 1e3
            stages.rhm += t2.elapsed_time(t3) / 1e3
    seconds = time.perf_counter() - t_start
    report.update({
        "seconds": seconds, "images_per_s": report["ok"] / seconds if seconds else 0.0,
        "stage_seconds": vars(stages), "device": str(dev),
        "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else "cpu",
        "backends": used, "rhm": net is not None, "shr": use_shr, "engine": engine if net is not None else None,
        "precision": precision if net is not None else None, "retrieval": recall,
        "k": k, "seed": seed,
        "batch_size": batch_size, "model_batch": micro, "run": run_id,
        "index": str(index.path) if index.path else None,
        "frequency_gap": _gaps(sample_in, sample_out, index),
        "files": len(rels),
    })
    if _shard is None:
        fio.atomic_write_text(dst / REPORT, json.dumps(report, indent=1))
    return report


def check_dirs(src, dst) -> tuple[Path, Path]:
    """Resolved (src, dst); refuses a missing src and a dst equal to, inside or
    containing src (inputs are never modified)."""
    src, dst = Path(src).resolve(), Path(dst).resolve()
    if not src.is_dir():
        raise FileNotFoundError(f"{src}: input directory not found")
    if dst == src or src in dst.parents or dst in src.parents:
        raise ValueError(f"{dst}: the output directory must not contain, or be inside, "
                         f"the input directory {src} (inputs are never modified)")
    return src, dst


def prepare_dst(dst: Path, resume: bool) -> None:
    """Before a run: remove temp files of interrupted writes, and the manifests too when
    not resuming (so that every file is redone)."""
    for stale in dst.rglob(f"*{fio.TMP_SUFFIX}"):
        stale.unlink()
    if not resume:
        for m in manifest_paths(dst):
            m.unlink()


def _checked_files(src: Path, files: Sequence[str]) -> list[str]:
    """Relative POSIX paths of ``files`` under ``src``, sorted; refuses paths outside it."""
    out = []
    for f in files:
        p = (src / f).resolve()
        if src not in p.parents:
            raise ValueError(f"{f}: not a file under the input directory {src}")
        out.append(p.relative_to(src).as_posix())
    return sorted(set(out))


def _prepare(rel, digest, items, cfg, exclude, overlap, src) -> _Job:
    """exclude: callable (key, digest) -> own index position or -1, per decoded item."""
    job = _Job(rel, digest, items, [exclude(d.key, digest) for d in items])
    h0, w0 = cfg.work_size
    for d in items:
        h, w = d.pixels.shape[-2:]
        if h < h0 or w < w0:
            raise ValueError(f"{src / rel}: image is {h}x{w}, smaller than the working size "
                             f"{h0}x{w0} of the index")
        px = _to_channels(torch.from_numpy(d.pixels), cfg.channels, str(src / rel))
        tiles, offsets = cut(px, (h0, w0), overlap)
        job.tiles.append(tiles)
        job.offsets.append(offsets)
        job.out.append([None] * tiles.shape[0])
        job.remaining += tiles.shape[0]
    return job


def _index_digest(index: RealIndex) -> str:
    """The index's tensor checksum from its index.json when it was loaded from disk,
    else a hash of its tensors and keys."""
    if index.path is not None:
        try:
            meta = json.loads((Path(index.path) / "index.json").read_text())
            if meta.get("tensors_sha256"):
                return meta["tensors_sha256"]
        except (OSError, ValueError):
            pass
    h = hashlib.sha256(json.dumps(index.config.to_dict(), sort_keys=True).encode())
    for t in (index.thumbs, index.mu, index.sigma):
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    h.update("\x1f".join(index.keys).encode())
    return h.hexdigest()


def _model_digest(net) -> str | None:
    """Hash of a model's config and weights (None: SHR only). A callable without a
    state_dict (an exported engine) is known by its type only."""
    if net is None:
        return None
    if not hasattr(net, "state_dict"):
        return f"{type(net).__module__}.{type(net).__qualname__}"
    state = sorted(net.state_dict(keep_vars=True).items())  # the tensors themselves: stable ids
    cfg = getattr(net, "config", None)
    cfg_json = json.dumps(cfg.to_dict(), sort_keys=True) if hasattr(cfg, "to_dict") else ""
    # Hashing copies every weight to the host (120 MB for the paper-size RHM): cached on
    # the module while no tensor was replaced (id, storage pointer, dtype, device) or
    # changed in place (torch's per-tensor version counter, bumped by every such update).
    key = (cfg_json, tuple((name, id(t), t.data_ptr(), t.dtype, t.device, t._version)
                           for name, t in state))
    cached = getattr(net, "_frerec_digest", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    h = hashlib.sha256(cfg_json.encode())
    for name, t in state:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    digest = h.hexdigest()
    try:
        net._frerec_digest = (key, digest)
    except AttributeError:  # a module that refuses new attributes: hash every time
        pass
    return digest


def _run_fingerprint(**settings) -> str:
    """Short hash of the settings that decide an output's bytes, stored with each
    manifest line so that resume never mixes outputs of different settings."""
    blob = json.dumps(settings, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def _gaps(sample_in, sample_out, index: RealIndex) -> dict:
    """Frequency gaps (SPEC 8) of input and output samples to the index's thumbnails,
    all at the retrieval size (area resampling)."""
    if not sample_in or not sample_out:
        return {}
    size = index.config.retrieval_size
    step = max(1, len(index) // 1024)
    ref = spectral_profile(index.thumbs[::step].float())

    def prof(xs):
        return spectral_profile(resample(luma(torch.stack(xs).float()), size))

    pi, po = prof(sample_in), prof(sample_out)
    out = gaps_from_profiles(pi, po, ref, index.config.ratio)
    # Mean log10 profiles are linear in the images: shards' reports merge exactly.
    out["profiles"] = {"inputs": pi.tolist(), "outputs": po.tolist(), "index": ref.tolist(),
                       "n_inputs": len(sample_in), "n_outputs": len(sample_out)}
    out["sample"] = min(len(sample_in), len(sample_out))
    return out


def gaps_from_profiles(pi: torch.Tensor, po: torch.Tensor, ref: torch.Tensor,
                       ratio: float) -> dict:
    """The report's gap block from mean profiles [R] of inputs, outputs and the index."""
    gi = frequency_gap(pi, ref, ratio)
    go = frequency_gap(po, ref, ratio)
    return {"protocol": GAP_PROTOCOL,
            "inputs_vs_index": {"high_band": gi[0], "all_radii": gi[1]},
            "outputs_vs_index": {"high_band": go[0], "all_radii": go[1]}}


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _bar(total: int, enabled: bool):
    if not enabled:
        return _NoBar()
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return _NoBar()
    return tqdm(total=total, desc="calibrate", unit="img", smoothing=0.1)
