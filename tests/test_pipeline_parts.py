"""The pipeline's parts one at a time (config, reader, calibrator, writer, record) and
the shared helpers (progress, devices, channels), each against an independent
composition of the public ops or plain file checks; no mocks."""
import argparse
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import frerec_fast as ff
from frerec_fast import io as fio
from frerec_fast.channels import ColourMismatch, from_channels, to_channels
from frerec_fast.cli import build_parser
from frerec_fast.datasets import real_dir, synthetic_dir
from frerec_fast.devices import resolve_device
from frerec_fast.model import RHM, RHMConfig
from frerec_fast.model.fesa import FrequencyBranch
from frerec_fast.ops import shr as shr_op
from frerec_fast.pipeline import (MANIFEST, CalibrateConfig, Manifest, RunRecord, Stages, Status,
                                  calibrate_dir, config_from_cli, make_config)
from frerec_fast.pipeline.calibrator import Calibrator, Compute
from frerec_fast.pipeline.reader import Read, SelfExclusion, make_job, read_files
from frerec_fast.pipeline.writer import Writer
from frerec_fast.progress import NoBar, bar
from frerec_fast.seeding import sample_eps
from frerec_fast.tiles import tile_starts
from run_helpers import one_thread  # noqa: F401 - a fixture
from tiny_models import TINY

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    return ff.build_index(real_dir("train"), tmp_path_factory.mktemp("idx") / "idx",
                          progress=False)


def synth(n: int) -> list[Path]:
    return sorted(synthetic_dir().rglob("*.png"))[:n]


# -- config ---------------------------------------------------------------------------------
@pytest.mark.parametrize("bad, why", [
    ({"overlap": 1.0}, "overlap"), ({"batch_size": 0}, "batch_size"),
    ({"model_batch": 0}, "model_batch"), ({"workers": 0}, "workers"), ({"k": 0}, "k must"),
    ({"retrieval": "approx"}, "retrieval"), ({"candidates": 10}, "candidates"),
    ({"engine": "tensorflow"}, "unknown engine"), ({"precision": "fp8"}, "unknown precision"),
    ({"engine": "onnxruntime", "precision": "bf16"}, "does not run precision"), ({"files": "a.png"}, "list"),
])
def test_config_refuses_bad_settings(bad, why):
    with pytest.raises(ValueError, match=why):
        CalibrateConfig(**bad)


def test_make_config_names_unknown_settings_and_keeps_the_rest():
    with pytest.raises(TypeError, match="overlapp"):
        make_config(overlapp=0.5)
    base = CalibrateConfig(k=20, seed=3)
    assert make_config(base, seed=4) == CalibrateConfig(k=20, seed=4)
    assert make_config(files=["b.png", "a.png"]).files == ("b.png", "a.png")


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def test_cli_options_are_the_config_fields_with_the_same_defaults():
    cal = _subparser("calibrate")
    dests = {a.dest: a for a in cal._actions}
    for f in fields(CalibrateConfig):
        assert f.name in dests, f"frerec calibrate has no option for {f.name}"
    a = cal.parse_args(["S", "D", "--index", "I"])
    assert config_from_cli(a) == CalibrateConfig()
    a = cal.parse_args(["S", "D", "--index", "I", "--overlap", "0.5", "--no-shr", "--real",
                        "--no-resume", "-q", "-k", "7", "--model-batch", "4",
                        "--retrieval", "prefilter", "--candidates", "30", "--device", "cpu"])
    assert config_from_cli(a) == CalibrateConfig(
        overlap=0.5, shr=False, calibrate_real=True, resume=False, progress=False, k=7,
        model_batch=4, retrieval="prefilter", candidates=30, device="cpu")
    shr = {a.dest for a in _subparser("shr")._actions}
    assert not {"engine", "precision", "shr", "model"} & shr


def test_cli_files_from_reads_a_list(tmp_path):
    lst = tmp_path / "list.txt"
    lst.write_text("# chosen\nct/a.png\n\n mri/b.png \n")
    a = _subparser("calibrate").parse_args(["S", "D", "--index", "I", "--files-from", str(lst)])
    assert config_from_cli(a).files == ("ct/a.png", "mri/b.png")
    a = _subparser("calibrate").parse_args(["S", "D", "--index", "I", "--files-from",
                                            str(tmp_path / "missing.txt")])
    with pytest.raises(ValueError, match="missing.txt"):
        config_from_cli(a)


# -- reader ---------------------------------------------------------------------------------
def test_read_files_keeps_order_and_reports_each_outcome(tmp_path):
    for i, p in enumerate(synth(6)):
        (tmp_path / f"{i}.png").write_bytes(p.read_bytes())
    (tmp_path / "bad.png").write_text("not an image")
    rels = fio.scan_images(tmp_path)
    done_digest = fio.file_sha256(tmp_path / "2.png")
    with ThreadPoolExecutor(3) as pool:
        got = list(read_files(tmp_path, rels, pool, prefetch=2,
                              is_done=lambda rel, d: d == done_digest))
    assert [r.rel for r in got] == rels
    by = {r.rel: r for r in got}
    assert by["2.png"].done and by["2.png"].items is None
    assert by["bad.png"].error and "bad.png" in by["bad.png"].error and by["bad.png"].items is None
    ref = np.asarray(Image.open(tmp_path / "0.png"), np.float64) / 65535
    np.testing.assert_allclose(by["0.png"].items[0].pixels[0], ref, atol=1e-7)


def test_make_job_tiles_like_the_tile_grid_and_refuses_colour(tmp_path, index):
    h0, w0 = index.config.work_size
    px = np.random.default_rng(0).random((100, 150)).astype(np.float32)
    Image.fromarray(px, mode="F").save(tmp_path / "big.tiff")
    rgb = np.random.default_rng(1).integers(0, 255, (h0, w0, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    own = SelfExclusion(index, enabled=False)
    with ThreadPoolExecutor(1) as pool:
        big, col = list(read_files(tmp_path, ["big.tiff", "rgb.png"], pool, 2, lambda *a: False))
    job = make_job(tmp_path, big, index.config, own, 0.25)
    n = len(tile_starts(100, h0, 0.25)) * len(tile_starts(150, w0, 0.25))
    assert job.n_tiles == job.remaining == n and job.tiles[0].shape == (n, 1, h0, w0)
    assert torch.equal(job.tiles[0][0, 0], torch.from_numpy(px[:h0, :w0]))
    with pytest.raises(ColourMismatch, match="rgb.png"):
        make_job(tmp_path, col, index.config, own, 0.25)


def test_self_exclusion_finds_a_real_image_by_content(tmp_path, index):
    f = sorted(real_dir("train").rglob("*.png"))[5]
    digest = fio.file_sha256(f)
    expect = index.hashes.index(digest)
    assert SelfExclusion(index, True)("renamed.png", digest) == expect
    assert SelfExclusion(index, False)("renamed.png", digest) == -1
    assert SelfExclusion(index, True)("other.png", "0" * 64) == -1


# -- calibrator -----------------------------------------------------------------------------
def _jobs(index, n: int, tmp_path: Path):
    own = SelfExclusion(index, False)
    with ThreadPoolExecutor(1) as pool:
        for i, p in enumerate(synth(n)):
            (tmp_path / f"{i}.png").write_bytes(p.read_bytes())
        reads = list(read_files(tmp_path, fio.scan_images(tmp_path), pool, 4, lambda *a: False))
    return [make_job(tmp_path, r, index.config, own, 0.25) for r in reads]


def _compute(index, net=None, micro=4, shr=True):
    return Compute(index=index, net=net, device=torch.device("cpu"), micro=micro, k=16, seed=5,
                   backend="torch", search_backend="torch", retrieval="exact", candidates=None,
                   calibrate_real=False, shr=shr)


def test_calibrator_equals_retrieval_then_shr_composed_here(index, tmp_path):
    jobs = _jobs(index, 7, tmp_path)
    done, failed = [], []
    cal = Calibrator(_compute(index), done.append, lambda j, w: failed.append(w), Stages(), {})
    for j in jobs:
        cal.add(j)
    cal.run(step=4)
    assert len(cal.pending) < 4
    cal.flush()
    assert not failed and [j.rel for j in done] == [j.rel for j in jobs]
    for j in jobs:
        x = j.tiles[0]
        nb = index.neighbours(x, k=16, backend="torch")
        mu, sigma = sample_eps(5, [j.items[0].key], index.config.channels, 0)
        want = shr_op(x, nb.mu_bank, nb.sigma_bank, mu, sigma, ratio=index.config.ratio,
                      domain=index.config.domain, backend="torch").clamp(0, 1)
        torch.testing.assert_close(j.out[0][0], want[0], atol=1e-5, rtol=0)
    assert len(cal.sample_in) == len(cal.sample_out) == 7


def test_calibrator_fails_only_the_jobs_of_a_bad_micro_batch(index, tmp_path):
    jobs = _jobs(index, 8, tmp_path)
    calls = []

    def net(x):  # the second micro-batch produces NaN, the third raises
        calls.append(1)
        if len(calls) == 2:
            return torch.full_like(x, float("nan"))
        if len(calls) == 3:
            raise RuntimeError("device lost")
        return x

    done, failed = [], {}
    cal = Calibrator(_compute(index, net, micro=2, shr=False), done.append,
                     lambda j, w: failed.setdefault(j.rel, []).append(w), Stages(), {})
    for j in jobs:
        cal.add(j)
    cal.flush()
    assert [j.rel for j in done] == [jobs[i].rel for i in (0, 1, 6, 7)]
    assert sorted(failed) == sorted(jobs[i].rel for i in (2, 3, 4, 5))
    assert all(len(w) == 1 for w in failed.values())  # recorded once per file
    assert all("non-finite" in failed[jobs[i].rel][0] for i in (2, 3))
    assert all("device lost" in failed[jobs[i].rel][0] for i in (4, 5))


# -- writer ---------------------------------------------------------------------------------
def test_writer_writes_like_the_source_in_order_and_refuses_escapes(index, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    jobs = _jobs(index, 3, src)
    for j in jobs:
        j.out[0] = [1.0 - t for t in j.tiles[0]]
    outside = tmp_path / "outside"
    outside.mkdir()
    (dst / "link").symlink_to(outside)
    jobs[1].rel = "link/1.png"
    with Writer(src, dst, 0.25, workers=3) as w:
        for j in jobs:
            w.submit(j)
        got = list(w.finished(block=True))
    assert [g[0].rel for g in got] == [j.rel for j in jobs]
    assert got[1][1] is None and "outside the output directory" in got[1][3]
    assert not list(outside.iterdir())
    for j, sha, _, err in (got[0], got[2]):
        assert err is None and sha == fio.file_sha256(dst / j.rel)
        a, b = Image.open(src / j.rel), Image.open(dst / j.rel)
        assert (a.mode, a.size) == (b.mode, b.size)
        want = np.round((1.0 - np.asarray(a, np.float64) / 65535) * 65535)
        assert np.abs(np.asarray(b, np.float64) - want).max() <= 1


# -- record ---------------------------------------------------------------------------------
def test_manifest_drops_a_torn_line_and_knows_what_is_done(tmp_path):
    (tmp_path / "a.png").write_bytes(b"x")
    m = tmp_path / MANIFEST
    good = {"path": "a.png", "output": "a.png", "input_sha256": "h", "status": "ok", "run": "r"}
    m.write_text(json.dumps(good) + "\n" + '{"path": "b.png", "sta')
    man = Manifest(m)
    assert m.read_text() == json.dumps(good) + "\n"
    assert man.done("a.png", "h", tmp_path, "r") and not man.done("a.png", "h", tmp_path, "q")
    assert not man.done("a.png", "other", tmp_path, "r") and not man.done("b.png", "h", tmp_path)
    rec = RunRecord(man, tmp_path, seed=1, run_id="r2", total=3, progress=False)
    rec.ok("c.png", "hc", "oc", tiles=2)
    rec.failed("d.png", None, "d.png: broken")
    rec.skipped()
    rec.close()
    lines = [json.loads(x) for x in m.read_text().splitlines()]
    assert [x["status"] for x in lines] == ["ok", Status.OK.value, Status.ERROR.value]
    assert rec.counts == {"ok": 1, "failed": 1, "skipped": 1}
    assert rec.errors == {"d.png": "d.png: broken"}


# -- the run leaves the caller's model alone ----------------------------------------------------
def test_backend_does_not_change_the_callers_model(index, tmp_path):
    torch.manual_seed(0)
    net = RHM(RHMConfig(in_channels=1, **TINY)).eval()
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.png").write_bytes(synth(1)[0].read_bytes())
    rep = calibrate_dir(tmp_path / "src", tmp_path / "dst", index=index, model=net,
                        device="cpu", backend="torch", k=8, engine="eager", progress=False)
    assert rep["ok"] == 1 and rep["backends"]["ring_pool_amplitude"] == "torch"
    assert {m.backend for m in net.modules() if isinstance(m, FrequencyBranch)} == {"auto"}


# -- shared helpers -------------------------------------------------------------------------
def test_helpers_progress_device_channels():
    assert isinstance(bar(3, "x", enabled=False), NoBar)
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            resolve_device("cuda")
        assert resolve_device("auto") == torch.device("cpu")
    g = torch.rand(2, 1, 4, 4)
    assert torch.equal(to_channels(g, 3)[:, 2], g[:, 0])
    rgb = torch.rand(2, 3, 4, 4)
    want = 0.299 * rgb[:, 0] + 0.587 * rgb[:, 1] + 0.114 * rgb[:, 2]
    torch.testing.assert_close(to_channels(rgb, 1)[:, 0], want)
    torch.testing.assert_close(from_channels(rgb, 1)[:, 0], want)
    assert torch.equal(to_channels(g.expand(-1, 3, -1, -1), 1, strict="g.png"), g)
    with pytest.raises(ColourMismatch, match="c.png"):
        to_channels(rgb, 1, strict="c.png")
