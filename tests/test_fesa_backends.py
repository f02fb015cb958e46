"""FESA's frequency branch and the RHM with each ring-pooling backend (the ops themselves
are checked against the NumPy oracle in tests/ops/test_ring_*.py): module outputs and
gradients match the torch backend's, tracing sees the torch ops, backend switching, and
errors for a backend that cannot run."""
import pytest
import torch

from frerec_fast import _ext, backends
from frerec_fast.model import fesa as fesa_mod
from frerec_fast.model.fesa import FrequencyBranch, set_ring_backend

# The device each backend's module runs on; triton follows --device (the interpreter on CPU).
FAST = [pytest.param("cpp", id="cpp"),
        pytest.param("triton", id="triton", marks=pytest.mark.triton),
        pytest.param("cuda", id="cuda")]


def _device_for(backend, device):
    dev = {"cpp": torch.device("cpu"), "cuda": torch.device("cuda")}.get(backend, device)
    why = backends.unavailable_reason("ring_pool_amplitude", backend, dev.type)
    if why:
        pytest.skip(why)
    return dev


def _branch(backend, seed=0, dim=4):
    torch.manual_seed(seed)
    return FrequencyBranch(dim, n_rings=3, n_sectors=5, backend=backend)


@pytest.mark.parametrize("backend", FAST)
def test_frequency_branch_matches_torch(backend, device):
    dev = _device_for(backend, device)
    sizes = [(9, 10)] if backend != "cpp" else [(9, 10), (16, 16), (1, 7)]
    for size in sizes:
        x = torch.rand(2, 4, *size, generator=torch.Generator().manual_seed(1)).to(dev)
        outs = []
        for name in ("torch", backend):
            m = _branch(name).to(dev)
            xi = x.clone().requires_grad_()
            y = m(xi)
            y.square().sum().backward()
            outs.append((y.detach(), xi.grad, m.gate.weight.grad, m.value.weight.grad))
        for got, want in zip(outs[1], outs[0]):
            torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_model_forward_cpp_matches_torch():
    _device_for("cpp", torch.device("cpu"))
    from frerec_fast.model import RHM, RHMConfig
    torch.manual_seed(0)
    m = RHM(RHMConfig(dim=8, blocks=(1, 1, 1, 1), heads=(1, 1, 2, 2), refinement=1)).eval()
    x = torch.rand(2, 1, 37, 45, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = set_ring_backend(m, "cpp")(x)
        want = set_ring_backend(m, "torch")(x)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.filterwarnings("ignore::torch.jit.TracerWarning", "ignore::DeprecationWarning")
@pytest.mark.parametrize("backend", [pytest.param("triton", marks=pytest.mark.triton), "cpp",
                                     "auto"])
def test_frequency_branch_uses_torch_while_tracing(backend, monkeypatch):
    # A fast backend asked for (auto is cpp on CPU), but tracing (jit / ONNX export) must
    # see the torch ops.
    m = _branch(backend).eval()
    x = torch.rand(1, 4, 8, 8)

    def boom(*_a, **_k):
        raise AssertionError("fast ring ops used under tracing")

    monkeypatch.setattr(fesa_mod, "_ring_ops", boom)
    with torch.no_grad():
        # check_trace=False: the check re-runs the module eagerly, where fast ops are fine.
        traced = torch.jit.trace(m, x, check_trace=False)
    monkeypatch.undo()
    m.backend = "torch"
    with torch.no_grad():
        torch.testing.assert_close(traced(x), m(x))


def test_set_ring_backend():
    m = torch.nn.Sequential(_branch("auto"), _branch("auto"))
    assert set_ring_backend(m, "torch") is m
    assert all(b.backend == "torch" for b in m)
    with pytest.raises(ValueError, match="unknown backend"):
        set_ring_backend(m, "fortran")


def test_explicit_unavailable_backend_raises():
    m = _branch("cuda")
    with pytest.raises(backends.BackendUnavailable):
        m(torch.rand(1, 4, 8, 8))


def test_auto_takes_cpp_on_cpu():
    for op in ("ring_pool", "ring_scatter", "ring_pool_amplitude"):
        assert backends.resolve_name(op, "auto", "cpu") == ("cpp" if _ext.has_cpp() else "torch")

