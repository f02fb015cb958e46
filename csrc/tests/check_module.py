"""ctest: the CMake-built _C module imports and matches the torch reference."""
import sys

import torch

sys.path.insert(0, sys.argv[1])
import _C  # noqa: E402

from frerec_fast.reference.spectral import band_stats  # noqa: E402

x = torch.rand(2, 3, 13, 10, generator=torch.Generator().manual_seed(0))
spec = torch.fft.rfft2(x, norm="ortho").reshape(6, 13, 6).contiguous()
for amplitude in (False, True):
    mu, sigma = _C.band_stats_half(spec, 10, 0.5, amplitude)
    ref_mu, ref_sigma = band_stats(x, 0.5, "amplitude" if amplitude else "complex")
    assert torch.allclose(mu, ref_mu.reshape(-1), atol=1e-6), (mu, ref_mu)
    assert torch.allclose(sigma, ref_sigma.reshape(-1), atol=1e-6), (sigma, ref_sigma)
print("torch_module: ok")
