"""The demo (the README's first command) end to end: it reports both gap protocols, and
the numbers it prints are the ones recomputed here from the files it wrote."""
import json
import os
import subprocess
import sys

import pytest

import frerec_fast as ff
from frerec_fast.datasets import real_dir
from frerec_fast.eval import profile_dir


@pytest.mark.slow
def test_demo_reports_both_protocols_from_its_own_outputs(tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "frerec_fast.cli", "demo", "--out",
                        str(tmp_path / "demo")], capture_output=True, text=True, env=env,
                       timeout=900)
    assert r.returncode == 0, r.stderr
    assert "against raw real" in r.stdout and "deployed" in r.stdout
    rep = json.loads((tmp_path / "demo" / "demo_report.json").read_text())
    assert set(rep["protocols"]) == {"against raw real", "deployed"}
    rows = rep["gaps_vs_heldout"]
    held = profile_dir(real_dir("heldout"), 64).profile
    for name, sub in (("synthetic + SHR", "shr"), ("synthetic + FreRec", "frerec")):
        cal = profile_dir(tmp_path / "demo" / sub, 64).profile
        ref = profile_dir(tmp_path / "demo" / f"{sub}_real", 64).profile
        hi, _ = ff.frequency_gap(cal, held)
        dep, _ = ff.frequency_gap(cal, ref)
        assert rows[name]["gap_high"] == pytest.approx(hi, abs=1e-9)
        assert rows[name]["deployed"]["gap_high"] == pytest.approx(dep, abs=1e-9)
    # raw vs raw is the baseline of both protocols
    raw = rows["synthetic (DCGAN)"]
    assert raw["deployed"]["gap_high"] == pytest.approx(raw["gap_high"])
