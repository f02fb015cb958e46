"""ssim_pairs (method §4, the SSIM of chosen query/database pairs, the prefilter's
re-rank): every backend, dtype and device against the float64 NumPy oracle
``ssim_oracles.f64_matrix`` gathered at the pairs. Through ``backends.resolve``
(there is no public wrapper); torch and cpp implement it."""
import numpy as np
import pytest
import torch

from frerec_fast import backends
from ssim_oracles import f64_matrix, images

from .support import as_dtype, assert_close, assert_same_bytes, backend_params, get_op, known_gap
from .tolerances import tol

OP = "ssim_pairs"
BACKENDS = backend_params("torch", "cpp")


def candidates(n_q, n_db, n_cand, seed=0):
    g = torch.Generator().manual_seed(seed)
    cand = torch.stack([torch.randperm(n_db, generator=g)[:n_cand] for _ in range(n_q)])
    cand[1, 0] = cand[0, 0]  # an image short-listed by two queries
    return cand


def check(fn, q, db, cand, what=""):
    out = fn(q, db, cand)
    assert out.shape == cand.shape and out.dtype == torch.float32 and out.device == q.device
    want = np.take_along_axis(f64_matrix(q.double(), db.double()), cand.cpu().numpy(), 1)
    assert_close(out, want, tol(OP, q.dtype), f"ssim_pairs {what}")
    return out


@pytest.mark.dtypes()
@pytest.mark.parametrize("backend", BACKENDS)
def test_matches_oracle(backend, dtype, device):
    fn = get_op(OP, backend, device)
    q, db = (as_dtype(images(n, 23, 29, s), dtype).to(device) for n, s in ((4, 6), (40, 5)))
    check(fn, q, db, candidates(4, 40, 9).to(device), str(dtype))


@pytest.mark.parametrize("backend", BACKENDS)
def test_shapes_and_repeated_candidates(backend, device):
    fn = get_op(OP, backend, device)
    for h, w, n_q, n_db, n_cand in [(11, 11, 2, 3, 3), (11, 40, 3, 5, 2), (17, 13, 5, 12, 12)]:
        q, db = images(n_q, h, w, 1, device), images(n_db, h, w, 2, device)
        cand = candidates(n_q, n_db, n_cand, seed=h).to(device)
        cand[-1] = cand[-1, :1]  # one image n_cand times for one query
        check(fn, q, db, cand, f"{h}x{w}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_noncontiguous_inputs(backend, device):
    fn = get_op(OP, backend, device)
    q = images(3, 18, 20, 3).double().transpose(2, 3).to(device)
    db = images(20, 20, 18, 4, device)[::2]
    cand = candidates(3, 10, 8).to(device).t().contiguous().t()
    assert not q.is_contiguous() and not db.is_contiguous() and not cand.is_contiguous()
    check(fn, q, db, cand, "non-contiguous")


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty(backend, device):
    fn = get_op(OP, backend, device)
    q, db = images(3, 11, 11, 1, device), images(4, 11, 11, 2, device)
    assert fn(q[:0], db, torch.zeros(0, 2, dtype=torch.int64, device=device)).shape == (0, 2)
    assert fn(q, db, torch.zeros(3, 0, dtype=torch.int64, device=device)).shape == (3, 0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_deterministic(backend, device):
    fn = get_op(OP, backend, device)
    q, db = images(3, 12, 13, 1, device), images(9, 12, 13, 2, device)
    cand = candidates(3, 9, 5).to(device)
    assert_same_bytes(fn(q, db, cand), fn(q, db, cand), "ssim_pairs")


@pytest.mark.parametrize("backend", BACKENDS)
def test_errors(backend, device):
    fn = get_op(OP, backend, device)
    q, db = images(2, 12, 12, 1, device), images(5, 12, 12, 2, device)
    with pytest.raises(ValueError, match="at least 11x11"):
        fn(q[..., :8, :8], db[..., :8, :8], torch.zeros(2, 1, dtype=torch.int64))
    with pytest.raises(ValueError, match="one size"):
        fn(q, db[..., :11], torch.zeros(2, 1, dtype=torch.int64))


@pytest.mark.parametrize("backend", BACKENDS)
def test_candidates_out_of_range(backend, device, request):
    fn = get_op(OP, backend, device)
    known_gap(request, backend, ("torch",),
              "the torch reference does not range-check cand (an IndexError from indexing)")
    q, db = images(2, 12, 12, 1, device), images(5, 12, 12, 2, device)
    with pytest.raises(RuntimeError, match="outside"):
        fn(q, db, torch.tensor([[0, 5], [1, 2]], device=device))


@pytest.mark.parametrize("backend", ["triton", "cuda"])
def test_triton_and_cuda_have_no_implementation(backend):
    for dev in ("cpu", "cuda"):
        why = backends.unavailable_reason(OP, backend, dev)
        assert why is not None and f"no '{backend}' implementation" in why
    with pytest.raises(backends.BackendUnavailable, match="no .* implementation"):
        backends.resolve(OP, backend, "cpu")
