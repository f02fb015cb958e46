"""Fine-tuning (``train_rhm(init=...)``, ``frerec train --init``): the run starts from the
given weights, keeps their sizes, records them in its settings, and reports the starting
model's validation beside the delivered one."""
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from frerec_fast.cli import main
from frerec_fast.datasets import real_dir
from frerec_fast.model import RHMConfig
from frerec_fast.training import ResumeError, train_rhm
from frerec_fast.training.cli import PRESETS
from frerec_fast.training.train import WorseThanStart

TINY = RHMConfig(**PRESETS["tiny"])
ARGS = dict(batch_size=4, k=8, warmup_steps=2, progress=False, num_threads=1, device="cpu",
            keep_worse=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 training and 4 validation real images, and a tiny model trained for one epoch."""
    root = tmp_path_factory.mktemp("init_data")
    for split, n in (("train", 8), ("heldout", 4)):
        files = sorted(real_dir(split).rglob("*.png"))
        for f in files[::len(files) // n][:n]:
            dst = root / split / f.parent.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst)
    start = train_rhm(root / "train", root / "start", config=TINY, epochs=1, lr=2e-3,
                      val_dir=root / "heldout", **ARGS)
    return root / "train", root / "heldout", start


def test_starts_from_the_given_weights(tmp_path, data):
    """With a learning rate too small to move any weight, the delivered weights are the
    starting checkpoint's exactly; from random weights they are far from them. (BatchNorm's
    running statistics are buffers that every training forward pass updates: left out.)"""
    train, val, start = data
    want = {k: v for k, v in load_file(str(start)).items()
            if "running_" not in k and "num_batches" not in k}
    tuned = train_rhm(train, tmp_path / "ft", init=start, epochs=1, lr=1e-30, val_dir=val,
                      **ARGS)
    got = load_file(str(tuned))
    assert got.keys() >= want.keys()
    for k in want:
        torch.testing.assert_close(got[k], want[k], rtol=0, atol=1e-6, msg=k)
    # Without init, another seed's random weights (the start moved little from seed 0's).
    fresh = load_file(str(train_rhm(train, tmp_path / "fresh", config=TINY, epochs=1,
                                    lr=1e-30, val_dir=val, seed=1, **ARGS)))
    assert max((fresh[k] - want[k]).abs().max().item() for k in want) > 1e-2


def test_records_the_start_and_its_validation(tmp_path, data):
    train, val, start = data
    tuned = train_rhm(train, tmp_path / "ft", init=start, epochs=1, lr=1e-3, val_dir=val, **ARGS)
    extra = json.loads(tuned.with_suffix(".json").read_text())["extra"]
    start_meta = json.loads(start.with_suffix(".json").read_text())
    assert extra["training"]["init"] == start_meta["weights_sha256"]
    assert extra["init"]["weights_sha256"] == start_meta["weights_sha256"]
    # The starting model's validation is its own: the start run's last epoch measured it
    # on the same images and noise.
    before = start_meta["extra"]["metrics"]["val"]
    assert extra["init"]["val"]["psnr_model"] == pytest.approx(before["psnr_model"], abs=1e-4)
    assert extra["init"]["val"]["psnr_clean"] == pytest.approx(before["psnr_clean"], abs=1e-4)


def test_refusals(tmp_path, data):
    train, val, start = data
    with pytest.raises(ValueError, match="differs from the one asked for"):
        train_rhm(train, tmp_path / "a", init=start, config=TINY.replace(dim=16), epochs=1,
                  lr=1e-3, **ARGS)
    out = tmp_path / "b"
    train_rhm(train, out, config=TINY, epochs=1, lr=1e-3, **ARGS)
    with pytest.raises(ResumeError, match="init"):  # another starting point is another run
        train_rhm(train, out, init=start, epochs=2, lr=1e-3, resume=True, **ARGS)


def test_cli_init(tmp_path, data, capsys):
    train, val, start = data
    common = [str(train), "--val", str(val), "--epochs", "1", "--batch-size", "4", "-k", "8",
              "--device", "cpu", "--threads", "1", "-q", "--keep-worse"]
    assert main(["train", common[0], str(tmp_path / "x"), *common[1:], "--init", str(start),
                 "--dim", "16"]) == 2
    assert "drop --dim" in capsys.readouterr().err
    assert main(["train", common[0], str(tmp_path / "y"), *common[1:], "--init", str(start)]) == 0
    out = capsys.readouterr().out
    assert f"started from {start}" in out and "before fine-tuning" in out


def test_default_names_the_shipped_model(tmp_path, data):
    """init="default" is the shipped RHM: its sizes (small preset), not the tiny ones."""
    train, val, _ = data
    with pytest.raises(ValueError, match="differs from the one asked for"):
        train_rhm(train, tmp_path / "d", init="default", config=TINY, epochs=1, lr=1e-3, **ARGS)
    from frerec_fast.training.default import default_model_path
    shipped = json.loads(default_model_path().with_suffix(".json").read_text())["weights_sha256"]
    tuned = train_rhm(train, tmp_path / "e", init="default", config=RHMConfig(**PRESETS["small"]),
                      epochs=1, lr=1e-4, val_dir=val, **ARGS)  # the same sizes: accepted
    assert json.loads(tuned.with_suffix(".json").read_text())["extra"]["init"][
        "weights_sha256"] == shipped


def test_no_model_when_fine_tuning_does_not_beat_the_start(tmp_path, data):
    """A learning rate too small to move the weights scores exactly the start's: nothing
    is delivered (rhm_rejected instead), unless keep_worse."""
    train, val, start = data
    out = tmp_path / "ft"
    args = {**ARGS, "keep_worse": False}
    with pytest.raises(WorseThanStart, match="no epoch beat the model it started from") as e:
        train_rhm(train, out, init=start, epochs=1, lr=1e-30, val_dir=val, **args)
    assert e.value.rejected.is_file() and not (out / "rhm.safetensors").exists()
