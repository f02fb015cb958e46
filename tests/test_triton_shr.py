"""Triton SHR and band statistics (kernels/shr.py) against the NumPy oracle and the
torch reference (SPEC 1-3).

On a machine without a GPU the kernels run in the Triton interpreter on CPU tensors
(tests/conftest.py sets TRITON_INTERPRET=1), which is 500-3300x slower than torch: the
shapes here are tiny on purpose. ``--device=cuda`` runs the same tests compiled on a
GPU, and the ``needs_cuda`` test adds larger, multi-tile shapes there.
"""
import numpy as np
import pytest
import torch

pytest.importorskip("triton")

import frerec_fast as ff  # noqa: E402
from frerec_fast import backends  # noqa: E402
from marks import needs_cuda  # noqa: E402
import npref  # noqa: E402

SIZES = [(8, 8), (9, 7), (6, 11)]


@pytest.fixture
def tdev(device):
    """The test device, skipped with the dispatch table's reason when Triton cannot run
    there (e.g. CPU tensors on a GPU machine, where the interpreter is not enabled)."""
    why = backends.unavailable_reason("shr", "triton", device.type)
    if why:
        pytest.skip(why)
    return device


def make_case(b, c, h, w, k, seed, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.linspace(0, 1, h), torch.linspace(0, 1, w), indexing="ij")
    smooth = 0.5 + 0.3 * torch.sin(6 * xx + 3 * yy)
    x = (smooth + 0.2 * torch.rand(b, c, h, w, generator=g)).clamp(0, 1)
    mu_bank = torch.randn(b, k, c, generator=g) * 0.01
    sigma_bank = 0.05 + 0.05 * torch.rand(b, k, c, generator=g)
    eps_mu, eps_sigma = torch.randn(b, c, generator=g), torch.randn(b, c, generator=g)
    return [t.to(device) for t in (x, mu_bank, sigma_bank, eps_mu, eps_sigma)]


def _np(args):
    return [a.double().cpu().numpy() for a in args]


def check_stats(x, domain, ratio=0.5):
    mu, sigma = ff.band_stats(x, ratio=ratio, domain=domain, backend="triton")
    assert mu.dtype == torch.float32 and mu.shape == x.shape[:2]
    ref_mu, ref_sigma = npref.band_stats(x.double().cpu().numpy(), ratio, domain)
    np.testing.assert_allclose(mu.cpu().numpy(), ref_mu, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(sigma.cpu().numpy(), ref_sigma, rtol=1e-5, atol=1e-6)
    t_mu, t_sigma = ff.band_stats(x, ratio=ratio, domain=domain, backend="torch")
    # The torch reference also starts from a float32 image: closer agreement.
    np.testing.assert_allclose(mu.cpu().numpy(), t_mu.cpu().numpy(), rtol=1e-6, atol=2e-7)
    np.testing.assert_allclose(sigma.cpu().numpy(), t_sigma.cpu().numpy(), rtol=1e-6, atol=2e-7)


def check_shr(args, domain, ratio=0.5, atol=2e-5):
    out = ff.shr(*args, ratio=ratio, domain=domain, backend="triton")
    assert out.dtype == torch.float32 and out.shape == args[0].shape
    assert out.device == args[0].device
    ref = npref.shr(*_np(args), ratio=ratio, domain=domain)
    np.testing.assert_allclose(out.cpu().numpy(), ref, rtol=0, atol=atol)
    torch_out = ff.shr(*args, ratio=ratio, domain=domain, backend="torch")
    np.testing.assert_allclose(out.cpu().numpy(), torch_out.cpu().numpy(), rtol=0, atol=atol)


@pytest.mark.parametrize("domain", ["complex", "amplitude"])
@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("c", [1, 3])
def test_band_stats(tdev, domain, h, w, c):
    x = make_case(2, c, h, w, 1, seed=h * w + c, device=tdev)[0]
    check_stats(x, domain)


@pytest.mark.parametrize("domain", ["complex", "amplitude"])
@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("c,k", [(1, 1), (3, 200)])
def test_shr(tdev, domain, h, w, c, k):
    check_shr(make_case(2, c, h, w, k, seed=7 * h + w + k, device=tdev), domain)


@pytest.mark.parametrize("ratio", [0.0, 0.25, 0.8, 1.0])
def test_other_ratios(tdev, ratio):
    # ratio 0: everything is high band; ratio 1 on an even size: only the Nyquist row
    # and column remain (column W/2 is a weight-1 column of the half spectrum).
    args = make_case(1, 1, 10, 8, 5, seed=3, device=tdev)
    check_stats(args[0], "complex", ratio)
    check_shr(args, "complex", ratio)


def test_empty_band_is_an_error(tdev):
    x = torch.rand(1, 1, 7, 9, device=tdev)
    with pytest.raises(ValueError, match="empty"):
        ff.band_stats(x, ratio=1.0, backend="triton")


@pytest.mark.parametrize("domain", ["complex", "amplitude"])
def test_many_tiles(tdev, domain, monkeypatch):
    # Force 16-coefficient tiles so the statistics loop runs many iterations with a
    # partial last tile, and the replacement grid has many programs per plane.
    from frerec_fast.kernels import shr as kshr
    monkeypatch.setattr(kshr, "FREREC_TRITON_SHR_STATS_BLOCK", 16)
    monkeypatch.setattr(kshr, "FREREC_TRITON_SHR_APPLY_BLOCK", 16)
    args = make_case(2, 2, 9, 12, 7, seed=21, device=tdev)  # 9 x 7 = 63 coefficients
    check_stats(args[0], domain)
    check_shr(args, domain)


@pytest.mark.parametrize("domain", ["complex", "amplitude"])
def test_default_tiles_multi_tile_plane(tdev, domain):
    # 50 x 40 -> 50 x 21 = 1050 coefficients: two default-size (1024) tiles.
    check_shr(make_case(1, 1, 50, 40, 3, seed=8, device=tdev), domain)


@pytest.mark.parametrize("domain", ["complex", "amplitude"])
def test_constant_image_sigma_zero(tdev, domain):
    # A constant image has an all-zero high band: sigma_s = 0, so the band becomes mu_hat
    # (and in the amplitude domain every band coefficient is exactly 0: phase 0).
    x = torch.full((1, 1, 12, 12), 0.4, device=tdev)
    mu_bank = torch.full((1, 4, 1), 0.02, device=tdev)
    sigma_bank = torch.full((1, 4, 1), 0.1, device=tdev)
    zeros = torch.zeros(1, 1, device=tdev)
    out = ff.shr(x, mu_bank, sigma_bank, zeros, zeros, domain=domain, backend="triton")
    ref = npref.shr(*_np([x, mu_bank, sigma_bank, zeros, zeros]), 0.5, domain)
    assert torch.isfinite(out).all()
    np.testing.assert_allclose(out.cpu().numpy(), ref, atol=2e-6)
    mu, sigma = ff.band_stats(x, domain=domain, backend="triton")
    assert float(sigma) == pytest.approx(0.0, abs=1e-7)


def test_eps_zero_gives_bank_means(tdev):
    x, mu_bank, sigma_bank, _, _ = make_case(2, 3, 9, 10, 50, seed=11, device=tdev)
    zeros = torch.zeros(2, 3, device=tdev)
    out = ff.shr(x, mu_bank, sigma_bank, zeros, zeros, backend="triton")
    mu_o, sigma_o = npref.band_stats(out.double().cpu().numpy(), 0.5, "complex")
    np.testing.assert_allclose(mu_o, mu_bank.double().mean(1).cpu().numpy(), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(sigma_o, sigma_bank.double().mean(1).cpu().numpy(), rtol=1e-4,
                               atol=1e-6)


def test_clear_errors(tdev):
    x, mb, sb, em, es = make_case(2, 3, 8, 8, 4, seed=0, device=tdev)
    with pytest.raises(ValueError, match="mu_bank"):
        ff.shr(x, mb[:, :, :1], sb, em, es, backend="triton")
    with pytest.raises(ValueError, match="eps_sigma"):
        ff.shr(x, mb, sb, em, es[:1], backend="triton")
    with pytest.raises(ValueError, match="domain"):
        ff.band_stats(x, domain="phase", backend="triton")
    with pytest.raises(ValueError, match=r"\[B, C, H, W\]"):
        ff.band_stats(x[0], backend="triton")


def test_input_not_modified_and_noncontiguous(tdev):
    x = make_case(1, 3, 9, 8, 2, seed=4, device=tdev)[0]
    xt = x.transpose(2, 3)  # [1, 3, 8, 9] non-contiguous view
    before = xt.clone()
    args = [xt] + make_case(1, 3, 8, 9, 2, seed=5, device=tdev)[1:]
    check_shr(args, "complex")
    assert torch.equal(xt, before)


@needs_cuda
@pytest.mark.parametrize("domain", ["complex", "amplitude"])
def test_cuda_matches_references(domain):
    # Same comparisons on CUDA tensors (compiled kernels, real parallel execution),
    # plus sizes whose planes span many default tiles and a batch with many planes.
    for (b, c, h, w, k) in [(2, 3, 9, 7, 200), (2, 1, 8, 8, 1), (3, 3, 64, 64, 200),
                            (2, 1, 257, 255, 20), (64, 3, 32, 48, 5)]:
        args = make_case(b, c, h, w, k, seed=h + w, device="cuda")
        check_stats(args[0], domain)
        check_shr(args, domain)
    x = torch.full((1, 1, 12, 12), 0.4, device="cuda")
    mu, sigma = ff.band_stats(x, domain=domain, backend="triton")
    assert float(sigma) == pytest.approx(0.0, abs=1e-7)
