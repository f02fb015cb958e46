"""Shared fixtures and options: --device selects where device-aware tests run, --dtype
which dtype the dtype-parametrised tests (the op conformance suite, tests/ops) run."""
import os

import pytest
import torch

# Without a GPU, Triton kernels run on CPU tensors through the interpreter. The flag
# is read when a kernel module is imported, so it is set before any test imports one.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


# The dtypes a test can be parametrised over with @pytest.mark.dtypes(...), by torch name.
DTYPES = ("float16", "bfloat16", "float32", "float64", "uint8")


def pytest_addoption(parser):
    parser.addoption("--device", default="cpu", choices=("cpu", "cuda"),
                     help="device for device-aware tests (cuda needs a GPU)")
    parser.addoption("--dtype", default="all", choices=("all",) + DTYPES,
                     help="run the dtype-parametrised cases of this dtype only (default: all); "
                          "tests without a dtype parameter run as usual")


def pytest_generate_tests(metafunc):
    """``@pytest.mark.dtypes("float32", "float64")`` parametrises the test's ``dtype``
    argument with those torch dtypes (ids are the names); ``--dtype`` then keeps one."""
    marker = metafunc.definition.get_closest_marker("dtypes")
    if marker is None or "dtype" not in metafunc.fixturenames:
        return
    names = marker.args or DTYPES
    unknown = sorted(set(names) - set(DTYPES))
    if unknown:
        raise pytest.UsageError(f"{metafunc.definition.nodeid}: unknown dtypes {unknown}; "
                                f"known: {DTYPES}")
    metafunc.parametrize("dtype", [getattr(torch, n) for n in names], ids=list(names))


def _deselect_other_dtypes(config, items) -> None:
    """--dtype NAME: drop every test whose ``dtype`` parameter is another torch dtype."""
    chosen = config.getoption("--dtype")
    if chosen == "all":
        return
    keep, drop = [], []
    for it in items:
        value = getattr(it, "callspec", None) and it.callspec.params.get("dtype")
        other = isinstance(value, torch.dtype) and str(value) != f"torch.{chosen}"
        (drop if other else keep).append(it)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture
def device(request):
    dev = request.config.getoption("--device")
    if dev == "cuda" and not torch.cuda.is_available():
        pytest.skip("--device=cuda given but no CUDA GPU is visible to torch")
    return torch.device(dev)


def _interpreter_problem() -> str | None:
    """Why Triton's CPU interpreter cannot run kernels here, or None. Triton releases
    before the fix of triton-lang/triton#9171 (3.6 among them) call int() on 1-element
    arrays, which numpy >= 2.4 refuses: every kernel with a runtime loop bound fails."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        return None
    try:
        import triton
        import triton.language as tl
    except ImportError:
        return None  # the Triton tests skip themselves with an install hint

    @triton.jit
    def probe(out_ptr, n):
        acc = 0
        for i in range(0, n):
            acc += i
        tl.store(out_ptr, acc)

    out = torch.zeros(1, dtype=torch.int32)
    try:
        probe[(1,)](out, 3)
    except Exception as e:  # noqa: BLE001 - any failure means the interpreter is unusable
        import numpy
        return (f"Triton {triton.__version__}'s interpreter fails with numpy {numpy.__version__} "
                f"({type(e).__name__}: {e}); see triton-lang/triton#9171: use a newer Triton "
                "or numpy < 2.4 to run the Triton kernels on CPU")
    return None if int(out) == 3 else "Triton's interpreter computed a wrong probe result"


@pytest.hookimpl(trylast=True)  # after -k / -m deselection: probe only for what will run
def pytest_collection_modifyitems(config, items):
    _deselect_other_dtypes(config, items)
    # Tests (or parametrisations) that run Triton kernels carry @pytest.mark.triton; the
    # ahead-of-time compile checks (tests/toolchain) do not, as they need no interpreter.
    triton_items = [it for it in items if it.get_closest_marker("triton") is not None]
    if not triton_items:
        return
    why = _interpreter_problem()
    if why and os.environ.get("FREREC_REQUIRE_TRITON_INTERPRETER") == "1":
        # CI sets this: there the Triton kernels must be exercised, not skipped.
        raise pytest.UsageError(why)
    if why:
        for it in triton_items:
            it.add_marker(pytest.mark.skip(reason=why))


# Hypothesis (the property tests, tests/test_hardening_*.py): CI runs a small,
# derandomised set of examples so that its time is bounded and a failure reproduces;
# HYPOTHESIS_PROFILE=dev explores many random examples on a developer's machine.
try:
    from hypothesis import HealthCheck, settings

    settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                              database=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("dev", max_examples=1000, deadline=None,
                              suppress_health_check=[HealthCheck.too_slow])
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
except ImportError:  # hypothesis is a dev extra; its tests skip themselves
    pass
