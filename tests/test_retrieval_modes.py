"""calibrate_dir with retrieval="prefilter" (method §4's approximate mode inside the
job): same neighbours as exact mode when every index image is a candidate, the
recall@k it reports checked against the reference ops, fingerprint, CLI, errors."""
import os
import shutil
import subprocess
import sys

import pytest
import torch

import frerec_fast as ff
from frerec_fast import io as fio
from frerec_fast import prefilter as pf
from frerec_fast.datasets import real_dir
from frerec_fast.pipeline import calibrate_dir
from frerec_fast.reference.ssim import ssim_topk as ssim_topk_torch
from run_helpers import copy_synth_sample, one_thread, png_digests  # noqa: F401

K, MICRO = 20, 4


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("retrieval")
    src = copy_synth_sample(root / "src")
    index = ff.build_index(real_dir("train"), root / "idx", progress=False)
    return root, src, index


def _run(src, dst, index, **kw):
    return calibrate_dir(src, dst, index, model=False, device="cpu", k=K, progress=False,
                         model_batch=MICRO, **kw)


def test_prefilter_with_every_candidate_equals_exact(setup, tmp_path):
    _, src, index = setup
    exact = _run(src, tmp_path / "exact", index)
    full = _run(src, tmp_path / "full", index, retrieval="prefilter", candidates=len(index))
    assert exact["ok"] == full["ok"] == 8
    assert exact["retrieval"] == {"mode": "exact"}
    assert full["retrieval"] == {"mode": "prefilter", "candidates": len(index),
                                 "recall_sample": 1.0, "recall_queries": MICRO}
    assert png_digests(tmp_path / "exact") == png_digests(tmp_path / "full")
    # Retrieval settings are in the fingerprint: resuming the exact run in prefilter
    # mode redoes every file; resuming with the same settings skips them.
    again = _run(src, tmp_path / "exact", index, retrieval="prefilter", candidates=len(index))
    assert again["skipped"] == 0 and again["ok"] == 8
    assert _run(src, tmp_path / "exact", index, retrieval="prefilter",
                candidates=len(index))["skipped"] == 8


def test_reported_recall_matches_the_reference_ops(setup, tmp_path):
    _, src, index = setup
    c = 25  # a short list close to K: some true neighbours are missed
    rep = _run(src, tmp_path / "pf", index, retrieval="prefilter", candidates=c)
    assert rep["ok"] == 8 and rep["retrieval"]["candidates"] == c
    # The first micro-batch is the first MICRO files in scan order (one tile each).
    rels = fio.scan_images(src)[:MICRO]
    x = torch.stack([torch.from_numpy(fio.read_images(src, r)[0].pixels) for r in rels])
    q, db = index.thumbnails(x.float()), index.thumbs.float()
    # The run's own backends (auto), so that a float near-tie cannot flip the count;
    # the torch reference must agree to within one neighbour per query.
    _, exact = ff.ssim_topk(q, db, K, backend="auto")
    _, approx = pf.ssim_topk_prefilter(q, db, K, candidates=c, backend="auto")
    want = pf.recall_at_k(approx, exact)
    _, exact_ref = ssim_topk_torch(q, db, K)
    assert abs(pf.recall_at_k(approx, exact_ref) - want) <= 1 / K
    assert rep["retrieval"]["recall_sample"] == pytest.approx(want)
    assert 0.5 < want < 1.0  # the case is not trivial either way
    # The index embedded its thumbnails once for all micro-batches, as embed_db does.
    emb = index.embedding_on("cpu")
    assert emb is index.embedding_on("cpu") and emb.shape == (len(index), 256)
    torch.testing.assert_close(emb, pf.embed(index.thumbs))


def test_cli_and_errors(setup, tmp_path):
    root, src, index = setup
    a = _run(src, tmp_path / "api", index, retrieval="prefilter", candidates=40)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "frerec_fast.cli", "shr", src, tmp_path / "cli", "--index",
           root / "idx", "--device", "cpu", "-k", K, "--model-batch", MICRO, "-q",
           "--retrieval", "prefilter", "--candidates", 40]
    run = subprocess.run(list(map(str, cmd)), capture_output=True, text=True, env=env)
    assert run.returncode == 0, run.stderr
    assert a["ok"] == 8 and png_digests(tmp_path / "cli") == png_digests(tmp_path / "api")
    with pytest.raises(ValueError, match="retrieval must be"):
        _run(src, tmp_path / "x", index, retrieval="faiss")
    with pytest.raises(ValueError, match="candidates needs retrieval='prefilter'"):
        _run(src, tmp_path / "x", index, candidates=100)


@pytest.mark.triton  # runs the Triton kernels (the interpreter on CPU)
def test_prefilter_with_a_backend_that_has_no_rerank_op(setup, tmp_path):
    """backend="triton" has no "ssim_pairs" op: the short list is re-ranked by the
    fastest op here and the report names it; every file still succeeds. (A 10-image
    index of 16x16 thumbnails: on CPU the Triton kernels run in the slow interpreter.)"""
    pytest.importorskip("triton", reason="triton is not installed")
    _, src, _ = setup
    real = tmp_path / "real"
    real.mkdir()
    for f in sorted(real_dir("train").rglob("*.png"))[::17][:10]:
        shutil.copy(f, real / f.name)
    index = ff.build_index(real, tmp_path / "idx", retrieval_size=16, progress=False)
    files = fio.scan_images(src)[:1]
    rep = calibrate_dir(src, tmp_path / "tr", index, model=False, device="cpu", k=4,
                        progress=False, model_batch=1, files=files, backend="triton",
                        retrieval="prefilter", candidates=6)
    assert rep["ok"] == 1 and rep["failed"] == 0, rep["errors"]
    assert rep["backends"]["ssim_pairs"] == ("cpp" if ff._ext.has_cpp() else "torch")
    assert rep["backends"]["shr"] == "triton" and 0 < rep["retrieval"]["recall_sample"] <= 1
