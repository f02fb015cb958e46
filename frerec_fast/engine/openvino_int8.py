"""int8 post-training quantisation of the RHM's OpenVINO model with NNCF, calibrated on
real images, and its on-disk cache.

What is quantised: the inputs and weights of the convolutions and matrix products only
(``IGNORED_TYPES`` keeps every element-wise op, reduction and softmax in float). NNCF's
default placement also quantises the element-wise ops, among them the channel
LayerNorms, which the ONNX graph spells as ReduceMean, Sub, Pow, Sqrt and Div: that cost
the shipped model 12 dB (38 dB against eager fp32 on held-out real slices at 64x64,
below the 40 dB the engine must keep; 50 dB with this recipe; docs/engines.md).

Calibration set: ``CALIBRATION_COUNT`` real slices of the bundled *training* split,
evenly spaced in ``datasets.list_images("train")`` order (CT then MRI), resized to the
engine's H x W. The held-out split, on which the tests and the benchmark measure PSNR,
is never used to calibrate.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..model._consts import default_file_mode
from ..optional import optional_import
from .openvino_rewrite import split_chunked_convs

CALIBRATION_COUNT = 64
# OpenVINO op types kept in float: everything but Convolution, GroupConvolution, MatMul.
IGNORED_TYPES = ("Add", "Multiply", "Subtract", "Divide", "Power", "Sqrt", "ReduceMean",
                 "Softmax", "Concat")
# Bumped whenever the recipe (what is quantised, how) changes: part of the cache key.
RECIPE = "v2:split-chunked-convs:conv+matmul-only:performance-preset:fast-bias-correction"


def calibration_images(channels: int, h: int, w: int,
                       count: int = CALIBRATION_COUNT) -> torch.Tensor:
    """The calibration set: [count, channels, h, w] float32 in [0, 1].

    ``count`` slices of the bundled real training split (64x64, 16-bit), evenly spaced
    so that both modalities are in it, resized to h x w as the engine benchmark resizes
    its held-out slices (bicubic, clamped to [0, 1]); grayscale repeated for RGB models.
    """
    from ..datasets import load_images
    train = load_images("train")
    rows = np.linspace(0, len(train) - 1, min(count, len(train))).round().astype(int)
    x = train[torch.from_numpy(rows)]
    if tuple(x.shape[-2:]) != (h, w):
        x = F.interpolate(x, size=(h, w), mode="bicubic", align_corners=False).clamp(0, 1)
    return x.expand(-1, channels, -1, -1).contiguous()


def calibration_batches(images: torch.Tensor, batch: int) -> list[np.ndarray]:
    """images [N, C, H, W] as ceil(N / batch) arrays of [batch, C, H, W] (the model's
    static shape); the last one is filled up from the start of the set."""
    n = images.shape[0]
    order = np.arange(-(-n // batch) * batch) % n
    return [images[order[i:i + batch]].numpy() for i in range(0, len(order), batch)]


def cache_key(onnx_path: Path, shape: tuple[int, ...], images: torch.Tensor) -> str:
    """Digest of what decides the quantised model: the ONNX graph's bytes (weights and
    config), the static shape, the calibration images, the recipe and the NNCF and
    OpenVINO versions."""
    import nncf
    import openvino as ov
    h = hashlib.sha256()
    with open(onnx_path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    calib = hashlib.sha256(images.numpy().tobytes()).hexdigest()
    h.update(json.dumps([list(shape), calib, RECIPE, nncf.__version__, ov.get_version()]).encode())
    return h.hexdigest()[:24]


def quantized_model(core, onnx_path: str | Path, shape: tuple[int, int, int, int],
                    cache_dir: str | Path):
    """The int8 OpenVINO model of an RHM ONNX file for inputs of exactly ``shape``:
    read from ``cache_dir`` when a previous build left it there, else quantised with
    NNCF (seconds at 64x64 for the shipped model, a minute or more at 256x256) and
    saved there (a folder per key, written aside and renamed into place). Float
    constants are saved as they are (no fp16 compression)."""
    nncf = optional_import("nncf", "the int8 OpenVINO RHM engine")
    ov = optional_import("openvino", "the int8 OpenVINO RHM engine")
    onnx_path, shape = Path(onnx_path), tuple(int(s) for s in shape)
    images = calibration_images(shape[1], shape[2], shape[3])
    folder = Path(cache_dir) / f"rhm_int8_{cache_key(onnx_path, shape, images)}"
    xml = folder / "model.xml"
    if xml.is_file():
        return core.read_model(str(xml))
    model = core.read_model(str(onnx_path))
    model.reshape({0: list(shape)})
    split_chunked_convs(model)  # before NNCF, so that each chunk's convs get quantisers
    data = calibration_batches(images, shape[0])
    with _quiet(nncf):
        q = nncf.quantize(model, nncf.Dataset(data), preset=nncf.QuantizationPreset.PERFORMANCE,
                          subset_size=len(data), fast_bias_correction=True,
                          ignored_scope=nncf.IgnoredScope(types=list(IGNORED_TYPES),
                                                          validate=False))
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        ov.save_model(q, str(tmp / "model.xml"), compress_to_fp16=False)
        (tmp / "calibration.json").write_text(json.dumps(
            {"recipe": RECIPE, "shape": list(shape), "count": len(images),
             "source": "frerec_fast/data/real/train (evenly spaced), bicubic to H x W",
             "nncf": nncf.__version__, "openvino": ov.get_version(),
             "onnx": onnx_path.name}, indent=1))
        # mkdtemp's 0o700 would hide a shared cache: the modes open() and mkdir() give.
        mode = default_file_mode()
        for f in tmp.iterdir():
            os.chmod(f, mode)
        os.chmod(tmp, mode | (mode & 0o444) >> 2)  # x wherever r
        try:
            os.replace(tmp, folder)
        except OSError:  # another process put the same key there first: keep its copy
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    # Read back what was saved (save_model normalises the graph): the first build and
    # every cache hit then run the same model and give the same bytes.
    return core.read_model(str(xml))


@contextlib.contextmanager
def _quiet(nncf):
    """NNCF logs a line per op it leaves alone, and draws its progress bars (rich) on
    stdout whatever the log level: a run's own progress bar and report own the
    terminal, and the build time is reported anyway (``RHMEngine.build_seconds``)."""
    logger = logging.getLogger("nncf")
    level = logger.level
    nncf.set_log_level(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        nncf.set_log_level(level)
