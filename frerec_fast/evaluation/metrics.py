"""Metrics of ``frerec eval``, as pure NumPy functions: classification scores, the
Fréchet distance between two feature sets, and a bootstrap interval of a mean.

The tests check each against an independent computation (scikit-learn for AUC and F1).
"""
from __future__ import annotations

import math
import warnings

import numpy as np


def roc_auc_binary(y: np.ndarray, score: np.ndarray) -> float:
    """Area under the ROC curve by the rank-sum (Mann-Whitney) formula, ties counted half.

    y: [N] in {0, 1} (1 = positive); score: [N] float. Returns NaN when one class is absent.
    """
    y = np.asarray(y).astype(bool)
    s = np.asarray(score, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    i = 0
    while i < len(s):  # average ranks over ties
        j = i
        while j + 1 < len(s) and sorted_s[j + 1] == sorted_s[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0 + 1.0
        i = j + 1
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def f1_binary(y: np.ndarray, pred: np.ndarray, positive: int = 1) -> float:
    """F1 of one class: 2 TP / (2 TP + FP + FN); 0 when that is 0/0 (scikit-learn's choice)."""
    y, pred = np.asarray(y), np.asarray(pred)
    tp = int(((pred == positive) & (y == positive)).sum())
    fp = int(((pred == positive) & (y != positive)).sum())
    fn = int(((pred != positive) & (y == positive)).sum())
    return 0.0 if 2 * tp + fp + fn == 0 else 2.0 * tp / (2 * tp + fp + fn)


def classification_metrics(y: np.ndarray, prob: np.ndarray) -> dict[str, float]:
    """AUC, accuracy and F1 of class probabilities.

    y: [N] int class numbers in 0..K-1; prob: [N, K] (rows sum to 1).
    Binary (K = 2): positive = class 1 (the second class in sorted folder order); AUC of
    prob[:, 1], F1 of class 1. Multi-class: macro one-vs-rest AUC (mean over classes
    present with both outcomes) and macro F1 over all K classes.
    Returns {"auc", "acc", "f1"} floats (AUC NaN when no class has both outcomes).
    """
    y = np.asarray(y).astype(np.int64)
    prob = np.asarray(prob, dtype=np.float64)
    k = prob.shape[1]
    pred = prob.argmax(1)
    acc = float((pred == y).mean())
    if k == 2:
        return {"auc": roc_auc_binary(y == 1, prob[:, 1]), "acc": acc, "f1": f1_binary(y, pred, 1)}
    aucs = [roc_auc_binary(y == c, prob[:, c]) for c in range(k)]
    aucs = [a for a in aucs if not math.isnan(a)]
    return {"auc": float(np.mean(aucs)) if aucs else math.nan, "acc": acc,
            "f1": float(np.mean([f1_binary(y, pred, c) for c in range(k)]))}


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to two feature sets (as FID computes it):
    |m_a - m_b|^2 + tr(C_a + C_b - 2 (C_a C_b)^(1/2)), sample covariances (1/(N-1)).

    a: [N, D], b: [M, D] float, N, M >= 2. Returns a float >= 0 (up to rounding).
    """
    from .deps import need

    linalg = need("scipy.linalg", "the Fréchet distance of frerec eval")
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1] or min(len(a), len(b)) < 2:
        raise ValueError(f"frechet_distance needs [N>=2, D] and [M>=2, D] features, got "
                         f"{a.shape} and {b.shape}")
    ma, mb = a.mean(0), b.mean(0)
    ca, cb = np.atleast_2d(np.cov(a, rowvar=False)), np.atleast_2d(np.cov(b, rowvar=False))
    with warnings.catch_warnings():  # few samples in many dimensions: singular, expected
        warnings.simplefilter("ignore")
        covmean = linalg.sqrtm(ca @ cb)
        if not np.isfinite(covmean).all():  # regularise, as FID code does
            off = np.eye(ca.shape[0]) * 1e-6
            covmean = linalg.sqrtm((ca + off) @ (cb + off))
    covmean = np.real(covmean)
    return float(((ma - mb) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2.0 * np.trace(covmean))


def bootstrap_mean_ci(values: np.ndarray, n_boot: int = 10000, level: float = 0.95,
                      seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``values`` [N] (resampled with
    replacement ``n_boot`` times by ``numpy.random.default_rng(seed)``)."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return (math.nan, math.nan)
    rng = np.random.default_rng(seed)
    means = v[rng.integers(0, v.size, size=(n_boot, v.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(lo), float(hi)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; 0 for one value) of a list of floats."""
    v = np.asarray(values, dtype=np.float64)
    return float(v.mean()), float(v.std(ddof=1)) if v.size > 1 else 0.0
