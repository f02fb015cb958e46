"""The training crops' appearance variation (``perturb.appearance``): gamma, blur and
noise drawn per image from (seed, step), checked against NumPy re-computations of each
effect, and its place in a run (recorded, resumable, off by default)."""
import json
import math
import shutil

import numpy as np
import pytest
import torch

from frerec_fast.cli import main
from frerec_fast.datasets import real_dir
from frerec_fast.training.perturb import Perturbation, appearance


def _x(b=16, h=32, w=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 1, h, w, generator=g) * 0.8 + 0.1


def test_off_by_default_and_absent_from_the_recorded_recipe():
    p = Perturbation()
    assert not p.changes_appearance
    assert set(p.to_dict()) == {"identity", "random_bank", "tilt", "max_slope", "max_curve"}
    q = Perturbation(gamma=0.4, noise=0.01, blur=0.3)
    assert q.changes_appearance and q.to_dict()["gamma"] == 0.4


@pytest.mark.parametrize("bad", [dict(blur=1.5), dict(gamma=-0.1), dict(noise=-1.0)])
def test_bad_settings_are_refused(bad):
    with pytest.raises(ValueError):
        Perturbation(**bad)


def test_gamma_only_is_a_per_image_power_within_range():
    x = _x()
    y = appearance(x, Perturbation(gamma=0.5), seed=3, step=7)
    xs, ys = x.double().numpy(), y.double().numpy()
    for i in range(x.shape[0]):
        # Each image is x ** g for one g: recover it by least squares on log values.
        g = np.sum(np.log(ys[i]) * np.log(xs[i])) / np.sum(np.log(xs[i]) ** 2)
        assert math.exp(-0.5) - 1e-4 <= g <= math.exp(0.5) + 1e-4
        np.testing.assert_allclose(ys[i], xs[i] ** g, rtol=1e-4, atol=1e-6)
    assert torch.equal(y, appearance(x, Perturbation(gamma=0.5), seed=3, step=7))
    assert not torch.equal(y, appearance(x, Perturbation(gamma=0.5), seed=3, step=8))


def test_blur_removes_high_frequencies_and_noise_adds_them():
    x = _x(b=64)

    def high_energy(t):
        f = np.fft.fft2(t.double().numpy()[:, 0])
        h = f.shape[-1]
        fu = np.abs(np.fft.fftfreq(h))
        mask = (fu[:, None] >= 0.25) | (fu[None, :] >= 0.25)
        return (np.abs(f) ** 2 * mask).sum((-2, -1))

    blurred = appearance(x, Perturbation(blur=1.0), seed=0, step=0)
    assert (high_energy(blurred) < 0.5 * high_energy(x)).all()
    noisy = appearance(x * 0 + 0.5, Perturbation(noise=0.02), seed=0, step=0)
    std = noisy.double().std(dim=(1, 2, 3)).numpy()
    # About half the images get noise, each with std uniform in [0, 0.02].
    assert 16 <= int((std > 1e-7).sum()) <= 48 and std.max() <= 0.021
    assert float(noisy.min()) >= 0 and float(noisy.max()) <= 1


def test_cli_option_trains_with_it_and_records_it(tmp_path):
    """`frerec train --appearance G N B`: the run's recorded recipe holds the three
    values (and so does resume's fingerprint), the rest of the default recipe unchanged."""
    files = sorted(real_dir("train").rglob("*.png"))[::12]
    for f in files:
        dst = tmp_path / "real" / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
    rc = main(["train", str(tmp_path / "real"), str(tmp_path / "out"), "--preset", "tiny",
               "--epochs", "1", "--batch-size", "4", "-k", "4", "--device", "cpu",
               "--threads", "1", "-q", "--keep-worse", "--appearance", "0.4", "0.01", "0.3"])
    assert rc == 0
    meta = json.loads((tmp_path / "out" / "rhm.json").read_text())
    pert = meta["extra"]["training"]["perturbation"]
    assert (pert["gamma"], pert["noise"], pert["blur"]) == (0.4, 0.01, 0.3)
    assert pert["identity"] == Perturbation().identity and pert["tilt"] == Perturbation().tilt


def test_cli_clean_share_is_recorded_and_checked(tmp_path, capsys):
    """`frerec train --clean-share F`: the share of clean training inputs is the recipe's
    ``identity`` (recorded, so resume's fingerprint holds it); outside [0, 1] refused."""
    files = sorted(real_dir("train").rglob("*.png"))[::24]
    for f in files:
        dst = tmp_path / "real" / f.parent.name / f.name
        dst.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(f, dst)
    args = ["train", str(tmp_path / "real"), str(tmp_path / "out"), "--preset", "tiny",
            "--epochs", "1", "--batch-size", "4", "-k", "4", "--device", "cpu", "--threads", "1",
            "-q", "--keep-worse"]
    assert main([*args, "--clean-share", "1.5"]) == 2
    assert "identity must be in [0, 1]" in capsys.readouterr().err
    assert main([*args, "--clean-share", "0.5"]) == 0
    pert = json.loads((tmp_path / "out" / "rhm.json").read_text())["extra"]["training"]["perturbation"]
    assert pert["identity"] == 0.5 and pert["tilt"] == Perturbation().tilt
