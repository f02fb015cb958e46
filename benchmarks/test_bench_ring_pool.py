"""FESA's ring/sector pooling per backend against the naive torch reference
(``reference/rings.py``: ``scatter_add`` pooling, ``index_select`` scatter, and for the
fused op the separate ``|X|`` and channel mean of ``model/fesa.py``).

Groups (each row's ratio is against the ``torch`` row of its group):
- ``ring_amp``: the fused ``ring_pool_amplitude`` forward, [B, C, H, Wh] spectrum -> [B, 512];
- ``ring_amp_train``: forward + backward of fused pooling and scatter, as one FESA
  frequency branch uses them in training;
- ``ring_pool`` / ``ring_scatter``: the reference-signature ops alone on [B, H, Wh].

Feature sizes 64/128/256 with the RHM's level-1 width (48 channels) at batch sizes a
training step uses. On CPU the fast backend is ``cpp`` (the OpenMP kernels of
``csrc/cpu/ring_pool.cpp``, CPU auto's choice); Triton is skipped on CPU (the interpreter
is a correctness tool, not a performance path); unavailable backends are skipped with the
dispatch table's reason.
"""
import pytest
import torch

from frerec_fast import backends
from frerec_fast.reference.rings import ring_sector_index
from conftest import sync

CASES = [(64, 16, 48), (128, 8, 48), (256, 4, 48)]  # (feature size, batch, channels)
N_RINGS, N_SECTORS = 16, 32
N_BINS = N_RINGS * N_SECTORS


def _skip_reason(op, backend, device):
    if backend == "triton" and device.type == "cpu":
        return "Triton on CPU runs in the interpreter: not a performance path"
    return backends.unavailable_reason(op, backend, device.type)


def _spectrum(size, batch, channels, device):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, channels, size, size, generator=g).to(device)
    return torch.fft.rfft2(x, norm="ortho")                          # [B, C, H, Wh] complex64


def _run(benchmark, fn, device, group, backend, batch, size, channels):
    def timed():
        out = fn()
        sync(device)
        return out

    benchmark.group = group
    benchmark.extra_info.update(backend=backend, items=batch, size=size, channels=channels,
                                bins=N_BINS, device=str(device))
    benchmark.pedantic(timed, rounds=5, iterations=1, warmup_rounds=1)


BACKENDS = ["torch", "cpp", "triton", "cuda"]


@pytest.mark.parametrize("size,batch,channels", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ring_pool_amplitude(benchmark, bench_device, backend, size, batch, channels):
    why = _skip_reason("ring_pool_amplitude", backend, bench_device)
    if why:
        pytest.skip(why)
    fn = backends.resolve("ring_pool_amplitude", backend, bench_device)
    X = _spectrum(size, batch, channels, bench_device)
    idx = ring_sector_index(size, size // 2 + 1, N_RINGS, N_SECTORS, device=bench_device)
    with torch.no_grad():
        _run(benchmark, lambda: fn(X.real, X.imag, idx, N_BINS), bench_device,
             f"ring_amp-{bench_device.type}-{size}-b{batch}c{channels}", backend, batch, size,
             channels)


@pytest.mark.parametrize("size,batch,channels", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ring_train_step(benchmark, bench_device, backend, size, batch, channels):
    why = _skip_reason("ring_pool_amplitude", backend, bench_device)
    if why:
        pytest.skip(why)
    pool = backends.resolve("ring_pool_amplitude", backend, bench_device)
    scatter = backends.resolve("ring_scatter", backend, bench_device)
    X0 = _spectrum(size, batch, channels, bench_device)
    idx = ring_sector_index(size, size // 2 + 1, N_RINGS, N_SECTORS, device=bench_device)
    wh = size // 2 + 1
    up = torch.randn(batch, 1, size, wh, device=bench_device)

    def step():
        X = X0.detach().requires_grad_()
        re, im = X.real, X.imag
        mask = scatter(torch.sigmoid(pool(re, im, idx, N_BINS)), idx).unsqueeze(1)
        (re * mask * up).sum().backward()
        return X.grad

    _run(benchmark, step, bench_device,
         f"ring_amp_train-{bench_device.type}-{size}-b{batch}c{channels}", backend, batch, size,
         channels)


@pytest.mark.parametrize("size,batch,channels", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ring_pool(benchmark, bench_device, backend, size, batch, channels):
    why = _skip_reason("ring_pool", backend, bench_device)
    if why:
        pytest.skip(why)
    fn = backends.resolve("ring_pool", backend, bench_device)
    amp = torch.rand(batch, size, size // 2 + 1, device=bench_device)
    idx = ring_sector_index(size, size // 2 + 1, N_RINGS, N_SECTORS, device=bench_device)
    with torch.no_grad():
        _run(benchmark, lambda: fn(amp, idx, N_BINS), bench_device,
             f"ring_pool-{bench_device.type}-{size}-b{batch}", backend, batch, size, 1)


@pytest.mark.parametrize("size,batch,channels", CASES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_ring_scatter(benchmark, bench_device, backend, size, batch, channels):
    why = _skip_reason("ring_scatter", backend, bench_device)
    if why:
        pytest.skip(why)
    fn = backends.resolve("ring_scatter", backend, bench_device)
    vals = torch.rand(batch, N_BINS, device=bench_device)
    idx = ring_sector_index(size, size // 2 + 1, N_RINGS, N_SECTORS, device=bench_device)
    with torch.no_grad():
        _run(benchmark, lambda: fn(vals, idx), bench_device,
             f"ring_scatter-{bench_device.type}-{size}-b{batch}", backend, batch, size, 1)
