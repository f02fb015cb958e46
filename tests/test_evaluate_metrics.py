"""frerec eval's maths against independent computations: AUC, accuracy and F1 against
scikit-learn, the Fréchet distance against an eigenvalue formula, the frequency gaps
against a NumPy implementation of method §8, AFA's spectrum, and the training budget."""
import math

import numpy as np
import pytest
import torch

import frerec_fast as ff
from frerec_fast.evaluation import spectral as sp
from frerec_fast.evaluation.augment import afa, autoaugment, mixup
from frerec_fast.evaluation.classify import predict_proba, train_classifier
from frerec_fast.evaluation.features import split_80_20
from frerec_fast.evaluation.tv import torchvision
from frerec_fast.evaluation.metrics import (bootstrap_mean_ci, classification_metrics,
                                            frechet_distance, mean_std)
from run_helpers import one_thread  # noqa: F401 - a fixture

sk = pytest.importorskip("sklearn.metrics", reason="scikit-learn is the reference: pip install scikit-learn")
pytestmark = pytest.mark.usefixtures("one_thread")


def _probs(rng, n, k, ties=False):
    logits = rng.normal(size=(n, k))
    if ties:
        logits = np.round(logits, 1)  # many equal scores: AUC must count ties half
    p = np.exp(logits)
    return p / p.sum(1, keepdims=True)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("ties", [False, True])
def test_binary_metrics_match_sklearn(seed, ties):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 2, 37)
    p = _probs(rng, 37, 2, ties)
    got = classification_metrics(y, p)
    assert got["auc"] == pytest.approx(sk.roc_auc_score(y, p[:, 1]), abs=1e-12)
    assert got["acc"] == pytest.approx(sk.accuracy_score(y, p.argmax(1)), abs=1e-12)
    assert got["f1"] == pytest.approx(sk.f1_score(y, p.argmax(1), pos_label=1), abs=1e-12)


@pytest.mark.parametrize("seed", range(3))
@pytest.mark.parametrize("k", [3, 5])
def test_multiclass_metrics_match_sklearn(seed, k):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.arange(k), rng.integers(0, k, 40)])  # every class present
    p = _probs(rng, len(y), k, ties=seed == 2)
    got = classification_metrics(y, p)
    assert got["auc"] == pytest.approx(
        sk.roc_auc_score(y, p, multi_class="ovr", average="macro", labels=list(range(k))), abs=1e-12)
    assert got["acc"] == pytest.approx(sk.accuracy_score(y, p.argmax(1)), abs=1e-12)
    assert got["f1"] == pytest.approx(
        sk.f1_score(y, p.argmax(1), average="macro", labels=list(range(k)), zero_division=0), abs=1e-12)


def test_f1_is_zero_without_positives_and_auc_nan_with_one_class():
    y = np.zeros(5, int)
    p = np.tile([0.9, 0.1], (5, 1))
    got = classification_metrics(y, p)
    assert got["f1"] == sk.f1_score(y, p.argmax(1), zero_division=0) == 0.0
    assert math.isnan(got["auc"])


def _frechet_eig(a, b):
    """Independent formula: tr((Ca Cb)^(1/2)) = sum of sqrt of the eigenvalues of Ca Cb."""
    ma, mb = a.mean(0), b.mean(0)
    ca = (a - ma).T @ (a - ma) / (len(a) - 1)
    cb = (b - mb).T @ (b - mb) / (len(b) - 1)
    ev = np.linalg.eigvals(ca @ cb)
    return float(np.sum((ma - mb) ** 2) + np.trace(ca) + np.trace(cb)
                 - 2 * np.sqrt(np.clip(ev.real, 0, None)).sum())


@pytest.mark.parametrize("seed", range(3))
def test_frechet_matches_eigenvalue_formula(seed):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(60, 6))
    b = rng.normal(loc=0.5, scale=1.5, size=(45, 6)) @ rng.normal(size=(6, 6))
    assert frechet_distance(a, b) == pytest.approx(_frechet_eig(a, b), rel=1e-7)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-7)
    # Shifting one set by d adds |d|^2.
    d = np.arange(6) * 0.1
    assert frechet_distance(a + d, a) == pytest.approx((d ** 2).sum(), abs=1e-7)


def test_bootstrap_interval_and_mean_std():
    v = np.array([0.1, 0.3, -0.05, 0.2, 0.15])
    lo, hi = bootstrap_mean_ci(v, seed=0)
    assert lo <= v.mean() <= hi and (lo, hi) == bootstrap_mean_ci(v, seed=0)
    assert v.min() <= lo and hi <= v.max()
    # An independent bootstrap with the same RNG stream.
    rng = np.random.default_rng(0)
    means = v[rng.integers(0, 5, size=(10000, 5))].mean(1)
    assert (lo, hi) == pytest.approx(tuple(np.quantile(means, [0.025, 0.975])))
    assert bootstrap_mean_ci(np.full(4, 0.2)) == pytest.approx((0.2, 0.2))
    m, s = mean_std([1.0, 2.0, 4.0])
    assert (m, s) == pytest.approx((np.mean([1, 2, 4]), np.std([1, 2, 4], ddof=1)))
    assert mean_std([3.0]) == (3.0, 0.0)


def _np_profile(x: np.ndarray) -> np.ndarray:
    """method §8 in NumPy: luma power spectrum (ortho), mean over integer radii
    round(sqrt(fu^2 + fv^2)) (half away from zero) <= floor(min(H, W)/2), log10, mean over images."""
    y = x[:, 0] if x.shape[1] == 1 else (x * np.array([0.299, 0.587, 0.114])[None, :, None, None]).sum(1)
    h, w = y.shape[-2:]
    power = np.abs(np.fft.fft2(y, norm="ortho")) ** 2
    fu, fv = np.fft.fftfreq(h) * h, np.fft.fftfreq(w) * w
    rad = np.floor(np.sqrt(fu[:, None] ** 2 + fv[None, :] ** 2) + 0.5).astype(int)
    n_r = min(h, w) // 2 + 1
    prof = np.stack([np.log10(power[:, rad == r].mean(1)) for r in range(n_r)], 1)
    return prof.mean(0)


def _np_gap(pa, pb, ratio=0.5):
    start = math.ceil(ratio * (min_len := len(pa) - 1))
    del min_len
    d = np.abs(pa - pb)
    return d[start:].mean(), d.mean()


@pytest.mark.parametrize("hw", [(16, 16), (20, 24)])
def test_gaps_per_class_and_overall_match_numpy_spec8(hw):
    g = torch.Generator().manual_seed(1)
    a = torch.rand(7, 1, *hw, generator=g)
    b = torch.rand(6, 1, *hw, generator=g).pow(3)  # a different spectrum
    la, lb = [0, 1, 0, 1, 1, 0, 0], [1, 1, 0, 0, 1, 0]
    classes = ("x", "y")
    got = sp.gap(sp.set_profiles(a, la, classes), sp.set_profiles(b, lb, classes))
    an, bn = a.double().numpy(), b.double().numpy()
    for name, ia, ib in (("overall", slice(None), slice(None)),
                         ("x", np.array(la) == 0, np.array(lb) == 0),
                         ("y", np.array(la) == 1, np.array(lb) == 1)):
        pa, pb = _np_profile(an[ia]), _np_profile(bn[ib])
        want = ff.frequency_gap(torch.from_numpy(pa), torch.from_numpy(pb))
        assert want == pytest.approx(_np_gap(pa, pb), abs=1e-12)
        res = got["overall"] if name == "overall" else got["per_class"][name]
        assert (res["high_band"], res["all_radii"]) == pytest.approx(want, abs=1e-9)


def test_protocols_compare_the_right_sets():
    g = torch.Generator().manual_seed(2)
    sets = {k: sp.set_profiles(torch.rand(3, 1, 16, 16, generator=g) ** (i + 1), None, None)
            for i, k in enumerate(("raw_real", "cal_syn", "cal_real"))}
    got = sp.protocol_gaps(sets["raw_real"], sets["cal_syn"], sets["cal_real"])
    assert set(got) == {"against raw real", "deployed"}
    assert got["against raw real"] == sp.gap(sets["cal_syn"], sets["raw_real"])
    assert got["deployed"] == sp.gap(sets["cal_syn"], sets["cal_real"])


@pytest.mark.parametrize("hw,c", [((32, 32), 1), ((20, 28), 3), ((64, 64), 1)])
def test_afa_adds_one_conjugate_frequency_pair(hw, c):
    x = torch.rand(12, c, *hw, generator=torch.Generator().manual_seed(0)).double()
    y = afa(x, torch.Generator().manual_seed(3))
    assert torch.equal(afa(x, torch.Generator().manual_seed(3)), y)  # seeded
    d = np.fft.fft2((y - x).numpy(), norm="ortho")
    for i in range(x.shape[0]):
        for ch in range(c):
            np.testing.assert_allclose(d[i, ch], d[i, 0], atol=1e-9)  # one wave, all channels
            mag = np.abs(d[i, ch])
            big = np.argwhere(mag > 1e-6 * mag.max())
            assert len(big) == 2, big  # exactly one frequency and its conjugate
            (u1, v1), (u2, v2) = big
            h, w = hw
            assert ((u1 + u2) % h, (v1 + v2) % w) == (0, 0)
            assert (u1, v1) != (0, 0)  # never the mean


@pytest.fixture
def needs_torchvision():
    try:
        torchvision("the test")
    except ImportError as e:
        pytest.skip(str(e))


@pytest.mark.usefixtures("needs_torchvision")
def test_autoaugment_and_mixup_wrappers():
    x = torch.rand(5, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    a = autoaugment(x, torch.Generator().manual_seed(1))
    assert a.shape == x.shape and a.dtype == torch.float32 and 0 <= a.min() and a.max() <= 1
    assert torch.equal(a, autoaugment(x, torch.Generator().manual_seed(1)))
    # Values on the 8-bit grid: the uint8 round trip torchvision's AutoAugment needs.
    assert torch.allclose(a * 255, (a * 255).round(), atol=1e-4)
    y = torch.tensor([0, 1, 2, 1, 0])
    xm, ym = mixup(x, y, 3, torch.Generator().manual_seed(2))
    assert xm.shape == x.shape and ym.shape == (5, 3)
    assert torch.allclose(ym.sum(1), torch.ones(5))
    xm2, _ = mixup(x, y, 3, torch.Generator().manual_seed(2))
    assert torch.equal(xm, xm2)


@pytest.mark.parametrize("augment", [None, "afa", "mixup"])
def test_training_is_deterministic_with_a_fixed_step_budget(augment):
    g = torch.Generator().manual_seed(0)
    for n in (10, 40):  # more data, same number of optimizer steps
        x = torch.rand(n, 1, 32, 32, generator=g)
        y = torch.arange(n) % 2
        count = []
        m1 = train_classifier(x, y, 2, steps=4, batch_size=8, seed=5, augment=augment,
                              on_step=lambda: count.append(1))
        m2 = train_classifier(x, y, 2, steps=4, batch_size=8, seed=5, augment=augment)
        assert len(count) == 4
        p1, p2 = predict_proba(m1, x), predict_proba(m2, x)
        np.testing.assert_array_equal(p1, p2)
        np.testing.assert_allclose(p1.sum(1), 1.0, atol=1e-12)


def test_split_80_20():
    tr, ho = split_80_20(23, seed=0)
    assert len(ho) == 5 and sorted(np.concatenate([tr, ho]).tolist()) == list(range(23))
    assert np.array_equal(split_80_20(23, 0)[1], ho)


@pytest.mark.usefixtures("needs_torchvision")
def test_resnet18_backbone_takes_the_image_channels():
    x = torch.rand(4, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    m = train_classifier(x, torch.tensor([0, 1, 0, 1]), 2, backbone="resnet18", steps=1, batch_size=4)
    assert m.net.conv1.in_channels == 1 and predict_proba(m, x).shape == (4, 2)


def test_missing_dependency_hint_names_the_pip_package():
    from frerec_fast.evaluation.deps import need, pip_name

    assert pip_name("sklearn") == "scikit-learn" and "torchvision==0." in pip_name("torchvision")
    with pytest.raises(ImportError, match="is needed for the test but is not installed: pip install"):
        need("no_such_module_frerec.sub", "the test")
