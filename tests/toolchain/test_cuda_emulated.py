"""The CUDA kernels of csrc/cuda/ (shr.cu, ring_pool.cu, ssim_topk.cu), run on the CPU by
emulation and compared with the torch references, so that CI checks them without a GPU.

How: each kernel file is compiled unchanged by g++ together with csrc/tests/cuda_emu/emu.h,
which turns every CUDA thread of a block into a real std::thread, __syncthreads into a
std::barrier over the block, __shfl_xor_sync into a barrier over the warp, and __shared__
arrays into statics that are filled with NaN bytes before every block
(csrc/tests/cuda_emu/emu_*.cpp mirror the .cu files' host launchers: same grid and block
sizes). The libraries are loaded with ctypes; Python mirrors of the torch bindings
(csrc/cuda/*_binding.cpp) stand in for ``frerec_fast._C``'s CUDA functions, so the real
backend modules (frerec_fast/fast/{shr,ring_pool,ssim}_cuda.py) run on CPU tensors.
Every output buffer starts as NaN and sits between NaN guard zones, and every float input
is copied between NaN guard zones with its strides kept: an element left unwritten, a
write out of bounds or a read out of bounds shows up as a NaN or a changed guard.

What this proves: the kernels' indexing (planes, strides, tiles, partial blocks and warps,
2-D grids and the host's split of grid.y), their reductions (block tree, warp shuffle
tree, float64 accumulation), the placement of their barriers as far as this run's real
interleaving of threads exposes a missing one (and any __syncthreads or full-mask
shuffle that some thread of the group never reaches, which the emulator reports), and the
arithmetic as written, in IEEE float32/float64 with one rounding per operation.

What it does not prove: anything about the GPU memory model or caches, warp scheduling
and divergence, occupancy or performance, nvcc's code generation (it contracts
a * b + c into FMAs where the kernels do not use explicit __f*_rn intrinsics, so the
GPU's low bits may differ from the emulation's; the tolerances here allow for that), the
CUDA math library's last-ulp behaviour (hypot, sqrt), or the CuPy/NVRTC path. Blocks run
one at a time, so races between blocks are not exercised. The op conformance suite run
with ``--device=cuda`` (tests/ops) remains the check on real hardware.
"""
import ctypes
import shutil
import subprocess
import types
from pathlib import Path

import numpy as np
import pytest
import torch

if shutil.which("g++") is None:
    pytest.skip("g++ not found: the CPU emulation of the CUDA kernels needs a C++20 g++ "
                "(apt-get install g++)", allow_module_level=True)

import frerec_fast as ff  # noqa: E402
from frerec_fast.fast import ring_pool_cuda, shr_cuda, ssim_cuda  # noqa: E402
from frerec_fast.fast.ring_plan import ring_plan  # noqa: E402
from frerec_fast.reference.rings import ring_pool_amplitude  # noqa: E402
from frerec_fast.reference.rings import ring_sector_index  # noqa: E402
from frerec_fast.reference.spectral import high_band_mask  # noqa: E402
from frerec_fast.reference.ssim import gaussian_window, local_stats  # noqa: E402
from frerec_fast.reference.ssim import ssim_matrix as ssim_matrix_torch  # noqa: E402
from frerec_fast.reference.ssim import ssim_topk as ssim_topk_torch  # noqa: E402
from ring_cases import CASES as RING_CASES, close as ring_close, pool_scatter_pair  # noqa: E402
from ring_cases import amplitude_pool_pair, spectrum  # noqa: E402
from ssim_oracles import (assert_float32_accuracy, brute_topk, f64_matrix, images,  # noqa: E402
                          sk_matrix)

EMU_DIR = Path(__file__).resolve().parents[2] / "csrc" / "tests" / "cuda_emu"
# -ffp-contract=off: emu.h's __f*_rn intrinsics must stay one rounding each (see emu.h).
CXXFLAGS = ["-std=c++20", "-O1", "-pthread", "-shared", "-fPIC", "-ffp-contract=off",
            "-fno-strict-aliasing"]

P, I32, I64, F64 = ctypes.c_void_p, ctypes.c_int, ctypes.c_longlong, ctypes.c_double
STRIDES = ctypes.POINTER(ctypes.c_longlong)
SIGNATURES = {
    "shr": {
        "emu_band_stats_half_launch": [P, I64, I32, I32, F64, I32, P, P],
        "emu_shr_apply_half_launch": [P, I64, I32, I32, F64, I32, P, P, P, P],
    },
    "ring_pool": {
        "emu_ring_pool_launch": [I32, P, P, P, P, P, I64, I32, I32, I32, STRIDES, STRIDES, I32,
                                 I32],
        "emu_ring_scatter_launch": [I32, P, P, P, P, I64, I32, I32, I32],
        "emu_ring_amp_bwd_launch": [I32, P, P, P, P, P, P, P, I64, I32, I32, I32, I32, STRIDES,
                                    STRIDES],
    },
    "ssim_topk": {
        "emu_ssim_stats_launch": [P, P, P, I32, I32, I32],
        "emu_ssim_pairs_launch": [P, P, P, P, P, P, I64, I32, I32, I32, I32, I32],
    },
}


class EmuLib:
    """One emulation library: launcher calls that raise on an emulator fault or a launch
    the device would refuse, and the log of launch geometries."""

    def __init__(self, path: Path, signatures: dict):
        self.lib = ctypes.CDLL(str(path))
        for name, argtypes in signatures.items():
            fn = getattr(self.lib, name)
            fn.argtypes, fn.restype = argtypes, ctypes.c_int
        self.lib.emu_last_error.restype = ctypes.c_char_p
        self.lib.emu_log_size.restype = ctypes.c_int
        self.lib.emu_log_entry.argtypes = [ctypes.c_int, ctypes.POINTER(ctypes.c_uint)]

    def __call__(self, name: str, *args) -> None:
        self.lib.emu_reset()
        rc = getattr(self.lib, name)(*args)
        if rc != 0:
            why = self.lib.emu_last_error().decode() or "invalid launch configuration"
            raise RuntimeError(f"{name}: emulated launch failed (code {rc}): {why}")

    def launches(self):
        """[(grid, block)] of the launches of the last call, as (x, y, z) tuples."""
        out = []
        for i in range(self.lib.emu_log_size()):
            e = (ctypes.c_uint * 6)()
            self.lib.emu_log_entry(i, e)
            out.append((tuple(e[:3]), tuple(e[3:])))
        return out


@pytest.fixture(scope="module")
def emu(tmp_path_factory):
    """{"shr", "ring_pool", "ssim_topk"} -> EmuLib, compiled in parallel into a temp dir."""
    out = tmp_path_factory.mktemp("cuda_emu")
    procs = {}
    for name in SIGNATURES:
        src, lib = EMU_DIR / f"emu_{name}.cpp", out / f"emu_{name}.so"
        procs[name] = (lib, subprocess.Popen(["g++", *CXXFLAGS, "-o", str(lib), str(src)],
                                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                             text=True))
    libs = {}
    for name, (lib, proc) in procs.items():
        log = proc.communicate()[0]
        assert proc.returncode == 0, f"g++ failed on emu_{name}.cpp:\n{log}"
        libs[name] = EmuLib(lib, SIGNATURES[name])
    return libs


# ---------------------------------------------------------------------------------
# Guarded buffers
# ---------------------------------------------------------------------------------

# Elements of NaN on each side of every buffer handed to a kernel; 64 keeps the views
# 256-byte aligned, like cudaMalloc's.
GUARD = 64


class Guarded:
    """A tensor laid out with given strides inside a NaN-filled buffer with GUARD elements
    of NaN on both sides; the gaps between strided elements are NaN too."""

    def __init__(self, shape, strides, dtype):
        span = 1 + sum((n - 1) * s for n, s in zip(shape, strides)) if all(shape) else 0
        self.base = torch.full((span + 2 * GUARD,), float("nan"), dtype=dtype)
        self.span = span
        self.view = self.base.as_strided(tuple(shape), tuple(strides), GUARD)

    @classmethod
    def empty(cls, shape, dtype):
        return cls(shape, torch.empty(shape).stride(), dtype)

    @classmethod
    def copy_of(cls, t: torch.Tensor):
        g = cls(t.shape, t.stride(), t.dtype)
        g.view.copy_(t)
        return g

    def ptr(self):
        return self.view.data_ptr()

    def assert_guards_intact(self, what=""):
        outside = torch.cat([self.base[:GUARD], self.base[GUARD + self.span:]])
        assert torch.isnan(outside).all(), f"{what}: a kernel wrote outside its buffer"


def _strides(t):
    return (ctypes.c_longlong * 4)(*t.stride())


# ---------------------------------------------------------------------------------
# Python mirrors of csrc/cuda/*_binding.cpp on top of the emulated launchers: the same
# checks (as asserts), allocations and launcher arguments as the C++ bindings, on CPU
# tensors. They stand in for frerec_fast._C's CUDA functions.
# ---------------------------------------------------------------------------------

class ShrBinding:
    """csrc/cuda/shr_binding.cpp."""

    def __init__(self, lib: EmuLib):
        self.lib = lib

    @staticmethod
    def _check_spec(spec, W):
        assert spec.dtype == torch.complex64 and spec.dim() == 3 and spec.is_contiguous()
        assert spec.shape[2] == W // 2 + 1

    def band_stats_half_cuda(self, spec, W, ratio, amplitude):
        self._check_spec(spec, W)
        planes, H = spec.shape[0], spec.shape[1]
        s = Guarded.copy_of(spec)
        mu, sigma = Guarded.empty((planes,), torch.float32), Guarded.empty((planes,), torch.float32)
        self.lib("emu_band_stats_half_launch", s.ptr(), planes, H, W, ratio, int(amplitude),
                 mu.ptr(), sigma.ptr())
        for g in (mu, sigma):
            g.assert_guards_intact("band_stats_half")
        return mu.view.clone(), sigma.view.clone()

    def shr_apply_half_cuda_(self, spec, W, ratio, amplitude, mu_s, sigma_s, mu_hat, sigma_hat):
        self._check_spec(spec, W)
        for t in (mu_s, sigma_s, mu_hat, sigma_hat):
            assert t.dtype == torch.float32 and t.shape == (spec.shape[0],) and t.is_contiguous()
        stats = [Guarded.copy_of(t) for t in (mu_s, sigma_s, mu_hat, sigma_hat)]
        s = Guarded.copy_of(spec)
        self.lib("emu_shr_apply_half_launch", s.ptr(), spec.shape[0], spec.shape[1], W, ratio,
                 int(amplitude), *(g.ptr() for g in stats))
        s.assert_guards_intact("shr_apply_half")
        spec.copy_(s.view)


class RingBinding:
    """csrc/cuda/ring_pool_binding.cpp."""

    def __init__(self, lib: EmuLib):
        self.lib = lib

    @staticmethod
    def _check_int_vec(t, n):
        assert t.dtype == torch.int32 and t.dim() == 1 and t.shape[0] == n and t.is_contiguous()

    def ring_pool_cuda(self, re, im, order, offsets, n_bins, amplitude, mean):
        assert re.dim() == 4 and re.shape == im.shape and re.dtype == im.dtype
        assert re.dtype in (torch.float32, torch.float64)
        hw = re.shape[2] * re.shape[3]
        self._check_int_vec(order, hw)
        self._check_int_vec(offsets, n_bins + 1)
        out = Guarded.empty((re.shape[0], n_bins), re.dtype)
        if hw == 0 or re.shape[1] == 0:
            return out.view.zero_().clone()
        gre, gim = Guarded.copy_of(re), Guarded.copy_of(im)
        self.lib("emu_ring_pool_launch", int(re.dtype == torch.float64), gre.ptr(), gim.ptr(),
                 order.data_ptr(), offsets.data_ptr(), out.ptr(), re.shape[0], n_bins,
                 re.shape[1], re.shape[3], _strides(gre.view), _strides(gim.view),
                 int(amplitude), int(mean))
        out.assert_guards_intact("ring_pool")
        return out.view.clone()

    def ring_scatter_cuda(self, values, index, offsets, H, Wh, div_count):
        assert values.dim() == 2 and values.is_contiguous()
        self._check_int_vec(index, H * Wh)
        self._check_int_vec(offsets, values.shape[1] + 1)
        v = Guarded.copy_of(values)
        out = Guarded.empty((values.shape[0], H, Wh), values.dtype)
        self.lib("emu_ring_scatter_launch", int(values.dtype == torch.float64), v.ptr(),
                 index.data_ptr(), offsets.data_ptr(), out.ptr(), values.shape[0], H * Wh,
                 values.shape[1], int(div_count))
        out.assert_guards_intact("ring_scatter")
        return out.view.clone()

    def ring_pool_amplitude_bwd_cuda(self, grad, re, im, index, offsets):
        assert re.dim() == 4 and re.shape == im.shape and grad.dtype == re.dtype
        assert grad.dim() == 2 and grad.shape[0] == re.shape[0] and grad.is_contiguous()
        hw = re.shape[2] * re.shape[3]
        self._check_int_vec(index, hw)
        self._check_int_vec(offsets, grad.shape[1] + 1)
        g, gre, gim = Guarded.copy_of(grad), Guarded.copy_of(re), Guarded.copy_of(im)
        g_re, g_im = Guarded.empty(re.shape, re.dtype), Guarded.empty(re.shape, re.dtype)
        self.lib("emu_ring_amp_bwd_launch", int(re.dtype == torch.float64), g.ptr(), gre.ptr(),
                 gim.ptr(), index.data_ptr(), offsets.data_ptr(), g_re.ptr(), g_im.ptr(),
                 re.shape[0], re.shape[1], hw, re.shape[3], grad.shape[1], _strides(gre.view),
                 _strides(gim.view))
        for b in (g_re, g_im):
            b.assert_guards_intact("ring_pool_amplitude_bwd")
        return g_re.view.clone(), g_im.view.clone()


class SsimBinding:
    """csrc/cuda/ssim_topk_binding.cpp (max_grid_y: see emu_ssim_topk.cpp)."""

    def __init__(self, lib: EmuLib, max_grid_y: int | None = None):
        self.lib = lib
        geometry = (ctypes.c_int * 5)()
        lib.lib.emu_ssim_geometry(geometry)
        self.tq, self.tn, self.threads, self.stats_block, self.max_grid_y = geometry
        if max_grid_y is not None:
            self.max_grid_y = max_grid_y

    @staticmethod
    def _check_images(img, H, W):
        assert H >= 11 and W >= 11
        assert img.dtype == torch.float32 and img.is_contiguous() and img.dim() == 2
        assert img.shape[0] == H * W

    def ssim_stats_cuda(self, img, taps, H, W):
        self._check_images(img, H, W)
        assert taps.dtype == torch.float32 and taps.shape == (11,)
        g, t = Guarded.copy_of(img), Guarded.copy_of(taps)
        maps = Guarded.empty((3, (H - 10) * (W - 10), img.shape[1]), torch.float32)
        self.lib("emu_ssim_stats_launch", g.ptr(), t.ptr(), maps.ptr(), img.shape[1], H, W)
        maps.assert_guards_intact("ssim_stats")
        return maps.view.clone()

    def ssim_pairs_cuda(self, q_img, q_maps, d_img, d_maps, taps, H, W, ld_out=None):
        self._check_images(q_img, H, W)
        self._check_images(d_img, H, W)
        n_q, n_d = q_img.shape[1], d_img.shape[1]
        assert q_maps.shape == (3, (H - 10) * (W - 10), n_q) and d_maps.shape[2] == n_d
        ins = [Guarded.copy_of(t) for t in (q_img, d_img, q_maps, d_maps, taps)]
        ld = n_d if ld_out is None else ld_out  # the binding always passes N
        out = Guarded.empty((n_q, ld), torch.float32)
        self.lib("emu_ssim_pairs_launch", *(g.ptr() for g in ins), out.ptr(), ld,
                 n_q, n_d, H, W, self.max_grid_y)
        out.assert_guards_intact("ssim_pairs")
        if ld_out is not None:
            assert torch.isnan(out.view[:, n_d:]).all(), "ssim_pairs wrote past column N"
        return out.view[:, :n_d].clone()


def _fake_ext(binding):
    """Stands in for frerec_fast._ext in a backend module: a 'CUDA build' whose CUDA
    functions are the emulated kernels."""
    return types.SimpleNamespace(has_cuda_ext=lambda: True, ext=lambda: binding)


@pytest.fixture
def shr_backend(emu, monkeypatch):
    """frerec_fast.fast.shr_cuda running the emulated shr.cu on CPU tensors."""
    monkeypatch.setattr(shr_cuda, "_ext", _fake_ext(ShrBinding(emu["shr"])))
    monkeypatch.setattr(shr_cuda, "_check_cuda", lambda t, name: None)
    return shr_cuda


@pytest.fixture
def ring_backend(emu, monkeypatch):
    """frerec_fast.fast.ring_pool_cuda running the emulated ring_pool.cu on CPU tensors."""
    monkeypatch.setattr(ring_pool_cuda, "_ext", _fake_ext(RingBinding(emu["ring_pool"])))
    monkeypatch.setattr(ring_pool_cuda, "_check_cuda", lambda t, name: None)
    return ring_pool_cuda


@pytest.fixture
def ssim_backend(emu, monkeypatch):
    """frerec_fast.fast.ssim_cuda running the emulated ssim_topk.cu on CPU tensors."""
    binding = SsimBinding(emu["ssim_topk"])
    monkeypatch.setattr(ssim_cuda, "_native", lambda: binding)
    monkeypatch.setattr(ssim_cuda, "_check_cuda", lambda t, name: None)
    return ssim_cuda


# ---------------------------------------------------------------------------------
# shr.cu: band statistics and SHR on the rfft2 half spectrum
# ---------------------------------------------------------------------------------

# Odd, even and non-square sides, 1-pixel sides, a 1x1 image; with even W the stored
# Nyquist column v = W/2 has weight 1, like v = 0.
SHR_SIZES = [(1, 1), (1, 2), (2, 1), (1, 7), (7, 1), (2, 2), (3, 4), (5, 8), (8, 5), (9, 9),
             (16, 16), (6, 11)]


def shr_case(b, c, h, w, k, seed, bank_shift=0.0):
    """Images, neighbour statistics banks and draws, as in tests/test_spectral.py."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    x = (0.5 + 0.3 * torch.sin(6 * xx + 3 * yy) + 0.2 * torch.rand(b, c, h, w, generator=g))
    mu_bank = torch.randn(b, k, c, generator=g) * 0.01 + bank_shift
    sigma_bank = 0.05 + 0.05 * torch.rand(b, k, c, generator=g)
    return x.clamp(0, 1), mu_bank, sigma_bank, torch.randn(b, c, generator=g), \
        torch.randn(b, c, generator=g)


def test_shr_launch_geometry(emu, shr_backend):
    # 2 x 3 planes of a 9 x 16 image: 6 stats blocks, 6 * 9 * 9 = 486 elements -> 2 blocks.
    lib = emu["shr"]
    block = lib.lib.emu_shr_block()
    assert block == shr_cuda._BLOCK  # the CuPy path's copy of FREREC_BLOCK
    shr_backend.band_stats(torch.rand(2, 3, 9, 16))
    assert lib.launches() == [((6, 1, 1), (block, 1, 1))]
    spec = torch.zeros(6, 9, 9, dtype=torch.complex64)
    stats = [torch.zeros(6) for _ in range(4)]
    ShrBinding(lib).shr_apply_half_cuda_(spec, 16, 0.5, False, *stats)
    assert lib.launches() == [((2, 1, 1), (block, 1, 1))]


@pytest.mark.parametrize("domain", ["complex", "amplitude"])
@pytest.mark.parametrize("h,w", SHR_SIZES)
def test_shr_band_stats_and_shr(shr_backend, h, w, domain):
    x, mu_bank, sigma_bank, eps_mu, eps_sigma = shr_case(2, 3, h, w, 4, seed=h * 31 + w)
    mu, sigma = shr_backend.band_stats(x, 0.5, domain)
    out = shr_backend.shr(x, mu_bank, sigma_bank, eps_mu, eps_sigma, 0.5, domain)
    assert mu.shape == sigma.shape == (2, 3) and out.shape == x.shape
    if not high_band_mask(h, w, 0.5).any():
        # Empty high band (1x1): the reference refuses; the kernels give 0 and leave the
        # spectrum alone.
        with pytest.raises(ValueError, match="empty"):
            ff.band_stats(x, domain=domain, backend="torch")
        assert (mu == 0).all() and (sigma == 0).all()
        torch.testing.assert_close(out, x, rtol=0, atol=1e-6)
        return
    ref_mu, ref_sigma = ff.band_stats(x, domain=domain, backend="torch")
    torch.testing.assert_close(mu, ref_mu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sigma, ref_sigma, rtol=1e-5, atol=1e-6)
    ref = ff.shr(x, mu_bank, sigma_bank, eps_mu, eps_sigma, domain=domain, backend="torch")
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("ratio", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("domain", ["complex", "amplitude"])
def test_shr_other_ratios(shr_backend, ratio, domain):
    # ratio 0: everything is high band (DC included); ratio 1: only the outer frame.
    x, *bank = shr_case(1, 2, 10, 7, 3, seed=5)
    mu, sigma = shr_backend.band_stats(x, ratio, domain)
    ref_mu, ref_sigma = ff.band_stats(x, ratio=ratio, domain=domain, backend="torch")
    torch.testing.assert_close(mu, ref_mu, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(sigma, ref_sigma, rtol=1e-5, atol=1e-6)
    out = shr_backend.shr(x, *bank, ratio, domain)
    ref = ff.shr(x, *bank, ratio=ratio, domain=domain, backend="torch")
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)


@pytest.mark.parametrize("domain", ["complex", "amplitude"])
@pytest.mark.parametrize("h,w,value", [(12, 12, 0.4), (9, 16, 0.7), (3, 1, 0.4), (7, 5, 0.0)])
def test_shr_constant_images_sigma_zero(shr_backend, h, w, value, domain):
    # A constant image's high band is exactly 0 (for these sizes float32 rfft2 and float64
    # fft2 both give exact zeros; 0.0 for any size): sigma = 0, the kernel's scale is 0 and
    # the band becomes mu_hat (in amplitude: |.| = mu_hat with phase 0).
    x = torch.full((2, 2, h, w), value)
    mu_bank, sigma_bank = torch.full((2, 3, 2), 0.02), torch.full((2, 3, 2), 0.1)
    eps = torch.zeros(2, 2)
    mu, sigma = shr_backend.band_stats(x, 0.5, domain)
    assert (sigma == 0).all() and (mu == 0).all()
    out = shr_backend.shr(x, mu_bank, sigma_bank, eps, eps, 0.5, domain)
    ref = ff.shr(x, mu_bank, sigma_bank, eps, eps, domain=domain, backend="torch")
    assert torch.isfinite(out).all()
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-6)


def test_shr_amplitude_clamped_at_zero(shr_backend):
    # Strongly negative target means: every new amplitude clamps to 0 (fmax in the kernel),
    # so the whole high band is zeroed.
    x, mu_bank, sigma_bank, eps_mu, eps_sigma = shr_case(2, 2, 11, 8, 3, seed=9, bank_shift=-5.0)
    out = shr_backend.shr(x, mu_bank, sigma_bank, eps_mu, eps_sigma, 0.5, "amplitude")
    ref = ff.shr(x, mu_bank, sigma_bank, eps_mu, eps_sigma, domain="amplitude", backend="torch")
    torch.testing.assert_close(out, ref, rtol=0, atol=2e-5)
    spec = torch.fft.fft2(out.double(), norm="ortho")
    assert spec[..., high_band_mask(11, 8, 0.5)].abs().max() < 1e-5


# ---------------------------------------------------------------------------------
# ring_pool.cu: ring/sector pooling, scatter and the fused amplitude pooling's backward
# ---------------------------------------------------------------------------------

def test_ring_launch_geometry(emu, ring_backend):
    lib = emu["ring_pool"]
    warps, ew = lib.lib.emu_ring_warps(), lib.lib.emu_ring_ew_block()
    assert (warps, ew) == (ring_pool_cuda._WARPS, ring_pool_cuda._EW_BLOCK)
    idx = ring_sector_index(9, 6, 3, 3)  # 9 bins -> 3 blocks per image of 4 warps
    re, im = spectrum(2, 3, 9, 6, torch.float32, seed=1)
    ring_backend.ring_pool_amplitude(re, im, idx, 9)
    assert lib.launches() == [((6, 1, 1), (32 * warps, 1, 1))]
    ring_backend.ring_scatter(torch.rand(5, 9), idx)  # 5 * 54 = 270 elements -> 2 blocks
    assert lib.launches() == [((2, 1, 1), (ew, 1, 1))]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("h,w_half,n_rings,n_sectors,b,c", RING_CASES)
def test_ring_pool_and_scatter_forward_backward(ring_backend, h, w_half, n_rings, n_sectors, b,
                                                c, dtype):
    # Pool forward: the pool kernel in mean mode (one warp per bin, shuffle tree); its
    # backward: scatter with div_count. Scatter forward: the scatter kernel; its
    # backward: the pool kernel in sum mode.
    fast, ref = pool_scatter_pair(ring_backend.ring_pool, ring_backend.ring_scatter, h, w_half,
                                  n_rings, n_sectors, b, dtype)
    for got, want in zip(fast, ref):
        ring_close(got, want, dtype)
    outs = {"emu": fast, "ref": ref}
    # Scatter is a pure gather, and the pool's backward a gather of grad / count: exact.
    assert torch.equal(outs["emu"][2], outs["ref"][2])
    assert torch.equal(outs["emu"][1], outs["ref"][1])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("h,w_half,n_rings,n_sectors,b,c", RING_CASES)
def test_ring_fused_amplitude_pool(ring_backend, h, w_half, n_rings, n_sectors, b, c, dtype):
    # re, im: the .real / .imag views of one complex tensor (element stride 2), with exact
    # zeros, where the amplitude's gradient must be exactly 0.
    idx = ring_sector_index(h, w_half, n_rings, n_sectors)
    n_bins = n_rings * n_sectors
    re0, im0 = spectrum(b, c, h, w_half, dtype, seed=h + 7 * c)
    assert re0.stride()[-1] == 2
    up = torch.randn(b, n_bins, generator=torch.Generator().manual_seed(3), dtype=dtype)
    fast, ref = amplitude_pool_pair(ring_backend.ring_pool_amplitude, re0, im0, idx, n_bins, up)
    res = {"emu": fast, "ref": ref}
    for got, want in zip(res["emu"], res["ref"]):
        ring_close(got, want, dtype)
    zero = (re0 == 0) & (im0 == 0)
    assert zero.any() and (res["emu"][1][zero] == 0).all() and (res["emu"][2][zero] == 0).all()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_ring_kernels_mixed_strides_and_channels(emu, dtype):
    # Direct kernel calls on layouts the autograd path does not produce: re channels-last
    # and im a strided slice of a larger tensor (all four strides differ between them),
    # plain (non-amplitude) pooling over several channels, sum and mean modes.
    b, c, h, wh, n_rings, n_sectors = 3, 4, 11, 6, 3, 4
    n_bins = n_rings * n_sectors
    idx = ring_sector_index(h, wh, n_rings, n_sectors)
    plan = ring_plan(idx, n_bins)
    g = torch.Generator().manual_seed(11)
    re = torch.randn(b, h, wh, c, generator=g, dtype=dtype).permute(0, 3, 1, 2)
    im = torch.randn(2 * b, c + 1, h + 2, 2 * wh, generator=g, dtype=dtype)[::2, 1:, 2:, ::2]
    assert re.shape == im.shape and len({re.stride(), im.stride()}) == 2
    binding = RingBinding(emu["ring_pool"])
    amp = torch.sqrt(re * re + im * im)
    for amplitude, src in ((True, amp), (False, re)):
        for mean in (True, False):
            got = binding.ring_pool_cuda(re, im, plan.order, plan.offsets, n_bins, amplitude,
                                         mean)
            flat = src.reshape(b, c, h * wh)
            want = torch.zeros(b, n_bins, dtype=dtype).index_add_(
                1, idx.reshape(-1), flat.sum(1))
            if mean:
                want = want / (c * torch.bincount(idx.reshape(-1), minlength=n_bins).clamp(min=1))
            ring_close(got, want, dtype)
    grad = torch.randn(b, n_bins, generator=g, dtype=dtype)
    g_re, g_im = binding.ring_pool_amplitude_bwd_cuda(grad, re, im, plan.index, plan.offsets)
    r, i = re.clone().requires_grad_(), im.clone().requires_grad_()
    ring_pool_amplitude(r, i, idx, n_bins).backward(grad)
    ring_close(g_re, r.grad, dtype)
    ring_close(g_im, i.grad, dtype)
    # Empty batch / zero channels: no launch, zeros, as in the binding.
    assert binding.ring_pool_cuda(re[:0], im[:0], plan.order, plan.offsets, n_bins, True,
                                  True).shape == (0, n_bins)
    assert (binding.ring_pool_cuda(re[:, :0], im[:, :0], plan.order, plan.offsets, n_bins, True,
                                   True) == 0).all()


# ---------------------------------------------------------------------------------
# ssim_topk.cu: statistic maps and all-pairs SSIM; top-K through ssim_cuda's host merge
# ---------------------------------------------------------------------------------

def test_ssim_launch_geometry(emu, ssim_backend):
    lib = emu["ssim_topk"]
    b = SsimBinding(lib)
    assert (b.tq, b.tn, b.threads, b.stats_block, b.max_grid_y) == (
        ssim_cuda._TQ, ssim_cuda._TN, ssim_cuda._THREADS, ssim_cuda._STATS_BLOCK,
        ssim_cuda._MAX_GRID_Y)
    q, db = images(33, 11, 12, 1), images(40, 11, 12, 2)
    d_img = db.reshape(40, -1).t().contiguous()
    b.ssim_stats_cuda(d_img, gaussian_window(), 11, 12)
    assert lib.launches() == [((1, 1, 1), (b.stats_block, 1, 1))]
    ssim_backend.ssim_matrix(q, db)  # pairs: 2 database blocks x 2 query blocks
    assert lib.launches() == [((2, 2, 1), (b.threads, 1, 1))]


@pytest.mark.parametrize("h,w,n", [(11, 11, 3), (12, 13, 5), (23, 12, 130), (25, 30, 2)])
def test_ssim_stats_maps(emu, h, w, n):
    # One thread per image, a ring of 11 vertical accumulators over chunks of 11 rows:
    # H = 11, 12, 23, 25 end a chunk after 11, 1, 1, 3 rows; 130 images: 2 blocks, the
    # second nearly empty.
    x = images(n, h, w, seed=h + w)
    maps = SsimBinding(emu["ssim_topk"]).ssim_stats_cuda(
        x.reshape(n, -1).t().contiguous(), gaussian_window(), h, w)
    m, a, v = (t.t().reshape(n, h - 10, w - 10) for t in maps)
    mu, var = local_stats(x)
    c1h, c2h = 0.5 * 0.01 ** 2, 0.5 * 0.03 ** 2
    torch.testing.assert_close(m, mu, rtol=0, atol=1e-6)
    torch.testing.assert_close(a - c1h, mu * mu, rtol=0, atol=1e-6)
    torch.testing.assert_close(v - c2h, var, rtol=0, atol=1e-6)


@pytest.mark.parametrize("h,w,nq,nd", [(11, 11, 2, 3), (16, 16, 3, 5), (12, 13, 33, 35),
                                       (23, 12, 5, 40)])
def test_ssim_matrix(ssim_backend, h, w, nq, nd):
    # Partial tiles (33 and 35 images: a 2 x 2 grid of 32 x 32 tiles, mostly empty), odd
    # sizes, and chunks of 11 rows ending early (H = 12, 16, 23).
    q, db = images(nq, h, w, seed=h), images(nd, h, w, seed=w + 1)
    m = ssim_backend.ssim_matrix(q, db)
    ref = ssim_matrix_torch(q, db)
    assert m.shape == (nq, nd) and m.dtype == torch.float32
    torch.testing.assert_close(m, ref, rtol=0, atol=2e-5)
    assert_float32_accuracy(m, ref, f64_matrix(q, db))


def test_ssim_duplicates_self_and_grid_y_split(emu, ssim_backend):
    # Exact duplicates in different tiles (1, 40, 66; 2, 33) score bit-identically and an
    # image against itself exactly 1.0: the kernel's explicit-rounding contract.
    db = images(70, 13, 12, 5)
    db[[40, 66]] = db[1].clone()
    db[33] = db[2].clone()
    q = torch.cat([images(2, 13, 12, 6), db[[1, 2, 69]]])
    m = ssim_backend.ssim_matrix(q, db)
    assert torch.equal(m[:, 1], m[:, 40]) and torch.equal(m[:, 1], m[:, 66])
    assert torch.equal(m[:, 2], m[:, 33])
    assert m[2, 1] == 1.0 and m[3, 2] == 1.0 and m[4, 69] == 1.0
    # Query blocks over several launches (q_block0 > 0), and an output row pitch wider
    # than N: bit-identical, nothing written past column N.
    lib = emu["ssim_topk"]
    qq = db[:70]
    taps = gaussian_window()
    img = qq.reshape(70, -1).t().contiguous()
    full = SsimBinding(lib)
    maps = full.ssim_stats_cuda(img, taps, 13, 12)
    want = full.ssim_pairs_cuda(img, maps, img, maps, taps, 13, 12)
    assert (torch.diagonal(want) == 1.0).all()
    for max_y, n_launch in ((1, 3), (2, 2)):
        got = SsimBinding(lib, max_grid_y=max_y).ssim_pairs_cuda(img, maps, img, maps, taps, 13,
                                                                 12, ld_out=73)
        grids = [grid for grid, _ in lib.launches()]
        assert len(grids) == n_launch and sum(g[1] for g in grids) == 3
        assert all(g[1] <= max_y for g in grids)
        assert torch.equal(got, want)


def test_ssim_constant_images_and_ties(ssim_backend):
    # Flat images (local variance 0 up to float32 cancellation) and exact ties.
    vals = torch.tensor([0.3, 0.7, 0.0, 1.0, 0.3])
    db = torch.ones(5, 1, 12, 13) * vals[:, None, None, None]
    q = torch.cat([db[:2], images(1, 12, 13, 9)])
    m = ssim_backend.ssim_matrix(q, db)
    assert torch.isfinite(m).all()
    np.testing.assert_allclose(m.numpy(), sk_matrix(q, db), atol=2e-4)
    torch.testing.assert_close(m, ssim_matrix_torch(q, db), rtol=0, atol=2e-4)
    assert m[0, 0] == 1.0 and m[0, 4] == 1.0  # 0.3 against 0.3
    s, i = ssim_backend.ssim_topk(q, db, 2, exclude=torch.tensor([0, -1, -1]))
    assert i[0].tolist()[0] == 4  # db[4] is a copy of db[0], which is excluded
    assert i[1].tolist()[0] == 1


@pytest.mark.parametrize("k,chunk", [(1, 4096), (3, 7), (70, 16)])
def test_ssim_topk(ssim_backend, k, chunk):
    # Top-K through ssim_cuda's chunked merge on the emulated scores: ties (duplicates)
    # to the lower index, self-exclusion, K up to the database size.
    db = images(70, 12, 11, 13)
    db[[17, 50]] = db[3].clone()
    q = torch.cat([images(2, 12, 11, 14), db[[3, 69]]])
    exclude = torch.tensor([-1, -1, 3, 69])
    m = ssim_backend.ssim_matrix(q, db).numpy()
    for ex in (None, exclude):
        s, i = ssim_backend.ssim_topk(q, db, k, exclude=ex, db_chunk=chunk)
        kk = min(k, 70 - (ex is not None))
        bs, bi = brute_topk(m, kk, None if ex is None else ex.tolist())
        np.testing.assert_array_equal(i.numpy(), bi)
        np.testing.assert_array_equal(s.numpy(), bs.astype(np.float32))
        ts, _ = ssim_topk_torch(q, db, k, exclude=ex)
        torch.testing.assert_close(s, ts, rtol=0, atol=2e-5)
    s, i = ssim_backend.ssim_topk(q, db, 3, exclude=exclude)
    assert i[2].tolist()[:2] == [17, 50] and s[2, 0] == s[2, 1] == 1.0
