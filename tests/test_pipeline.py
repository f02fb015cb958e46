"""calibrate_dir and `frerec calibrate` end to end: real files on disk, real
subprocesses (SIGKILL included), a tiny real RHM; no mocks.

Torch runs single-threaded here (in-process and in the CLI subprocesses): on a small
shared CI box, OpenMP teams stall on each of the model's many small ops (10-50x
slower). Output bytes are compared between runs with one thread count, as the
pipeline promises reproducibility for one device and configuration.
"""
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import frerec_fast as ff
from frerec_fast import io as fio
from frerec_fast.datasets import real_dir, synthetic_dir
from frerec_fast.model import RHM, RHMConfig, save_checkpoint
from frerec_fast.pipeline import MANIFEST, REPORT, calibrate_dir
from frerec_fast.pipeline.fit import SAMPLE
from frerec_fast.spectral import frequency_gap, spectral_profile
from run_helpers import one_thread  # noqa: F401 - a fixture
from tiny_models import TINY

STAGES = {"decode", "retrieval", "shr", "rhm", "encode"}
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_model(channels: int = 1) -> RHM:
    torch.manual_seed(0)
    return RHM(RHMConfig(in_channels=channels, **TINY)).eval()


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """A saved 1-channel index of the shipped real train set and a tiny checkpoint."""
    root = tmp_path_factory.mktemp("pipeline")
    ff.build_index(real_dir("train"), root / "idx", progress=False)
    save_checkpoint(root / "tiny", tiny_model())
    return root


def synth_files(n: int) -> list[Path]:
    files = sorted(synthetic_dir().rglob("*.png"))
    return files[:: max(1, len(files) // n)][:n]


def copy_synth(dst: Path, n: int) -> list[str]:
    """Copy n shipped synthetic images (both modalities), keeping their sub-folders."""
    rels = []
    for p in synth_files(n):
        rel = p.relative_to(synthetic_dir()).as_posix()
        (dst / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, dst / rel)
        rels.append(rel)
    return sorted(rels)


def u16(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path), dtype=np.float64) / 65535.0


def manifest(dst: Path) -> list[dict]:
    return [json.loads(line) for line in (dst / MANIFEST).read_text().splitlines()]


def ok_counts(dst: Path) -> Counter:
    return Counter(e["path"] for e in manifest(dst) if e["status"] == "ok")


def tree_state(root: Path) -> dict:
    """Every path under root with its content hash (files) and mtime."""
    out = {}
    for p in sorted(root.rglob("*")):
        st = p.stat()
        out[p.relative_to(root).as_posix()] = (
            hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir", st.st_mtime_ns)
    return out


def file_bytes(root: Path, rels) -> dict:
    return {r: (root / r).read_bytes() for r in rels}


def frerec(*args, check=True):
    proc = subprocess.run([sys.executable, "-m", "frerec_fast.cli", *map(str, args)],
                          capture_output=True, text=True, env=ENV)
    if check and proc.returncode != 0:
        raise AssertionError(f"frerec {args} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


# -- 1. formats, nested folders, the tiled path, manifest and report ----------------------
def test_end_to_end_formats_and_report(work, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    base = [u16(p) for p in synth_files(4)]
    (src / "a" / "b").mkdir(parents=True)
    g8 = np.round(base[0] * 255).astype(np.uint8)
    Image.fromarray(g8).save(src / "grey8.png")
    Image.fromarray(np.round(base[1] * 65535).astype(np.uint16)).save(src / "a" / "grey16.png")
    Image.fromarray(np.stack([g8] * 3, -1)).save(src / "a" / "rgb_grey.png")   # grey stored as RGB
    Image.fromarray(np.round(base[2] * 255).astype(np.uint8)).save(src / "a" / "b" / "x.jpg",
                                                                  quality=95)
    Image.fromarray(np.round(base[3] * 65535).astype(np.uint16)).save(src / "a" / "b" / "t16.tif")
    Image.fromarray(base[0].astype(np.float32), mode="F").save(src / "f32.tiff")
    big = np.asarray(Image.fromarray(base[1].astype(np.float32), mode="F").resize((150, 100)))
    Image.fromarray(np.round(np.clip(big, 0, 1) * 65535).astype(np.uint16)).save(src / "big.png")
    rels = fio.scan_images(src)
    assert len(rels) == 7

    rep = calibrate_dir(src, dst, index=work / "idx", model=tiny_model(), device="cpu", k=16,
                        batch_size=4, workers=2, progress=False)
    assert rep["ok"] == 7 and rep["failed"] == 0 and rep["errors"] == {}, rep["errors"]
    for rel in rels:
        a, b = Image.open(src / rel), Image.open(dst / rel)
        assert (b.mode, b.size, b.format) == (a.mode, a.size, a.format), rel
        x, y = np.asarray(a), np.asarray(b)
        assert x.dtype == y.dtype and x.shape == y.shape, rel
        xf, yf = (x.astype(np.float64), y.astype(np.float64))
        if x.dtype == np.float32:
            assert 0.0 <= y.min() and y.max() <= 1.0, rel
        else:
            xf, yf = xf / np.iinfo(x.dtype).max, yf / np.iinfo(x.dtype).max
        diff = np.abs(xf - yf).mean()
        assert 1e-4 < diff < 0.1, f"{rel}: mean change {diff} (no-op or destroyed)"
    rgb = np.asarray(Image.open(dst / "a" / "rgb_grey.png"))
    assert (rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all()

    lines = manifest(dst)
    assert sorted(e["path"] for e in lines) == rels and {e["status"] for e in lines} == {"ok"}
    by = {e["path"]: e for e in lines}
    assert by["big.png"]["tiles"] == 6 and by["grey8.png"]["tiles"] == 1  # 100x150: 2 x 3 tiles
    for e in lines:
        assert e["output_sha256"] == fio.file_sha256(dst / e["output"])
        assert e["input_sha256"] == fio.file_sha256(src / e["path"])

    disk = json.loads((dst / REPORT).read_text())
    assert disk["ok"] == 7 and disk["failed"] == 0 and disk["files"] == 7 and disk["rhm"] is True
    assert set(disk["stage_seconds"]) == STAGES
    assert all(v >= 0 for v in disk["stage_seconds"].values()) and disk["stage_seconds"]["rhm"] > 0
    assert disk["backends"]["shr"] in ("cpp", "torch") and disk["backends"]["ssim_topk"] in ("cpp", "torch")
    gap = disk["frequency_gap"]
    for side in ("inputs_vs_index", "outputs_vs_index"):
        assert np.isfinite(gap[side]["high_band"]) and np.isfinite(gap[side]["all_radii"])
    assert gap["sample"] == 7
    assert not list(dst.rglob(f"*{fio.TMP_SUFFIX}"))


def test_colour_needs_a_colour_index(work, tmp_path):
    """True colour into a 1-channel index is an error naming the fix; with a 3-channel
    index and model it is calibrated and written as RGB."""
    src = tmp_path / "src"
    src.mkdir()
    rng = np.random.default_rng(1)
    grey = u16(synth_files(1)[0])
    rgb = np.clip(grey[..., None] * np.array([1.0, 0.8, 0.6]) + 0.05 * rng.random((64, 64, 3)), 0, 1)
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(src / "colour.png")
    Image.fromarray(np.round(rgb * 255).astype(np.uint8)).save(src / "colour.jpg", quality=95)
    rep = calibrate_dir(src, tmp_path / "grey_out", index=work / "idx", model=False,
                        device="cpu", k=8, progress=False)
    assert rep["failed"] == 2 and rep["ok"] == 0
    assert all("colour image" in rep["errors"][r] and "3-channel" in rep["errors"][r]
               for r in ("colour.png", "colour.jpg"))

    idx3 = ff.build_index(real_dir("train"), None, channels=3, progress=False)
    rep = calibrate_dir(src, tmp_path / "rgb_out", index=idx3, model=tiny_model(3), device="cpu",
                        k=8, progress=False)
    assert rep["ok"] == 2 and rep["failed"] == 0
    for name in ("colour.png", "colour.jpg"):
        out = Image.open(tmp_path / "rgb_out" / name)
        assert out.mode == "RGB" and out.size == (64, 64)
        y = np.asarray(out, np.float64) / 255
        assert np.abs(y - rgb).mean() < 0.1 and not (y[..., 0] == y[..., 2]).all()


# -- 2. the frequency gap to the real set shrinks ------------------------------------------
def test_frequency_gap_to_real_shrinks(work, tmp_path):
    src = tmp_path / "src"
    rels = copy_synth(src, 64)
    stack = lambda root: torch.from_numpy(np.stack([u16(root / r) for r in rels])[:, None])
    real = torch.from_numpy(np.stack([u16(p) for p in sorted(real_dir("train").rglob("*.png"))])[:, None])
    ref = spectral_profile(real)
    gap_in = frequency_gap(spectral_profile(stack(src)), ref)
    for name, model in (("shr", False), ("rhm", tiny_model())):
        dst = tmp_path / name
        rep = calibrate_dir(src, dst, index=work / "idx", model=model, device="cpu",
                            batch_size=16, progress=False)
        assert rep["ok"] == 64
        gap_out = frequency_gap(spectral_profile(stack(dst)), ref)
        assert gap_out[0] < 0.6 * gap_in[0], f"{name}: high-band gap {gap_in[0]:.3f} -> {gap_out[0]:.3f}"
        assert gap_out[1] < gap_in[1], f"{name}: all-radii gap {gap_in[1]:.3f} -> {gap_out[1]:.3f}"
        g = rep["frequency_gap"]  # the report's own estimate (index thumbnails) agrees
        assert g["outputs_vs_index"]["high_band"] < g["inputs_vs_index"]["high_band"]
        assert abs(g["inputs_vs_index"]["high_band"] - gap_in[0]) < 0.05


# -- 3. bytes do not depend on batch size or decode threads ----------------------------------
def test_batch_size_and_workers_do_not_change_bytes(work, tmp_path):
    src = tmp_path / "src"
    rels = copy_synth(src, 19)
    big = Image.open(src / rels[0]).resize((150, 100))
    big.save(src / "big.png")
    rels.append("big.png")
    model = tiny_model()
    outs = {}
    for bs, workers in ((1, 1), (3, 4), (16, 4)):
        dst = tmp_path / f"b{bs}w{workers}"
        rep = calibrate_dir(src, dst, index=work / "idx", model=model, device="cpu", k=8,
                            batch_size=bs, workers=workers, progress=False)
        assert rep["ok"] == 20 and rep["rhm"] is True
        outs[bs, workers] = file_bytes(dst, rels)
    ref = outs[1, 1]
    for key, got in outs.items():
        differ = [r for r in rels if got[r] != ref[r]]
        assert not differ, f"batch_size/workers {key}: {len(differ)} file(s) differ, e.g. {differ[:3]}"
    assert ref[rels[1]] != (src / rels[1]).read_bytes()


# -- 4. SIGKILL mid-run, then resume: same bytes as an uninterrupted run ---------------------
def test_sigkill_then_resume_matches_uninterrupted(work, tmp_path):
    src = tmp_path / "src"
    rels = copy_synth(src, 120)
    n = len(rels)
    args = ["calibrate", src, tmp_path / "dst", "--index", work / "idx", "--model", work / "tiny",
            "--device", "cpu", "-k", 8, "--batch-size", 4, "--workers", 2, "-q"]
    proc = subprocess.Popen([sys.executable, "-m", "frerec_fast.cli", *map(str, args)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=ENV)
    man = tmp_path / "dst" / MANIFEST
    deadline = time.monotonic() + 60
    try:
        while time.monotonic() < deadline and proc.poll() is None:
            if man.exists() and man.read_text().count("\n") >= 10:
                break
            time.sleep(0.02)
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        out, err = proc.communicate()
    assert alive, f"the run ended before it could be killed:\n{out.decode()}\n{err.decode()}"
    before = ok_counts(tmp_path / "dst")
    assert 0 < len(before) < n, f"{len(before)} of {n} done at the kill"

    res = frerec(*args)
    assert f"{len(before)} already done" in res.stdout
    rep = json.loads((tmp_path / "dst" / REPORT).read_text())
    assert rep["skipped"] == len(before) and rep["ok"] == n - len(before) and rep["failed"] == 0

    ref = calibrate_dir(src, tmp_path / "ref", index=work / "idx", model=work / "tiny",
                        device="cpu", k=8, batch_size=16, progress=False)
    assert ref["ok"] == n
    got, want = file_bytes(tmp_path / "dst", rels), file_bytes(tmp_path / "ref", rels)
    differ = [r for r in rels if got[r] != want[r]]
    assert not differ, f"{len(differ)} resumed output(s) differ from the uninterrupted run: {differ[:3]}"
    assert not [p for p in (tmp_path / "dst").rglob("*") if p.name.endswith(fio.TMP_SUFFIX)]
    counts = ok_counts(tmp_path / "dst")
    assert set(counts) == set(rels) and set(counts.values()) == {1}
    written = sorted(p.relative_to(tmp_path / "dst").as_posix()
                     for p in (tmp_path / "dst").rglob("*.png"))
    assert written == rels


# -- 5. bad files: recorded with name and reason, the run goes on, exit code 1 ---------------
def test_bad_files_are_recorded_and_the_run_goes_on(work, tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    (src / "sub").mkdir(parents=True)
    good = np.round(u16(synth_files(1)[0]) * 255).astype(np.uint8)
    Image.fromarray(good).save(src / "good8.png")
    whole = (src / "good8.png").read_bytes()
    (src / "sub" / "truncated.png").write_bytes(whole[: len(whole) // 2])
    (src / "notes.png").write_text("this is not an image\n")
    Image.fromarray(good[:32, :40]).save(src / "sub" / "small.png")

    proc = frerec("calibrate", src, dst, "--index", work / "idx", "--model", work / "tiny",
                  "--device", "cpu", "-k", 8, "-q", check=False)
    assert proc.returncode == 1, proc.stderr
    assert "1 written" in proc.stdout and "3 failed" in proc.stdout
    assert "3 file(s) failed" in proc.stderr
    reasons = {"sub/truncated.png": "truncated", "notes.png": "cannot identify",
               "sub/small.png": "smaller than the working size"}
    for rel, why in reasons.items():
        line = next(ln for ln in proc.stderr.splitlines() if ln.strip().startswith(f"failed {rel}:"))
        assert why in line.lower(), line
    rep = json.loads((dst / REPORT).read_text())
    assert rep["ok"] == 1 and rep["failed"] == 3 and sorted(rep["errors"]) == sorted(reasons)
    status = {e["path"]: e for e in manifest(dst)}
    assert status["good8.png"]["status"] == "ok"
    for rel, why in reasons.items():
        assert status[rel]["status"] == "error" and why in status[rel]["error"].lower()
    assert Image.open(dst / "good8.png").mode == "L"
    assert sorted(p.name for p in dst.rglob("*.png")) == ["good8.png"]

    # Resume retries only the failures; fixing one makes it succeed.
    Image.fromarray(good).save(src / "sub" / "small.png")
    proc = frerec("calibrate", src, dst, "--index", work / "idx", "--model", work / "tiny",
                  "--device", "cpu", "-k", 8, "-q", check=False)
    assert proc.returncode == 1 and "1 written" in proc.stdout
    assert "1 already done" in proc.stdout and "2 failed" in proc.stdout


# -- 6. src untouched, dst placement, resume with changed inputs or settings -----------------
def test_src_untouched_dst_refused_and_resume_redoes_only_changes(work, tmp_path):
    src = tmp_path / "src"
    rels = copy_synth(src, 6)
    state = tree_state(src)
    kw = dict(index=work / "idx", model=False, device="cpu", k=8, progress=False)
    for bad in (src / "out", src, src / "a" / "b"):
        with pytest.raises(ValueError, match="must not contain, or be inside"):
            calibrate_dir(src, bad, **kw)
    with pytest.raises(ValueError, match="must not contain, or be inside"):
        calibrate_dir(src, tmp_path, **kw)  # dst containing src
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="device='cpu'"):
            calibrate_dir(src, tmp_path / "gpu", index=work / "idx", model=False, device="cuda")

    dst = tmp_path / "dst"
    assert calibrate_dir(src, dst, **kw)["ok"] == 6
    first = file_bytes(dst, rels)
    mtimes = {r: (dst / r).stat().st_mtime_ns for r in rels}
    assert tree_state(src) == state

    again = calibrate_dir(src, dst, **kw)
    assert (again["ok"], again["skipped"]) == (0, 6)

    changed = rels[2]
    Image.fromarray(np.asarray(Image.open(src / changed))[::-1].copy()).save(src / changed)
    rep = calibrate_dir(src, dst, **kw)
    assert (rep["ok"], rep["skipped"], rep["failed"]) == (1, 5, 0)
    for r in rels:
        if r == changed:
            assert (dst / r).read_bytes() != first[r]
        else:
            assert (dst / r).read_bytes() == first[r] and (dst / r).stat().st_mtime_ns == mtimes[r]

    # Other settings give other bytes, so resume must not keep outputs of the old ones.
    rep = calibrate_dir(src, dst, **{**kw, "seed": 1})
    assert (rep["ok"], rep["skipped"]) == (6, 0)
    assert (dst / rels[0]).read_bytes() != first[rels[0]]

    # A manifest line torn by a crash is dropped and the file redone; later lines parse.
    man = dst / MANIFEST
    man.write_bytes(man.read_bytes()[:-25])
    rep = calibrate_dir(src, dst, **{**kw, "seed": 1})
    assert (rep["ok"], rep["skipped"]) == (1, 5)
    assert manifest(dst)[-1]["path"] == rels[-1]  # every line parses (no glued line)
    assert calibrate_dir(src, dst, **{**kw, "seed": 1})["skipped"] == 6

    state.pop(changed)
    now = tree_state(src)
    now.pop(changed)
    assert now == state  # nothing else under src was touched by any run


# -- 7. real images: self-exclusion by content, against an independent oracle ---------------
def test_calibrate_real_excludes_self_by_content(work, tmp_path):
    """Real images copied under new names and folders are still found in the index by
    content hash and never retrieve themselves. With k=1 the result must equal SHR with
    the best *other* index image's statistics (the bank spread is 0, so noise does not
    matter), computed here from the index independently of the pipeline."""
    idx = ff.RealIndex.load(work / "idx")
    src = tmp_path / "src"
    picks = [idx.keys[i] for i in (3, 60, 150)]
    for j, key in enumerate(picks):
        (src / f"d{j}").mkdir(parents=True)
        shutil.copy(real_dir("train") / key, src / f"d{j}" / f"renamed{j}.png")
    held = sorted(real_dir("heldout").rglob("*.png"))[0]
    shutil.copy(held, src / "heldout.png")
    rep = calibrate_dir(src, tmp_path / "out", index=idx, model=False, device="cpu", k=1,
                        calibrate_real=True, progress=False)
    assert rep["ok"] == 4 and rep["failed"] == 0

    for j, key in enumerate(picks):
        pos = idx.position(key)
        x = torch.from_numpy(u16(src / f"d{j}" / f"renamed{j}.png")).float()[None, None]
        scores = ff.ssim_matrix(idx.thumbnails(x), idx.thumbs.float(), backend="torch")[0]
        assert int(scores.argmax()) == pos  # unexcluded, an image's best match is itself
        scores[pos] = -float("inf")
        nb = int(scores.argmax())
        zero = torch.zeros(1, 1)
        want = ff.shr(x, idx.mu[nb][None, None], idx.sigma[nb][None, None], zero, zero,
                      backend="torch").clamp(0, 1)[0, 0].double().numpy()
        got = u16(tmp_path / "out" / f"d{j}" / f"renamed{j}.png")
        err = np.abs(got - want).max() * 65535
        assert err <= 2, f"{key}: {err:.1f} LSB from SHR with neighbour {idx.keys[nb]}"
        assert np.abs(got - x[0, 0].double().numpy()).max() * 65535 > 50  # not the identity
    # The held-out image is not in the index: calibrated against its full top-1.
    x = torch.from_numpy(u16(src / "heldout.png")).float()[None, None]
    nb = int(ff.ssim_matrix(idx.thumbnails(x), idx.thumbs.float(), backend="torch")[0].argmax())
    zero = torch.zeros(1, 1)
    want = ff.shr(x, idx.mu[nb][None, None], idx.sigma[nb][None, None], zero, zero,
                  backend="torch").clamp(0, 1)[0, 0].double().numpy()
    assert np.abs(u16(tmp_path / "out" / "heldout.png") - want).max() * 65535 <= 2


class _FailsOnCall(torch.nn.Module):
    """A real RHM that fails on its n-th forward call: "error" raises a RuntimeError (a
    kernel error in one micro-batch), "oom" torch's out-of-memory error, "nan" returns
    NaN there."""

    def __init__(self, n: int, how: str = "error"):
        super().__init__()
        self.net, self.n, self.how, self.calls = tiny_model(), n, how, 0
        self.config = self.net.config

    def forward(self, x):
        self.calls += 1
        if self.calls == self.n:
            if self.how == "nan":
                return self.net(x) * float("nan")
            oom = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
            raise (oom if self.how == "oom" else RuntimeError)("simulated failure")
        return self.net(x)


@pytest.mark.parametrize("how", ["error", "oom", "nan"])
def test_compute_failure_fails_only_that_micro_batch(work, tmp_path, how):
    src = tmp_path / "src"
    rels = copy_synth(src, 12)
    # The run's fit check (pipeline/fit.py) runs the model first: 16 thumbnails, 4 per call.
    n_fit = -(-min(SAMPLE, len(ff.RealIndex.load(work / "idx"))) // 4)
    rep = calibrate_dir(src, tmp_path / "out", work / "idx", model=_FailsOnCall(n_fit + 2, how),
                        engine="eager", device="cpu", k=8, batch_size=4, model_batch=4,
                        progress=False)
    # Micro-batch 2 holds files 5-8 in scan order: exactly those fail, with the reason.
    assert rep["failed"] == 4 and rep["ok"] == 8, rep["errors"]
    reason = {"error": "simulated failure", "oom": "smaller --model-batch",
              "nan": "non-finite"}[how]
    assert all(reason in e for e in rep["errors"].values())
    assert all(("model_batch=4" in e) == (how == "oom") for e in rep["errors"].values())
    assert sorted(rep["errors"]) == rels[4:8]
    # The others are written, and equal to a run whose model never fails.
    good = calibrate_dir(src, tmp_path / "good", work / "idx", model=tiny_model(), device="cpu",
                         engine="eager", k=8, batch_size=4, model_batch=4, progress=False)
    assert good["ok"] == 12
    ok = [r for r in rels if r not in rep["errors"]]
    assert file_bytes(tmp_path / "out", ok) == file_bytes(tmp_path / "good", ok)
    assert (tmp_path / "out" / REPORT).is_file()


def test_symlink_in_dst_cannot_write_into_src(work, tmp_path):
    src = tmp_path / "src"
    copy_synth(src, 4)
    before = tree_state(src)
    dst = tmp_path / "dst"
    dst.mkdir()
    sub = sorted(p.name for p in src.iterdir())[0]
    (dst / sub).symlink_to(src / sub)
    rep = calibrate_dir(src, dst, work / "idx", model=False, device="cpu", k=8, progress=False)
    assert tree_state(src) == before
    assert rep["failed"] >= 1 and all("input directory" in e or "outside" in e
                                      for e in rep["errors"].values())


def test_backend_is_part_of_the_resume_fingerprint(work, tmp_path):
    src = tmp_path / "src"
    copy_synth(src, 4)
    a = calibrate_dir(src, tmp_path / "o", work / "idx", model=tiny_model(), device="cpu", k=8,
                      engine="eager", backend="torch", progress=False)
    assert a["backends"]["shr"] == "torch" and a["backends"]["ring_pool_amplitude"] == "torch"
    b = calibrate_dir(src, tmp_path / "o", work / "idx", model=tiny_model(), device="cpu", k=8,
                      engine="eager", backend="auto", progress=False)
    if b["backends"] != a["backends"]:  # another backend really ran: everything is redone
        assert b["skipped"] == 0 and b["ok"] == 4
    c = calibrate_dir(src, tmp_path / "o", work / "idx", model=tiny_model(), device="cpu", k=8,
                      engine="eager", backend="auto", progress=False)
    assert c["skipped"] == 4


def test_calibrate_real_excludes_each_nifti_slice(tmp_path):
    nib = pytest.importorskip("nibabel")
    rng = np.random.default_rng(0)
    vol = np.zeros((64, 64, 4), dtype=np.float32)
    base = rng.random((64, 64))
    for z in range(4):  # similar slices, so without exclusion each would find itself
        vol[..., z] = base + 0.05 * z + 0.02 * rng.random((64, 64))
    real = tmp_path / "real"
    real.mkdir()
    nib.save(nib.Nifti1Image(vol, np.eye(4)), str(real / "vol.nii.gz"))
    for i, p in enumerate(synth_files(6)):
        shutil.copy(p, real / f"s{i}.png")
    idx = ff.build_index(real, tmp_path / "idx", progress=False)
    own = {key: idx.position(key) for key in idx.keys if key.startswith("vol.nii.gz#z=")}
    assert len(own) == 4
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(real / "vol.nii.gz", src / "vol.nii.gz")
    seen = {}
    orig = idx.neighbours

    def spy(x, k=200, exclude=None, **kw):
        nb = orig(x, k=k, exclude=exclude, **kw)
        for e, ids in zip(exclude, nb.ids.tolist()):
            seen[int(e)] = ids
        return nb

    idx.neighbours = spy  # records what the real retrieval returned for each slice
    rep = calibrate_dir(src, tmp_path / "out", idx, model=False, device="cpu", k=3,
                        calibrate_real=True, progress=False)
    assert rep["ok"] == 1, rep["errors"]
    assert sorted(seen) == sorted(own.values())  # each slice excluded its own entry
    for pos, ids in seen.items():
        assert pos not in ids


def test_model_digest_tracks_weight_changes():
    """The run fingerprint's model hash is cached on the module: every kind of weight
    change must still change it, and it must equal a fresh module's hash of the same
    weights (which has no cache)."""
    from frerec_fast.pipeline import model_digest as _model_digest

    def fresh(m):
        other = tiny_model()
        other.load_state_dict(m.state_dict())
        return _model_digest(other)

    m = tiny_model()
    d0 = _model_digest(m)
    seen = {d0}
    assert _model_digest(m) == d0 == fresh(m)
    p = next(m.parameters())
    with torch.no_grad():
        p.add_(1e-3)                                   # in place: version counter
    d = _model_digest(m)
    assert d not in seen and d == fresh(m)
    seen.add(d)
    p.data = p.data * 2                                # storage swapped, no version bump
    d = _model_digest(m)
    assert d not in seen and d == fresh(m)
    seen.add(d)
    m.load_state_dict(tiny_model().state_dict())       # copied in place: the initial weights
    assert _model_digest(m) == d0
