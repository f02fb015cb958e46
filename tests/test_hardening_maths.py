"""Property-based tests (hypothesis) of the public maths (method §9): shapes and dtypes,
constant images, tiny and odd sizes, agreement of the CPU backends, and NaN/Inf refused
with a ValueError naming the argument. The "ci" profile (tests/conftest.py) keeps CI
bounded; HYPOTHESIS_PROFILE=dev explores more."""
import math

import numpy as np
import pytest
import torch

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, strategies as st  # noqa: E402

import frerec_fast as ff  # noqa: E402
from frerec_fast import backends  # noqa: E402
from frerec_fast.reference.checks import band_is_empty
from frerec_fast.reference.spectral import high_band_mask  # noqa: E402

import npref  # noqa: E402

CPU_BACKENDS = [b for b in ("torch", "cpp") if backends.unavailable_reason("shr", b) is None]
KINDS = ("random", "constant", "zeros", "ones", "checker")


def image(shape, kind: str, seed: int, dtype=torch.float32) -> torch.Tensor:
    """A deterministic test image batch of one kind (values in [0, 1])."""
    g = torch.Generator().manual_seed(seed)
    if kind == "random":
        x = torch.rand(shape, generator=g)
    elif kind == "constant":
        x = torch.full(shape, float(torch.rand(1, generator=g)))
    elif kind in ("zeros", "ones"):
        x = torch.full(shape, 0.0 if kind == "zeros" else 1.0)
    else:
        h, w = shape[-2:]
        x = ((torch.arange(h)[:, None] + torch.arange(w)[None]) % 2).float().expand(shape)
    return x.contiguous().to(dtype)


@st.composite
def batches(draw, min_side=1, max_side=20, channels=(1, 3)):
    b = draw(st.integers(1, 3))
    c = draw(st.sampled_from(channels))
    h, w = draw(st.integers(min_side, max_side)), draw(st.integers(min_side, max_side))
    return image((b, c, h, w), draw(st.sampled_from(KINDS)), draw(st.integers(0, 2**16)))


ratios = st.one_of(st.sampled_from([0.0, 0.25, 0.5, 1.0]), st.floats(0.0, 1.0))
domains = st.sampled_from(["complex", "amplitude"])


def poison(t: torch.Tensor, seed: int, value: float) -> torch.Tensor:
    """t with one element (chosen by seed) set to value."""
    t = t.clone()
    t.view(-1)[seed % t.numel()] = value
    return t


bad_values = st.sampled_from([math.nan, math.inf, -math.inf])


# -- band statistics and SHR ----------------------------------------------------------------
@given(st.integers(1, 9), st.integers(1, 9), ratios)
def test_band_is_empty_matches_the_mask(h, w, ratio):
    assert band_is_empty(h, w, ratio) == (not bool(high_band_mask(h, w, ratio).any()))


@given(batches(), ratios, domains)
def test_band_stats_shapes_dtype_oracle_and_backends_agree(x, ratio, domain):
    b, c, h, w = x.shape
    if band_is_empty(h, w, ratio):
        for be in CPU_BACKENDS:
            with pytest.raises(ValueError, match="high band .* is empty"):
                ff.band_stats(x, ratio, domain, backend=be)
        return
    mu_ref, sigma_ref = npref.band_stats(x.double().numpy(), ratio, domain)
    for be in CPU_BACKENDS:
        mu, sigma = ff.band_stats(x, ratio, domain, backend=be)
        assert mu.shape == sigma.shape == (b, c)
        assert mu.dtype == sigma.dtype == torch.float32
        assert torch.isfinite(mu).all() and (sigma >= 0).all()
        np.testing.assert_allclose(mu.numpy(), mu_ref, rtol=1e-4, atol=1e-5, err_msg=be)
        np.testing.assert_allclose(sigma.numpy(), sigma_ref, rtol=1e-4, atol=1e-5, err_msg=be)


@given(batches(), st.sampled_from([0.25, 0.5, 1.0]))
def test_a_constant_image_has_no_high_band(x, ratio):
    x = x[:, :, :1, :1].expand(x.shape).contiguous()  # each image and channel constant
    if band_is_empty(*x.shape[-2:], ratio):
        return
    mu, sigma = ff.band_stats(x, ratio)
    assert torch.allclose(mu, torch.zeros_like(mu), atol=1e-6)
    assert torch.allclose(sigma, torch.zeros_like(sigma), atol=1e-6)


@given(batches(), st.sampled_from([torch.float16, torch.float64, torch.uint8]))
def test_band_stats_takes_other_dtypes_and_returns_float32(x, dtype):
    if band_is_empty(*x.shape[-2:], 0.5):
        return
    y = (x * 255).round().to(dtype) if dtype == torch.uint8 else x.to(dtype)
    mu, sigma = ff.band_stats(y)
    assert mu.dtype == sigma.dtype == torch.float32 and torch.isfinite(mu).all()


@given(batches(), ratios, domains, st.integers(0, 10**6))
def test_shr_with_its_own_statistics_is_the_identity(x, ratio, domain, seed):
    b, c, h, w = x.shape
    if band_is_empty(h, w, ratio):
        return
    mu, sigma = ff.band_stats(x, ratio, domain)
    zero = torch.zeros(b, c)
    for be in CPU_BACKENDS:
        y = ff.shr(x, mu[:, None], sigma[:, None], zero, zero, ratio, domain, backend=be)
        assert y.shape == x.shape and y.dtype == torch.float32
        torch.testing.assert_close(y, x, atol=2e-4, rtol=0)
    # Any bank: finite, same shape, and the low band is left as it was (method §3).
    g = torch.Generator().manual_seed(seed)
    k = 1 + seed % 4
    mb, sb = torch.randn(b, k, c, generator=g), torch.rand(b, k, c, generator=g)
    eps = torch.randn(2, b, c, generator=g)
    outs = [ff.shr(x, mb, sb, eps[0], eps[1], ratio, domain, backend=be) for be in CPU_BACKENDS]
    low = ~high_band_mask(h, w, ratio)
    for y in outs:
        assert torch.isfinite(y).all()
        fy, fx = torch.fft.fft2(y.double(), norm="ortho"), torch.fft.fft2(x.double(), norm="ortho")
        torch.testing.assert_close(fy[..., low], fx[..., low], atol=1e-4, rtol=0)
    # Backends agree where the result is well-posed. Not where the band is empty but for
    # rounding (a constant image: sigma_s is rounding noise, so sigma_hat / sigma_s
    # amplifies that noise), nor where the amplitude domain gives a new amplitude to a
    # coefficient whose phase is rounding noise (periodic images): known limits, listed
    # in docs/RELIABILITY.md; the noise differs per FFT, so the outputs do too.
    amp = torch.fft.fft2(x.double(), norm="ortho").abs()[..., ~low]
    if sigma.min() > 1e-3 and (domain == "complex" or amp.min() > 1e-3):
        for y in outs[1:]:
            torch.testing.assert_close(y, outs[0], atol=1e-4, rtol=1e-4)


def test_empty_batches_give_empty_results():
    mu, sigma = ff.band_stats(torch.rand(0, 3, 8, 8))
    assert mu.shape == sigma.shape == (0, 3)
    y = ff.shr(torch.rand(0, 1, 8, 8), torch.rand(0, 2, 1), torch.rand(0, 2, 1),
               torch.zeros(0, 1), torch.zeros(0, 1))
    assert y.shape == (0, 1, 8, 8) and y.dtype == torch.float32
    assert ff.spectral_profile(torch.rand(0, 1, 8, 8), per_image=True).shape == (0, 5)
    with pytest.raises(ValueError, match="no image"):
        ff.spectral_profile(torch.rand(0, 1, 8, 8))
    with pytest.raises(ValueError, match="one pixel"):
        ff.band_stats(torch.rand(1, 1, 0, 8))


# -- SSIM --------------------------------------------------------------------------------
@given(batches(min_side=11, max_side=18, channels=(1,)), st.integers(0, 10**6))
def test_ssim_is_one_on_itself_symmetric_and_bounded(a, seed):
    b = image(a.shape, "random", seed)
    s_aa, s_ab, s_ba = ff.ssim(a, a), ff.ssim(a, b), ff.ssim(b, a)
    assert s_aa.shape == (a.shape[0],) and s_aa.dtype == torch.float32
    torch.testing.assert_close(s_aa, torch.ones_like(s_aa), atol=1e-4, rtol=0)
    torch.testing.assert_close(s_ab, s_ba, atol=1e-6, rtol=0)
    assert (s_ab.abs() <= 1 + 1e-5).all()


@given(st.integers(1, 10), st.integers(1, 30))
def test_ssim_refuses_images_smaller_than_its_window(h, w):
    if h >= 11 and w >= 11:
        return
    x = torch.rand(1, 1, h, w)
    with pytest.raises(ValueError, match=f"at least 11x11, got {h}x{w}"):
        ff.ssim(x, x)
    with pytest.raises(ValueError, match="at least 11x11"):
        ff.ssim_matrix(x, x)


@given(st.integers(1, 3), st.integers(1, 6), st.integers(11, 17), st.integers(11, 17),
       st.sampled_from(KINDS), st.integers(0, 10**6), st.integers(1, 8), st.booleans())
def test_ssim_matrix_and_topk_agree_with_paired_ssim(nq, n, h, w, kind, seed, k, excl):
    q = image((nq, 1, h, w), kind, seed)
    db = torch.cat([image((n - 1, 1, h, w), "random", seed + 1), q[:1]]) if n > 1 else q[:1]
    pairs = ff.ssim(q.repeat_interleave(n, 0), db.repeat(nq, 1, 1, 1)).view(nq, n)
    exclude = torch.tensor([(seed + i) % n for i in range(nq)]) if excl else None
    left = n - (1 if excl else 0)
    for be in CPU_BACKENDS:
        m = ff.ssim_matrix(q, db, backend=be)
        assert m.shape == (nq, n) and m.dtype == torch.float32
        # float32 E[x^2] - mu^2 cancels on flat images: errors up to ~eps * mu^2 / C2 (1e-4)
        torch.testing.assert_close(m, pairs, atol=5e-4, rtol=0)
        if left == 0:
            with pytest.raises(ValueError, match="no neighbour left"):
                ff.ssim_topk(q, db, k, exclude=exclude, backend=be)
            continue
        scores, ids = ff.ssim_topk(q, db, k, exclude=exclude, backend=be)
        kk = min(k, left)
        assert scores.shape == ids.shape == (nq, kk) and ids.dtype == torch.int64
        assert (scores[:, :-1] >= scores[:, 1:]).all()
        assert ((ids >= 0) & (ids < n)).all()
        assert all(len(set(r.tolist())) == kk for r in ids)
        if excl:
            assert not (ids == exclude[:, None]).any()
        torch.testing.assert_close(scores, pairs.gather(1, ids), atol=5e-4, rtol=0)


def test_topk_refuses_exclusions_outside_the_database():
    q, db = torch.rand(2, 1, 11, 11), torch.rand(3, 1, 11, 11)
    for bad in ([0, 3], [-2, 0]):
        with pytest.raises(ValueError, match=r"-1 \(none\) or in 0..2"):
            ff.ssim_topk(q, db, 1, exclude=torch.tensor(bad))
    assert ff.ssim_topk(q, db, 1, exclude=torch.tensor([-1, 2]))[1].shape == (2, 1)


# -- spectral profile and gap ---------------------------------------------------------------
@given(batches(max_side=24), st.booleans())
def test_spectral_profile_shape_and_finite_even_for_constant_images(x, per_image):
    b, _, h, w = x.shape
    p = ff.spectral_profile(x, per_image=per_image)
    r = min(h, w) // 2 + 1
    assert p.shape == ((b, r) if per_image else (r,)) and p.dtype == torch.float64
    assert torch.isfinite(p).all() and (p >= -30).all()
    if not per_image:
        torch.testing.assert_close(p, ff.spectral_profile(x, per_image=True).mean(0))


@given(st.integers(1, 12), st.integers(0, 10**6), ratios)
def test_frequency_gap_is_a_distance_like_summary(r, seed, ratio):
    g = torch.Generator().manual_seed(seed)
    a, b = torch.randn(r, generator=g, dtype=torch.float64), torch.randn(r, generator=g, dtype=torch.float64)
    assert ff.frequency_gap(a, a, ratio) == (0.0, 0.0)
    hi, al = ff.frequency_gap(a, b, ratio)
    assert (hi, al) == ff.frequency_gap(b, a, ratio)
    assert hi >= 0 and al >= 0 and math.isclose(al, float((a - b).abs().mean()), rel_tol=1e-12)


def test_frequency_gap_refuses_what_has_no_answer():
    a = torch.zeros(5)
    with pytest.raises(ValueError, match="one length"):
        ff.frequency_gap(a, torch.zeros(4))
    with pytest.raises(ValueError, match="not empty"):
        ff.frequency_gap(torch.zeros(0), torch.zeros(0))
    with pytest.raises(ValueError, match="ratio must be in"):
        ff.frequency_gap(a, a, ratio=2.0)


# -- NaN and infinity: refused by every public op, naming the argument ---------------------------
@given(st.integers(0, 10**6), bad_values, st.sampled_from(CPU_BACKENDS))
def test_non_finite_inputs_are_refused_by_name(seed, bad, be):
    x = torch.rand(2, 1, 12, 13)
    bank = torch.rand(2, 3, 1)
    eps = torch.zeros(2, 1)
    msg = "contains NaN or infinite values"
    with pytest.raises(ValueError, match=f"^x {msg}"):
        ff.band_stats(poison(x, seed, bad), backend=be)
    for name, args in (("x", (poison(x, seed, bad), bank, bank, eps, eps)),
                       ("mu_bank", (x, poison(bank, seed, bad), bank, eps, eps)),
                       ("sigma_bank", (x, bank, poison(bank, seed, bad), eps, eps)),
                       ("eps_mu", (x, bank, bank, poison(eps, seed, bad), eps)),
                       ("eps_sigma", (x, bank, bank, eps, poison(eps, seed, bad)))):
        with pytest.raises(ValueError, match=f"^{name} {msg}"):
            ff.shr(*args, backend=be)
    with pytest.raises(ValueError, match=f"^q {msg}"):
        ff.ssim_matrix(poison(x, seed, bad), x, backend=be)
    with pytest.raises(ValueError, match=f"^db {msg}"):
        ff.ssim_topk(x, poison(x, seed, bad), 1, backend=be)
    with pytest.raises(ValueError, match=f"^db {msg}"):
        ff.ssim_topk(x, poison(x, seed, bad), 1, mode="prefilter", backend=be)
    with pytest.raises(ValueError, match=f"^b {msg}"):
        ff.ssim(x, poison(x, seed, bad))
    with pytest.raises(ValueError, match=f"^x {msg}"):
        ff.spectral_profile(poison(x, seed, bad))
    with pytest.raises(ValueError, match=f"^profile_b {msg}"):
        ff.frequency_gap(torch.zeros(4), poison(torch.zeros(4), seed, bad))


def test_training_validation_still_scores_a_diverged_model_minus_infinity():
    """SSIM and the spectral profile now refuse NaN; the training loop's validation,
    which must rank a diverged (NaN) model last rather than stop, checks first."""
    from types import SimpleNamespace

    from frerec_fast.training.train import _Validation, val_score
    clean = torch.rand(2, 1, 16, 16)
    stub = SimpleNamespace(clean=clean, ratio=0.5,
                           clean_profile=ff.spectral_profile(clean))
    m = _Validation._metrics(stub, poison(clean, 3, math.nan))
    assert math.isnan(m["gap_high"]) and math.isnan(m["ssim"])
    assert val_score(m["psnr"], m["gap_high"]) == -math.inf
    ok = _Validation._metrics(stub, clean)
    assert ok["gap_high"] == 0.0 and ok["ssim"] > 0.999


def test_the_calibrator_skips_the_value_checks_it_has_made_upstream(tmp_path, monkeypatch):
    """Inside ``inputs_checked_upstream`` (the calibrator: pixels checked at decode, the
    index at load, results per tile) the ops read nothing back to the host, which on
    CUDA would stall the overlap of host and GPU work; outside, they check."""
    import shutil

    from frerec_fast import ops
    from frerec_fast.datasets import real_dir, synthetic_dir
    from frerec_fast.pipeline import calibrate_dir
    from frerec_fast.reference.checks import checks_skipped, inputs_checked_upstream
    skipped = []
    real = ops.require_finite
    monkeypatch.setattr(ops, "require_finite", lambda **t: (skipped.append(checks_skipped()),
                                                           real(**t)))
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(sorted(synthetic_dir().rglob("*.png"))[0], src / "a.png")
    index = ff.build_index(real_dir("train"), progress=False)
    skipped.clear()
    rep = calibrate_dir(src, tmp_path / "dst", index=index, model=False, device="cpu", k=4,
                        progress=False)
    assert rep["ok"] == 1 and skipped and all(skipped)  # ssim_topk and shr, unchecked
    x, bank, eps = poison(torch.rand(1, 1, 12, 12), 5, math.nan), torch.rand(1, 2, 1), torch.zeros(1, 1)
    with inputs_checked_upstream():
        assert torch.isnan(ff.shr(x, bank, bank, eps, eps)).any()
        ff.ssim_topk(torch.rand(1, 1, 11, 11), torch.rand(3, 1, 11, 11), 1,
                     exclude=torch.tensor([7]))  # not checked: the caller vouches for it
        with pytest.raises(ValueError, match="high band"):  # shape checks stay (no sync)
            ff.band_stats(torch.rand(1, 1, 1, 1))
    with pytest.raises(ValueError, match="NaN"):
        ff.shr(x, bank, bank, eps, eps)
