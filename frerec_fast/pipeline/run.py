"""``calibrate_dir``: the reader, the calibrator, the writer and the run record composed
into one streaming, resumable job (see ``frerec_fast/pipeline/__init__.py`` for the
picture)."""
from __future__ import annotations

import contextlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from .. import __version__, backends
from .. import io as fio
from ..devices import resolve_device
from ..index import RealIndex
from ..reference.checks import clamp_k
from .calibrator import Calibrator, Compute, Stages
from .config import CalibrateConfig, make_config
from .fit import rhm_fit
from .reader import SelfExclusion, input_files, make_job, read_files
from .record import (MANIFEST, REPORT, Manifest, RunLock, RunRecord, check_dirs, index_digest,
                     model_digest, prepare_dst, run_fingerprint, sample_gaps)
from .writer import Writer

# Default micro-batch (tiles per compute call) per device type; see calibrator.py.
MODEL_BATCH = {"cpu": 8, "cuda": 32}


def calibrate_dir(src: str | os.PathLike, dst: str | os.PathLike, index=None, model=None,
                  config: CalibrateConfig | None = None, **settings) -> dict:
    """Calibrate every image under ``src`` into ``dst`` (same relative paths, formats and
    bit depths) with FreRec: top-K real neighbours by SSIM, SHR, then RHM (method §6).

    index: a RealIndex or the path of one (required). model: a loaded RHM, a checkpoint
    path, None for the shipped default model, or False for SHR only (no RHM).
    config: a ``CalibrateConfig``; ``settings`` (its field names) change single values,
    e.g. ``calibrate_dir(src, dst, index=i, device="cpu", k=20)``. The settings:

    device: "auto" (default: CUDA when present), "cpu", "cuda", "cuda:N".
    Images larger than the index's working size are processed in overlapping tiles of
    that size (``overlap`` of a tile, default 0.25; see ``frerec_fast.tiles``); smaller
    ones are reported as errors.
    calibrate_real=True excludes each image's own index entry (matched by content hash)
    when it is a real image of the index (method §6).
    resume=True skips files that the manifest in ``dst`` records as done with the same
    input hash and the same run settings (seed, k, calibrate_real, overlap, model_batch,
    index and model contents); any other file, failed ones included, is (re)done.
    batch_size: tiles gathered per step, rounded up to a multiple of ``model_batch``;
    it never changes the output bytes. model_batch: tiles per compute call (retrieval,
    SHR, RHM), fixed so that outputs do not depend on batch shapes (calibrator.py);
    default 8 on CPU, 32 on CUDA. Outputs are reproducible for one device, backend,
    thread count and model_batch.
    files: only these paths relative to ``src`` (default: every image under it).
    threads: compute threads (torch's intra-op pool, and the onnxruntime and OpenVINO
    engines') for the run, restored after; default torch's current count (one per
    core). Part of the fingerprint on CPU: float sums are split by it.
    workers: decode threads, and encode threads (at least 2); a 256x256 16-bit PNG
    costs about 5 ms to encode, so a fast GPU needs several (the manifest keeps the
    input order whatever the thread count).
    engine: how the RHM runs: "auto" (default: the fastest engine installed for the
    device; OpenVINO on CPU when installed, else onnxruntime, else eager), "eager" (the
    module itself, the reference; "torch" is an alias), "compile" (torch.compile, a
    minute or more of compilation first), "onnxruntime", "openvino" (CPU) or "tensorrt"
    (CUDA). Engines other than eager fp32 agree with it to float tolerance, not bit for
    bit; the engine that ran is in the report and the fingerprint. See
    ``frerec_fast.engine`` and docs/engines.md.
    precision: the RHM's arithmetic: "fp32" (default), "bf16" (eager, compile, openvino
    on CPUs with bf16 units, CUDA) or "fp16" (CUDA). Outputs differ from fp32 by the
    reduced rounding, reproducibly.
    retrieval: "exact" (default: SSIM against every index image) or "prefilter"
    (``candidates`` per tile short-listed by embedding correlation, default
    max(4k, 1024), then exact SSIM; see ``frerec_fast.prefilter``): for large indexes.
    Its recall@k against exact mode is measured on the first micro-batch and reported
    under ``report["retrieval"]``.
    shr: False skips retrieval and SHR and runs the RHM on the decoded input (the
    ablation "RHM with FESA, no SHR at inference" of the paper's Table 3; needs a model).
    backend: "auto" or a named backend for retrieval, SHR and the RHM's ring pooling
    (the model passed in is not changed). seed: SHR's noise seed. k: neighbours.
    progress: a tqdm bar. follow_symlinks: read symbolic links that lead outside
    ``src``; by default they are skipped and listed under ``report["excluded"]`` (an
    untrusted tree must not copy other files of the machine into ``dst``).

    Two runs into one ``dst`` at once: the second raises ``RunLocked`` naming the first
    (``record.RunLock``; a killed run leaves no stale lock).

    Returns the run report (also written to ``dst/frerec_report.json``): ``ok``,
    ``failed``, ``skipped``, ``errors`` {path: reason}, timings and gaps.
    """
    t_start = time.perf_counter()
    cfg = make_config(config, **settings)
    src, dst = check_dirs(src, dst)
    with compute_threads(cfg.threads):
        run = plan(src, dst, index, model, cfg)  # every setting checked before dst is touched
        dst.mkdir(parents=True, exist_ok=True)
        with RunLock(dst):  # before prepare_dst: it deletes temp files a running job may own
            prepare_dst(dst, cfg.resume)
            report = execute(run, dst / MANIFEST, t_start)
            fio.atomic_write_text(dst / REPORT, json.dumps(report, indent=1))
    return report


@contextlib.contextmanager
def compute_threads(n: int | None):
    """torch's intra-op thread count set to ``n`` for the block (None: unchanged), then
    restored: the run's thread layout without changing the caller's process for good."""
    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n is not None:
            torch.set_num_threads(before)


def calibrate_shard(src, dst, index, model, cfg: CalibrateConfig, shard: str) -> dict:
    """One shard of a distributed run: ``cfg.files`` into ``dst``, appending to the
    shard's own manifest; ``dst`` cleanup and the report belong to the driver (a shard
    must not delete the temp files its siblings write). Loads the index and model for
    this shard alone; ``ShardRunner`` keeps them for many shards."""
    with compute_threads(cfg.threads):
        runner = ShardRunner(src, dst, index, model, cfg, shard)
        try:
            return runner(cfg.files)
        finally:
            runner.close()


class ShardRunner:
    """The parts of a run that outlive one shard: the plan (index, model, RHM engine,
    fingerprint), loaded once, and one manifest of its own, read once; each call runs
    ``execute`` on a list of files. ``calibrate_dir_ray``'s long-lived workers hold one
    each, so the load is paid per worker, not per shard (numbers: docs/capacity.md).

    The bytes of every output are those of ``calibrate_dir`` with the same settings: a
    call is ``execute`` on a ``files=`` subset of the same plan. ``load_seconds`` is what
    the plan took (index and model read, engine built). The prefilter's recall check
    runs on the first micro-batch of the first call only.
    """

    def __init__(self, src, dst, index, model, cfg: CalibrateConfig, name: str):
        t0 = time.perf_counter()
        self.src, self.dst = check_dirs(src, dst)
        self.run = plan(self.src, self.dst, index, model, cfg)
        self.dst.mkdir(parents=True, exist_ok=True)
        self.manifest_path = self.dst / MANIFEST.replace(".jsonl", f".{name}.jsonl")
        self.manifest = Manifest(self.manifest_path)
        self.load_seconds = time.perf_counter() - t0
        self._recall_done = False

    def __call__(self, files, refresh: bool = False) -> dict:
        """Calibrate ``files`` (paths under src). ``refresh`` re-reads every manifest in
        dst first: for files another process may have finished since this one started
        (a shard taken over from a worker that died)."""
        t_start = time.perf_counter()
        if refresh:
            self.manifest.close()
            self.manifest = Manifest(self.manifest_path)
        recall = dict(self.run.recall)
        measured = self._recall_done
        if measured:  # the calibrator skips the check when the block has this key
            recall["recall_queries"] = 0
        run = replace(self.run, cfg=self.run.cfg.replace(
            files=None if files is None else tuple(files)), recall=recall)
        report = execute(run, self.manifest, t_start)
        if measured:
            recall.pop("recall_queries")
        self._recall_done = measured or "recall_queries" in recall
        return report

    def close(self) -> None:
        self.manifest.close()


@dataclass
class Run:
    """A run with every setting resolved against its index, model and device."""
    src: Path
    dst: Path
    cfg: CalibrateConfig
    compute: Compute
    step: int                 # tiles per step: batch_size rounded up to micro-batches
    used: dict                # op -> backend actually used
    recall: dict              # retrieval mode, candidates; the recall check adds to it
    run_id: str               # the resume fingerprint
    engine: str | None        # the RHM engine that runs ("auto" resolved); None: no RHM
    precision: str | None
    fit: dict | None = None   # the RHM on the index's clean images (pipeline/fit.py)


def plan(src: Path, dst: Path, index, model, cfg: CalibrateConfig) -> Run:
    """Load the index and model, resolve device, backends, K and micro-batch, and the
    fingerprint of everything that can change an output's bytes."""
    from ..allocator import tune
    tune()  # glibc: page faults otherwise cost more than the RHM's arithmetic (allocator.py)
    if index is None:
        raise ValueError("an index is required: build one with frerec_fast.build_index "
                         "(CLI: frerec index REAL_DIR OUT)")
    dev = resolve_device(cfg.device)
    index = index if isinstance(index, RealIndex) else RealIndex.load(index)
    net, engine, precision = _load_model(model, dev, cfg)
    if not cfg.shr and net is None:
        raise ValueError("shr=False with model=False leaves nothing to compute: pass a model "
                         "(RHM without SHR) or keep shr=True")
    mc = getattr(getattr(net, "config", None), "in_channels", None)
    if mc is not None and mc != index.config.channels:
        raise ValueError(f"the model takes {mc} channel(s) but the index has "
                         f"{index.config.channels}")
    micro = int(cfg.model_batch or MODEL_BATCH.get(dev.type, 8))
    rhm = net is not None
    fit = None
    if rhm:
        from ..engine import RHMEngine  # checks the engine and precision; "auto" resolved
        engine_net = RHMEngine(net, engine, precision, dev, micro_batch=micro,
                               ring_backend=cfg.backend)
        engine = engine_net.engine
    kk = clamp_k(cfg.k, len(index), cfg.calibrate_real)  # a bad k fails before dst is touched
    used, search_backend, recall = _backends(cfg, dev, index, net, kk, engine)
    # Everything that can change an output's bytes: the settings, the data, the code and
    # the arithmetic (device type, backends, CPU thread count: float sums are split by it).
    run_id = run_fingerprint(
        seed=cfg.seed, k=cfg.k, calibrate_real=cfg.calibrate_real, overlap=cfg.overlap,
        model_batch=micro, index=index_digest(index), model=model_digest(net),
        engine=engine if rhm else None, precision=precision if rhm else None,
        retrieval=cfg.retrieval, candidates=recall.get("candidates"),
        **({} if cfg.shr else {"shr": False}),
        **({"rhm_stats": cfg.rhm_stats} if rhm and cfg.shr else {}), device=dev.type, backends=used,
        threads=torch.get_num_threads() if dev.type == "cpu" else None,
        torch=torch.__version__, frerec_fast=__version__)
    if rhm:
        net = engine_net
        net.runner(*index.config.work_size)  # export / compile now: a failure ends the plan
        fit = rhm_fit(net, index, dev) if cfg.fit_check else {"checked": 0,
                                                                "skipped": "fit_check=False"}
    compute = Compute(index=index, net=net, device=dev, micro=micro,
                      k=cfg.k, seed=cfg.seed, backend=cfg.backend,
                      search_backend=search_backend, retrieval=cfg.retrieval,
                      candidates=recall.get("candidates"), calibrate_real=cfg.calibrate_real,
                      shr=cfg.shr, keep_shr_stats=rhm and cfg.shr and cfg.rhm_stats == "shr")
    return Run(src, dst, cfg, compute, micro * -(-cfg.batch_size // micro), used, recall,
               run_id, engine if rhm else None, precision if rhm else None, fit)


def _load_model(model, device: torch.device, cfg: CalibrateConfig):
    """(the RHM module or None, engine, precision). An ``RHMEngine`` passed in brings
    its engine and precision unless the run names others."""
    from ..engine import RHMEngine, canonical
    engine, precision = canonical(cfg.engine), cfg.precision
    if model is False:
        return None, engine, precision
    if isinstance(model, RHMEngine):
        if engine == "auto" and precision == "fp32":
            engine, precision = model.engine, model.precision
        model = model.module
    if isinstance(model, torch.nn.Module):
        return model.to(device).eval(), engine, precision
    from ..model import load_rhm

    if model is None:
        from ..training.default import default_model_path
        model = default_model_path()
    return load_rhm(model, device=device), engine, precision


def _backends(cfg: CalibrateConfig, dev: torch.device, index: RealIndex, net, kk: int,
              engine: str):
    """(op -> backend used, retrieval's backend, the retrieval block of the report)."""
    used = {op: backends.resolve_name(op, cfg.backend, dev) for op in ("ssim_topk", "shr")}
    recall = {"mode": cfg.retrieval}
    search_backend = cfg.backend
    if cfg.retrieval == "prefilter":
        from ..prefilter import default_candidates
        recall["candidates"] = min(max(int(cfg.candidates or default_candidates(kk, len(index))),
                                       kk), len(index))
        # The short list is re-ranked by the "ssim_pairs" op (torch, cpp): a backend
        # without one (triton, cuda) re-ranks with the fastest here, named in the report.
        try:
            used["ssim_pairs"] = backends.resolve_name("ssim_pairs", cfg.backend, dev)
        except backends.BackendUnavailable:
            search_backend = "auto"
            used["ssim_pairs"] = backends.resolve_name("ssim_pairs", "auto", dev)
    if net is not None and engine == "eager" and hasattr(net, "modules") \
            and any(hasattr(m, "n_rings") for m in net.modules()):
        for op in ("ring_pool_amplitude", "ring_scatter"):
            used[op] = backends.resolve_name(op, cfg.backend, dev)
    return used, search_backend, recall


def execute(run: Run, manifest: Path | Manifest, t_start: float) -> dict:
    """Read, calibrate and write the run's files, recording each in the manifest (a
    path: opened here and closed at the end; an open ``Manifest``: left open for the
    caller's next files); what the scan left out (symbolic links, with why) goes into
    the report."""
    cfg, c = run.cfg, run.compute
    rels, excluded = input_files(run.src, cfg.files, cfg.follow_symlinks)
    own_manifest = not isinstance(manifest, Manifest)
    if own_manifest:
        manifest = Manifest(manifest)
    record = RunRecord(manifest, run.src, cfg.seed, run.run_id, len(rels), cfg.progress)
    stages = Stages()
    own = SelfExclusion(c.index, cfg.calibrate_real)

    def is_done(rel: str, digest: str) -> bool:
        return cfg.resume and manifest.done(rel, digest, run.dst, run.run_id)

    def collect(block: bool) -> None:
        for job, out_hash, secs, err in writer.finished(block):
            stages.encode += secs
            if err is None:
                record.ok(job.rel, job.digest, out_hash, job.n_tiles)
            else:
                record.failed(job.rel, job.digest, err)

    try:
        with ThreadPoolExecutor(cfg.workers) as pool, \
                Writer(run.src, run.dst, cfg.overlap, cfg.workers) as writer:
            calib = Calibrator(c, writer.submit, lambda job, why: record.failed(
                job.rel, job.digest, why), stages, run.recall)
            prefetch = max(2 * run.step, 2 * cfg.workers)
            for got in read_files(run.src, rels, pool, prefetch, is_done):
                stages.decode += got.seconds
                if got.done:
                    record.skipped()
                    continue
                if got.error is not None:
                    record.failed(got.rel, got.digest, got.error)
                    continue
                try:
                    job = make_job(run.src, got, c.index.config, own, cfg.overlap)
                except Exception as e:  # any per-file problem is recorded; the run goes on
                    record.failed(got.rel, got.digest, str(e) if isinstance(e, ValueError) else
                                  f"{run.src / got.rel}: cannot prepare ({type(e).__name__}: {e})")
                    continue
                calib.add(job)
                calib.run(run.step)
                collect(block=False)
            calib.flush()
            collect(block=True)
    finally:
        record.close(manifest=own_manifest)
    report = _report(run, record, stages, calib, len(rels), time.perf_counter() - t_start)
    report["excluded"] = excluded
    return report


def _build_seconds(net) -> float | None:
    """Seconds the run spent building its RHM engine (export, compilation)."""
    times = getattr(net, "build_seconds", None)
    return round(sum(times.values()), 3) if times else None


def _report(run: Run, record: RunRecord, stages: Stages, calib: Calibrator, n_files: int,
            seconds: float) -> dict:
    cfg, c = run.cfg, run.compute
    rhm = c.net is not None
    return {
        **record.counts, "errors": record.errors,
        "seconds": seconds, "images_per_s": record.counts["ok"] / seconds if seconds else 0.0,
        "stage_seconds": vars(stages), "device": str(c.device),
        "device_name": torch.cuda.get_device_name(c.device) if c.device.type == "cuda" else "cpu",
        "backends": run.used, "rhm": rhm, "shr": cfg.shr,
        "rhm_stats": cfg.rhm_stats if rhm and cfg.shr else None,
        "engine": run.engine, "precision": run.precision,
        "engine_build_seconds": _build_seconds(c.net), "rhm_fit": run.fit,
        "retrieval": run.recall, "k": cfg.k, "seed": cfg.seed,
        "batch_size": cfg.batch_size, "model_batch": c.micro, "run": run.run_id,
        "threads": torch.get_num_threads(), "workers": cfg.workers,
        "index": str(c.index.path) if c.index.path else None,
        "frequency_gap": sample_gaps(calib.sample_in, calib.sample_out, c.index),
        "files": n_files,
    }
