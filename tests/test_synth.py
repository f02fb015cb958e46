"""The project's DCGAN: determinism of training and sampling, safe weight files, CLI."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors import SafetensorError

from frerec_fast import datasets as ds
from frerec_fast.synth import (DCGANConfig, Generator, generate, load_generator, sample,
                               state_digest, train)
from frerec_fast.synth.__main__ import main as cli_main
from frerec_fast.synth.generate import class_counts

TINY = DCGANConfig(image_size=16, nz=8, ngf=8, ndf=8)


@pytest.fixture(scope="module")
def tiny_data():
    """A few real slices area-resampled to 16x16: x [24, 1, 16, 16], labels [24]."""
    ct, mri = ds.load_images("train", "ct")[:12], ds.load_images("train", "mri")[:12]
    x = F.interpolate(torch.cat([ct, mri]), size=(16, 16), mode="area")
    return x, torch.tensor([0] * 12 + [1] * 12)


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, tiny_data):
    out = tmp_path_factory.mktemp("tiny")
    train(out, steps=3, seed=0, batch_size=8, cfg=TINY, data=tiny_data, log_every=0)
    return out / "dcgan.safetensors"


def _run(seed, data, steps=4):
    return train(None, steps=steps, seed=seed, batch_size=8, cfg=TINY, data=data, log_every=0)


def test_training_is_bit_identical_for_one_seed(tiny_data):
    a, b = _run(0, tiny_data), _run(0, tiny_data)
    assert state_digest(a["state_dict"]) == state_digest(b["state_dict"])
    c = _run(1, tiny_data)
    assert state_digest(a["state_dict"]) != state_digest(c["state_dict"])


def test_training_leaves_global_rng_and_settings_alone(tiny_data):
    threads, det = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    _run(0, tiny_data, steps=1)
    assert torch.equal(torch.rand(3), expected)
    assert torch.get_num_threads() == threads
    assert torch.are_deterministic_algorithms_enabled() == det


def test_training_records_class_mix(tiny_data):
    x, lab = tiny_data
    res = train(None, steps=1, batch_size=8, cfg=TINY, data=(x[:16], lab[:16]), log_every=0)
    assert res["config"].class_fractions == pytest.approx((0.75, 0.25))


def test_generate_same_seed_same_bytes(tiny_weights, tmp_path):
    a = generate(tiny_weights, 6, tmp_path / "a", seed=7)
    b = generate(tiny_weights, 6, tmp_path / "b", seed=7, batch_size=4)  # batch size must not matter
    c = generate(tiny_weights, 6, tmp_path / "c", seed=8)
    assert [p.relative_to(tmp_path / "a") for p in a] == [p.relative_to(tmp_path / "b") for p in b]
    assert all(p.read_bytes() == q.read_bytes() for p, q in zip(a, b))
    assert any(p.read_bytes() != q.read_bytes() for p, q in zip(a, c))
    img = ds.read_png16(a[0])
    assert img.shape == (16, 16) and 0 <= img.min() and img.max() <= 1
    assert (tmp_path / "a" / "manifest.csv").read_text().count("\n") == 7


def test_weights_roundtrip_and_config(tiny_weights, tiny_data):
    g = load_generator(tiny_weights)
    assert g.cfg.image_size == 16 and not g.training
    doc = json.loads(tiny_weights.with_suffix(".json").read_text())
    assert doc["config"]["ngf"] == 8 and doc["training"]["steps"] == 3
    res = _run(0, tiny_data, steps=3)
    g2 = Generator(res["config"])
    g2.load_state_dict(res["state_dict"])
    x1, _ = sample(g, 4, seed=0)
    x2, _ = sample(g2.eval(), 4, seed=0)
    assert torch.equal(x1, x2)


def test_loading_refuses_pickles(tmp_path, tiny_weights):
    bad = tmp_path / "dcgan.safetensors"
    torch.save(load_generator(tiny_weights).state_dict(), bad)  # a pickle under a safetensors name
    bad.with_suffix(".json").write_text(tiny_weights.with_suffix(".json").read_text())
    with pytest.raises(SafetensorError):  # rejected by the safetensors parser, never unpickled
        load_generator(bad)


def test_missing_config_is_reported(tmp_path, tiny_weights):
    lone = tmp_path / "w.safetensors"
    lone.write_bytes(tiny_weights.read_bytes())
    with pytest.raises(FileNotFoundError, match="config JSON"):
        load_generator(lone)


def test_class_counts():
    assert class_counts(10, (0.36, 0.64)) == [4, 6]
    assert class_counts(3, (0.5, 0.5)) in ([2, 1], [1, 2])
    assert sum(class_counts(271, (0.3617, 0.6383))) == 271


def test_generator_shapes_for_sizes():
    for size in (8, 32, 64):
        g = Generator(DCGANConfig(image_size=size, nz=4, ngf=4)).eval()
        y = g(torch.zeros(2, 4), torch.tensor([0, 1]))
        assert y.shape == (2, 1, size, size)
    with pytest.raises(ValueError):
        DCGANConfig(image_size=48)


def test_shipped_weights_reproduce_shipped_images():
    w = ds.weights_path()
    assert w.stat().st_size < 2 * 2**20
    g = load_generator(w)
    assert g.cfg.image_size == ds.IMAGE_SIZE
    meta = {r["path"]: r for r in ds.read_manifest("synthetic")}
    seed = int(next(iter(meta.values()))["seed"])
    n = len(meta)
    imgs, labels = sample(g, n, seed=seed)
    for i in (0, n // 2, n - 1):  # spot checks across both classes
        rel = f"{g.cfg.classes[int(labels[i])]}/dcgan_{i:04d}.png"
        shipped = ds.read_png16(ds.synthetic_dir() / rel)
        # Another CPU may round convolutions differently in the last bits: allow 2 steps of 16 bits.
        np.testing.assert_allclose(imgs[i, 0].numpy(), shipped, atol=2 / 65535)


def test_cli_help_and_generate(tmp_path, tiny_weights, capsys):
    for cmd in (["--help"], ["train", "--help"], ["generate", "--help"]):
        with pytest.raises(SystemExit) as e:
            cli_main(cmd)
        assert e.value.code == 0
    assert "--weights" in capsys.readouterr().out
    assert cli_main(["generate", "--weights", str(tiny_weights), "--n", "3",
                     "--out", str(tmp_path / "o")]) == 0
    assert len(list((tmp_path / "o").rglob("*.png"))) == 3
