"""The TensorRT engine: ONNX operator coverage of the exported RHM, the install hint, and
the builder logic (plan cache, key, profile, flags, timing cache, parser errors,
chunking) driven through a fake adapter. TensorRT cannot be installed on any machine of
this project (FACTS.md), so the fake stands in for ``_TRTAdapter``, the only code that
calls TensorRT; nothing here runs TensorRT itself."""
import hashlib
import importlib.util
import json
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

from frerec_fast.engine import tensorrt_engine as te
from frerec_fast.engine.tensorrt_engine import TensorRTRHM, engine_cache_key, unsupported_onnx_ops

onnx = pytest.importorskip("onnx", reason="onnx not installed (pip install onnx): the ONNX "
                           "operator checks are untested here")
HAVE_TRT = importlib.util.find_spec("tensorrt") is not None


# --- operator coverage -------------------------------------------------------------------

def test_shipped_rhm_graph_uses_only_supported_ops(tmp_path):
    from frerec_fast.model import export_onnx, load_rhm
    from frerec_fast.training import default_model_path

    path = export_onnx(load_rhm(default_model_path()), tmp_path / "rhm.onnx", (1, 1, 64, 64))
    assert unsupported_onnx_ops(path) == []


def test_tiny_rhm_graph_uses_only_supported_ops(tmp_path):
    """Three channels, another size and opset 18 (reduction axes become inputs there).
    Untrained: the op types do not depend on the weights, and training costs 12 s here."""
    from frerec_fast.model import RHM, RHMConfig, export_onnx
    from tiny_models import TINY

    model = RHM(RHMConfig(in_channels=3, **TINY)).eval()
    path = export_onnx(model, tmp_path / "tiny.onnx", (1, 3, 32, 48), opset=18)
    assert unsupported_onnx_ops(path) == []


def test_ops_missing_from_the_list_are_flagged(tmp_path):
    """Main graph, an If branch, a model-local function and another domain are all walked."""
    h, tp = onnx.helper, onnx.TensorProto
    then_g = h.make_graph([h.make_node("BitShift", ["a", "a"], ["t"], direction="LEFT")], "then",
                          [], [h.make_tensor_value_info("t", tp.UINT8, [1])])
    else_g = h.make_graph([h.make_node("Identity", ["a"], ["e"])], "else",
                          [], [h.make_tensor_value_info("e", tp.UINT8, [1])])
    fn = h.make_function("local", "MyDet", ["i"], ["o"], [h.make_node("Det", ["i"], ["o"])],
                         [h.make_opsetid("", 18)])
    nodes = [h.make_node("Conv", ["x", "w"], ["c"]),
             h.make_node("DFT", ["c"], ["f"]),
             h.make_node("Unique", ["f"], ["u"]),
             h.make_node("If", ["cond"], ["r"], then_branch=then_g, else_branch=else_g),
             h.make_node("MyDet", ["u"], ["d"], domain="local"),
             h.make_node("Foo", ["d"], ["y"], domain="com.example")]
    graph = h.make_graph(nodes, "g", [h.make_tensor_value_info("x", tp.FLOAT, [1, 1, 4, 4])],
                         [h.make_tensor_value_info("y", tp.FLOAT, None)])
    model = h.make_model(graph, functions=[fn], opset_imports=[
        h.make_opsetid("", 18), h.make_opsetid("local", 1), h.make_opsetid("com.example", 1)])
    onnx.save(model, tmp_path / "bad.onnx")
    assert unsupported_onnx_ops(tmp_path / "bad.onnx") == sorted(
        ["BitShift", "DFT (TensorRT >= 11.2)", "Det", "Unique", "com.example::Foo"])


def test_op_list_names_its_source():
    table = te.supported_onnx_ops()
    assert "onnx-tensorrt" in table["source"] and table["tensorrt_version"] == "10.15"
    assert {"Conv", "MatMul", "ScatterElements", "Softmax"} <= set(table["ops"])
    assert "DFT" not in table["ops"] and "DFT" in table["not_supported"]
    assert not set(table["ops"]) & set(table["not_supported"])


# --- without TensorRT --------------------------------------------------------------------

@pytest.mark.skipif(HAVE_TRT, reason="tensorrt is installed: the missing-package message is not reachable")
def test_missing_tensorrt_names_the_pip_package(tmp_path):
    with pytest.raises(ImportError, match=r"pip install tensorrt-cu13.*CUDA"):
        te.import_tensorrt()
    with pytest.raises(ImportError, match="tensorrt-cu13"):
        TensorRTRHM(tmp_path / "m.onnx", SimpleNamespace(in_channels=1), (64, 64), torch.device("cuda"))


def test_refuses_cpu_device_and_unknown_precision(tmp_path):
    cfg = SimpleNamespace(in_channels=1)
    with pytest.raises(ValueError, match="CUDA devices only"):
        TensorRTRHM(tmp_path / "m.onnx", cfg, (64, 64), torch.device("cpu"))
    with pytest.raises(ValueError, match="unknown precision 'int8'"):
        TensorRTRHM(tmp_path / "m.onnx", cfg, (64, 64), torch.device("cuda"), precision="int8")
    with pytest.raises(ValueError, match="micro_batch"):
        TensorRTRHM(tmp_path / "m.onnx", cfg, (64, 64), torch.device("cuda"), micro_batch=0)


def test_engine_package_does_not_import_the_tensorrt_module():
    code = ("import sys, frerec_fast.engine; "
            "sys.exit('frerec_fast.engine.tensorrt_engine' in sys.modules or 'tensorrt' in sys.modules)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


# --- builder logic, with a fake adapter --------------------------------------------------

class FakeAdapter:
    """Records the calls TensorRTRHM makes; "runs" the engine as y = 2x + 1 on any device."""

    device_types = ("cuda", "cpu")

    def __init__(self, version="10.15.1", gpu="NVIDIA H200", errors=(), fail_build=False,
                 flags=("FP16", "BF16", "TF32")):
        self.version, self.gpu, self.errors = version, gpu, list(errors)
        self.fail_build, self.flags, self.calls = fail_build, flags, []

    def gpu_name(self, device):
        return self.gpu

    def has_flag(self, name):
        return name in self.flags

    def parse(self, onnx_bytes, onnx_path):
        self.calls.append(("parse", onnx_path))
        return (None, self.errors) if self.errors else (("network", onnx_bytes), [])

    def build(self, parsed, flags_on, flags_off, shapes, timing_cache):
        self.calls.append(("build", tuple(flags_on), tuple(flags_off), shapes, timing_cache))
        plan = None if self.fail_build else b"PLAN " + hashlib.sha256(parsed[1]).digest()
        return plan, (timing_cache or b"") + b"+timed"

    def load(self, plan, device):
        self.calls.append(("load", plan))
        return ("runtime", "engine", plan)

    def run(self, loaded, x, out):
        assert loaded[1] == "engine" and x.is_contiguous() and out.is_contiguous()
        self.calls.append(("run", x.shape[0]))
        out.copy_(2 * x + 1)

    def names(self):
        return [c[0] for c in self.calls]


@pytest.fixture
def onnx_file(tmp_path):
    p = tmp_path / "rhm.onnx"
    p.write_bytes(b"not really onnx: the fake parser only hashes it")
    return p


def _rhm(onnx_file, cache, adapter, **kw):
    kw = {"config": SimpleNamespace(in_channels=3), "size": (24, 40), "device": torch.device("cpu"),
          "micro_batch": 4, **kw}
    return TensorRTRHM(onnx_file, cache_dir=cache, adapter=adapter, **kw)


def test_cache_miss_builds_once_then_a_second_engine_hits(onnx_file, tmp_path):
    cache, a1 = tmp_path / "cache", FakeAdapter()
    m1 = _rhm(onnx_file, cache, a1).prepare()
    x = torch.rand(2, 3, 24, 40)
    m1(x), m1(x)
    assert a1.names() == ["parse", "build", "load", "run", "run"]
    assert m1.build_seconds is not None and m1.build_seconds >= 0
    plan = m1.plan_path.read_bytes()
    meta = json.loads(m1.plan_path.with_suffix(".json").read_text())
    assert m1.plan_path == cache / f"{m1.key}.plan"
    assert meta["key"] == m1.key and meta["plan_sha256"] == hashlib.sha256(plan).hexdigest()
    assert (meta["precision"], meta["size"], meta["channels"], meta["micro_batch"]) == ("fp16", [24, 40], 3, 4)
    assert meta["model_sha256"] == hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    assert sorted(p.name for p in cache.iterdir()) == sorted([m1.plan_path.name, f"{m1.key}.json", "timing.cache"])

    a2 = FakeAdapter()
    m2 = _rhm(onnx_file, cache, a2)
    torch.testing.assert_close(m2(x), 2 * x + 1)
    assert a2.names() == ["load", "run"] and a2.calls[0][1] == plan
    assert m2.key == m1.key and m2.build_seconds is None


def test_a_damaged_plan_is_rebuilt(onnx_file, tmp_path):
    m1 = _rhm(onnx_file, tmp_path, FakeAdapter()).prepare()
    m1.plan_path.write_bytes(b"truncated")
    a2 = FakeAdapter()
    _rhm(onnx_file, tmp_path, a2).prepare()
    assert a2.names() == ["parse", "build", "load"]


def test_cache_key_changes_with_every_field():
    base = dict(model_sha256="ab" * 32, gpu_name="NVIDIA H200", trt_version="10.15.1",
                precision="fp16", size=(64, 64), channels=1, micro_batch=8)
    key = engine_cache_key(**base)
    assert len(key) == 64 and int(key, 16) >= 0 and engine_cache_key(**base) == key
    changes = dict(model_sha256="cd" * 32, gpu_name="NVIDIA H100 80GB HBM3", trt_version="10.14.0",
                   precision="bf16", size=(64, 128), channels=3, micro_batch=16)
    keys = {engine_cache_key(**{**base, name: value}) for name, value in changes.items()}
    assert len(keys) == len(changes) and key not in keys
    assert engine_cache_key(**{**base, "size": (128, 64)}) != engine_cache_key(**{**base, "size": (64, 128)})


@pytest.mark.parametrize("change", ["precision", "size", "micro_batch", "gpu", "version", "model_bytes"])
def test_a_changed_setting_misses_the_cache(onnx_file, tmp_path, change):
    m1 = _rhm(onnx_file, tmp_path, FakeAdapter()).prepare()
    adapter, kw = FakeAdapter(), {}
    if change == "precision":
        kw["precision"] = "bf16"
    elif change == "size":
        kw["size"] = (40, 24)
    elif change == "micro_batch":
        kw["micro_batch"] = 5
    elif change == "gpu":
        adapter.gpu = "NVIDIA A100-SXM4-80GB"
    elif change == "version":
        adapter.version = "10.14.0"
    else:
        onnx_file.write_bytes(onnx_file.read_bytes() + b" retrained")
    m2 = _rhm(onnx_file, tmp_path, adapter, **kw).prepare()
    assert m2.key != m1.key and "build" in adapter.names() and m2.build_seconds is not None
    assert m1.plan_path.is_file()  # the other plan stays cached


def test_given_model_sha256_is_the_key_not_the_file(onnx_file, tmp_path):
    m = _rhm(onnx_file, tmp_path, FakeAdapter(), model_sha256="ef" * 32).prepare()
    assert m.key == engine_cache_key("ef" * 32, "NVIDIA H200", "10.15.1", "fp16", (24, 40), 3, 4)


def test_optimisation_profile_is_one_to_micro_batch(onnx_file, tmp_path):
    a = FakeAdapter()
    _rhm(onnx_file, tmp_path, a, micro_batch=6).prepare()
    (shapes,) = [c[3] for c in a.calls if c[0] == "build"]
    assert shapes == ((1, 3, 24, 40), (6, 3, 24, 40), (6, 3, 24, 40))


@pytest.mark.parametrize("precision,on,off", [("fp16", ("FP16",), ()), ("bf16", ("BF16",), ()),
                                              ("fp32", (), ("TF32",))])
def test_precision_sets_the_builder_flag(onnx_file, tmp_path, precision, on, off):
    a = FakeAdapter()
    _rhm(onnx_file, tmp_path, a, precision=precision).prepare()
    (build,) = [c for c in a.calls if c[0] == "build"]
    assert build[1:3] == (on, off)


def test_reduced_precision_refused_where_the_flag_is_gone(onnx_file, tmp_path):
    """TensorRT 11 removed BuilderFlag.FP16/BF16 (strong typing only)."""
    a = FakeAdapter(version="11.4.0", flags=("TF32",))
    with pytest.raises(ValueError, match=r"no BuilderFlag\.FP16.*precision='fp32'"):
        _rhm(onnx_file, tmp_path, a, precision="fp16")
    _rhm(onnx_file, tmp_path, a, precision="fp32").prepare()


def test_timing_cache_is_read_and_written(onnx_file, tmp_path):
    a1 = FakeAdapter()
    _rhm(onnx_file, tmp_path, a1).prepare()
    assert a1.calls[1][4] is None  # no cache file yet
    assert (tmp_path / "timing.cache").read_bytes() == b"+timed"
    a2 = FakeAdapter()
    _rhm(onnx_file, tmp_path, a2, precision="bf16").prepare()
    assert a2.calls[1][4] == b"+timed"
    assert (tmp_path / "timing.cache").read_bytes() == b"+timed+timed"


def test_parser_errors_are_raised_with_their_messages(onnx_file, tmp_path):
    msgs = ["In node 7 (importFoo): UNSUPPORTED_NODE: no importer for op Foo",
            "In node 9 (parseGraph): INVALID_NODE: bad input"]
    a = FakeAdapter(errors=msgs)
    with pytest.raises(ValueError, match="parser rejected") as info:
        _rhm(onnx_file, tmp_path, a)(torch.rand(1, 3, 24, 40))
    assert all(m in str(info.value) for m in msgs)
    assert "build" not in a.names() and not list(tmp_path.glob("*.plan"))


def test_a_failed_build_raises_and_caches_nothing(onnx_file, tmp_path):
    with pytest.raises(RuntimeError, match="failed to build"):
        _rhm(onnx_file, tmp_path / "c", FakeAdapter(fail_build=True)).prepare()
    assert not list(tmp_path.rglob("*.plan"))


@pytest.mark.parametrize("batch,runs", [(11, [4, 4, 3]), (4, [4]), (3, [3]), (0, [])])
def test_batches_are_run_in_micro_batch_chunks(onnx_file, tmp_path, device, batch, runs):
    a = FakeAdapter()
    m = _rhm(onnx_file, tmp_path, a, device=device)
    x = torch.rand(batch, 3, 24, 40, device=device)
    y = m(x)
    assert y.shape == x.shape and y.device == x.device and y.dtype == torch.float32
    torch.testing.assert_close(y, 2 * x + 1)
    assert [c[1] for c in a.calls if c[0] == "run"] == runs


def test_wrong_input_shape_is_refused(onnx_file, tmp_path):
    m = _rhm(onnx_file, tmp_path, FakeAdapter())
    for shape in [(2, 3, 40, 24), (2, 1, 24, 40), (3, 24, 40)]:
        with pytest.raises(ValueError, match=r"built for \[B, 3, 24, 40\]"):
            m(torch.rand(*shape))


def test_default_cache_dir_honours_xdg(monkeypatch, tmp_path):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert te.default_cache_dir() == tmp_path / "xdg" / "frerec_fast" / "tensorrt"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert te.default_cache_dir() == tmp_path / "home" / ".cache" / "frerec_fast" / "tensorrt"
    m = _rhm(tmp_path / "m.onnx", None, FakeAdapter())
    assert m.cache_dir == tmp_path / "home" / ".cache" / "frerec_fast" / "tensorrt"
