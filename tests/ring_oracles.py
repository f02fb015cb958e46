"""Independent float64 NumPy oracle of FESA's ring/sector pooling (method §5): the
three ops and their analytic gradients, written from the definitions with bincount
and fancy indexing; nothing here calls frerec_fast. The bin map is an input.

Shapes: amp [B, H, Wh]; re, im [B, C, H, Wh]; idx [H, Wh] int in [0, n_bins);
values [B, n_bins]; upstream gradients have the shape of the op's output."""
import warnings

import numpy as np


def counts(idx, n_bins):
    """[n_bins] positions per bin."""
    return np.bincount(np.asarray(idx).ravel(), minlength=n_bins)


def bin_sums(x, idx, n_bins):
    """x [B, H, Wh] -> [B, n_bins] sum over each bin's positions (0 for empty bins)."""
    flat = np.asarray(idx).ravel()
    x = np.asarray(x, np.float64).reshape(len(x), -1)
    return np.stack([np.bincount(flat, weights=row, minlength=n_bins) for row in x]) \
        if len(x) else np.zeros((0, n_bins))


def pool(amp, idx, n_bins):
    """Mean of amp over each bin; empty bins give 0."""
    return bin_sums(amp, idx, n_bins) / np.maximum(counts(idx, n_bins), 1)


def pool_grad(up, idx, n_bins):
    """d sum(pool(amp) * up) / d amp: each position gets up[bin] / count[bin]."""
    return (np.asarray(up, np.float64) / np.maximum(counts(idx, n_bins), 1))[:, np.asarray(idx)]


def scatter(values, idx):
    """Each position takes its bin's value: [B, n_bins] -> [B, H, Wh]."""
    return np.asarray(values, np.float64)[:, np.asarray(idx)]


def scatter_grad(up, idx, n_bins):
    """d sum(scatter(values) * up) / d values = the bin sums of up; also returns the bin
    sums of |up|, the scale of a floating-point sum's error. -> (grad, abs_sums)."""
    return bin_sums(up, idx, n_bins), bin_sums(np.abs(np.asarray(up, np.float64)), idx, n_bins)


def amplitude(re, im):
    return np.hypot(np.asarray(re, np.float64), np.asarray(im, np.float64))


def pool_amplitude(re, im, idx, n_bins):
    """pool(|re + i im| averaged over channels). C = 0: NaN in every filled bin."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the mean of no channel
        amp = amplitude(re, im).mean(axis=1)
    return pool(amp, idx, n_bins)


def pool_amplitude_grad(up, re, im, idx, n_bins):
    """Gradients of sum(pool_amplitude * up) in re and im: g / C * re / |X| with g the
    pooled gradient of each position, and 0 where X = 0 (|X| is not differentiable
    there; the op defines its gradient as 0)."""
    re, im = np.asarray(re, np.float64), np.asarray(im, np.float64)
    g = pool_grad(up, idx, n_bins)[:, None] / re.shape[1]
    a = amplitude(re, im)
    safe = np.where(a > 0, a, 1.0)
    return np.where(a > 0, g * re / safe, 0.0), np.where(a > 0, g * im / safe, 0.0)
