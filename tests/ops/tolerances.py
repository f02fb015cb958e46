"""Per-dtype tolerances of every op against its float64 NumPy oracle: the one table the
conformance suite (tests/ops) uses.

``tol(op, dtype)`` -> ``Tol(rtol, atol, why)``; a result passes where
``|got - oracle| <= atol + rtol * |oracle|`` (``support.assert_close``). The oracle is
computed in float64 from the *same* input values the backend sees (a float16 input is
rounded to float16 first), so a tolerance measures the op's own arithmetic, not the
rounding of its input. Keys ``"<op>.<what>"`` hold a second bound of one op (its
gradient, or a harder input). ``".grad"`` entries of summing gradients are relative to
the sum of the absolute terms (``support.assert_sum_close``), the usual bound of a
floating-point sum, since a sum of terms of either sign may cancel to ~0.
"""
from __future__ import annotations

from typing import NamedTuple

import torch


class Tol(NamedTuple):
    rtol: float
    atol: float
    why: str


_F32_STATS = Tol(1e-5, 1e-6, "float32 half spectrum (every backend outputs float32; "
                 "cpp/triton/cuda transform x.float()), band sums in float64")
_F32_SHR = Tol(0.0, 2e-5, "x_hat through two float32 FFTs (cpp/triton/cuda) or float64 "
               "ones rounded to float32 (torch); pixel values ~[0, 1]")
_F32_SSIM = Tol(0.0, 2e-5, "float32 filtering in every backend; var = E[y^2] - mu^2 "
                "cancels to ~2e-6 of the float64 value")

# Ops whose output is float32 whatever the input dtype: the input's dtype only rounds
# the input, which the oracle sees too, so every dtype has the float32 bound.
_FLOAT32_OUTPUT = {
    "band_stats": _F32_STATS,
    "shr": _F32_SHR,
    "ssim_matrix": _F32_SSIM,
    "ssim_topk": _F32_SSIM,
    "ssim_pairs": _F32_SSIM,
}
_WHY_INPUT = {
    "float16": "input rounded to float16 before the op (oracle too), then computed in float32",
    "bfloat16": "input rounded to bfloat16 before the op (oracle too), then computed in float32",
    "float32": "",
    "float64": "float64 input, but computed (or at least output) in float32",
    "uint8": "binary {0, 1} integer images, converted to float and computed in float32",
}

TABLE: dict[str, dict[str, Tol]] = {
    op: {dt: t._replace(why=f"{t.why}; {_WHY_INPUT[dt]}" if _WHY_INPUT[dt] else t.why)
         for dt in _WHY_INPUT}
    for op, t in _FLOAT32_OUTPUT.items()
}
TABLE["ssim_matrix.flat"] = {dt: Tol(0.0, 2e-4, "flat images: float32 local variances cancel "
                                     "to ~1e-7, against C2 = 9e-4") for dt in _WHY_INPUT}

# The ring ops return the input dtype. float32/float64 run natively; float16/bfloat16 are
# computed in float32 and rounded back by cpp/triton/cuda, and in the half dtype itself by
# the torch reference (scatter_add, |X|, the channel mean), which sets the bound.
TABLE["ring_pool"] = {
    "float64": Tol(1e-12, 1e-12, "float64 sums of at most ~2e4 positions per bin"),
    "float32": Tol(1e-5, 1e-6, "float32 (torch, triton, cuda) or float64 (cpp) bin sums, "
                   "rounded to float32"),
    "float16": Tol(2e-3, 1e-5, "2 eps: the float16 output's rounding, and the torch reference's "
                   "float16 sums and division (measured <= 0.9 eps)"),
    "bfloat16": Tol(1.6e-2, 1e-5, "2 eps: as float16 (measured <= 0.9 eps of bfloat16)"),
}
# Its gradient, upstream / count, is one division; done in float32 (or float64) and then
# rounded to a narrower dtype, it is still the correctly rounded quotient (the format is
# more than twice as wide plus two bits), which the rounded oracle is: exact.
TABLE["ring_pool.grad"] = {dt: Tol(0.0, 0.0, "one correctly rounded division: bit-exact")
                           for dt in ("float64", "float32", "float16", "bfloat16")}
TABLE["ring_scatter"] = {dt: Tol(0.0, 0.0, "a gather: bit-exact in every dtype")
                         for dt in ("float64", "float32", "float16", "bfloat16")}
TABLE["ring_scatter.grad"] = {   # relative to the sum of |upstream| over the bin
    "float64": Tol(1e-12, 0.0, "float64 sum of a bin's upstream gradients"),
    "float32": Tol(1e-5, 0.0, "float32 or float64 sums of up to ~2e3 terms of either sign"),
    "float16": Tol(2e-3, 0.0, "2 eps of float16: sums accumulated in float32, rounded once"),
    "bfloat16": Tol(1.6e-2, 0.0, "2 eps of bfloat16: as float16"),
}
TABLE["ring_pool_amplitude"] = {
    "float64": Tol(1e-12, 1e-12, "float64 |X|, channel mean and bin sums"),
    "float32": Tol(1e-5, 1e-6, "float32 |X| (one sqrt) and channel mean; bin sums in float32 "
                   "(torch, triton, cuda) or float64 (cpp)"),
    "float16": Tol(4e-3, 1e-5, "4 eps: the torch reference squares, roots, averages channels "
                   "and pools in float16 (four roundings)"),
    "bfloat16": Tol(3.2e-2, 1e-5, "4 eps of bfloat16: as float16"),
}
TABLE["ring_pool_amplitude.grad"] = {
    "float64": Tol(1e-12, 1e-12, "float64: upstream / (count * C) * re / |X|"),
    "float32": Tol(1e-5, 1e-6, "float32: a division, a sqrt and two products per element"),
    "float16": Tol(4e-3, 1e-5, "4 eps: the torch reference's backward runs in float16 "
                   "(sqrt, division, products)"),
    "bfloat16": Tol(3.2e-2, 1e-5, "4 eps of bfloat16: as float16"),
}


def dtype_name(dtype: torch.dtype | str) -> str:
    return dtype if isinstance(dtype, str) else str(dtype).removeprefix("torch.")


def tol(op: str, dtype: torch.dtype | str) -> Tol:
    """The tolerance of ``op`` (or ``"op.what"``) for inputs of ``dtype``."""
    name = dtype_name(dtype)
    try:
        return TABLE[op][name]
    except KeyError:
        raise KeyError(f"no tolerance for {op!r} in {name}: add it to tests/ops/tolerances.py "
                       f"(known: {sorted(TABLE.get(op, {}))})") from None
