"""The TensorRT engine of the RHM: its ONNX export built into a TensorRT plan, cached on disk.

Nothing imports this module at package import time; the engine loader imports it when
engine="tensorrt" is asked for. TensorRT itself is imported only when a TensorRTRHM is
made (``import_tensorrt``), with an install hint when it is missing.

Written against the Python API of TensorRT 10.x as documented for 10.15 (docs.nvidia.com
python-api: Builder, IBuilderConfig, IOptimizationProfile, ITimingCache, OnnxParser,
Runtime, IExecutionContext; the name-based tensor API of 10.0). It was never run here:
no machine of this project can install TensorRT (see /work/shared/FACTS.md), so the
calls sit in one thin adapter, ``_TRTAdapter``, and the logic around them (cache key,
plan cache, chunking, checks) is tested with a fake adapter. TensorRT 11 removed the
weak-typing builder flags (BuilderFlag.FP16/BF16): there precision="fp16"/"bf16" is
refused with a clear error and only "fp32" builds.

Layout of ``cache_dir`` (default ``$XDG_CACHE_HOME/frerec_fast/tensorrt``, else
``~/.cache/frerec_fast/tensorrt``):
  <key>.plan   the serialized engine
  <key>.json   what it is (key fields, plan SHA-256, build time); written last, so a plan
               without its sidecar, or with another checksum, is rebuilt
  timing.cache TensorRT's layer-timing cache, shared by builds (it speeds up rebuilds)
"""
from __future__ import annotations

import functools
import hashlib
import importlib
import json
import os
import time
from pathlib import Path

import torch

from ..io import atomic_write_bytes, atomic_write_text
from ..optional import optional_import

TRT_EXTRA = "tensorrt-cu13"  # the CUDA 13 wheel, to match the cu130 torch of the GPU machines
PRECISIONS = ("fp32", "fp16", "bf16")
INPUT, OUTPUT = "x", "y"  # the tensor names export_onnx gives the graph
TIMING_CACHE = "timing.cache"
OPS_FILE = Path(__file__).with_name("tensorrt_onnx_ops.json")
# Bumped when what a plan depends on changes outside the key's fields (builder settings).
_KEY_FORMAT = 1
# Builder flags (TensorRT BuilderFlag names) to set and to clear per precision. "fp32"
# clears TF32 (on by default in TensorRT) so that it means float32 arithmetic, as in
# torch's default for matrix products (torch.backends.cuda.matmul.allow_tf32 is False).
_FLAGS = {"fp32": ((), ("TF32",)), "fp16": (("FP16",), ()), "bf16": (("BF16",), ())}


def import_tensorrt():
    """The ``tensorrt`` module, or ImportError saying what to install."""
    try:
        return importlib.import_module("tensorrt")
    except ImportError as e:
        raise ImportError(f"tensorrt is needed for engine='tensorrt' but is not installed: "
                          f"pip install {TRT_EXTRA} (TensorRT runs on NVIDIA CUDA GPUs only; "
                          "on other machines use engine='torch' or 'onnxruntime')") from e


def default_cache_dir() -> Path:
    """Where plans are cached: $XDG_CACHE_HOME/frerec_fast/tensorrt, else ~/.cache/..."""
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "frerec_fast" / "tensorrt"


def engine_cache_key(model_sha256: str, gpu_name: str, trt_version: str, precision: str,
                     size: tuple[int, int], channels: int, micro_batch: int) -> str:
    """SHA-256 hex digest of everything a plan depends on; stable across runs and machines.

    A plan is valid only for the model bytes, GPU model and TensorRT version it was built
    with, and fixes precision, H x W, C and the batch range 1..micro_batch.
    """
    fields = {"format": _KEY_FORMAT, "model_sha256": str(model_sha256), "gpu": str(gpu_name),
              "tensorrt": str(trt_version), "precision": str(precision),
              "size": [int(s) for s in size], "channels": int(channels),
              "micro_batch": int(micro_batch)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()


@functools.lru_cache(maxsize=1)
def supported_onnx_ops() -> dict:
    """The parsed ``tensorrt_onnx_ops.json``: {"source", "tensorrt_version", "ops": {op: notes},
    "not_supported": [...], "newer_tensorrt": {op: first TensorRT version}, ...}."""
    return json.loads(OPS_FILE.read_text())


def unsupported_onnx_ops(onnx_path: str | os.PathLike) -> list[str]:
    """Operators of the ONNX graph at ``onnx_path`` that TensorRT's ONNX parser lacks, sorted.

    Walks the main graph, subgraphs (If/Loop/Scan bodies) and model-local functions (a
    node calling one is replaced by its body). Each entry is an op type; ops of another
    domain read "domain::Op"; ops that a later TensorRT parses carry it, e.g.
    "DFT (TensorRT >= 11.2)". [] means every op is in the list (its notes may still
    restrict attributes; the parser has the last word).
    """
    onnx = optional_import("onnx", "checking an ONNX graph against TensorRT's operator list")
    model = onnx.load(str(onnx_path), load_external_data=False)
    table = supported_onnx_ops()
    functions = {(f.domain, f.name): f for f in model.functions}
    found: set[str] = set()
    seen_functions: set[tuple[str, str]] = set()

    def walk(nodes) -> None:
        for node in nodes:
            fn = (node.domain, node.op_type)
            if fn in functions:
                if fn not in seen_functions:
                    seen_functions.add(fn)
                    walk(functions[fn].node)
                continue
            if node.domain in ("", "ai.onnx"):
                if node.op_type not in table["ops"]:
                    newer = table["newer_tensorrt"].get(node.op_type)
                    found.add(f"{node.op_type} (TensorRT >= {newer})" if newer else node.op_type)
            else:
                found.add(f"{node.domain}::{node.op_type}")
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g.node)
                elif attr.type == onnx.AttributeProto.GRAPHS:
                    for g in attr.graphs:
                        walk(g.node)

    walk(model.graph.node)
    return sorted(found)


class _TRTAdapter:
    """The only code that calls TensorRT: its 10.x Python API as documented for 10.15, and
    as the bindings (NVIDIA/TensorRT python/src: pyCore.cpp, pyOnnx.cpp) and samples
    (samples/python/common_runtime.py) use it. Never run: see the module docstring.

    TensorRTRHM drives it; tests replace it with a fake of the same methods. The objects
    it hands back (parsed network, loaded engine) are opaque to the caller.
    """

    device_types = ("cuda",)

    def __init__(self):
        self.trt = trt = import_tensorrt()
        if not torch.cuda.is_available():
            raise ValueError("engine='tensorrt' needs a CUDA GPU, and none is visible to torch")
        self.version = str(trt.__version__)
        self.logger = trt.Logger(trt.Logger.WARNING)
        # The parser imports ScatterElements with reduction='add' (FESA's ring pooling) as
        # a plugin of TensorRT's standard library, which must be registered first.
        trt.init_libnvinfer_plugins(self.logger, "")

    def gpu_name(self, device: torch.device) -> str:
        return torch.cuda.get_device_name(device)

    def has_flag(self, name: str) -> bool:
        return hasattr(self.trt.BuilderFlag, name)

    def parse(self, onnx_bytes: bytes, onnx_path: str):
        """((builder, network, parser) or None, the parser's error messages)."""
        trt = self.trt
        builder = trt.Builder(self.logger)
        network = builder.create_network()  # explicit batch: the only mode since 10.0
        parser = trt.OnnxParser(network, self.logger)
        # The path lets the parser find external weight files beside the model.
        if parser.parse(onnx_bytes, onnx_path):
            return (builder, network, parser), []
        return None, [str(parser.get_error(i)) for i in range(parser.num_errors)]

    def build(self, parsed, flags_on, flags_off, shapes, timing_cache: bytes | None):
        """(plan bytes or None if the build failed, timing cache bytes).

        shapes: (min, opt, max) of the input "x" for the one optimisation profile.
        """
        trt = self.trt
        builder, network, _parser = parsed  # the parser owns state the network refers to
        config = builder.create_builder_config()
        for name in flags_on:
            config.set_flag(getattr(trt.BuilderFlag, name))
        for name in flags_off:
            if hasattr(trt.BuilderFlag, name):  # a flag TensorRT no longer has is off
                config.clear_flag(getattr(trt.BuilderFlag, name))
        profile = builder.create_optimization_profile()
        profile.set_shape(INPUT, *shapes)
        config.add_optimization_profile(profile)
        # A cache from another TensorRT version or GPU is refused (None / False): start empty.
        cache = config.create_timing_cache(timing_cache) if timing_cache else None
        if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
            cache = config.create_timing_cache(b"")
            config.set_timing_cache(cache, ignore_mismatch=False)
        plan = builder.build_serialized_network(network, config)
        return (None if plan is None else bytes(plan)), bytes(cache.serialize())

    def load(self, plan: bytes, device: torch.device):
        """(runtime, engine, execution context) of the plan on ``device``, or None if
        TensorRT refuses it. All three are kept: a runtime must outlive its engines."""
        with torch.cuda.device(device):
            runtime = self.trt.Runtime(self.logger)
            engine = runtime.deserialize_cuda_engine(plan)
            if engine is None:
                return None
            return runtime, engine, engine.create_execution_context()

    def run(self, loaded, x: torch.Tensor, out: torch.Tensor) -> None:
        """out = RHM(x), queued on the current stream of x's device; both contiguous float32."""
        context = loaded[2]
        with torch.cuda.device(x.device):
            if not context.set_input_shape(INPUT, tuple(x.shape)):
                raise RuntimeError(f"TensorRT refused input shape {tuple(x.shape)}")
            shape = tuple(context.get_tensor_shape(OUTPUT))
            if shape != tuple(out.shape):
                raise RuntimeError(f"TensorRT engine gives {OUTPUT} of shape {shape}, "
                                   f"expected {tuple(out.shape)}")
            context.set_tensor_address(INPUT, x.data_ptr())
            context.set_tensor_address(OUTPUT, out.data_ptr())
            if not context.execute_async_v3(torch.cuda.current_stream(x.device).cuda_stream):
                raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")


class TensorRTRHM:
    """An RHM exported to ONNX and run by TensorRT, called like the module.

    __call__(x: [B, C, H, W] float32 CUDA tensor, C = config.in_channels, H x W = size)
        -> [B, C, H, W] float32 on x's device, run in chunks of at most ``micro_batch``.

    The plan is built for batch 1..micro_batch (optimised for micro_batch) on first use,
    or read from ``cache_dir`` when one with the same key exists (``engine_cache_key``;
    ``model_sha256`` defaults to the SHA-256 of the ONNX file). ``build_seconds`` is the
    build time of that first use, None on a cache hit (and before first use).
    precision: "fp32" (TF32 off), "fp16" or "bf16" (TensorRT may pick those kernels
    per layer, TensorRT 10.x only). ``adapter`` replaces the TensorRT calls (tests).
    """

    def __init__(self, onnx_path: str | os.PathLike, config, size: tuple[int, int],
                 device: torch.device, precision: str = "fp16", micro_batch: int = 8,
                 cache_dir: str | os.PathLike | None = None, model_sha256: str | None = None,
                 adapter=None):
        if precision not in PRECISIONS:
            raise ValueError(f"unknown precision {precision!r} for engine='tensorrt'; "
                             f"choose one of {PRECISIONS}")
        if int(micro_batch) < 1:
            raise ValueError(f"micro_batch must be >= 1, got {micro_batch}")
        self.device = torch.device(device)
        if adapter is None:
            if self.device.type != "cuda":  # before the import: say what is wrong first
                raise ValueError(f"engine='tensorrt' runs on CUDA devices only, got "
                                 f"device={str(self.device)!r}; use engine='torch' or 'onnxruntime'")
            adapter = _TRTAdapter()
            if self.device.index is None:  # the plan is loaded on one GPU: name it
                self.device = torch.device("cuda", torch.cuda.current_device())
        flags_on, _ = _FLAGS[precision]
        missing = [name for name in flags_on if not adapter.has_flag(name)]
        if missing:
            raise ValueError(f"TensorRT {adapter.version} has no BuilderFlag.{missing[0]} (TensorRT "
                             f"11 builds strongly typed networks only), so precision={precision!r} "
                             "cannot be asked for; use precision='fp32' or TensorRT 10.x")
        self.onnx_path, self.config = Path(onnx_path), config
        self.size, self.channels = (int(size[0]), int(size[1])), int(config.in_channels)
        self.precision, self.micro_batch = precision, int(micro_batch)
        self.cache_dir = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        self.model_sha256 = model_sha256
        self.adapter = adapter
        self.key: str | None = None
        self.plan_path: Path | None = None
        self.build_seconds: float | None = None
        self._loaded = None

    def prepare(self) -> "TensorRTRHM":
        """Load the plan from the cache or build it (what the first call does); returns self."""
        if self._loaded is not None:
            return self
        onnx_bytes = self.onnx_path.read_bytes()
        if self.model_sha256 is None:
            self.model_sha256 = hashlib.sha256(onnx_bytes).hexdigest()
        gpu = self.adapter.gpu_name(self.device)
        self.key = engine_cache_key(self.model_sha256, gpu, self.adapter.version, self.precision,
                                    self.size, self.channels, self.micro_batch)
        self.plan_path = self.cache_dir / f"{self.key}.plan"
        plan = self._cached_plan()
        if plan is None:
            plan = self._build(onnx_bytes, gpu)
        loaded = self.adapter.load(plan, self.device)
        if loaded is None:
            raise RuntimeError(f"TensorRT could not load the plan {self.plan_path} (see the "
                               "TensorRT log); delete it to rebuild")
        self._loaded = loaded
        return self

    def _cached_plan(self) -> bytes | None:
        """The cached plan if it and its sidecar agree, else None (a miss)."""
        sidecar = self.plan_path.with_suffix(".json")
        try:
            meta = json.loads(sidecar.read_text())
            plan = self.plan_path.read_bytes()
        except (OSError, ValueError):
            return None
        if meta.get("plan_sha256") != hashlib.sha256(plan).hexdigest():
            return None
        return plan

    def _build(self, onnx_bytes: bytes, gpu: str) -> bytes:
        flags_on, flags_off = _FLAGS[self.precision]
        c, (h, w), mb = self.channels, self.size, self.micro_batch
        shapes = ((1, c, h, w), (mb, c, h, w), (mb, c, h, w))
        timing_path = self.cache_dir / TIMING_CACHE
        timing = timing_path.read_bytes() if timing_path.is_file() else None
        t0 = time.perf_counter()
        parsed, errors = self.adapter.parse(onnx_bytes, str(self.onnx_path))
        if errors or parsed is None:
            raise ValueError(f"TensorRT's ONNX parser rejected {self.onnx_path}:\n  "
                             + "\n  ".join(errors or ["(no message)"]))
        plan, timing = self.adapter.build(parsed, flags_on, flags_off, shapes, timing)
        if plan is None:
            raise RuntimeError(f"TensorRT failed to build an engine from {self.onnx_path} "
                               "(see the TensorRT log)")
        self.build_seconds = time.perf_counter() - t0
        meta = {"key": self.key, "model_sha256": self.model_sha256, "gpu": gpu,
                "tensorrt": self.adapter.version, "precision": self.precision,
                "size": list(self.size), "channels": c, "micro_batch": mb,
                "profile": {"min": shapes[0], "opt": shapes[1], "max": shapes[2]},
                "onnx": str(self.onnx_path), "plan_sha256": hashlib.sha256(plan).hexdigest(),
                "build_seconds": round(self.build_seconds, 3)}
        # Plan first, sidecar last: a sidecar names a complete plan (see _cached_plan).
        atomic_write_bytes(self.plan_path, plan)
        atomic_write_text(self.plan_path.with_suffix(".json"), json.dumps(meta, indent=1))
        if timing:
            atomic_write_bytes(timing_path, timing)
        return plan

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.channels or tuple(x.shape[-2:]) != self.size:
            raise ValueError(f"the TensorRT engine was built for [B, {self.channels}, {self.size[0]}, "
                             f"{self.size[1]}] inputs, got {tuple(x.shape)}")
        if x.device.type not in self.adapter.device_types or (
                self.device.index is not None and x.device.index != self.device.index):
            raise ValueError(f"this TensorRT engine runs on {self.device} tensors, got one on {x.device}")
        x = x.detach().float().contiguous()
        out = torch.empty_like(x)
        if x.shape[0] == 0:
            return out
        self.prepare()
        # Row slices of a contiguous [B, ...] tensor are contiguous: the engine writes in place.
        for i in range(0, x.shape[0], self.micro_batch):
            j = min(i + self.micro_batch, x.shape[0])
            self.adapter.run(self._loaded, x[i:j], out[i:j])
        return out
