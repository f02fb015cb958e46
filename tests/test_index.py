"""RealIndex: build from real files, save, load memory-mapped, refuse tampered files."""
import json

import numpy as np
import pytest
import torch
from PIL import Image

import frerec_fast as ff
from frerec_fast.io import write_png
import npref


@pytest.fixture
def real_dir(tmp_path):
    d = tmp_path / "real"
    (d / "nested").mkdir(parents=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:48, 0:40] / 40.0
    for i in range(10):
        img = np.clip(0.5 + 0.3 * np.sin((i + 1) * xx + yy) + 0.1 * rng.random((48, 40)), 0, 1)
        target = d / "nested" if i % 3 == 0 else d
        write_png(target / f"img{i:02d}.png", img[None].astype(np.float32), 16 if i % 2 else 8)
    (d / "broken.png").write_bytes(b"\x89PNG not really")
    (d / "notes.txt").write_text("ignored: not an image")
    return d


def test_build_save_load_roundtrip(real_dir, tmp_path):
    idx = ff.build_index(real_dir, tmp_path / "idx", progress=False)
    assert len(idx) == 10
    assert idx.keys == sorted(idx.keys) and "nested/img00.png" in idx.keys
    assert [s["path"] for s in idx.skipped] == ["broken.png"]
    assert "broken.png" in idx.skipped[0]["error"]
    assert idx.config.work_size == (48, 40) and idx.config.channels == 1

    # Stored band statistics equal the NumPy oracle on the decoded pixels.
    k = idx.keys.index("img05.png")
    px = np.asarray(Image.open(real_dir / "img05.png"), np.float64)[None, None] / 65535.0
    mu, sigma = npref.band_stats(px, 0.5, "complex")
    np.testing.assert_allclose(idx.mu[k].numpy(), mu[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(idx.sigma[k].numpy(), sigma[0], rtol=1e-5, atol=1e-7)

    for mmap in (True, False):
        back = ff.RealIndex.load(tmp_path / "idx", mmap=mmap)
        assert back.keys == idx.keys and back.hashes == idx.hashes
        assert back.thumbs.dtype == torch.float16 and back.thumbs.shape == (10, 1, 64, 64)
        assert torch.equal(back.thumbs, idx.thumbs)
        assert torch.equal(back.mu, idx.mu) and torch.equal(back.sigma, idx.sigma)
        assert back.config == idx.config


def test_neighbours_banks_and_self_exclusion(real_dir, tmp_path):
    idx = ff.build_index(real_dir, tmp_path / "idx", progress=False)
    x = torch.from_numpy(np.asarray(Image.open(real_dir / "img04.png"), np.float32) / 255.0)[None, None]
    self_pos = idx.position("img04.png")
    nb = idx.neighbours(x, k=3)
    assert nb.ids[0, 0].item() == self_pos
    nb = idx.neighbours(x, k=50, exclude=[self_pos])
    assert nb.ids.shape == (1, 9) and self_pos not in nb.ids[0].tolist()
    assert torch.equal(nb.mu_bank[0], idx.mu[nb.ids[0]])
    assert torch.equal(nb.sigma_bank[0], idx.sigma[nb.ids[0]])
    assert (nb.scores[0, :-1] >= nb.scores[0, 1:]).all()
    # Banks plug straight into SHR.
    out = ff.shr(x, nb.mu_bank, nb.sigma_bank, torch.zeros(1, 1), torch.zeros(1, 1))
    assert out.shape == x.shape


def test_tampered_or_foreign_files_are_refused(real_dir, tmp_path):
    out = tmp_path / "idx"
    ff.build_index(real_dir, out, progress=False)
    blob = bytearray((out / "index.safetensors").read_bytes())
    blob[-5] ^= 0xFF
    (out / "index.safetensors").write_bytes(bytes(blob))
    with pytest.raises(ff.IndexFileError, match="checksum mismatch"):
        ff.RealIndex.load(out)

    ff.build_index(real_dir, out, progress=False)
    meta = json.loads((out / "index.json").read_text())
    meta["version"] = 999
    (out / "index.json").write_text(json.dumps(meta))
    with pytest.raises(ff.IndexFileError, match="version 999"):
        ff.RealIndex.load(out)
    (out / "index.json").write_text("{not json")
    with pytest.raises(ff.IndexFileError, match="not valid JSON"):
        ff.RealIndex.load(out)
    with pytest.raises(ff.IndexFileError, match="missing"):
        ff.RealIndex.load(tmp_path / "nowhere")


def test_rgb_and_mixed_sizes(tmp_path):
    d = tmp_path / "rgb"
    d.mkdir()
    rng = np.random.default_rng(1)
    for i, size in enumerate([(32, 32), (32, 32), (40, 36)]):
        Image.fromarray((rng.random((*size, 3)) * 255).astype(np.uint8)).save(d / f"c{i}.png")
    Image.fromarray((rng.random((32, 32)) * 255).astype(np.uint8)).save(d / "grey.png")
    idx = ff.build_index(d, None, work_size=32, retrieval_size=24, progress=False)
    assert idx.config.channels == 3 and idx.mu.shape == (4, 3)
    assert idx.thumbs.shape == (4, 1, 24, 24)
    with pytest.raises(FileNotFoundError, match="no supported images"):
        (tmp_path / "empty").mkdir()
        ff.build_index(tmp_path / "empty", None)
