"""``frerec eval`` end to end on a tiny labelled set (and an unlabelled one), its cache,
its report against recomputed numbers, and the bad-input errors (exit code 2)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import frerec_fast as ff
from frerec_fast.cli import main
from frerec_fast.datasets import real_dir, synthetic_dir
from frerec_fast.eval import load_dir
from frerec_fast.model import RHM, RHMConfig, save_checkpoint
from run_helpers import one_thread  # noqa: F401 - a fixture
from tiny_models import TINY

pytest.importorskip("sklearn", reason="frerec eval needs scikit-learn: pip install scikit-learn")
pytestmark = pytest.mark.usefixtures("one_thread")


def _subset(src: Path, dst: Path, n: int, flat: bool = False) -> Path:
    """n images per modality of a shipped set, every 7th, in class folders (or flat)."""
    for c in ("ct", "mri"):
        for f in sorted((src / c).glob("*.png"))[::7][:n]:
            d = dst if flat else dst / c
            d.mkdir(parents=True, exist_ok=True)
            shutil.copy(f, d / (f"{c}_{f.name}" if flat else f.name))
    return dst


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaldata")
    _subset(real_dir("train"), root / "train", 6)
    _subset(real_dir("heldout"), root / "test", 3)
    _subset(synthetic_dir(), root / "syn", 3)
    torch.manual_seed(0)
    save_checkpoint(root / "rhm", RHM(RHMConfig(**TINY)).eval())
    save_checkpoint(root / "rhm_nofesa", RHM(RHMConfig(fesa=False, **TINY)).eval())
    return root


def _args(data, out, *extra):
    return ["eval", "--real-train", str(data / "train"), "--real-test", str(data / "test"),
            "--synthetic", str(data / "syn"), "--out", str(out), "--model",
            str(data / "rhm.safetensors"), "-k", "5", "--quick", "-q", *extra]


@pytest.fixture(scope="module")
def labelled_run(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("evalrun")
    rc = main(_args(data, out, "--seeds", "2", "--steps", "3",
                    "--ablation-model", str(data / "rhm_nofesa.safetensors")))
    assert rc == 0
    return out, json.loads((out / "report.json").read_text())


def test_labelled_end_to_end_report(labelled_run, capsys):
    out, r = labelled_run
    md = (out / "report.md").read_text()
    for f in ("spectrum_against_raw_real.png", "spectrum_deployed.png", "features_tsne.png"):
        assert (out / f).stat().st_size > 1000 and f in r["figures"] and f in md
    assert "against raw real" in md and "deployed" in md and "Table 3" in md
    json.loads((out / "report.json").read_text(), parse_constant=pytest.fail)  # strict JSON
    assert len(r["spectral"]["profiles"]["real_test_raw"]) == 64 // 2 + 1
    assert r["labelled"] and r["classes"] == ["ct", "mri"]
    methods, not_run = r["classification"]["methods"], r["classification"]["not_run"]
    # AutoAugment and Mix-up are torchvision's: without it they are reported as not run.
    assert set(not_run) <= {"AutoAugment", "Mix-up"}
    assert [m for m in ["RAW", "AutoAugment", "Mix-up", "AFA", "GDA", "GDA+shr", "GDA+rhm_nofesa",
                        "GDA+rhm_noshr", "GDA+FreRec", "GDA+full_rhm_stats"]
            if m not in not_run] == list(methods)
    assert methods["GDA"]["train_images"] == 12 + 6 and methods["RAW"]["train_images"] == 12
    for m in methods.values():
        assert len(m["per_seed"]) == 2
        for row in m["per_seed"]:
            assert 0 <= row["acc"] <= 1 and 0 <= row["f1"] <= 1 and 0 <= row["auc"] <= 1
        assert m["mean"]["acc"] == pytest.approx(np.mean([x["acc"] for x in m["per_seed"]]))
    paired = r["classification"]["paired_gda_frerec_vs_gda"]
    for k in ("auc", "acc", "f1"):
        d = [a[k] - b[k] for a, b in zip(methods["GDA+FreRec"]["per_seed"], methods["GDA"]["per_seed"])]
        assert paired[k]["per_seed_diff"] == pytest.approx(d)
        assert paired[k]["ci95"][0] <= paired[k]["mean_diff"] <= paired[k]["ci95"][1]
    rows = {row["variant"]: row for row in r["ablation"]}
    assert list(rows) == ["shr", "rhm_nofesa", "rhm_noshr", "full", "full_rhm_stats"]
    assert all("not_run" not in row and "classification" in row for row in rows.values())
    assert set(r["features"]["frechet"]) == {
        "before (raw synthetic vs raw real)",
        "after, deployed (calibrated synthetic vs calibrated real)",
        "after, against raw real (calibrated synthetic vs raw real)"}
    assert set(r["timings_s"]) >= {"index", "calibrate", "load", "spectral", "quality",
                                   "features", "classify", "total"}


def test_report_gaps_recomputed_from_the_written_images(labelled_run, data):
    """Each protocol compares the sets it names: recompute from the folders on disk."""
    out, r = labelled_run

    def prof(d):
        return ff.spectral_profile(load_dir(d, (64, 64))[0])

    raw_syn, raw_real = prof(data / "syn"), prof(data / "test")
    assert r["spectral"]["baseline"]["overall"]["high_band"] == pytest.approx(
        ff.frequency_gap(raw_syn, raw_real)[0], abs=1e-9)
    for v in ("shr", "rhm_nofesa", "rhm_noshr", "full", "full_rhm_stats"):
        cal_syn = prof(out / "calibrated" / v / "synthetic")
        cal_real = prof(out / "calibrated" / v / "real_test")
        g = r["spectral"]["variants"][v]
        assert (g["against raw real"]["overall"]["high_band"], g["against raw real"]["overall"]["all_radii"]) \
            == pytest.approx(ff.frequency_gap(cal_syn, raw_real), abs=1e-9)
        assert (g["deployed"]["overall"]["high_band"], g["deployed"]["overall"]["all_radii"]) \
            == pytest.approx(ff.frequency_gap(cal_syn, cal_real), abs=1e-9)
        assert set(g["deployed"]["per_class"]) == {"ct", "mri"}
    # SHR at inference changes the images; the no-SHR ablation leaves the manifest saying so.
    rep = json.loads((out / "calibrated" / "rhm_noshr" / "synthetic" / "frerec_report.json").read_text())
    assert rep["shr"] is False and rep["rhm"] is True
    # Full FreRec keeps SHR's high-band statistics; its paper-literal row keeps the RHM's.
    for v, want in (("full", "shr"), ("full_rhm_stats", "rhm")):
        rep = json.loads((out / "calibrated" / v / "synthetic" / "frerec_report.json").read_text())
        assert rep["rhm_stats"] == want


def test_second_run_reuses_the_calibrated_cache(labelled_run, data):
    out, _ = labelled_run
    rc = main(_args(data, out, "--seeds", "1", "--steps", "1", "--no-figures",
                    "--ablation-model", str(data / "rhm_nofesa.safetensors")))
    assert rc == 0
    r = json.loads((out / "report.json").read_text())
    for v, splits in r["calibration"].items():
        for s, c in splits.items():
            assert c["ok"] == 0 and c["skipped"] > 0 and c["failed"] == 0, (v, s, c)


def test_unlabelled_end_to_end(data, tmp_path, capsys):
    flat = tmp_path / "flat"
    _subset(real_dir("train"), flat / "train", 5, flat=True)
    _subset(real_dir("heldout"), flat / "test", 2, flat=True)
    _subset(synthetic_dir(), flat / "syn", 2, flat=True)
    (flat / "rhm.safetensors").symlink_to(data / "rhm.safetensors")
    (flat / "rhm.json").symlink_to(data / "rhm.json")
    rc = main(_args(flat, tmp_path / "out", "--no-figures"))
    assert rc == 0
    r = json.loads((tmp_path / "out" / "report.json").read_text())
    assert not r["labelled"] and "skipped" in r["classification"]
    assert "random initialisation" in r["features"]["encoder"]
    rows = {row["variant"]: row for row in r["ablation"]}
    assert rows["rhm_nofesa"]["not_run"] == "not run: pass --ablation-model"
    assert "not run: pass --ablation-model" in capsys.readouterr().out
    assert not (tmp_path / "out" / "calibrated" / "shr" / "real_train").exists()


def _bad(tmp_path, make):
    """Build the train/test/syn folders under tmp_path with ``make``; returns tmp_path."""
    for name in ("train", "test", "syn"):
        make(name, tmp_path / name)
    return tmp_path


def _png(p: Path):
    p.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(sorted((real_dir("train") / "ct").glob("*.png"))[0], p)


@pytest.mark.parametrize("case,expect", [
    ("missing_class", "class folder 'mri' is missing"),
    ("one_class", "only one class folder"),
    ("empty", "empty (no supported images"),
    ("empty_class", "is empty"),
    ("mixed_inside", "mixed layout"),
    ("mixed_across", "mixed labelled/unlabelled layouts"),
    ("not_a_dir", "not a directory"),
    ("out_inside", "is inside the real-train folder"),
])
def test_bad_inputs_exit_2_with_a_clear_message(tmp_path, capsys, case, expect):
    def make(name, d):
        d.mkdir(parents=True, exist_ok=True)
        classes = ("ct",) if case == "one_class" else ("ct", "mri")
        if case == "missing_class" and name == "test":
            classes = ("ct",)
        if case == "empty" and name == "syn":
            return
        if case == "mixed_across" and name == "syn":
            _png(d / "a.png")
            return
        if case == "not_a_dir" and name == "test":
            d.rmdir()
            d.write_text("not a folder")
            return
        for c in classes:
            if case == "empty_class" and name == "train" and c == "mri":
                (d / c).mkdir()
                continue
            _png(d / c / "a.png")
        if case == "mixed_inside" and name == "train":
            _png(d / "loose.png")

    root = _bad(tmp_path, make)
    out = root / "train" / "out" if case == "out_inside" else tmp_path / "out"
    rc = main(["eval", "--real-train", str(root / "train"), "--real-test", str(root / "test"),
               "--synthetic", str(root / "syn"), "--out", str(out), "-q"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert expect in err and "Traceback" not in err
    assert str(tmp_path) in err  # names the folder
    assert not (out / "calibrated").exists()  # refused before any work
