"""The CuPy backend compiles csrc/cuda/*.cu at run time with NVRTC, which sees neither
the host launchers nor any system header (``__CUDACC_RTC__``). This compiles each file
with the real NVRTC library (no GPU needed), as ``cupy.RawModule`` would, for sm_80 and
sm_90, and checks that every kernel the Python wrappers look up by name is in the PTX.

NVRTC comes from the ``nvidia-cuda-nvrtc`` wheel (scripts/install.sh installs it into
the CPU .venv) or a CUDA toolkit; without it the test skips and says so.
"""
import ctypes
import glob
import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# The names frerec_fast/fast/*_cuda.py pass to get_function.
KERNELS = {
    "shr.cu": {"frerec_band_stats_half", "frerec_shr_apply_half"},
    "ring_pool.cu": {f"frerec_ring_{op}_{t}" for op in ("pool", "scatter", "amp_bwd")
                     for t in ("f32", "f64")},
    "ssim_topk.cu": {"frerec_ssim_stats", "frerec_ssim_pairs"},
}


def _libnvrtc():
    cands = []
    try:
        import nvidia
        for base in nvidia.__path__:
            cands += glob.glob(os.path.join(base, "*", "lib", "libnvrtc.so*"))
    except ImportError:
        pass
    for home in (os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            cands += glob.glob(os.path.join(home, "lib*", "libnvrtc.so*"))
    for path in sorted(c for c in cands if "builtins" not in c and "alt" not in c):
        try:
            # NVRTC dlopens its builtins library by name: load the one beside it first.
            for b in glob.glob(os.path.join(os.path.dirname(path), "libnvrtc-builtins.so*")):
                if "alt" not in b:
                    ctypes.CDLL(b, mode=ctypes.RTLD_GLOBAL)
            return ctypes.CDLL(path)
        except OSError:
            continue
    return None


NVRTC = _libnvrtc()
MISSING = "libnvrtc not found (pip install nvidia-cuda-nvrtc, or a CUDA toolkit)"
needs_nvrtc = pytest.mark.skipif(NVRTC is None, reason=MISSING + ": NVRTC compile not checked")


def test_nvrtc_is_there_when_required():
    # CI (scripts/test.sh) sets this: there the check must run, never skip.
    if os.environ.get("FREREC_REQUIRE_NVRTC") == "1":
        assert NVRTC is not None, MISSING


def _compile(source: bytes, name: str, arch: str) -> tuple[int, str, str]:
    """(NVRTC result code, compile log, PTX) of one program."""
    prog = ctypes.c_void_p()
    assert NVRTC.nvrtcCreateProgram(ctypes.byref(prog), source, name.encode(), 0, None, None) == 0
    opts = [b"--std=c++17", f"--gpu-architecture=compute_{arch}".encode()]
    rc = NVRTC.nvrtcCompileProgram(prog, len(opts), (ctypes.c_char_p * len(opts))(*opts))
    n = ctypes.c_size_t()
    NVRTC.nvrtcGetProgramLogSize(prog, ctypes.byref(n))
    log = ctypes.create_string_buffer(n.value)
    NVRTC.nvrtcGetProgramLog(prog, log)
    ptx = ""
    if rc == 0:
        NVRTC.nvrtcGetPTXSize(prog, ctypes.byref(n))
        buf = ctypes.create_string_buffer(n.value)
        NVRTC.nvrtcGetPTX(prog, buf)
        ptx = buf.value.decode()
    NVRTC.nvrtcDestroyProgram(ctypes.byref(prog))
    return rc, log.value.decode(errors="replace"), ptx


@needs_nvrtc
@pytest.mark.parametrize("arch", ["80", "90"])
@pytest.mark.parametrize("name", sorted(KERNELS))
def test_cuda_source_compiles_with_nvrtc(name, arch):
    rc, log, ptx = _compile((ROOT / "csrc" / "cuda" / name).read_bytes(), name, arch)
    assert rc == 0, f"NVRTC failed on {name} (sm_{arch}):\n{log}"
    entries = set(re.findall(r"\.entry\s+(\w+)", ptx))
    assert KERNELS[name] <= entries, f"{name}: missing kernels {KERNELS[name] - entries}"
    # extern "C": the names are not mangled, so CuPy's get_function finds them as written.
    assert not any(e.startswith("_Z") for e in entries & KERNELS[name])


@needs_nvrtc
def test_a_broken_source_is_reported():
    rc, log, _ = _compile(b'extern "C" __global__ void k(float* x) { x[0] = undefined_thing; }',
                          "broken.cu", "90")
    assert rc != 0 and "undefined_thing" in log


def test_cupy_launch_geometry_matches_the_source():
    """The CuPy path launches the SSIM kernels with constants mirrored from
    ssim_topk.cu's macros (no NVRTC needed)."""
    from frerec_fast.fast import ssim_cuda
    from frerec_fast.fast.cuda_source import source_path

    src = source_path("ssim_topk.cu").read_text()

    def macro(name):
        return re.search(rf"#define {name} (\S+)", src).group(1)

    assert int(macro("FREREC_SSIM_TQ")) == ssim_cuda._TQ
    assert int(macro("FREREC_SSIM_TN")) == ssim_cuda._TN
    assert int(macro("FREREC_SSIM_STATS_BLOCK")) == ssim_cuda._STATS_BLOCK
    assert int(macro("FREREC_SSIM_MAX_GRID_Y")) == ssim_cuda._MAX_GRID_Y
    # THREADS = (TN / 2) * (TQ / 2): each thread owns 2 x 2 pairs.
    assert ssim_cuda._THREADS == (ssim_cuda._TN // 2) * (ssim_cuda._TQ // 2)
    assert "frerec_ssim_stats(" in src and "frerec_ssim_pairs(" in src
