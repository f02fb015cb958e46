"""Helpers of the op conformance suite: backend parameters, getting an op through the
dispatch API (or skipping with its reason), and comparisons that say where numbers
diverge."""
from __future__ import annotations

import inspect

import numpy as np
import pytest
import torch

from frerec_fast import backends

from .tolerances import Tol

BACKENDS = ("torch", "cpp", "triton", "cuda")


def backend_params(*names: str):
    """pytest params of the named backends (default: all); Triton's carry the ``triton``
    marker, which tests/conftest.py uses to skip (or stop) when its interpreter is broken."""
    return [pytest.param(n, id=n, marks=(pytest.mark.triton,) if n == "triton" else ())
            for n in names or BACKENDS]


def skip_reason(op: str, backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run ``op`` on ``device`` here (None if it can), from the
    dispatch table; for a backend of the other device type, what it would need there."""
    why = backends.unavailable_reason(op, backend, device.type)
    if why is None or "implementation" in why:
        return why
    other = "cuda" if device.type == "cpu" else "cpu"
    why_other = backends.unavailable_reason(op, backend, other)
    if why_other is None:
        return f"{why} (it runs here with --device={other})"
    if why_other != why:
        return f"{why}; on {other}: {why_other}"
    return why


def get_op(op: str, backend: str, device: torch.device):
    """``backends.resolve(op, backend, device)``, or a skip with the dispatch table's reason."""
    why = skip_reason(op, backend, device)
    if why:
        pytest.skip(why)
    return backends.resolve(op, backend, device)


def require(op: str, backend: str, device: torch.device) -> None:
    """Skip unless ``backend`` can run ``op`` on ``device`` (for tests that go through the
    public ``frerec_fast`` wrappers with ``backend=``)."""
    get_op(op, backend, device)


def interpreted(backend: str, device: torch.device) -> bool:
    """Triton on CPU tensors: the interpreter, ~1000x slower than compiled code."""
    return backend == "triton" and device.type == "cpu"


def small_only(backend: str, device: torch.device, what: str = "this size") -> None:
    """Skip a case too large for the Triton interpreter (it runs with --device=cuda)."""
    if interpreted(backend, device):
        pytest.skip(f"Triton on CPU runs in the interpreter: {what} is checked with "
                    f"--device=cuda (compiled) instead")


def accepts(fn, name: str) -> bool:
    """Whether a backend's function takes keyword ``name`` (e.g. ``db_chunk``)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def as_dtype(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A float image batch in [0, 1] as ``dtype``; integer dtypes get binary {0, 1}
    images (an integer image in [0, 1] has no other values)."""
    if dtype.is_floating_point:
        return x.to(dtype)
    return (x > 0.5).to(dtype)


def f64(t) -> np.ndarray:
    """Any tensor (bfloat16, integer, CUDA, requiring grad) as a float64 NumPy array."""
    if isinstance(t, torch.Tensor):
        return t.detach().cpu().to(torch.float64).numpy()
    return np.asarray(t, np.float64)


def _report(got, want, bad, err, tol_text, what):
    where = [tuple(int(i) for i in ix) for ix in np.argwhere(bad)[:5]]
    first = "; ".join(f"{ix}: got {got[ix]!r}, want {want[ix]!r}" for ix in where)
    finite = np.isfinite(want) & np.isfinite(got)
    rel = err[finite] / np.maximum(np.abs(want[finite]), 1e-300)
    return (f"{what}: {int(bad.sum())} of {bad.size} values out of tolerance ({tol_text}); "
            f"max abs err {err[finite].max(initial=0):.3g}, max rel err "
            f"{rel.max(initial=0):.3g}; first: {first}")


def assert_close(got, want, tol: Tol, what: str = "result") -> None:
    """``|got - want| <= tol.atol + tol.rtol * |want|`` elementwise, NaN where want is
    NaN and infinities matching; the message names the positions and the tolerance's why."""
    got, want = f64(got), f64(want)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    nan_g, nan_w = np.isnan(got), np.isnan(want)
    assert (nan_g == nan_w).all(), (f"{what}: NaN at {np.argwhere(nan_g != nan_w)[:5].tolist()} "
                                    f"where the oracle has {'NaN' if nan_w.any() else 'none'}")
    inf = np.isinf(want) | np.isinf(got)
    assert (got[inf] == want[inf]).all(), f"{what}: infinities differ"
    err = np.where(nan_w | inf, 0.0, np.abs(got - want))
    bad = err > tol.atol + tol.rtol * np.abs(np.where(nan_w | inf, 0.0, want))
    if bad.any():
        raise AssertionError(_report(got, want, bad, err, f"rtol={tol.rtol}, atol={tol.atol}: "
                                     f"{tol.why}", what))


def assert_sum_close(got, want, abs_sum, tol: Tol, what: str = "sum") -> None:
    """A sum's error bound: ``|got - want| <= tol.atol + tol.rtol * abs_sum``, with
    ``abs_sum`` the sum of the absolute terms (a sum of either sign may cancel to ~0)."""
    got, want, abs_sum = f64(got), f64(want), f64(abs_sum)
    assert got.shape == want.shape, f"{what}: shape {got.shape}, want {want.shape}"
    err = np.abs(got - want)
    bad = ~(err <= tol.atol + tol.rtol * abs_sum)
    if bad.any():
        raise AssertionError(_report(got, want, bad, err, f"rtol={tol.rtol} of the sum of "
                                     f"|terms|, atol={tol.atol}: {tol.why}", what))


def assert_same_bytes(a: torch.Tensor, b: torch.Tensor, what: str = "result") -> None:
    """Bit-identical tensors (NaN payloads included): the determinism check."""
    assert a.dtype == b.dtype and a.shape == b.shape, what
    sa, sb = a.detach().cpu().contiguous(), b.detach().cpu().contiguous()
    assert sa.view(torch.uint8).numpy().tobytes() == sb.view(torch.uint8).numpy().tobytes(), \
        f"{what}: two calls gave different bytes"


def known_gap(request, backend: str, backends_with_gap: tuple[str, ...], why: str) -> None:
    """Mark this test an expected failure (not strict) for backends known to differ from
    the contract the others keep; the run still executes and reports it (x / X)."""
    if backend in backends_with_gap:
        request.node.add_marker(pytest.mark.xfail(reason=why, strict=False))


def spectral_case(b: int, c: int, h: int, w: int, k: int, seed: int, bank_scale: float = 1.0):
    """Images in [0, 1] (a smooth pattern plus noise) and SHR arguments: x [B, C, H, W],
    mu_bank, sigma_bank [B, K, C], eps_mu, eps_sigma [B, C], all float32 on the CPU."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    smooth = 0.5 + 0.3 * torch.sin(6 * xx + 3 * yy)
    x = (smooth + 0.2 * torch.rand(b, c, h, w, generator=g)).clamp(0, 1)
    mu_bank = (torch.randn(b, k, c, generator=g) * 0.01) * bank_scale
    sigma_bank = (0.05 + 0.05 * torch.rand(b, k, c, generator=g)) * bank_scale
    eps_mu, eps_sigma = torch.randn(b, c, generator=g), torch.randn(b, c, generator=g)
    return x, mu_bank, sigma_bank, eps_mu, eps_sigma
