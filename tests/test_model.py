"""RHM network: shapes, gradients, a few training steps, checkpoints, the matmul DFT, the loss."""
import json
import shutil

import numpy as np
import pytest
import torch

from frerec_fast.reference.rings import amplitude

from frerec_fast.model import RHM, RHMConfig, load_rhm, rhm_loss, save_checkpoint
from frerec_fast.model import dft as mdft
from frerec_fast.model.checkpoint import CheckpointError
from frerec_fast.model.fesa import FESA

TINY = dict(dim=8, blocks=(1, 1, 1, 1), heads=(1, 1, 2, 2), refinement=1)


def tiny(**kw):
    return RHMConfig(**{**TINY, **kw})


def test_config_round_trip_and_validation():
    cfg = tiny(in_channels=3, fesa=False, dft="matmul")
    back = RHMConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert back == cfg and isinstance(back.heads, tuple)
    assert RHMConfig() == RHMConfig(in_channels=1, dim=48, heads=(1, 2, 4, 8), blocks=(2, 4, 6, 8),
                                    refinement=2, ffn_expansion=2.66, bias=False, fesa=True,
                                    n_rings=16, n_sectors=32, dft="fft")
    for bad in (dict(in_channels=2), dict(dft="dct"), dict(heads=(3, 1, 2, 2)), dict(blocks=(1, 1, 1))):
        with pytest.raises(ValueError):
            tiny(**bad)
    with pytest.raises(ValueError):
        RHMConfig.from_dict({**cfg.to_dict(), "surprise": 1})


@pytest.mark.parametrize("c,fesa,h,w", [(1, True, 37, 45), (3, True, 37, 45), (1, False, 37, 45),
                                        (3, False, 16, 24), (1, True, 3, 5), (3, True, 8, 8)])
def test_output_shape(c, fesa, h, w):
    torch.manual_seed(0)
    m = RHM(tiny(in_channels=c, fesa=fesa)).eval()
    x = torch.rand(2, c, h, w)
    with torch.no_grad():
        y = m(x)
    assert y.shape == x.shape and y.dtype == torch.float32 and torch.isfinite(y).all()
    assert any(isinstance(mod, FESA) for mod in m.modules()) == fesa
    with pytest.raises(ValueError):
        m(torch.rand(2, 4 - c, h, w))


def test_gradients_reach_every_parameter():
    torch.manual_seed(0)
    m = RHM(tiny()).train()
    g = torch.Generator().manual_seed(1)
    clean = torch.rand(2, 1, 20, 28, generator=g)
    rhm_loss(m(clean + 0.1 * torch.randn(clean.shape, generator=g)), clean).backward()
    for name, p in m.named_parameters():
        assert p.grad is not None, f"{name} gets no gradient"
        assert torch.isfinite(p.grad).all(), f"{name} has a non-finite gradient"
        assert p.grad.abs().sum() > 0, f"{name} has an all-zero gradient"


def test_adamw_steps_reduce_loss():
    torch.manual_seed(0)
    m = RHM(tiny()).train()
    g = torch.Generator().manual_seed(2)
    # Smooth images plus white noise: denoisable, unlike white-noise "clean" images.
    clean = torch.nn.functional.interpolate(torch.rand(2, 1, 4, 4, generator=g), size=(16, 16),
                                            mode="bilinear", align_corners=False)
    noisy = clean + 0.1 * torch.randn(clean.shape, generator=g)
    opt = torch.optim.AdamW(m.parameters(), lr=5e-4)
    losses = []
    for _ in range(30):
        opt.zero_grad()
        loss = rhm_loss(m(noisy), clean)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0], losses


def _trained_tiny(c=1):
    """A tiny model after one training step, so BatchNorm running stats are not the defaults."""
    torch.manual_seed(0)
    m = RHM(tiny(in_channels=c)).train()
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    x = torch.rand(2, c, 16, 24)
    rhm_loss(m(x), x).backward()
    opt.step()
    return m.eval()


def test_checkpoint_round_trip(tmp_path):
    m = _trained_tiny(c=3)
    stem = save_checkpoint(tmp_path / "ckpt", m, m.config, extra={"epoch": 3, "note": "test"})
    assert (tmp_path / "ckpt.safetensors").is_file() and (tmp_path / "ckpt.json").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    (tmp_path / "plain").write_text("")  # same permissions as any file the user writes
    for name in ("ckpt.json", "ckpt.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == (tmp_path / "plain").stat().st_mode & 0o777
    meta = json.loads((tmp_path / "ckpt.json").read_text())
    assert meta["extra"] == {"epoch": 3, "note": "test"} and meta["config"]["in_channels"] == 3
    back = load_rhm(stem)
    assert not back.training and back.config == m.config
    x = torch.rand(2, 3, 19, 27)
    with torch.no_grad():
        assert torch.equal(back(x), m(x))
    assert load_rhm(tmp_path / "ckpt.safetensors").config == m.config  # suffix accepted


def test_checkpoint_errors(tmp_path):
    m = _trained_tiny()
    save_checkpoint(tmp_path / "a", m, extra={})
    with pytest.raises(CheckpointError, match="not found"):
        load_rhm(tmp_path / "missing")
    (tmp_path / "b.json").write_text((tmp_path / "a.json").read_text())
    with pytest.raises(CheckpointError, match="weights .* not found"):
        load_rhm(tmp_path / "b")
    # A weights file from another save does not match the sidecar's checksum.
    m2 = RHM(tiny())
    save_checkpoint(tmp_path / "c", m2)
    shutil.copy(tmp_path / "c.safetensors", tmp_path / "a.safetensors")
    with pytest.raises(CheckpointError, match="SHA-256"):
        load_rhm(tmp_path / "a")
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path / "d", m, extra={"bad": object()})
    assert not (tmp_path / "d.safetensors").exists()


@pytest.mark.parametrize("h,w", [(16, 16), (17, 16), (16, 17), (9, 13), (1, 7), (6, 1)])
def test_matmul_dft_equals_torch_fft(h, w):
    g = torch.Generator().manual_seed(h * 100 + w)
    x = torch.randn(2, 3, h, w, generator=g)
    re_f, im_f = mdft.rfft2(x, "fft")
    re_m, im_m = mdft.rfft2(x, "matmul")
    torch.testing.assert_close(re_m, re_f, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(im_m, im_f, atol=1e-5, rtol=1e-5)
    # Arbitrary (non-Hermitian) spectra: both paths must drop the same parts.
    sr = torch.randn(2, 3, h, w // 2 + 1, generator=g)
    si = torch.randn(2, 3, h, w // 2 + 1, generator=g)
    torch.testing.assert_close(mdft.irfft2(sr, si, (h, w), "matmul"), mdft.irfft2(sr, si, (h, w), "fft"),
                               atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(mdft.irfft2(re_m, im_m, (h, w), "matmul"), x, atol=1e-5, rtol=1e-5)


def test_model_matmul_path_equals_fft_path():
    m = _trained_tiny()
    x = torch.rand(2, 1, 37, 45)
    with torch.no_grad():
        y_fft = m(x)
        y_mm = m.set_dft("matmul")(x)
    assert m.config.dft == "matmul"
    torch.testing.assert_close(y_mm, y_fft, atol=1e-5, rtol=1e-5)


def test_amplitude_gradient_finite_at_zero():
    re = torch.zeros(3, requires_grad=True)
    im = torch.tensor([0.0, 3.0, 0.0], requires_grad=True)
    a = amplitude(re, im)
    a.sum().backward()
    assert torch.equal(a.detach(), torch.tensor([0.0, 3.0, 0.0]))
    assert torch.isfinite(re.grad).all() and torch.isfinite(im.grad).all()


def test_rhm_loss_formula():
    g = torch.Generator().manual_seed(3)
    x, y = torch.rand(2, 3, 9, 10, generator=g), torch.rand(2, 3, 9, 10, generator=g)
    xn, yn = x.double().numpy(), y.double().numpy()
    ax = np.abs(np.fft.rfft2(xn, norm="ortho"))
    ay = np.abs(np.fft.rfft2(yn, norm="ortho"))
    want = np.mean((xn - yn) ** 2) + 0.5 * np.mean((ax - ay) ** 2)
    assert rhm_loss(x, y, lambda_f=0.5).item() == pytest.approx(want, rel=1e-5)
    assert rhm_loss(x, y, lambda_f=0).item() == pytest.approx(np.mean((xn - yn) ** 2), rel=1e-5)
    assert rhm_loss(x, x).item() == 0
    with pytest.raises(ValueError):
        rhm_loss(x, y[:, :1])


def test_save_rejects_config_of_another_model(tmp_path):
    m = RHM(tiny())
    with pytest.raises(ValueError, match="does not describe"):
        save_checkpoint(tmp_path / "x", m, tiny(dim=16))
    save_checkpoint(tmp_path / "y", m, tiny(dft="matmul"))  # the DFT path is not a weight
    assert load_rhm(tmp_path / "y").config.dft == "matmul"


def test_edited_sidecar_config_is_refused(tmp_path):
    m = _trained_tiny()
    stem = save_checkpoint(tmp_path / "m", m)
    side = tmp_path / "m.json"
    meta = json.loads(side.read_text())
    meta["config"]["n_rings"] += 1  # no weight shape depends on it
    side.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="differs"):
        load_rhm(stem)
