"""SHR per backend against the naive torch reference, plus a bare rfft2+irfft2 round
trip (the floor any SHR pays). Sizes 64/256/512 at batch sizes a real job uses."""
import pytest
import torch

import frerec_fast as ff
from frerec_fast import backends
from conftest import sync

CASES = [(64, 64), (256, 16), (512, 4)]  # (size, batch)


def _inputs(size, batch, device, k=200, c=1):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, c, size, size, generator=g)
    mu = torch.randn(batch, k, c, generator=g) * 0.01
    sigma = 0.05 + 0.05 * torch.rand(batch, k, c, generator=g)
    eps = torch.randn(batch, c, generator=g), torch.randn(batch, c, generator=g)
    return [t.to(device) for t in (x, mu, sigma, *eps)]


def _run(benchmark, fn, device, group, backend, batch, size):
    def timed():
        out = fn()
        sync(device)
        return out

    benchmark.group = group
    benchmark.extra_info.update(backend=backend, items=batch, size=size, device=str(device))
    benchmark.pedantic(timed, rounds=5, iterations=1, warmup_rounds=1)


@pytest.mark.parametrize("size,batch", CASES)
@pytest.mark.parametrize("backend", ["torch", "cpp", "cuda"])
def test_shr(benchmark, bench_device, backend, size, batch):
    why = backends.unavailable_reason("shr", backend, bench_device.type)
    if why:
        pytest.skip(why)
    args = _inputs(size, batch, bench_device)
    _run(benchmark, lambda: ff.shr(*args, backend=backend), bench_device,
         f"shr-{bench_device.type}-{size}x{size}-b{batch}", backend, batch, size)


@pytest.mark.parametrize("size,batch", CASES)
def test_fft_roundtrip_floor(benchmark, bench_device, size, batch):
    x = _inputs(size, batch, bench_device)[0]
    _run(benchmark, lambda: torch.fft.irfft2(torch.fft.rfft2(x, norm="ortho"), s=x.shape[-2:],
                                             norm="ortho"),
         bench_device, f"shr-{bench_device.type}-{size}x{size}-b{batch}", "rfft_floor", batch, size)
