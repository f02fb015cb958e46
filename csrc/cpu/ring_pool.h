// Ring/sector pooling of FESA's frequency branch (method §5), CPU, raw pointers.
// No torch headers: the same code is linked into the Python extension and the ctest binary.
//
// The bin map comes from the host (frerec_fast/fast/ring_plan.py): `index` [H*Wh] int32,
// the bin of each flat position h*Wh + w, every value in [0, n_bins); `offsets`
// [n_bins + 1] int32, its CSR offsets, read here only for the counts
// offsets[k+1] - offsets[k]. Callers guarantee the range (the binding checks it).
//
// Determinism: results never depend on the thread count or schedule. Pooling splits the
// work into blocks of whole rows of one image, a partition fixed by the shape only; each
// block sums its positions in ascending order into its own bins (double; two sets, even
// and odd columns, added at the end), and the blocks of an image are added in ascending
// order. Scatter and backward are pure gathers.
#pragma once
#include <cstdint>

namespace frerec {

// Element strides of a [B, C, H, Wh] view (any strides, e.g. the .real / .imag of complex).
struct Strides4 {
  int64_t b, c, h, w;
};

// out[b, k] = sum over channels c and positions p of bin k of v(b, c, p), where v is
// re itself, or |re + i im| = sqrt(re^2 + im^2) when `amplitude` (im is then read too;
// otherwise it is ignored and may be null). With `mean` the sum is divided by C * count(k),
// and an empty bin gives 0. out: [B, n_bins] contiguous.
void ring_pool_cpu(const float* re, const float* im, int64_t B, int64_t C, int64_t H,
                   int64_t Wh, Strides4 rs, Strides4 is, const int32_t* index,
                   const int32_t* offsets, int64_t n_bins, bool amplitude, bool mean, float* out);
void ring_pool_cpu(const double* re, const double* im, int64_t B, int64_t C, int64_t H,
                   int64_t Wh, Strides4 rs, Strides4 is, const int32_t* index,
                   const int32_t* offsets, int64_t n_bins, bool amplitude, bool mean, double* out);

// out[b, p] = values[b, index[p]], divided by count(index[p]) when `div_count` (the
// backward of the mean pool). values: [B, n_bins] contiguous; out: [B, HW] contiguous.
void ring_scatter_cpu(const float* values, int64_t B, int64_t n_bins, const int32_t* index,
                      const int32_t* offsets, int64_t HW, bool div_count, float* out);
void ring_scatter_cpu(const double* values, int64_t B, int64_t n_bins, const int32_t* index,
                      const int32_t* offsets, int64_t HW, bool div_count, double* out);

// Gradient of the mean amplitude pool (ring_pool_cpu with amplitude and mean) w.r.t. re
// and im: g_re = grad[b, k] / count(k) / C * re / |X| (0 where X = 0), likewise g_im.
// grad: [B, n_bins] contiguous; g_re, g_im: [B, C, H, Wh] contiguous.
void ring_pool_amplitude_bwd_cpu(const float* grad, const float* re, const float* im,
                                 int64_t B, int64_t C, int64_t H, int64_t Wh, Strides4 rs,
                                 Strides4 is, const int32_t* index, const int32_t* offsets,
                                 int64_t n_bins, float* g_re, float* g_im);
void ring_pool_amplitude_bwd_cpu(const double* grad, const double* re, const double* im,
                                 int64_t B, int64_t C, int64_t H, int64_t Wh, Strides4 rs,
                                 Strides4 is, const int32_t* index, const int32_t* offsets,
                                 int64_t n_bins, double* g_re, double* g_im);

}  // namespace frerec
