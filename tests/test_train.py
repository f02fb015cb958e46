"""RHM training (method §5): the loop learns, resume is bit-exact, checkpoints and the CLI work.

Everything runs on a few tiny real images (a subset of the bundled real set) with the
"tiny" model preset, on CPU with one thread so that results are reproducible.
"""
import importlib.util
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from frerec_fast.datasets import real_dir
from frerec_fast.model import RHMConfig, load_rhm
from frerec_fast.training import ResumeError, lr_at, train_rhm
from frerec_fast.training.cli import PRESETS
from frerec_fast.training.data import augment, epoch_order

TINY = RHMConfig(**PRESETS["tiny"])
# keep_worse: these tests check the loop's mechanics on a few steps of a tiny model, which
# need not beat the identity (test_train_quality.py tests that guard).
ARGS = dict(config=TINY, batch_size=4, k=8, lr=2e-3, warmup_steps=2, progress=False,
            num_threads=1, device="cpu", keep_worse=True)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """12 training and 4 validation real images (copies, so the test owns its files)."""
    root = tmp_path_factory.mktemp("train_data")
    for split, n in (("train", 12), ("heldout", 4)):
        files = sorted(real_dir(split).rglob("*.png"))
        step = max(1, len(files) // n)
        for f in files[::step][:n]:
            dst = root / split / f.parent.name / f.name
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, dst)
    return root / "train", root / "heldout"


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_file(str(path))


def test_lr_schedule_warmup_then_cosine():
    lrs = [lr_at(s, 1.0, 4, 20, 0.1) for s in range(20)]
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[4:], lrs[5:]))  # non-increasing after warm-up
    assert lrs[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + torch.cos(torch.tensor(torch.pi * 15 / 16)).item()))


def test_draws_depend_only_on_seed_and_step():
    x = torch.rand(5, 1, 16, 16)
    assert torch.equal(augment(x, (8, 8), 3, 7), augment(x, (8, 8), 3, 7))
    assert not torch.equal(augment(x, (8, 8), 3, 7), augment(x, (8, 8), 3, 8))
    assert torch.equal(epoch_order(0, 2, 10), epoch_order(0, 2, 10))
    assert sorted(epoch_order(0, 2, 10).tolist()) == list(range(10))


def test_training_reduces_loss_and_records_metrics(tmp_path, data):
    train, val = data
    path = train_rhm(train, tmp_path / "run", val_dir=val, epochs=4, **ARGS)
    meta = json.loads(path.with_suffix(".json").read_text())
    hist = meta["extra"]["history"]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert hist[-1]["loss"] < hist[0]["loss"]
    v = hist[-1]["val"]
    assert v["n"] == 4 and 0 < v["ssim_model"] <= 1 and v["psnr_model"] > 10
    assert meta["extra"]["data"]["n_images"] == 12
    model = load_rhm(path)  # loads through safetensors, config from the JSON
    assert model.config == TINY
    assert sorted((tmp_path / "run" / "checkpoints").glob("*.state.json"))  # resumable epochs


def test_resume_equals_uninterrupted_run(tmp_path, data):
    train, _ = data
    full = train_rhm(train, tmp_path / "full", epochs=3, **ARGS)
    # A run killed during epoch 3 leaves epochs 1-2 complete (epoch 3's files never written).
    part = tmp_path / "part"
    first = train_rhm(train, part, epochs=3, **ARGS)
    first_hist = json.loads(first.with_suffix(".json").read_text())["extra"]["history"]
    for p in [*(part / "checkpoints").glob("epoch_0003*"),
              *(part / "checkpoints").glob("best_0003*")]:
        p.unlink()
    first.unlink()
    resumed = train_rhm(train, part, epochs=3, resume=True, **ARGS)
    res_hist = json.loads(resumed.with_suffix(".json").read_text())["extra"]["history"]
    # Epochs 1-2 were restored, not retrained: their wall-clock records are the saved ones.
    assert [h["seconds"] for h in res_hist[:2]] == [h["seconds"] for h in first_hist[:2]]
    assert res_hist[2]["seconds"] != first_hist[2]["seconds"]
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    hist_full = json.loads(full.with_suffix(".json").read_text())["extra"]["history"]
    assert [h["loss"] for h in hist_full] == [h["loss"] for h in res_hist]


def test_interrupted_save_and_refusals(tmp_path, data):
    train, _ = data
    out = tmp_path / "run"
    train_rhm(train, out, epochs=2, **ARGS)
    with pytest.raises(FileExistsError, match="resume"):
        train_rhm(train, out, epochs=2, **ARGS)
    with pytest.raises(ResumeError, match="lr"):
        train_rhm(train, out, epochs=2, resume=True, **{**ARGS, "lr": 1e-2})
    # A torn save of epoch 2 (weights changed after the state recorded its hash) is skipped:
    # resume falls back to epoch 1 and still finishes.
    w = out / "checkpoints" / "epoch_0002.safetensors"
    w.write_bytes(w.read_bytes()[:-8] + b"\0" * 8)
    path = train_rhm(train, out, epochs=2, resume=True, **ARGS)
    assert path.is_file()


def test_cli_train_and_module_entry(tmp_path, data):
    train, val = data
    cmd = [sys.executable, "-m", "frerec_fast.cli", "train", str(train), str(tmp_path / "cli"),
           "--val", str(val), "--preset", "tiny", "--epochs", "1", "--batch-size", "4", "-k", "4",
           "--device", "cpu", "--threads", "1", "-q", "--keep-worse"]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "delivered epoch 1" in r.stdout and (tmp_path / "cli" / "rhm.safetensors").is_file()
    r = subprocess.run([sys.executable, "-m", "frerec_fast.training", str(tmp_path / "nope"),
                        str(tmp_path / "o")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "nope" in r.stderr


@pytest.mark.parametrize("engine", [e for e in ("onnxruntime", "openvino")
                                    if importlib.util.find_spec(e)][:1] or
                         [pytest.param("onnxruntime", marks=pytest.mark.skip(
                             reason="neither onnxruntime nor openvino is installed"))])
def test_validation_through_an_engine(tmp_path, data, engine):
    """val_engine (CLI --engine): each epoch's validation runs the current weights
    through that engine (RHMEngine, built from the in-memory module); the same training
    validated by eager gives the same metrics to float rounding and the same delivery."""
    train, val = data
    runs = {}
    for name in ("eager", engine):
        path = train_rhm(train, tmp_path / name, val_dir=val, epochs=2, val_engine=name,
                         **ARGS)
        runs[name] = json.loads(path.with_suffix(".json").read_text())["extra"]
    ref, got = runs["eager"], runs[engine]
    assert got["training"]["val_engine"] == engine and got["training"]["val_precision"] == "fp32"
    assert ref["training"]["val_engine"] == "eager"
    for a, b in zip(ref["history"], got["history"]):
        assert a["loss"] == b["loss"]  # validation never touches the training
        va, vb = a["val"], b["val"]
        assert (va["engine"], vb["engine"], vb["precision"]) == ("eager", engine, "fp32")
        assert abs(va["psnr_model"] - vb["psnr_model"]) < 0.01
        assert abs(va["psnr_clean"] - vb["psnr_clean"]) < 0.01
        assert abs(va["ssim_model"] - vb["ssim_model"]) < 1e-4
        assert abs(va["gap_model"] - vb["gap_model"]) < 1e-3
    assert ref["selected"]["epoch"] == got["selected"]["epoch"]
    with pytest.raises(ValueError, match="does not run precision='bf16'"):
        train_rhm(train, tmp_path / "bad", epochs=1, val_engine="onnxruntime",
                  val_precision="bf16", **ARGS)
    assert not (tmp_path / "bad" / "checkpoints").exists()  # refused before any work


def test_shipped_default_model_loads_and_restores():
    from frerec_fast.training import default_model_path
    from frerec_fast.model.checkpoint import read_checkpoint_meta

    path = default_model_path()
    model = load_rhm(path)
    meta = read_checkpoint_meta(path)
    val = meta["extra"]["metrics"]["val"]
    assert sum(p.numel() for p in model.parameters()) == meta["extra"]["parameters"]
    # The card's claim, recorded by training on held-out images: RHM output at least as
    # structurally close to the clean image as its SHR input.
    assert val["ssim_model"] >= val["ssim_shr"]
    assert (path.parent / "MODEL_CARD.md").is_file()


def test_train_from_prebuilt_index_with_bf16_autocast(tmp_path, data):
    """`frerec train INDEX --real-dir DIR` path, through the AMP code (bf16 autocast on CPU)."""
    import frerec_fast as ff

    train, val = data
    ff.build_index(train, tmp_path / "idx", progress=False)
    with pytest.raises(ValueError, match="real_dir"):
        train_rhm(tmp_path / "idx", tmp_path / "no", epochs=1, **ARGS)
    path = train_rhm(tmp_path / "idx", tmp_path / "run", real_dir=train, val_dir=val, epochs=2,
                     amp="bf16", **ARGS)
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["extra"]["training"]["amp"] == "bf16"
    hist = meta["extra"]["history"]
    assert all(torch.isfinite(torch.tensor(h["loss"])) for h in hist)
    assert hist[-1]["val"]["psnr_model"] > 10
    with pytest.raises(ValueError, match="fp16"):
        train_rhm(train, tmp_path / "fp16", epochs=1, amp="fp16", **ARGS)


def test_training_after_calibration_in_the_same_process(tmp_path, data):
    """Constants cached during an inference-mode calibration (ring maps, DFT matrices)
    must not break a later training step in the same process (torch ring ops save the
    cached map for backward)."""
    from frerec_fast.model import RHM, rhm_loss
    from frerec_fast.model.fesa import set_ring_backend
    from frerec_fast.reference.rings import ring_sector_index

    cfg = TINY.replace(n_rings=3, n_sectors=5)  # sizes no other test has cached yet
    with torch.inference_mode():
        torch.manual_seed(0)
        set_ring_backend(RHM(cfg).eval(), "torch")(torch.rand(2, 1, 40, 40))
    assert not ring_sector_index(40, 21, 3, 5).is_inference()
    m = set_ring_backend(RHM(cfg).train(), "torch")
    x = torch.rand(2, 1, 40, 40)
    rhm_loss(m(x), x).backward()
    assert all(p.grad is not None for p in m.parameters())


def test_validation_excludes_index_images_by_content(tmp_path, data):
    """A held-out dir that contains a training image under another name must not retrieve
    that image as its own neighbour (its SSIM would be exactly 1)."""
    import frerec_fast as ff
    from frerec_fast.training.data import load_images
    from frerec_fast.training.train import _self_positions

    train, _ = data
    index = ff.build_index(train, tmp_path / "idx", progress=False)
    src = train / index.keys[3]
    val = tmp_path / "val" / "renamed"
    val.mkdir(parents=True)
    shutil.copy(src, val / "other_name.png")
    images = load_images(tmp_path / "val", index.config.work_size, index.config.channels)
    pos = _self_positions(index, images)
    assert pos.tolist() == [3]
    nb = index.neighbours(images.images, k=2, exclude=pos)
    assert 3 not in nb.ids.tolist()[0] and float(nb.scores.max()) < 1.0


def test_tiny_batches_refused_clearly(tmp_path, data):
    train, _ = data
    with pytest.raises(ValueError, match="BatchNorm"):
        train_rhm(train, tmp_path / "r", epochs=1, **{**ARGS, "batch_size": 1, "crop": 8})
