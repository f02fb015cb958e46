"""The fast ops as torch.library custom ops: every registered op passes
``torch.library.opcheck`` (schema, fake implementation, autograd registration, AOT
dispatch), each backend implements what the dispatch table says, ``torch.compile`` of
the RHM keeps the fast ring pooling, and the package has no import cycles."""
import ast
import os
from pathlib import Path

import pytest
import torch

import frerec_fast as ff
from frerec_fast import backends, reference
from frerec_fast.fast.ring_plan import ring_plan
from frerec_fast.model import RHM, RHMConfig
from frerec_fast.reference.rings import ring_sector_index
from frerec_fast.reference.spectral import bank_targets
from marks import needs_cpp
from tiny_models import TINY

PACKAGE = Path(ff.__file__).resolve().parent


def _cpu_backends() -> list[str]:
    return [b for b in ("cpp", "triton") if backends.unavailable_reason("shr", b, "cpu") is None]


def _op(name: str, backend: str):
    backends.implementations(backend)           # imports the backend's modules: registers
    return getattr(torch.ops.frerec, f"{name}_{backend}").default


def _spectral_cases():
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 10, 13, generator=g)
    mu_bank, sigma_bank = torch.rand(2, 4, 3, generator=g), torch.rand(2, 4, 3, generator=g)
    eps = torch.randn(2, 2, 3, generator=g)
    mu_hat, sigma_hat = bank_targets(mu_bank, sigma_bank, eps[0], eps[1])
    return [("band_stats", (x, 0.5, "complex")), ("band_stats", (x, 0.25, "amplitude")),
            ("shr", (x, mu_hat.float(), sigma_hat.float(), 0.5, "complex")),
            ("shr", (x, mu_hat.float(), sigma_hat.float(), 0.5, "amplitude"))]


def _ssim_cases(backend: str):
    g = torch.Generator().manual_seed(1)
    side = (11, 12) if backend == "triton" else (16, 17)   # the interpreter is slow
    q, db = torch.rand(3, 1, *side, generator=g), torch.rand(6, 1, *side, generator=g)
    cases = [("ssim_matrix", (q, db)), ("ssim_topk", (q, db, 4, None, 4096)),
             ("ssim_topk", (q, db, 9, torch.tensor([0, -1, 5]), 2))]
    if "ssim_pairs" in backends._COVERAGE[backend]:
        cases.append(("ssim_pairs", (q, db, torch.randint(0, 6, (3, 4), generator=g))))
    return cases


def _ring_cases():
    g = torch.Generator().manual_seed(2)
    idx = ring_sector_index(10, 7, n_rings=4, n_sectors=6, w=12)
    n_bins = 24
    spec = torch.fft.rfft2(torch.rand(2, 3, 10, 12, generator=g, dtype=torch.float64))
    re, im = spec.real.requires_grad_(), spec.imag.requires_grad_()    # strided views
    amp = torch.rand(2, 10, 7, generator=g, dtype=torch.float64, requires_grad=True)
    vals = torch.rand(2, n_bins, generator=g, dtype=torch.float64, requires_grad=True)
    grad = torch.rand(2, n_bins, generator=g, dtype=torch.float64)
    return [("ring_pool", (amp, idx, n_bins)), ("ring_scatter", (vals, idx)),
            ("ring_pool_amplitude", (re, im, idx, n_bins)),
            ("ring_pool_backward", (grad, idx)),
            ("ring_scatter_backward", (amp.detach(), idx, n_bins)),
            ("ring_pool_amplitude_backward", (grad, re.detach(), im.detach(), idx))]


@pytest.mark.parametrize("backend", [pytest.param("cpp"),
                                     pytest.param("triton", marks=pytest.mark.triton)])
def test_every_registered_op_passes_opcheck(backend):
    if backends.unavailable_reason("shr", backend, "cpu"):
        pytest.skip(backends.unavailable_reason("shr", backend, "cpu"))
    cases = _spectral_cases() + _ssim_cases(backend) + _ring_cases()
    if backend == "triton":  # the CPU interpreter is slow: one case per op there
        cases = list({name: (name, args) for name, args in reversed(cases)}.values())
    for name, args in cases:
        result = torch.library.opcheck(_op(name, backend), args)
        assert set(result.values()) == {"SUCCESS"}, (name, result)


def test_each_backend_implements_what_the_table_says():
    """The dispatch table's coverage (used to explain a missing op without importing a
    toolchain) matches the functions each backend's modules register."""
    for b in backends.BACKENDS:
        try:
            ops = backends.implementations(b)
        except ImportError as e:       # e.g. triton not installed: nothing to compare
            pytest.skip(f"backend {b} cannot be imported here: {e}")
        assert set(ops) == set(backends._COVERAGE[b]), b
        assert set(ops) <= set(reference.OPS)


def test_fast_ops_refuse_like_the_reference():
    """One message for one mistake, whichever backend is asked (checks shared)."""
    idx = ring_sector_index(8, 5, w=8)
    for b in ["torch"] + _cpu_backends():
        pool = backends.resolve("ring_pool", b, "cpu")
        with pytest.raises(ValueError, match="does not match index_map"):
            pool(torch.rand(2, 8, 4), idx, 512)
        with pytest.raises(TypeError, match="index_map must be int64"):
            pool(torch.rand(2, 8, 5), idx.int(), 512)
        topk = backends.resolve("ssim_topk", b, "cpu")
        with pytest.raises(ValueError, match="SSIM needs images of at least 11x11"):
            topk(torch.rand(1, 1, 8, 8), torch.rand(3, 1, 8, 8), 2)


@needs_cpp
def test_compiled_rhm_keeps_the_fast_ring_pooling():
    """torch.compile traces FESA with the C++ ring ops in the graph (their fake
    implementations make them traceable), and the compiled model computes the eager one."""
    torch.manual_seed(0)
    model = RHM(RHMConfig(in_channels=1, **TINY)).eval()
    seen: set[str] = set()

    def recording_backend(gm: torch.fx.GraphModule, example_inputs):
        seen.update(str(n.target) for n in gm.graph.nodes if n.op == "call_function")
        return gm.forward

    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        want = model(x)
        torch._dynamo.reset()
        got = torch.compile(model, backend=recording_backend, fullgraph=True)(x)
    assert "frerec.ring_pool_amplitude_cpp.default" in seen, sorted(seen)
    assert "frerec.ring_scatter_cpp.default" in seen
    assert not any("scatter_add" in s for s in seen)       # not the reference's pooling
    torch.testing.assert_close(got, want, rtol=0, atol=0)


@needs_cpp
def test_inductor_compiled_rhm_matches_eager():
    """The real compiler (inductor) around the custom ops, forward only."""
    torch.manual_seed(0)
    model = RHM(RHMConfig(in_channels=1, **TINY)).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        want = model(x)
        torch._dynamo.reset()
        got = torch.compile(model)(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_onnx_export_uses_the_reference_pooling(tmp_path):
    """An exported graph holds only standard ops, whatever the model's ring backend."""
    pytest.importorskip("onnx")
    import onnx

    from frerec_fast.model.export import export_onnx
    from frerec_fast.model.fesa import set_ring_backend

    model = set_ring_backend(RHM(RHMConfig(in_channels=1, **TINY)).eval(), "auto")
    path = export_onnx(model, tmp_path / "m.onnx", (1, 1, 32, 32))
    domains = {n.domain for n in onnx.load(str(path)).graph.node}
    assert domains <= {"", "ai.onnx"}, domains


def _imports(path: Path, module: str) -> set[str]:
    """Every frerec_fast module that ``path`` imports, at any depth of the file."""
    tree = ast.parse(path.read_text())
    pkg = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.rsplit(".", node.level - 1)[0] if node.level > 1 else pkg
                target = f"{base}.{node.module}" if node.module else base
            else:
                target = node.module or ""
            names = [f"{target}.{a.name}" for a in node.names]
            found.update([target] + names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return {m for m in found if m.startswith("frerec_fast")}


def test_the_package_has_no_import_cycles():
    """Among frerec_fast's modules (kernels/ included), no import chain leads back to
    where it started, counting imports inside functions too; and the op layer's fast and
    reference modules never import the model layer."""
    files = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE).with_suffix("")
        parts = ["frerec_fast", *rel.parts]
        if parts[-1] == "__init__":
            parts = parts[:-1]
        files[".".join(parts)] = path
    kernels = PACKAGE.parent / "kernels"
    for path in kernels.glob("*.py"):
        files[f"frerec_fast.kernels.{path.stem}"] = path
    nodes = set(files)
    graph = {m: {t for t in _imports(files[m], m) if t in nodes and t != m} for m in nodes}
    # A package's __init__ is imported by its submodules implicitly; that edge is no cycle.
    for m, targets in graph.items():
        graph[m] = {t for t in targets if not m.startswith(t + ".")}

    state: dict[str, int] = {}

    def visit(m, stack):
        state[m] = 1
        for t in sorted(graph[m]):
            if state.get(t) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(t):] + [t]))
            if t not in state:
                visit(t, stack + [t])
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    for m in nodes:
        if m.startswith(("frerec_fast.fast", "frerec_fast.kernels", "frerec_fast.reference")):
            bad = {t for t in _imports(files[m], m) if t.startswith("frerec_fast.model")}
            assert not bad, f"{m} imports the model layer: {bad}"
