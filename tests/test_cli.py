"""The frerec CLI and the SHR-only directory job, on real files, in a subprocess."""
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

import frerec_fast as ff
from frerec_fast.io import write_png


def frerec(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "frerec_fast.cli", *map(str, args)],
                          capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"frerec {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def dirs(tmp_path):
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:32, 0:32] / 32.0
    real, synth = tmp_path / "real", tmp_path / "synth"
    (synth / "deep").mkdir(parents=True)
    real.mkdir()
    for i in range(12):
        img = np.clip(0.5 + 0.3 * np.sin((i + 2) * xx) * np.cos(yy * 3) + 0.05 * rng.random((32, 32)), 0, 1)
        write_png(real / f"r{i:02d}.png", img[None].astype(np.float32), 16)
    for i in range(5):
        img = np.clip(0.5 + 0.3 * np.sin((i + 2) * xx) + 0.2 * (rng.random((32, 32)) > 0.5), 0, 1)
        target = synth / "deep" if i % 2 else synth
        write_png(target / f"s{i}.png", img[None].astype(np.float32), 8 if i == 4 else 16)
    return tmp_path, real, synth


def test_index_shr_spectrum_end_to_end(dirs):
    root, real, synth = dirs
    out = frerec("index", real, root / "idx", "-q").stdout
    assert "indexed 12 image(s)" in out
    frerec("shr", synth, root / "o1", "--index", root / "idx", "-k", 5, "--batch-size", 2)
    frerec("shr", synth, root / "o2", "--index", root / "idx", "-k", 5, "--batch-size", 64)
    names = sorted(p.relative_to(root / "o1").as_posix() for p in (root / "o1").rglob("*.png"))
    assert names == ["deep/s1.png", "deep/s3.png", "s0.png", "s2.png", "s4.png"]
    for n in names:
        a, b = (root / "o1" / n).read_bytes(), (root / "o2" / n).read_bytes()
        assert a == b, f"{n}: output depends on batch size"
        src = Image.open(synth / n)
        dst = Image.open(root / "o1" / n)
        assert src.mode == dst.mode and src.size == dst.size
    # Another seed changes the noise, so the bytes.
    frerec("shr", synth, root / "o3", "--index", root / "idx", "-k", 5, "--seed", 1)
    assert (root / "o3" / "s0.png").read_bytes() != (root / "o1" / "s0.png").read_bytes()

    rep = json.loads((root / "o1" / "frerec_report.json").read_text())
    assert rep["ok"] == 5 and rep["failed"] == 0 and rep["backends"]["shr"] in ("cpp", "torch")
    lines = (root / "o1" / "frerec_manifest.jsonl").read_text().splitlines()
    assert sorted(json.loads(x)["path"] for x in lines) == names
    rep = frerec("spectrum", real, synth, root / "o1", "--size", "32", "--json", root / "g.json").stdout
    gaps = json.loads((root / "g.json").read_text())
    assert [g["count"] for g in gaps] == [12, 5, 5] and gaps[0]["gap_high"] == 0.0
    assert "high band" in rep


def test_shr_dir_records_bad_files_and_goes_on(dirs):
    root, real, synth = dirs
    (synth / "bad.png").write_bytes(b"garbage")
    ff.build_index(real, root / "idx", progress=False)
    proc = frerec("shr", synth, root / "out", "--index", root / "idx", "-k", 3, check=False)
    assert proc.returncode == 1
    assert "bad.png" in proc.stderr and "5 written" in proc.stdout and "1 failed" in proc.stdout
    before = sorted(p.name for p in synth.rglob("*"))
    assert "bad.png" in before  # the input directory is left as it was


def test_refuses_output_inside_input_and_missing_index(dirs):
    root, real, synth = dirs
    ff.build_index(real, root / "idx", progress=False)
    proc = frerec("shr", synth, synth / "out", "--index", root / "idx", check=False)
    assert proc.returncode == 2 and "must not contain, or be inside" in proc.stderr
    proc = frerec("shr", synth, root / "x", "--index", root / "nope", check=False)
    assert proc.returncode == 2 and "missing" in proc.stderr


def test_self_exclusion_for_real_images(dirs):
    root, real, _ = dirs
    idx = ff.build_index(real, root / "idx", progress=False)
    from frerec_fast.pipeline import calibrate_dir
    # With k=1 and no exclusion an image's only neighbour is itself: its own statistics
    # come back (the bank spread is 0, so eps has no effect) and SHR is the identity.
    calibrate_dir(real, root / "same", idx, model=False, device="cpu", k=1, progress=False)
    rep = calibrate_dir(real, root / "cal", idx, model=False, device="cpu", k=1,
                        calibrate_real=True, progress=False)
    assert rep["ok"] == 12 and rep["failed"] == 0
    src = np.asarray(Image.open(real / "r03.png"), np.float64)
    same = np.asarray(Image.open(root / "same" / "r03.png"), np.float64)
    cal = np.asarray(Image.open(root / "cal" / "r03.png"), np.float64)
    assert np.abs(same - src).max() <= 2  # rounding only, in 16-bit units
    assert np.abs(cal - src).max() > 50


def test_help_everywhere():
    for sub in ([], ["index"], ["shr"], ["calibrate"], ["spectrum"], ["demo"]):
        assert "usage" in frerec(*sub, "--help").stdout
