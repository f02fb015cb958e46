"""Engine and precision names, which engine runs which precision on which device, and
what "auto" picks.

"auto" takes the first engine of its device's order that is installed (the
measurements behind the order: docs/engines.md):
  CPU:  openvino, onnxruntime, eager   (2 cores, shipped model, micro-batch 8, fp32:
        OpenVINO the fastest at the 64x64 working size; "compile" gains as little and
        costs 15-50 s of compilation per input size, so it is asked for by name only)
  CUDA: tensorrt, eager                (no GPU run here has measured compile or the
        onnxruntime CUDA provider against eager yet, so auto does not pick them)
It keeps the precision asked for: "int8" is OpenVINO's alone (with NNCF installed).
"""
from __future__ import annotations

import importlib.util

import torch

ENGINES = ("auto", "eager", "compile", "onnxruntime", "openvino", "tensorrt")
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# Earlier releases called the eager engine "torch": still accepted.
ALIASES = {"torch": "eager"}
# Precisions each engine can run, per device type.
SUPPORTED = {
    "eager": {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16", "fp16")},
    "compile": {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "bf16", "fp16")},
    "onnxruntime": {"cpu": ("fp32",), "cuda": ("fp32",)},
    # int8: NNCF post-training quantisation of the convolutions and matrix products,
    # calibrated on real training slices (openvino_int8.py).
    "openvino": {"cpu": ("fp32", "bf16", "int8")},
    "tensorrt": {"cuda": ("fp32", "fp16", "bf16")},
}
AUTO_ORDER = {"cpu": ("openvino", "onnxruntime", "eager"), "cuda": ("tensorrt", "eager")}
# The Python module each engine needs, and what to install for it.
_NEEDS = {"compile": None, "eager": None, "onnxruntime": ("onnxruntime", "pip install onnxruntime "
                                                          "(onnxruntime-gpu for CUDA)"),
          "openvino": ("openvino", "pip install openvino"),
          "tensorrt": ("tensorrt", "pip install tensorrt-cu13 (needs a CUDA GPU)")}
# What a precision needs on top of its engine's package.
_PRECISION_NEEDS = {"int8": ("nncf", "pip install nncf (or pip install 'frerec_fast[openvino]')")}


def canonical(engine: str) -> str:
    """The engine's canonical name ("torch" -> "eager"); unknown names are refused."""
    engine = ALIASES.get(engine, engine)
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {ENGINES}")
    return engine


def check_engine_settings(engine: str, precision: str) -> None:
    """Refuse an unknown engine or precision, or a pair no device can run (the device
    checks come with ``check_engine_device``)."""
    engine = canonical(engine)
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {PRECISIONS}")
    if engine != "auto" and not any(precision in p for p in SUPPORTED[engine].values()):
        able = sorted(e for e, d in SUPPORTED.items() if any(precision in p for p in d.values()))
        raise ValueError(f"engine {engine!r} does not run precision={precision!r}; engines "
                         f"that do: {', '.join(able)}")


def installed(engine: str) -> bool:
    """Whether the package ``engine`` needs can be imported here."""
    need = _NEEDS.get(engine)
    return need is None or _importable(need[0])


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module blocked in sys.modules, a broken install
        return False


def check_engine_device(engine: str, precision: str, device: torch.device) -> str:
    """The engine that will run (``auto`` resolved) for ``precision`` on ``device``, or a
    ValueError / ImportError naming the fix."""
    check_engine_settings(engine, precision)
    engine, dev = canonical(engine), torch.device(device)
    if engine == "auto":
        engine = _auto(precision, dev)
        if precision not in SUPPORTED[engine].get(dev.type, ()):
            able = [e for e in AUTO_ORDER.get(dev.type, ()) if precision in
                    SUPPORTED[e].get(dev.type, ())]
            needs = [_NEEDS[e][1] for e in able if _NEEDS[e]]
            needs += [_PRECISION_NEEDS[precision][1]] if precision in _PRECISION_NEEDS else []
            raise ValueError(f"no engine installed here runs precision={precision!r} on "
                             f"{dev.type}" + (f"; {', '.join(able)} would: {'; '.join(needs)}"
                                              if able else ""))
    devices = SUPPORTED[engine]
    if dev.type not in devices:
        raise ValueError(f"engine {engine!r} runs on {' or '.join(devices)} only, not "
                         f"{dev.type}; on {dev.type} use one of "
                         f"{', '.join(e for e, d in SUPPORTED.items() if dev.type in d)}")
    if precision not in devices[dev.type]:
        raise ValueError(f"engine {engine!r} on {dev.type} runs {', '.join(devices[dev.type])}, "
                         f"not precision={precision!r}")
    if precision == "bf16" and dev.type == "cuda" and torch.cuda.get_device_capability(dev)[0] < 8:
        raise ValueError(f"{torch.cuda.get_device_name(dev)} has no bf16; use 'fp16' or 'fp32'")
    if not installed(engine):
        mod, hint = _NEEDS[engine]
        raise ImportError(f"engine {engine!r} needs the Python package {mod!r}, which is not "
                          f"installed: {hint}")
    if precision in _PRECISION_NEEDS and not _importable(_PRECISION_NEEDS[precision][0]):
        mod, hint = _PRECISION_NEEDS[precision]
        raise ImportError(f"precision={precision!r} needs the Python package {mod!r} (its "
                          f"post-training quantisation), which is not installed: {hint}")
    if engine == "openvino" and precision == "bf16" and not openvino_has_bf16():
        raise ValueError("this CPU has no bf16 units (OpenVINO reports no BF16 capability); "
                         "use precision='fp32'")
    return engine


def _auto(precision: str, dev: torch.device) -> str:
    for engine in AUTO_ORDER.get(dev.type, ("eager",)):
        if not installed(engine) or precision not in SUPPORTED[engine].get(dev.type, ()):
            continue
        if engine == "openvino" and precision == "bf16" and not openvino_has_bf16():
            continue
        if precision in _PRECISION_NEEDS and not _importable(_PRECISION_NEEDS[precision][0]):
            continue
        return engine
    return "eager"


def openvino_has_bf16() -> bool:
    """Whether OpenVINO's CPU plugin reports native bf16 on this machine."""
    import openvino as ov
    return "BF16" in ov.Core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
