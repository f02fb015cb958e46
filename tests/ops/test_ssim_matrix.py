"""ssim_matrix (method §4, SSIM of every query against every database image): every
backend, dtype and device against the float64 NumPy oracle ``ssim_oracles.f64_matrix``
(itself checked against scikit-image here).

Called through the public ``frerec_fast.ssim_matrix(..., backend=)``. Triton on CPU runs
in the interpreter, where a 16x16 all-pairs block costs seconds: its cases use 11-17
pixel images; the GPU-size cases run with ``--device=cuda``."""
import numpy as np
import pytest
import torch

import frerec_fast as ff
from ssim_oracles import f64_matrix, images, sk_matrix, sk_ssim

from .support import (accepts, as_dtype, assert_close, assert_same_bytes, backend_params, get_op,
                      interpreted, require, small_only)
from .tolerances import tol

OP = "ssim_matrix"
BACKENDS = backend_params()
# (h, w, queries, database): square, odd, non-square, very wide and very tall.
SHAPES = [(11, 11, 2, 3), (13, 17, 2, 4), (16, 16, 3, 5), (20, 18, 4, 7), (11, 40, 1, 2),
          (40, 11, 2, 1), (22, 23, 3, 3)]
INTERPRETER_SHAPES = SHAPES[:3]


def oracle(q, db):
    return f64_matrix(q.double(), db.double())


def check(q, db, backend, what="", key=OP):
    m = ff.ssim_matrix(q, db, backend=backend)
    assert m.shape == (q.shape[0], db.shape[0])
    assert m.dtype == torch.float32 and m.device == q.device
    assert_close(m, oracle(q, db), tol(key, q.dtype), f"ssim_matrix {what}")
    return m


def gpu_only(device):
    if device.type != "cuda":
        pytest.skip("GPU-size case (thousands of pairs of 64x64 images): runs with --device=cuda")


def test_oracle_matches_skimage():
    q, db = images(2, 13, 17, 11), images(3, 13, 17, 12)
    np.testing.assert_allclose(f64_matrix(q, db), sk_matrix(q, db), rtol=0, atol=1e-12)


@pytest.mark.dtypes()
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_oracle(backend, dtype, device):
    require(OP, backend, device)
    h, w, nq, nd = (11, 11, 2, 3) if interpreted(backend, device) else (20, 18, 4, 7)
    q, db = (as_dtype(images(n, h, w, s), dtype).to(device) for n, s in ((nq, 1), (nd, 2)))
    check(q, db, backend, f"{dtype}")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes(backend, shape, device):
    require(OP, backend, device)
    if shape not in INTERPRETER_SHAPES:
        small_only(backend, device, f"{shape[0]}x{shape[1]} images")
    h, w, nq, nd = shape
    q, db = images(nq, h, w, 1, device), images(nd, h, w, 2, device)
    m = check(q, db, backend, f"{shape}")
    # The oracle is the formula; skimage itself on one pair as well.
    assert m[0, 0].item() == pytest.approx(sk_ssim(q[0, 0], db[0, 0]), abs=tol(OP, "float32").atol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_duplicates_bit_identical(backend, device, monkeypatch):
    # Exact duplicates score bit-identically wherever they sit (tile, grid, chunk), and an
    # image against itself scores 1 (exactly 1.0 in the CUDA kernel).
    require(OP, backend, device)
    n, h, w = (7, 11, 12) if interpreted(backend, device) else (70, 19, 23)
    db = images(n, h, w, 5, device)
    db[[n - 3, n - 1]] = db[1].clone()
    db[n - 2] = db[2].clone()
    q = torch.cat([images(2, h, w, 6, device), db[[1, 2, n - 4]]])
    m = check(q, db, backend, "with duplicates").cpu().numpy()
    assert (m[:, 1] == m[:, n - 3]).all() and (m[:, 1] == m[:, n - 1]).all()
    assert (m[:, 2] == m[:, n - 2]).all()
    selfs = np.array([m[2, 1], m[3, 2], m[4, n - 4]])
    np.testing.assert_allclose(selfs, 1.0, rtol=0, atol=1e-5)
    if backend == "cuda":
        assert (selfs == 1.0).all()
        mm = ff.ssim_matrix(db, db, backend=backend)
        assert (torch.diagonal(mm) == 1.0).all()
        # Query blocks spread over several launches (the CuPy path's grid.y split).
        from frerec_fast.fast import ssim_cuda
        monkeypatch.setattr(ssim_cuda, "_MAX_GRID_Y", 1)
        assert torch.equal(ff.ssim_matrix(db, db, backend=backend), mm)


@pytest.mark.parametrize("backend", BACKENDS)
def test_constant_images(backend, device):
    # Flat images (zero local variance, in both arguments) stay finite.
    require(OP, backend, device)
    vals = torch.tensor([0.3, 0.7, 0.0, 1.0, 0.3])
    db = (torch.ones(5, 1, 11, 12) * vals[:, None, None, None]).to(device)
    q = torch.cat([db[:2], images(1, 11, 12, 9, device)])
    m = check(q, db, backend, "flat images", key="ssim_matrix.flat")
    assert torch.isfinite(m).all()
    np.testing.assert_allclose(m.cpu().numpy(), sk_matrix(q, db), atol=tol("ssim_matrix.flat",
                                                                             "float32").atol)


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_inputs(backend, device):
    # float64 transposed queries, a database taken every other image.
    require(OP, backend, device)
    h, w = (11, 12) if interpreted(backend, device) else (20, 18)
    q = images(3, w, h, 3).double().transpose(2, 3).to(device)
    db = images(8, h, w, 4, device)[::2]
    assert not q.is_contiguous() and not db.is_contiguous()
    check(q, db, backend, "non-contiguous")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_sets(backend, device):
    require(OP, backend, device)
    q, db = images(3, 11, 11, 1, device), images(4, 11, 11, 2, device)
    assert ff.ssim_matrix(q[:0], db, backend=backend).shape == (0, 4)
    assert ff.ssim_matrix(q, db[:0], backend=backend).shape == (3, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend, device):
    require(OP, backend, device)
    q, db = images(3, 11, 11, 1, device), images(5, 11, 11, 2, device)
    assert_same_bytes(ff.ssim_matrix(q, db, backend=backend),
                      ff.ssim_matrix(q, db, backend=backend), "ssim_matrix")


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend, device):
    require(OP, backend, device)
    db = images(2, 12, 12, 1, device)
    with pytest.raises(ValueError, match="at least 11x11"):
        ff.ssim_matrix(torch.rand(1, 1, 8, 8, device=device), torch.rand(3, 1, 8, 8,
                                                                           device=device),
                       backend=backend)
    with pytest.raises(ValueError, match="one size"):
        ff.ssim_matrix(db, torch.rand(3, 1, 13, 12, device=device), backend=backend)
    with pytest.raises(ValueError, match=r"luma \[N, 1, h, w\]"):
        ff.ssim_matrix(db.expand(2, 3, 12, 12), db, backend=backend)
    bad = db.clone()
    bad[1, 0, 3, 3] = float("nan")
    with pytest.raises(ValueError, match="db contains NaN"):
        ff.ssim_matrix(db, bad, backend=backend)


@pytest.mark.triton
def test_triton_many_programs(device, monkeypatch):
    # 16-wide blocks with 20 queries x 35 images: a 3 x 2 grid with partial blocks in both
    # directions, and two statistics programs per image set.
    require(OP, "triton", device)
    from frerec_fast.kernels import ssim_topk as ks
    monkeypatch.setattr(ks, "FREREC_TRITON_SSIM_BLOCK_Q", 16)
    monkeypatch.setattr(ks, "FREREC_TRITON_SSIM_BLOCK_N", 16)
    monkeypatch.setattr(ks, "FREREC_TRITON_SSIM_STATS_BLOCK", 16)
    check(images(20, 12, 11, 3, device), images(35, 12, 11, 4, device), "triton", "16-wide blocks")


def test_torch_small_blocks(device):
    # The torch reference bounds its memory by computing the matrix in blocks of at most
    # max_block_elems products: tiny blocks give the same matrix.
    fn = get_op(OP, "torch", device)
    if not accepts(fn, "max_block_elems"):
        pytest.fail("the torch reference's ssim_matrix takes no max_block_elems")
    q, db = images(4, 20, 18, 3, device), images(7, 20, 18, 4, device)
    m = fn(q, db, max_block_elems=20 * 18 * 3)
    assert_close(m, oracle(q, db), tol(OP, "float32"), "3-pair blocks")


@pytest.mark.parametrize("shape", [(12, 11, 33, 65), (64, 64, 70, 300), (23, 29, 40, 70)],
                         ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("backend", BACKENDS)
def test_gpu_sizes(backend, shape, device):
    # Partial 32 x 32 tiles in both grid directions; H not a multiple of an 11-row chunk.
    require(OP, backend, device)
    gpu_only(device)
    h, w, nq, nd = shape
    check(images(nq, h, w, 3, device), images(nd, h, w, 4, device), backend, f"{shape}")


@pytest.mark.parametrize("backend", backend_params("torch", "triton", "cuda"))
def test_database_on_another_device(backend, device):
    # Queries on the GPU, the database left on the CPU (moved chunk by chunk).
    require(OP, backend, device)
    gpu_only(device)
    q, db_cpu = images(4, 18, 20, 3, device), images(37, 18, 20, 4)
    m = ff.ssim_matrix(q, db_cpu, backend=backend)
    assert m.device == q.device
    assert_close(m, oracle(q, db_cpu), tol(OP, "float32"), "database on the CPU")
