"""Golden bytes of ``calibrate_dir`` on the bundled data: outputs, manifests and reports
recorded once and compared on every later run, so that a refactor of the pipeline
cannot change what a user gets.

Three runs cover the pipeline's paths: SHR only with exact retrieval over the whole
shipped synthetic set plus odd inputs (8-bit, RGB-stored grey, JPEG, TIFF, a tiled
150x100 image, two bad files); the shipped RHM with the prefilter and a resume; and
``calibrate_real`` (self-exclusion) with the shipped RHM on real slices.

Float results depend on the CPU's instruction set and the torch build, so the output
digests are compared only where they were recorded (``tests/golden/pipeline.json``
names the platform); everything that is not arithmetic (which files, statuses, tiles,
errors, counts, report fields) is compared everywhere. Re-record on purpose with
``FREREC_GOLDEN_RECORD=1 pytest tests/test_pipeline_golden.py`` and say why in the
commit.
"""
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import frerec_fast as ff
from frerec_fast.datasets import real_dir, synthetic_dir
from frerec_fast.pipeline import MANIFEST, REPORT, calibrate_dir
from run_helpers import one_thread  # noqa: F401 - a fixture

GOLDEN = Path(__file__).parent / "golden" / "pipeline.json"
RECORD = os.environ.get("FREREC_GOLDEN_RECORD") == "1"
# Report fields that measure or describe the run rather than decide its bytes (the
# thread count that does is in the fingerprint, "run").
TIMING = {"seconds", "images_per_s", "stage_seconds", "index", "engine_build_seconds",
          "threads", "workers"}

pytestmark = pytest.mark.usefixtures("one_thread")


def platform() -> dict:
    return {"torch": torch.__version__, "cpu": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads()}


def odd_inputs(src: Path) -> None:
    """The shipped synthetic set plus one file of each other kind the reader handles."""
    shutil.copytree(synthetic_dir(), src)
    base = np.asarray(Image.open(sorted(synthetic_dir().rglob("*.png"))[0]), np.float64) / 65535
    g8 = np.round(base * 255).astype(np.uint8)
    odd = src / "odd"
    odd.mkdir()
    Image.fromarray(g8).save(odd / "grey8.png")
    Image.fromarray(np.stack([g8] * 3, -1)).save(odd / "rgb_grey.png")
    Image.fromarray(g8).save(odd / "x.jpg", quality=95)
    Image.fromarray(np.round(base * 65535).astype(np.uint16)).save(odd / "t16.tif")
    big = np.asarray(Image.fromarray(base.astype(np.float32), mode="F").resize((150, 100)))
    Image.fromarray(np.round(np.clip(big, 0, 1) * 65535).astype(np.uint16)).save(odd / "big.png")
    (odd / "notes.png").write_text("not an image\n")
    Image.fromarray(g8[:32, :40]).save(odd / "small.png")


def real_inputs(src: Path) -> None:
    """Every 4th real training slice (these are in the index: self-exclusion applies)."""
    for f in sorted(real_dir("train").rglob("*.png"))[::4]:
        (src / f.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(f, src / f.parent.name / f.name)


def outcome(src: Path, dst: Path, rep: dict) -> dict:
    """What a run produced, with its temporary paths taken out."""
    def norm(v):
        return json.loads(json.dumps(v).replace(str(src), "<src>").replace(str(dst), "<dst>"))
    lines = [json.loads(line) for line in (dst / MANIFEST).read_text().splitlines()]
    disk = json.loads((dst / REPORT).read_text())
    assert {k: v for k, v in disk.items() if k not in TIMING} == \
        {k: v for k, v in rep.items() if k not in TIMING}
    # A file that fails to decode is recorded before earlier files finish encoding, so
    # the line order depends on thread timing: compare the lines as a sorted list.
    lines.sort(key=lambda e: json.dumps(e, sort_keys=True))
    return {"manifest": norm(lines),
            "report": norm({k: v for k, v in rep.items() if k not in TIMING}),
            "stages": sorted(rep["stage_seconds"])}


def structure(out: dict) -> dict:
    """The parts of an outcome that do not depend on float arithmetic."""
    lines = [{k: e.get(k) for k in ("path", "input_sha256", "status", "error", "seed", "tiles")}
             for e in out["manifest"]]
    rep = {k: v for k, v in out["report"].items()
           if k not in ("frequency_gap", "run", "backends")}
    if isinstance(rep.get("retrieval"), dict):
        rep["retrieval"] = {k: v for k, v in rep["retrieval"].items() if k != "recall_sample"}
    if isinstance(rep.get("rhm_fit"), dict):  # its PSNRs are float results
        rep["rhm_fit"] = {k: v for k, v in rep["rhm_fit"].items() if not isinstance(v, float)}
    return {"manifest": lines, "report": rep, "stages": out["stages"]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("golden")
    ff.build_index(real_dir("train"), root / "idx", progress=False)
    odd_inputs(root / "synth")
    real_inputs(root / "real")
    out = {}

    def run(name, src, **kw):
        dst = root / name
        rep = calibrate_dir(src, dst, index=root / "idx", device="cpu", progress=False,
                            workers=2, engine="eager", **kw)
        out[name] = outcome(src, dst, rep)
        return dst

    run("shr_exact", root / "synth", model=False, k=200, batch_size=16, seed=3)
    dst = run("rhm_prefilter", root / "synth", model=None, k=64, batch_size=24,
              retrieval="prefilter", candidates=96)
    # An interrupted run: the manifest kept the first 100 finished files (by path).
    lines = (dst / MANIFEST).read_text().splitlines()
    first = sorted(json.loads(ln)["path"] for ln in lines if '"ok"' in ln)[:100]
    (dst / MANIFEST).write_text("".join(ln + "\n" for ln in lines
                                        if '"ok"' in ln and json.loads(ln)["path"] in first))
    run("rhm_prefilter", root / "synth", model=None, k=64, batch_size=24,
        retrieval="prefilter", candidates=96)
    out["rhm_prefilter_resumed"] = out.pop("rhm_prefilter")
    run("rhm_real", root / "real", model=None, k=20, calibrate_real=True, overlap=0.5)
    return out


def test_golden_outputs(runs):
    if RECORD:
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps({"platform": platform(), "runs": runs}, indent=1) + "\n")
        pytest.skip(f"recorded {GOLDEN}")
    golden = json.loads(GOLDEN.read_text())
    assert set(runs) == set(golden["runs"])
    for name, got in runs.items():
        want = golden["runs"][name]
        assert structure(got) == structure(want), name
    assert runs["rhm_prefilter_resumed"]["report"]["skipped"] == 100
    if golden["platform"] != platform():
        pytest.skip(f"output bytes were recorded on {golden['platform']}, this is "
                    f"{platform()}: float results differ between CPUs; structure checked")
    for name, got in runs.items():
        want = golden["runs"][name]
        assert got["manifest"] == want["manifest"], name
        assert got["report"] == want["report"], name
