"""``load_rhm`` and ``RHMEngine``: one RHM behind the engine a user or a run asked for."""
from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .names import check_engine_device

# Tiles per engine call when none is given, per device type: the calibrator's default
# micro-batch, so that a loaded engine and calibrate_dir compile for the same shape.
MICRO_BATCH = {"cpu": 8, "cuda": 32}


class RHMEngine:
    """An RHM module run by one engine: ``y = engine(x)``.

    x: [B, C, H, W] float32, any B and any H x W the model accepts (the working size of
    its index, usually) -> [B, C, H, W] float32 on x's device, computed without autograd.
    Batches are cut into micro-batches of exactly ``micro_batch`` tiles (the last padded
    with copies of its last tile), so that the output of an image never depends on the
    batch it came in, and compiled engines (compile, openvino, tensorrt) see one shape.
    Engines for a new H x W are built on first use; ``build_seconds`` holds the time
    each build (export, compilation) took.

    module: the eager nn.Module (weights, config); engine, precision, device: as resolved.
    """

    def __init__(self, module: torch.nn.Module, engine: str = "auto", precision: str = "fp32",
                 device: str | torch.device = "cpu", micro_batch: int | None = None,
                 cache_dir: str | os.PathLike | None = None, threads: int | None = None,
                 ring_backend: str | None = None):
        self.device = torch.device(device)
        self.engine = check_engine_device(engine, precision, self.device)
        self.precision = precision
        self.module = module.to(self.device).eval()
        self.config = getattr(module, "config", None)
        self.micro_batch = int(micro_batch or MICRO_BATCH.get(self.device.type, 8))
        if self.micro_batch < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch!r}")
        self.threads = threads
        self.ring_backend = ring_backend
        self._cache_dir = Path(cache_dir) if cache_dir else None
        self._runners: dict[tuple[int, int], object] = {}
        self.build_seconds: dict[tuple[int, int], float] = {}

    def __repr__(self) -> str:
        return (f"RHMEngine(engine={self.engine!r}, precision={self.precision!r}, "
                f"device={str(self.device)!r}, micro_batch={self.micro_batch})")

    def cache_dir(self) -> Path:
        """Where exported graphs and built engines go (a fresh temporary folder unless
        one was given)."""
        if self._cache_dir is None:
            self._cache_dir = Path(tempfile.mkdtemp(prefix="frerec_engine_"))
        self._cache_dir.mkdir(parents=True, exist_ok=True)
        return self._cache_dir

    def runner(self, h: int, w: int):
        """The callable that runs one [micro_batch, C, h, w] batch (built on first use)."""
        key = (int(h), int(w))
        if key not in self._runners:
            t0 = time.perf_counter()
            self._runners[key] = self._build(*key)
            self.build_seconds[key] = time.perf_counter() - t0
        return self._runners[key]

    def _build(self, h: int, w: int):
        c = self.config.in_channels if self.config is not None else 1
        shape = (self.micro_batch, c, h, w)
        if self.engine == "eager":
            if self.precision == "fp32":
                return self.module
            from .torch_engine import AutocastRHM
            return AutocastRHM(self.module, self.precision, self.device)
        if self.engine == "compile":
            from .compile_engine import CompiledRHM
            run = CompiledRHM(self.module, self.device, self.precision, (h, w))
            with torch.inference_mode():
                run(torch.zeros(shape, device=self.device))  # compile now, timed as the build
            return run
        onnx = self._export(h, w)
        if self.engine == "onnxruntime":
            from .onnx_engine import OnnxRHM
            return OnnxRHM(onnx, self.config, (h, w), self.device, threads=self.threads)
        if self.engine == "openvino":
            from .openvino_engine import OpenVinoRHM
            return OpenVinoRHM(onnx, self.config, shape, self.precision, threads=self.threads,
                               cache_dir=onnx.parent / "openvino", int8_dir=onnx.parent / "int8")
        from .tensorrt_engine import TensorRTRHM  # only module that imports tensorrt
        return TensorRTRHM(onnx, self.config, (h, w), self.device, precision=self.precision,
                           micro_batch=self.micro_batch,
                           cache_dir=self._cache_dir and self._cache_dir / "tensorrt").prepare()

    def _export(self, h: int, w: int) -> Path:
        """The module's ONNX graph for h x w: exported into the engine's cache folder,
        or, without one, found in or added to the user's cache (keyed by the weights,
        the config and the torch and frerec_fast versions; an export costs seconds)."""
        from ..model import export_onnx
        c = self.config.in_channels
        if self._cache_dir is not None:
            path = self.cache_dir() / f"rhm_{h}x{w}.onnx"
        else:
            path = export_cache_dir() / f"rhm_{_export_key(self.module)}_{c}x{h}x{w}.onnx"
            if path.is_file():
                return path
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer: sizes become constants, by design
            return export_onnx(self.module, path, (1, c, h, w))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"the RHM takes [B, C, H, W] batches, got shape {tuple(x.shape)}")
        c = getattr(self.config, "in_channels", x.shape[1])
        if x.shape[1] != c:
            raise ValueError(f"the RHM takes {c} channel(s), got {x.shape[1]} ({tuple(x.shape)})")
        run = self.runner(x.shape[-2], x.shape[-1])
        mb, out = self.micro_batch, []
        with torch.inference_mode(), self._ring_backend():
            for i in range(0, x.shape[0], mb):
                part = x[i:i + mb].float()
                real = part.shape[0]
                if real < mb:  # pad with copies of the last tile: the shape stays fixed
                    part = torch.cat([part, part[-1:].expand(mb - real, *part.shape[1:])])
                out.append(run(part.contiguous())[:real])
        return torch.cat(out) if out else x.new_empty(x.shape)

    def _ring_backend(self):
        if self.ring_backend is None or self.engine != "eager":
            return contextlib.nullcontext()
        from ..model.fesa import ring_backend
        return ring_backend(self.ring_backend)


def export_cache_dir() -> Path:
    """$XDG_CACHE_HOME/frerec_fast/onnx (default ~/.cache/frerec_fast/onnx)."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "frerec_fast" / "onnx"


def _export_key(module: torch.nn.Module) -> str:
    from .. import __version__
    from ..pipeline.record import model_digest
    h = hashlib.sha256(f"{model_digest(module)}|{torch.__version__}|{__version__}".encode())
    return h.hexdigest()[:24]


def load_rhm(path: str | os.PathLike | None = None, device: str | torch.device = "cpu",
             engine: str = "auto", precision: str = "fp32", *, micro_batch: int | None = None,
             cache_dir: str | os.PathLike | None = None,
             threads: int | None = None) -> RHMEngine:
    """An RHM checkpoint (None: the model shipped with the package) as a callable engine.

    engine: "auto" (default: the fastest installed for the device, see ``names``),
    "eager", "compile", "onnxruntime", "openvino" or "tensorrt". precision: "fp32",
    "bf16" or "fp16" where the engine and device run it (errors say which do), or
    "int8" (OpenVINO on CPU, with NNCF: quantised on first use, calibrated on real
    training slices and cached beside the ONNX export; docs/engines.md).
    Returns an ``RHMEngine``: ``engine(x)`` for x [B, C, H, W] float32; the module is
    ``engine.module``. Outputs agree with eager fp32 to float tolerance, not bit for bit.
    """
    from ..allocator import tune
    from ..devices import resolve_device
    from ..model.checkpoint import load_rhm as load_module

    tune()  # glibc: page faults otherwise halve the eager engine's speed (docs/engines.md)
    dev = resolve_device(device)
    check_engine_device(engine, precision, dev)  # before the weights are read
    if path is None:
        from ..training.default import default_model_path
        path = default_model_path()
    return RHMEngine(load_module(path, device=dev), engine, precision, dev,
                     micro_batch=micro_batch, cache_dir=cache_dir, threads=threads)
