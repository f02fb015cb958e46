"""Ahead-of-time compilation of every Triton kernel for NVIDIA GPUs, without a GPU.

The other Triton tests run the kernels in the CPU interpreter (TRITON_INTERPRET=1),
which executes the Python body and never runs Triton's compiler, so it cannot see
compile-only errors: type errors in the generated IR, ops the real lowering rejects,
and, above all, the runtime's specialisation of arguments. A launch through the real
runtime passes every int argument equal to 1 as a ``constexpr`` (``COUNT.to(...)`` on
it fails to compile, while the interpreter is happy), and pointers/ints that are
multiples of 16 carry a divisibility hint that changes the generated loads.

Here every ``@triton.jit`` kernel of ``frerec_fast.kernels`` is compiled to a cubin for
sm_80 and sm_90 with ``triton.compile(ASTSource(...), target=GPUTarget(...))``, which
needs only the NVIDIA backend and the ptxas that Triton wheels ship.

Cases (the table ``KERNELS``, derived from the launch sites in kernels/*.py):

- every dtype/flag variant a launcher uses (SHR's complex/amplitude domains; ring
  pooling in float16/bfloat16/float32/float64, in each of its three launch modes);
- ``generic``: int arguments != 1, the launcher's default block sizes (read from the
  kernel module, so ``FREREC_TRITON_*`` overrides are compiled as a GPU run would use
  them) and warps;
- ``ones``: every int argument == 1, i.e. a constexpr (tiny inputs), with the smallest
  blocks the launcher can pick;
- ``div16`` (one variant per kernel): pointers and ints with the divisibility-16 hint
  the runtime gives aligned tensors and sizes that are multiples of 16;
- named partial cases for realistic launches that mix constexpr and runtime ints
  (one query, 11x11 images, ``ring_pool``'s ``[B, 1, H, Wh]`` view with C = 1 and a
  unit column stride, ...).

All compiles run in ONE subprocess (TRITON_INTERPRET removed from its environment,
a fresh TRITON_CACHE_DIR so every case is really compiled) that prints one JSON line
per case; a module-scoped fixture collects them and each parametrised test reports its
own case, so a failure names the kernel, the variant, the case and the architecture.
A trivial "canary" kernel per architecture separates a broken toolchain from a kernel
bug. ``test_table_matches_launchers`` keeps the table honest: it records the arguments
the real launchers pass (kernels replaced by recorders, nothing executed) and checks
that each launch's argument types and flags are a variant of the table, and that every
variant of the table is launched by some launcher.

The module skips when triton is not installed, or when this Triton build has no NVIDIA
backend or no working ptxas (detected in the subprocess, with the reason).
"""
from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
from dataclasses import dataclass, field

import pytest

pytest.importorskip("triton", reason="triton is not installed: nothing to compile")

ARCHS = (80, 90)
SUBPROCESS_TIMEOUT_S = 900


def _sig(spec: str, **subst) -> dict:
    """'a:*fp32 N:i32 B:constexpr' -> {'a': '*fp32', 'N': 'i32', 'B': 'constexpr'}."""
    out = {}
    for item in spec.split():
        name, ty = item.split(":")
        out[name] = ty.format(**subst)
    return out


@dataclass
class Kernel:
    """One @triton.jit kernel and how its launcher calls it.

    sig: Triton type per argument, in order ("{T}" is the variant's dtype); blocks:
    block-size constexpr -> (default, smallest the launcher picks), where a str names
    a module attribute (the FREREC_TRITON_* constant the launcher uses); warps: likewise;
    variants: name -> (dtype or None, the flag constexprs the launcher passes);
    div16: the variant compiled with divisibility hints; partials: (case name, variant,
    int arguments set to 1) for realistic launches mixing constexpr and runtime ints.
    """
    module: str
    name: str
    sig: str
    blocks: dict
    warps: object
    variants: dict
    div16: str
    partials: list = field(default_factory=list)

    def signature(self, variant: str) -> dict:
        t = self.variants[variant][0] or ""
        # {A}: the accumulation type a launcher upcasts to (fp64 stays fp64, else fp32).
        return _sig(self.sig, T=t, A="fp64" if t == "fp64" else "fp32")


_RING_STRIDES = "r_sb:i32 r_sc:i32 r_sh:i32 r_sw:i32 i_sb:i32 i_sc:i32 i_sh:i32 i_sw:i32"
# The ring launchers get float32 or float64: half precisions are computed in float32 by
# the registered op (fast/registration.py), so no half-precision variant is launched.
_RING_DTYPES = ("fp32", "fp64")

KERNELS = {
    "shr._band_stats_kernel": Kernel(
        "frerec_fast.kernels.shr", "_band_stats_kernel",
        "spec_ptr:*fp32 mu_ptr:*fp32 sigma_ptr:*fp32 H:i32 W:i32 WH:i32 LIM_U:i32 LIM_V:i32 "
        "COUNT:i32 AMPLITUDE:constexpr BLOCK:constexpr",
        blocks={"BLOCK": ("FREREC_TRITON_SHR_STATS_BLOCK", 16)},
        warps="FREREC_TRITON_SHR_STATS_WARPS",
        variants={"complex": (None, {"AMPLITUDE": False}),
                  "amplitude": (None, {"AMPLITUDE": True})},
        div16="amplitude",
        # A band of one position (the kernel's own comment: COUNT == 1 is a constexpr).
        partials=[("COUNT=1", "complex", ["COUNT"]), ("COUNT=1", "amplitude", ["COUNT"])]),
    "shr._shr_apply_kernel": Kernel(
        "frerec_fast.kernels.shr", "_shr_apply_kernel",
        "spec_ptr:*fp32 mu_s_ptr:*fp32 sigma_s_ptr:*fp32 mu_hat_ptr:*fp32 sigma_hat_ptr:*fp32 "
        "H:i32 W:i32 WH:i32 LIM_U:i32 LIM_V:i32 AMPLITUDE:constexpr BLOCK:constexpr",
        blocks={"BLOCK": ("FREREC_TRITON_SHR_APPLY_BLOCK", 16)},
        warps="FREREC_TRITON_SHR_APPLY_WARPS",
        variants={"complex": (None, {"AMPLITUDE": False}),
                  "amplitude": (None, {"AMPLITUDE": True})},
        div16="amplitude",
        # Images one pixel wide: W = 1, W//2+1 = 1, ceil(r*W/2) = 1.
        partials=[("w=1", "amplitude", ["W", "WH", "LIM_V"])]),
    "ssim_topk._local_stats_kernel": Kernel(
        "frerec_fast.kernels.ssim_topk", "_local_stats_kernel",
        "y_ptr:*fp32 m_ptr:*fp32 a_ptr:*fp32 v_ptr:*fp32 g_ptr:*fp32 "
        "N:i32 W:i32 H:i32 WO:i32 HO:i32 C1:constexpr C2:constexpr BLOCK:constexpr",
        blocks={"BLOCK": ("FREREC_TRITON_SSIM_STATS_BLOCK", 16)},
        warps=4,
        variants={"fp32": (None, {"C1": "C1", "C2": "C2"})},
        div16="fp32",
        partials=[("one_image", "fp32", ["N"]), ("11x11_images", "fp32", ["WO", "HO"])]),
    "ssim_topk._ssim_pairs_kernel": Kernel(
        "frerec_fast.kernels.ssim_topk", "_ssim_pairs_kernel",
        "x_ptr:*fp32 y_ptr:*fp32 mq_ptr:*fp32 aq_ptr:*fp32 vq_ptr:*fp32 md_ptr:*fp32 "
        "ad_ptr:*fp32 vd_ptr:*fp32 g_ptr:*fp32 out_ptr:*fp32 stride_out:i32 Q:i32 N:i32 "
        "W:i32 H:i32 WO:i32 HO:i32 C1:constexpr C2:constexpr BQ:constexpr BN:constexpr",
        blocks={"BQ": ("FREREC_TRITON_SSIM_BLOCK_Q", 16), "BN": ("FREREC_TRITON_SSIM_BLOCK_N", 16)},
        warps="FREREC_TRITON_SSIM_WARPS",
        variants={"fp32": (None, {"C1": "C1", "C2": "C2"})},
        div16="fp32",
        partials=[("one_query", "fp32", ["Q"]), ("11x11_images", "fp32", ["WO", "HO"]),
                  ("one_db_image", "fp32", ["N", "stride_out"])]),
    "ring_pool._pool_kernel": Kernel(
        "frerec_fast.kernels.ring_pool", "_pool_kernel",
        "re_ptr:*{T} im_ptr:*{T} order_ptr:*i32 offsets_ptr:*i32 out_ptr:*{T} "
        "n_bins:i32 C:i32 WH:i32 " + _RING_STRIDES + " AMPLITUDE:constexpr MEAN:constexpr "
        "ACC_F64:constexpr BINS:constexpr LANES:constexpr",
        blocks={"BINS": ("FREREC_TRITON_RING_BINS", 1), "LANES": ("FREREC_TRITON_RING_LANES", 1)},
        warps="FREREC_TRITON_RING_WARPS",
        # ring_pool forward (mean), ring_scatter backward (sum), ring_pool_amplitude forward.
        variants={f"{t}-{mode}": (t, {"AMPLITUDE": amp, "MEAN": mean, "ACC_F64": t == "fp64"})
                  for t in _RING_DTYPES
                  for mode, amp, mean in (("mean", False, True), ("sum", False, False),
                                          ("amplitude", True, True))},
        div16="fp32-amplitude",
        # ring_pool / ring_scatter backward pass a [B, 1, H, Wh] view: C = 1, unit column
        # stride; ring_pool_amplitude on contiguous re/im: unit column stride.
        partials=[("C=1,sw=1", f"{t}-{m}", ["C", "r_sw", "i_sw"])
                  for t in ("fp32", "fp64") for m in ("mean", "sum")]
        + [("sw=1", f"{t}-amplitude", ["r_sw", "i_sw"]) for t in ("fp32", "fp64")]),
    "ring_pool._scatter_kernel": Kernel(
        "frerec_fast.kernels.ring_pool", "_scatter_kernel",
        "val_ptr:*{T} index_ptr:*i32 offsets_ptr:*i32 out_ptr:*{T} HW:i32 n_bins:i32 "
        "DIV_COUNT:constexpr BLOCK:constexpr",
        blocks={"BLOCK": ("FREREC_TRITON_RING_SCATTER_BLOCK", 16)},
        warps="FREREC_TRITON_RING_SCATTER_WARPS",
        # ring_pool backward (divide by the bin count), ring_scatter forward.
        variants={f"{t}-{mode}": (t, {"DIV_COUNT": div})
                  for t in _RING_DTYPES for mode, div in (("div", True), ("plain", False))},
        div16="fp32-div",
        partials=[("one_bin", "fp32-div", ["n_bins"])]),
    "ring_pool._amplitude_bwd_kernel": Kernel(
        "frerec_fast.kernels.ring_pool", "_amplitude_bwd_kernel",
        "g_ptr:*{A} re_ptr:*{T} im_ptr:*{T} index_ptr:*i32 offsets_ptr:*i32 gre_ptr:*{A} "
        "gim_ptr:*{A} C:i32 HW:i32 WH:i32 n_bins:i32 " + _RING_STRIDES + " BLOCK:constexpr",
        blocks={"BLOCK": ("FREREC_TRITON_RING_SCATTER_BLOCK", 16)},
        warps="FREREC_TRITON_RING_SCATTER_WARPS",
        variants={t: (t, {}) for t in _RING_DTYPES},
        div16="fp32",
        partials=[("C=1", "fp32", ["C"]), ("sw=1", "fp64", ["r_sw", "i_sw"])]),
}


def _cases():
    """(case id, JSON spec for the subprocess) for every kernel x variant x case x arch."""
    out = []
    for kname, k in KERNELS.items():
        per_variant = []
        for variant in k.variants:
            per_variant.append((variant, "generic", [], False, False))
            per_variant.append((variant, "ones", None, False, True))
        per_variant.append((k.div16, "div16", [], True, False))
        per_variant += [(variant, case, ones, False, False) for case, variant, ones in k.partials]
        for variant, case, ones, div16, small in per_variant:
            sig = k.signature(variant)
            ints = [a for a, ty in sig.items() if ty in ("i32", "i64")]
            ones = ints if ones is None else ones
            assert set(ones) <= set(ints), (kname, case, ones)
            constexprs = {a: {"attr": v} if isinstance(v, str) else v
                          for a, v in k.variants[variant][1].items()}
            for a, (default, smallest) in k.blocks.items():
                constexprs[a] = smallest if small else {"attr": default}
            for a in ones:
                sig[a] = "constexpr"
                constexprs[a] = 1
            div = [a for a, ty in sig.items() if ty.startswith("*") or ty in ("i32", "i64")] \
                if div16 else []
            for arch in ARCHS:
                cid = f"{kname}[{variant}]-{case}-sm{arch}"
                out.append((cid, dict(id=cid, module=k.module, kernel=k.name, signature=sig,
                                      constexprs=constexprs, div16=div,
                                      num_warps={"attr": k.warps} if isinstance(k.warps, str)
                                      else k.warps, arch=arch)))
    return out


CASES = _cases()
CANARIES = [f"canary-sm{arch}" for arch in ARCHS]

# Runs in a clean interpreter (no TRITON_INTERPRET). Reads the case specs as JSON on
# stdin, prints one JSON object per line: {"skip": reason} and stops, or per case
# {"id", "start": true} then {"id", "ok", "error", "cubin_bytes"}.
_HELPER = textwrap.dedent('''
    import importlib, json, os, sys, traceback

    def emit(**kw):
        print(json.dumps(kw), flush=True)

    def short(exc, limit=4000):
        text = "".join(traceback.format_exception_only(type(exc), exc)).strip()
        return text if len(text) <= limit else text[:limit] + " ... [truncated]"

    def main():
        assert "TRITON_INTERPRET" not in os.environ
        spec = json.load(sys.stdin)
        try:
            import triton
            import triton.language as tl
            from triton.backends import backends
            from triton.backends.compiler import GPUTarget
            from triton.compiler import ASTSource
        except Exception as exc:
            return emit(skip=f"cannot import triton's compiler: {short(exc)}")
        if "nvidia" not in backends:
            return emit(skip=f"this triton {triton.__version__} build has no NVIDIA backend "
                             f"(backends: {sorted(backends)})")
        try:
            from triton.backends.nvidia.compiler import get_ptxas
        except ImportError:
            get_ptxas = lambda arch: triton.knobs.nvidia.ptxas
        for arch in spec["archs"]:
            try:
                tool = get_ptxas(arch)
            except Exception as exc:
                tool, why = None, short(exc)
            else:
                why = "no ptxas found"
            if tool is None:
                return emit(skip=f"triton {triton.__version__} has no working ptxas for sm_{arch} "
                                 f"({why}; set TRITON_PTXAS_PATH / TRITON_PTXAS_BLACKWELL_PATH)")

        @triton.jit
        def canary(x_ptr, n, BLOCK: tl.constexpr):
            offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
            tl.store(x_ptr + offs, tl.load(x_ptr + offs, mask=offs < n) + 1.0, mask=offs < n)

        def build(case):
            if case.get("canary"):
                return ASTSource(canary, {"x_ptr": "*fp32", "n": "i32", "BLOCK": "constexpr"},
                                 constexprs={"BLOCK": 128}), 4, {"BLOCK": 128}
            mod = importlib.import_module(case["module"])
            fn = getattr(mod, case["kernel"])
            names = list(fn.arg_names)
            if list(case["signature"]) != names:
                raise AssertionError(f"the test's signature {list(case['signature'])} does not "
                                     f"match the kernel's arguments {names}: update KERNELS")
            resolve = lambda v: getattr(mod, v["attr"]) if isinstance(v, dict) else v
            constexprs = {k: resolve(v) for k, v in case["constexprs"].items()}
            attrs = {(names.index(a),): [["tt.divisibility", 16]] for a in case["div16"]}
            return ASTSource(fn, case["signature"], constexprs=constexprs, attrs=attrs), \\
                resolve(case["num_warps"]), constexprs

        for case in spec["cases"]:
            emit(id=case["id"], start=True)
            warps, constexprs = case.get("num_warps"), case.get("constexprs")
            try:
                src, warps, constexprs = build(case)
                compiled = triton.compile(src, target=GPUTarget("cuda", case["arch"], 32),
                                          options={"num_warps": warps})
                cubin = compiled.asm.get("cubin") or b""
                ok = len(cubin) > 0
                emit(id=case["id"], ok=ok, cubin_bytes=len(cubin), num_warps=warps,
                     constexprs={k: repr(v) for k, v in constexprs.items()},
                     error=None if ok else "triton.compile returned no cubin")
            except Exception as exc:
                emit(id=case["id"], ok=False, cubin_bytes=0, error=short(exc),
                     constexprs={k: repr(v) for k, v in (constexprs or {}).items()},
                     num_warps=warps)

    main()
''')


@pytest.fixture(scope="module")
def compiled(request, tmp_path_factory):
    """Run the selected compiles in one subprocess; returns {"skip": reason} or results."""
    # Only the cases this session runs (``-k`` selects a few quickly); canaries always.
    selected = {item.callspec.params["cid"] for item in request.session.items
                if getattr(item, "module", None) is request.module
                and getattr(item, "callspec", None) and "cid" in item.callspec.params}
    tmp = tmp_path_factory.mktemp("triton_aot")
    script = tmp / "compile_kernels.py"
    script.write_text(_HELPER)
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["TRITON_CACHE_DIR"] = str(tmp / "cache")  # fresh: every case is really compiled
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, minus its warning
    spec = {"archs": list(ARCHS),
            "cases": [dict(id=c, canary=True, arch=int(c.rsplit("sm", 1)[1])) for c in CANARIES]
            + [case for cid, case in CASES if cid in selected or not selected]}
    try:
        proc = subprocess.run([sys.executable, str(script)], input=json.dumps(spec), env=env,
                              capture_output=True, text=True, timeout=SUBPROCESS_TIMEOUT_S)
        stdout, stderr, rc = proc.stdout, proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        def _text(b):
            return b.decode(errors="replace") if isinstance(b, bytes) else (b or "")
        stdout, stderr = _text(exc.stdout), _text(exc.stderr)
        rc = f"timeout after {SUBPROCESS_TIMEOUT_S} s"
    results, started = {}, None
    for line in stdout.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue  # stray prints of imported code
        if "skip" in rec:
            return {"skip": rec["skip"]}
        if rec.get("start"):
            started = rec["id"]
        else:
            results[rec["id"]] = rec
            started = None
    tail = stderr[-3000:]
    if started is not None:  # the subprocess died (or timed out) inside this compile
        results[started] = dict(ok=False, error=f"the compiler process ended during this "
                                f"compile (exit {rc}); stderr tail:\n{tail}")
    return {"results": results, "rc": rc, "stderr_tail": tail, "crashed_on": started}


def _result(compiled, cid):
    if "skip" in compiled:
        pytest.skip(f"cannot compile Triton kernels for NVIDIA here: {compiled['skip']}")
    res = compiled["results"].get(cid)
    if res is None:
        why = (f"not reached: the compiler process died on {compiled['crashed_on']}"
               if compiled["crashed_on"] else f"the compiler process exited {compiled['rc']}")
        pytest.fail(f"{cid}: no result ({why}); stderr tail:\n{compiled['stderr_tail']}")
    return res


@pytest.mark.parametrize("cid", CANARIES)
def test_toolchain_canary(compiled, cid):
    res = _result(compiled, cid)
    assert res["ok"], f"Triton cannot compile even a trivial kernel ({cid}): the toolchain " \
                      f"is broken, not the project's kernels:\n{res['error']}"


@pytest.mark.parametrize("cid,case", CASES, ids=[c for c, _ in CASES])
def test_kernel_compiles(compiled, cid, case):
    res = _result(compiled, cid)
    if not res["ok"]:
        arch = case["arch"]
        canary = compiled["results"].get(f"canary-sm{arch}", {})
        note = "" if canary.get("ok") else \
            f"\n(note: the canary kernel failed for sm_{arch} too: a toolchain problem?)"
        pytest.fail(f"{case['module']}.{case['kernel']} does not compile for sm_{arch} "
                    f"[{cid}]\nsignature: {case['signature']}\n"
                    f"constexprs: {res.get('constexprs', case['constexprs'])}, "
                    f"num_warps: {res.get('num_warps', case['num_warps'])}\n"
                    f"divisibility-16 args: {case['div16']}\n{res['error']}{note}",
                    pytrace=False)


# ---------------------------------------------------------------- table vs launchers

_TORCH_TO_TRITON = {"float16": "fp16", "bfloat16": "bf16", "float32": "fp32",
                    "float64": "fp64", "int32": "i32", "int64": "i64"}


class _Recorder:
    """Stands in for a kernel: ``kernel[grid](*args, **kw)`` records and runs nothing."""

    def __init__(self, kernel, calls, key):
        self.fn, self.calls, self.key = kernel.fn, calls, key

    def __getitem__(self, grid):
        def launch(*args, **kwargs):
            params = list(inspect.signature(self.fn).parameters)
            bound = dict(zip(params, args))
            bound.update({k: v for k, v in kwargs.items() if k in params})
            self.calls.append((self.key, params, bound))
        return launch


def _kind(value):
    import torch
    if isinstance(value, torch.Tensor):
        return "*" + _TORCH_TO_TRITON[str(value.dtype).replace("torch.", "")]
    if isinstance(value, bool):
        return "u1"
    if isinstance(value, int):
        return "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
    if isinstance(value, float):
        return "fp32"
    return type(value).__name__


def test_table_matches_launchers(monkeypatch):
    """Each kernel launch of the public wrappers is a variant of KERNELS, and back."""
    import importlib

    import torch

    calls = []
    for key, k in KERNELS.items():
        mod = importlib.import_module(k.module)
        monkeypatch.setattr(mod, k.name, _Recorder(getattr(mod, k.name), calls, key))
        monkeypatch.setattr(mod, "check_triton_device", lambda *t: None)
    shr = importlib.import_module("frerec_fast.kernels.shr")
    ssim = importlib.import_module("frerec_fast.kernels.ssim_topk")
    ring = importlib.import_module("frerec_fast.kernels.ring_pool")
    from frerec_fast.reference.rings import ring_sector_index

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 12, 10, generator=g)
    for domain in ("complex", "amplitude"):
        shr.band_stats(x, 0.5, domain)
        shr.shr(x, torch.rand(2, 4, 3, generator=g), torch.rand(2, 4, 3, generator=g) + 0.1,
                torch.zeros(2, 3), torch.zeros(2, 3), 0.5, domain)
    ssim.ssim_matrix(torch.rand(3, 1, 13, 12, generator=g), torch.rand(5, 1, 13, 12, generator=g))
    idx = ring_sector_index(6, 4, 2, 3)
    for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        amp = torch.rand(2, 6, 4, generator=g).to(dt).requires_grad_()
        ring.ring_pool(amp, idx, 6).float().sum().backward()
        vals = torch.rand(2, 6, generator=g).to(dt).requires_grad_()
        ring.ring_scatter(vals, idx).float().sum().backward()
        spec = torch.fft.rfft2(torch.rand(2, 3, 6, 6, generator=g, dtype=torch.float64))
        re, im = spec.real.to(dt).requires_grad_(), spec.imag.to(dt).requires_grad_()
        ring.ring_pool_amplitude(re, im, idx, 6).float().sum().backward()

    seen = set()
    for key, params, bound in calls:
        k = KERNELS[key]
        mod = importlib.import_module(k.module)
        names = list(k.signature(next(iter(k.variants))))
        assert params == names, f"{key}: the kernel's arguments {params} differ from the " \
                                f"table's {names}: update KERNELS"
        # Runtime arguments by Triton type (ints by range: the value-1 specialisation is
        # what the compile cases add), flag constexprs by value; block sizes are free.
        got = {a: _kind(v) for a, v in bound.items() if a not in k.blocks}
        match = None
        for variant, (_, flags) in k.variants.items():
            want = {a: ty for a, ty in k.signature(variant).items() if a not in k.blocks}
            for a, v in flags.items():
                want[a] = _kind(getattr(mod, v) if isinstance(v, str) else v)
            if got == want and all(bound[a] == (getattr(mod, v) if isinstance(v, str) else v)
                                   for a, v in flags.items()):
                match = variant
                break
        flags_got = {a: bound[a] for a in bound
                     if a not in k.blocks and k.signature(next(iter(k.variants)))[a] == "constexpr"}
        assert match is not None, f"{key} is launched with argument types {got} and flags " \
            f"{flags_got}, which no variant of KERNELS covers: add it"
        seen.add((key, match))
    missing = [(key, v) for key, k in KERNELS.items() for v in k.variants if (key, v) not in seen]
    assert not missing, f"variants of KERNELS that no launcher uses (stale table?): {missing}"
