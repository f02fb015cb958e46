"""The atheris harnesses in fuzz/ run: each one for a bounded number of inputs in a
fresh corpus folder (seeded by the harness itself), exit 0, and leave no crash file.
A developer runs them for hours (fuzz/README.md)."""
import importlib.util
import os
import subprocess
import sys

import pytest

from hardening_helpers import ROOT

pytestmark = pytest.mark.skipif(importlib.util.find_spec("atheris") is None,
                                reason="atheris is not installed (pip install -e .[dev])")


@pytest.mark.parametrize("harness,runs", [("fuzz_readers", 200), ("fuzz_index", 300),
                                          ("fuzz_checkpoint", 200)])
def test_harness_runs_clean(tmp_path, harness, runs):
    corpus, artefacts = tmp_path / "corpus", tmp_path / "artefacts"
    artefacts.mkdir()
    # Instrument the project and Pillow only: pydicom and nibabel would add ~10 s of
    # instrumentation at import to a CI run of a few hundred inputs.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FREREC_FUZZ_INSTRUMENT": "frerec_fast,PIL"}
    proc = subprocess.run([sys.executable, str(ROOT / "fuzz" / f"{harness}.py"), f"-runs={runs}",
                           "-timeout=30", "-rss_limit_mb=3072", "-seed=14",
                           f"-artifact_prefix={artefacts}/", str(corpus)],
                          capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"Done {runs} runs" in proc.stderr
    assert any(p.name.startswith("seed-") for p in corpus.iterdir())  # seeded by the harness
    assert list(artefacts.iterdir()) == []
