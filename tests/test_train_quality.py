"""What training delivers (issue: RHM quality): never a model worse than the identity,
the best validated epoch rather than the last, and training inputs drawn from the
documented perturbation distribution (frerec_fast/training/perturb.py)."""
import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import frerec_fast as ff
from frerec_fast.datasets import real_dir
from frerec_fast.model import RHMConfig
from frerec_fast.training import train_rhm
from frerec_fast.training.cli import PRESETS
from frerec_fast.training.perturb import Perturbation, band_tilt, draw, random_banks
from frerec_fast.training import ResumeError
from frerec_fast.training.train import (WorseThanIdentity, _perturb, _prune_best, best_epoch,
                                        val_score)

TINY = RHMConfig(**PRESETS["tiny"])
ARGS = dict(config=TINY, batch_size=4, k=8, warmup_steps=2, progress=False, num_threads=1,
            device="cpu")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("quality_data")
    for split, n in (("train", 12), ("heldout", 4)):
        files = sorted(real_dir(split).rglob("*.png"))
        for f in files[::max(1, len(files) // n)][:n]:
            dst = root / split / f.parent.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst)
    return root / "train", root / "heldout"


# -- the perturbation distribution -------------------------------------------------------

def _tilt_numpy(x: np.ndarray, slope: float, curve: float, ratio: float) -> np.ndarray:
    """band_tilt written independently: gain on the unshifted 2-D spectrum."""
    h, w = x.shape
    out = np.empty_like(x)
    F = np.fft.fft2(x)
    for u in range(h):
        for v in range(w):
            fu = (u if u < (h + 1) // 2 else u - h) / (h / 2)
            fv = (v if v < (w + 1) // 2 else v - w) / (w / 2)
            t = min(max((np.hypot(fu, fv) - ratio) / (1 - ratio), 0.0), 1.0)
            F[u, v] *= 10 ** (slope * t + curve * 4 * t * (t - 1))
    out[:] = np.fft.ifft2(F).real
    return out


@pytest.mark.parametrize("shape", [(16, 16), (15, 20)])
def test_band_tilt_matches_numpy_and_keeps_the_low_band(shape):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(3, 1, *shape, generator=g)
    slope, curve = torch.tensor([0.5, -0.4, 0.0]), torch.tensor([0.2, 0.0, -0.3])
    got = band_tilt(x, slope, curve, 0.5)
    for i in range(3):
        want = _tilt_numpy(x[i, 0].double().numpy(), float(slope[i]), float(curve[i]), 0.5)
        np.testing.assert_allclose(got[i, 0].numpy(), want, atol=2e-6)
    # zero slope and curve: the identity; no high band (ratio 1): the identity
    torch.testing.assert_close(band_tilt(x, torch.zeros(3), torch.zeros(3)), x, atol=2e-6, rtol=0)
    assert torch.equal(band_tilt(x, slope, curve, 1.0), x)


def test_draws_are_a_function_of_seed_and_step_with_the_stated_fractions():
    p = Perturbation(identity=0.2, random_bank=0.5, tilt=0.7, max_slope=0.6, max_curve=0.3)
    a, b = draw(p, 4000, 3, 7), draw(p, 4000, 3, 7)
    assert all(torch.equal(getattr(a, f), getattr(b, f)) for f in ("identity", "random_bank", "slope", "curve"))
    assert not torch.equal(a.slope, draw(p, 4000, 3, 8).slope)
    assert abs(a.identity.float().mean() - 0.2) < 0.03
    assert abs(a.random_bank.float().mean() - 0.5) < 0.03
    assert abs((a.slope != 0).float().mean() - 0.7) < 0.03
    assert a.slope.abs().max() <= 0.6 and a.curve.abs().max() <= 0.3
    s = draw(Perturbation.spec(), 100, 0, 0)
    assert not s.identity.any() and not s.random_bank.any() and not s.slope.any()


def test_random_banks_never_hold_the_image_itself():
    mu = torch.arange(10, dtype=torch.float32)[:, None]
    sigma = mu + 100
    self_pos = torch.tensor([0, 4, 9, -1])
    mb, sb = random_banks(mu, sigma, self_pos, 9, seed=0, step=3)
    assert mb.shape == (4, 9, 1)
    for row, s in zip(mb[:, :, 0].long().tolist(), self_pos.tolist()):
        assert s not in row and len(set(row)) == 9
    torch.testing.assert_close(sb, mb + 100)
    mb2, _ = random_banks(mu, sigma, self_pos, 9, seed=0, step=3)
    assert torch.equal(mb, mb2)
    # An image outside the index may draw any entry, the last one included.
    seen = set()
    for step in range(40):
        seen |= set(random_banks(mu, sigma, torch.tensor([-1]), 3, 0, step)[0].long().view(-1).tolist())
    assert seen == set(range(10))


def test_spec_perturbation_is_plain_shr_and_identity_rows_are_clean(tmp_path, data):
    train, _ = data
    index = ff.build_index(train, tmp_path / "idx", progress=False)
    x = torch.rand(4, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    pos = torch.tensor([0, 1, 2, 3])
    nb = index.neighbours(x, 5, exclude=pos)
    e_mu, e_sigma = torch.randn(4, 1), torch.randn(4, 1)
    mu_db, sigma_db = index.tensors_on("cpu")[1:]
    p = Perturbation.spec()
    got = _perturb(x, nb, p, draw(p, 4, 0, 0), pos, mu_db, sigma_db, e_mu, e_sigma,
                   index.config, 0, 0, "torch")
    torch.testing.assert_close(got, ff.shr(x, nb.mu_bank, nb.sigma_bank, e_mu, e_sigma,
                                           backend="torch"))
    every = Perturbation(identity=1.0)
    got = _perturb(x, nb, every, draw(every, 4, 0, 0), pos, mu_db, sigma_db, e_mu, e_sigma,
                   index.config, 0, 0, "torch")
    assert torch.equal(got, x)


# -- the identity guard and the delivered epoch ------------------------------------------

def test_a_model_worse_than_identity_is_refused(tmp_path, data):
    train, val = data
    # A learning rate far too high for one short epoch: the model wrecks the images.
    with pytest.raises(WorseThanIdentity, match="no epoch beat the identity") as e:
        train_rhm(train, tmp_path / "run", val_dir=val, epochs=1, lr=0.3, grad_clip=None, **ARGS)
    assert e.value.rejected.is_file()
    assert not (tmp_path / "run" / "rhm.safetensors").exists()
    meta = json.loads(e.value.rejected.with_suffix(".json").read_text())["extra"]
    v = meta["selected"]["val"]
    assert not v["beats_identity"] and v["score"] < v["score_identity"]
    # Asked for explicitly, it is delivered (and says so in its record).
    path = train_rhm(train, tmp_path / "kept", val_dir=val, epochs=1, lr=0.3, grad_clip=None,
                     keep_worse=True, **ARGS)
    assert json.loads(path.with_suffix(".json").read_text())["extra"]["selected"]["val"][
        "beats_identity"] is False


def test_cli_exits_nonzero_and_loudly_when_no_model_beats_identity(tmp_path, data):
    train, val = data
    r = subprocess.run([sys.executable, "-m", "frerec_fast.cli", "train", str(train),
                        str(tmp_path / "cli"), "--val", str(val), "--preset", "tiny",
                        "--epochs", "1", "--batch-size", "4", "-k", "4", "--lr", "0.3",
                        "--grad-clip", "0", "--device", "cpu", "--threads", "1", "-q"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr
    assert "NO MODEL DELIVERED" in r.stderr and "rhm_rejected.safetensors" in r.stderr
    assert not (tmp_path / "cli" / "rhm.safetensors").exists()


def test_delivered_weights_are_the_best_scored_epoch(tmp_path, data):
    train, val = data
    out = tmp_path / "run"
    path = train_rhm(train, out, val_dir=val, epochs=4, lr=3e-3, keep_checkpoints=4,
                     keep_worse=True, **ARGS)
    extra = json.loads(path.with_suffix(".json").read_text())["extra"]
    hist = extra["history"]
    # The score recomputed here from the recorded PSNR and gap: PSNR - 10 x gap.
    scores = [h["val"]["psnr_model"] - 10 * h["val"]["gap_model"] for h in hist]
    want = int(np.argmax(scores)) + 1
    assert extra["selected"]["epoch"] == want
    got = load_file(str(path))
    ref = load_file(str(out / "checkpoints" / f"epoch_{want:04d}.safetensors"))
    assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in got)
    # Every recorded epoch names the identity baseline it was compared with.
    assert all({"score_identity", "psnr_clean", "gap_shr"} <= h["val"].keys() for h in hist)
    # Exactly the best-epoch files some kept resume point needs are on disk.
    kept = sorted(int(p.name[6:10]) for p in (out / "checkpoints").glob("epoch_*.state.json"))
    need = {best_epoch(hist, e) for e in kept}
    have = {int(p.name[5:9]) for p in (out / "checkpoints").glob("best_*.safetensors")}
    assert have == need


def test_best_epoch_and_pruning_when_the_best_is_not_the_last(tmp_path):
    scores = [5.0, 7.0, 7.0, 6.0, val_score(float("nan"), 0.1)]
    hist = [{"epoch": e, "val": {"score": sc}} for e, sc in enumerate(scores, start=1)]
    assert scores[-1] == float("-inf")
    assert [best_epoch(hist, e) for e in range(1, 6)] == [1, 2, 2, 2, 2]  # earliest on ties
    ck = tmp_path / "checkpoints"
    ck.mkdir()
    for e in range(1, 6):
        for ext in ("safetensors", "json"):
            (ck / f"best_{e:04d}.{ext}").write_text("x")
    _prune_best(tmp_path, hist, [1, 2])
    assert sorted(p.name for p in ck.iterdir()) == [f"best_000{e}.{x}" for e in (1, 2)
                                                    for x in ("json", "safetensors")]
    _prune_best(tmp_path, hist, [4, 5])
    assert sorted(p.name for p in ck.iterdir()) == ["best_0002.json", "best_0002.safetensors"]


def test_resume_with_fewer_epochs_is_refused(tmp_path, data):
    train, val = data
    train_rhm(train, tmp_path / "run", val_dir=val, epochs=2, lr=2e-3, keep_worse=True, **ARGS)
    with pytest.raises(ResumeError, match="epochs >= 2"):
        train_rhm(train, tmp_path / "run", val_dir=val, epochs=1, lr=2e-3, keep_worse=True,
                  resume=True, **ARGS)


def test_without_val_dir_training_images_stand_in(tmp_path, data):
    train, _ = data
    path = train_rhm(train, tmp_path / "run", epochs=1, keep_worse=True, lr=2e-3, **ARGS)
    v = json.loads(path.with_suffix(".json").read_text())["extra"]["selected"]["val"]
    assert v["source"].startswith("training images") and v["n"] == 12
