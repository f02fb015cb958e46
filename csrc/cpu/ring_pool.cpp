#include "ring_pool.h"

#include <algorithm>
#include <cmath>
#include <memory>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace frerec {
namespace {

// Items (channels x positions) per pooling block: enough to amortise a block's private
// bins (2 x n_bins doubles), small enough that a batch yields many blocks for the threads.
// A constant, so the partition, and with it every float result, depends on the shape only.
constexpr int64_t kBlockItems = int64_t(1) << 15;
// Below this many items an op runs on one thread (the fork costs more than it saves):
// pooling items (a sqrt or a bin add each) and gathered positions (a load and a store).
constexpr int64_t kParallelItems = int64_t(1) << 15;
constexpr int64_t kParallelGather = int64_t(1) << 17;

// Row kernels. Each handles the unit-stride case (separate contiguous re / im), the
// stride-2 case (the .real / .imag views of an interleaved complex tensor) and any other
// stride; the first two are written with constant strides so the compiler vectorises them.

// sq[j] = re[j]^2 + im[j]^2 for j < n (re, im with element strides sr, si).
template <typename T>
void square_norm(const T* re, const T* im, int64_t sr, int64_t si, int64_t n, T* __restrict sq) {
  if (sr == 1 && si == 1) {
    for (int64_t j = 0; j < n; ++j) sq[j] = re[j] * re[j] + im[j] * im[j];
  } else if (sr == 2 && si == 2) {
    for (int64_t j = 0; j < n; ++j) sq[j] = re[2 * j] * re[2 * j] + im[2 * j] * im[2 * j];
  } else {
    for (int64_t j = 0; j < n; ++j) sq[j] = re[j * sr] * re[j * sr] + im[j * si] * im[j * si];
  }
}

// acc[j] += x[j] for j < n (x with element stride s).
template <typename T, typename A>
void add_row(const T* x, int64_t s, int64_t n, A* __restrict acc) {
  if (s == 1) {
    for (int64_t j = 0; j < n; ++j) acc[j] += x[j];
  } else {
    for (int64_t j = 0; j < n; ++j) acc[j] += x[j * s];
  }
}

// out[j] = x[j] * f[j] for j < n (x with element stride s).
template <typename T>
void mul_row(const T* x, int64_t s, const T* f, int64_t n, T* __restrict out) {
  if (s == 1) {
    for (int64_t j = 0; j < n; ++j) out[j] = x[j] * f[j];
  } else if (s == 2) {
    for (int64_t j = 0; j < n; ++j) out[j] = x[2 * j] * f[j];
  } else {
    for (int64_t j = 0; j < n; ++j) out[j] = x[j * s] * f[j];
  }
}

// In place v[j] = sqrt(v[j]). Explicit SIMD: the compiler will not vectorise std::sqrt
// without -fno-math-errno. sqrtps/sqrtpd round exactly like the scalar sqrt, so the
// result is the same whichever path a position takes.
inline void sqrt_row(float* v, int64_t n) {
  int64_t j = 0;
#if defined(__SSE2__)
  for (; j + 4 <= n; j += 4) _mm_storeu_ps(v + j, _mm_sqrt_ps(_mm_loadu_ps(v + j)));
#endif
  for (; j < n; ++j) v[j] = std::sqrt(v[j]);
}

inline void sqrt_row(double* v, int64_t n) {
  int64_t j = 0;
#if defined(__SSE2__)
  for (; j + 2 <= n; j += 2) _mm_storeu_pd(v + j, _mm_sqrt_pd(_mm_loadu_pd(v + j)));
#endif
  for (; j < n; ++j) v[j] = std::sqrt(v[j]);
}

// In place a[j] = g[j] / sqrt(a[j]) where that root is > 0, else 0: the factor of the
// amplitude's gradient (d|X|/d re = re / |X|, 0 at X = 0 as model.dft.amplitude defines).
inline void grad_factor_row(float* a, const float* g, int64_t n) {
  int64_t j = 0;
#if defined(__SSE2__)
  const __m128 zero = _mm_setzero_ps(), one = _mm_set1_ps(1.f);
  for (; j + 4 <= n; j += 4) {
    const __m128 r = _mm_sqrt_ps(_mm_loadu_ps(a + j));
    const __m128 nz = _mm_cmpgt_ps(r, zero);
    const __m128 d = _mm_or_ps(_mm_and_ps(nz, r), _mm_andnot_ps(nz, one));  // never 0
    _mm_storeu_ps(a + j, _mm_and_ps(nz, _mm_div_ps(_mm_loadu_ps(g + j), d)));
  }
#endif
  for (; j < n; ++j) {
    const float r = std::sqrt(a[j]);
    a[j] = r > 0.f ? g[j] / r : 0.f;
  }
}

inline void grad_factor_row(double* a, const double* g, int64_t n) {
  int64_t j = 0;
#if defined(__SSE2__)
  const __m128d zero = _mm_setzero_pd(), one = _mm_set1_pd(1.0);
  for (; j + 2 <= n; j += 2) {
    const __m128d r = _mm_sqrt_pd(_mm_loadu_pd(a + j));
    const __m128d nz = _mm_cmpgt_pd(r, zero);
    const __m128d d = _mm_or_pd(_mm_and_pd(nz, r), _mm_andnot_pd(nz, one));
    _mm_storeu_pd(a + j, _mm_and_pd(nz, _mm_div_pd(_mm_loadu_pd(g + j), d)));
  }
#endif
  for (; j < n; ++j) {
    const double r = std::sqrt(a[j]);
    a[j] = r > 0.0 ? g[j] / r : 0.0;
  }
}

inline double count_of(const int32_t* offsets, int64_t k) {
  return static_cast<double>(offsets[k + 1] - offsets[k]);
}

// Sums the rows [h0, h1) of image b into two sets of bins, `even` and `odd` (even and odd
// columns: neighbouring positions usually share a bin, and two sets halve that chain of
// dependent adds), which it zeroes first. acc: scratch of (h1 - h0) * Wh; sq: of Wh.
template <typename T>
void pool_rows(const T* re, const T* im, int64_t b, int64_t h0, int64_t h1, int64_t C,
               int64_t Wh, Strides4 rs, Strides4 is, const int32_t* index, int64_t n_bins,
               bool amplitude, T* acc, T* sq, double* even, double* odd) {
  std::fill(even, even + n_bins, 0.0);
  std::fill(odd, odd + n_bins, 0.0);
  // Channels outside, rows inside: each channel's rows of the block are one run of memory
  // (for a contiguous spectrum), read front to back; acc holds the per-position channel
  // sum (in T, so the channel loop vectorises).
  const bool direct = !amplitude && C == 1;  // one plain channel: pool the input itself
  if (!direct) {
    std::fill(acc, acc + (h1 - h0) * Wh, T(0));
    for (int64_t c = 0; c < C; ++c) {
      for (int64_t h = h0; h < h1; ++h) {
        const T* r = re + b * rs.b + c * rs.c + h * rs.h;
        T* a = acc + (h - h0) * Wh;
        if (amplitude) {
          square_norm(r, im + b * is.b + c * is.c + h * is.h, rs.w, is.w, Wh, sq);
          sqrt_row(sq, Wh);
          add_row(sq, 1, Wh, a);
        } else {
          add_row(r, rs.w, Wh, a);
        }
      }
    }
  }
  for (int64_t h = h0; h < h1; ++h) {
    const T* vals = direct ? re + b * rs.b + h * rs.h : acc + (h - h0) * Wh;
    const int64_t vs = direct ? rs.w : 1;
    const int32_t* idx = index + h * Wh;
    int64_t w = 0;
    for (; w + 2 <= Wh; w += 2) {
      even[idx[w]] += static_cast<double>(vals[w * vs]);
      odd[idx[w + 1]] += static_cast<double>(vals[(w + 1) * vs]);
    }
    if (w < Wh) even[idx[w]] += static_cast<double>(vals[w * vs]);
  }
}

// The bin total s of bin k as the op's output: the sum, or the mean over C * count(k).
inline double finish(double s, const int32_t* offsets, int64_t k, int64_t C, bool mean) {
  if (!mean) return s;
  const double n = count_of(offsets, k);
  // C = 0 gives 0 / 0 = NaN in a non-empty bin, as the mean over no channels does.
  return n > 0 ? s / (n * static_cast<double>(C)) : 0.0;
}

template <typename T>
void pool_impl(const T* re, const T* im, int64_t B, int64_t C, int64_t H, int64_t Wh,
               Strides4 rs, Strides4 is, const int32_t* index, const int32_t* offsets,
               int64_t n_bins, bool amplitude, bool mean, T* out) {
  if (B <= 0 || n_bins <= 0) return;
  // Rows per block: kBlockItems items, and at least 4 items per bin (so that the blocks'
  // private bins never outweigh the input, however many bins there are).
  const int64_t row_items = std::max<int64_t>(C * Wh, 1);
  const int64_t block_items = std::max<int64_t>(kBlockItems, 4 * n_bins);
  const int64_t rows_per_block = std::clamp<int64_t>(block_items / row_items, 1, std::max<int64_t>(H, 1));
  const int64_t blocks_per_image = (H + rows_per_block - 1) / rows_per_block;
  const bool parallel = B * C * H * Wh >= kParallelItems;

  if (blocks_per_image <= 1) {
    // One block per image (or an empty map): each thread pools whole images in its own
    // bins and writes the results directly.
#pragma omp parallel if (parallel && B > 1)
    {
      std::vector<T> acc(std::max<int64_t>(H * Wh, 1)), sq(std::max<int64_t>(Wh, 1));
      std::vector<double> bins(2 * n_bins);
#pragma omp for schedule(static)
      for (int64_t b = 0; b < B; ++b) {
        pool_rows(re, im, b, 0, H, C, Wh, rs, is, index, n_bins, amplitude, acc.data(),
                  sq.data(), bins.data(), bins.data() + n_bins);
        for (int64_t k = 0; k < n_bins; ++k)
          out[b * n_bins + k] =
              static_cast<T>(finish(bins[k] + bins[n_bins + k], offsets, k, C, mean));
      }
    }
    return;
  }

  // Several blocks per image: private bins per block, then each image adds its blocks in
  // ascending order.
  const int64_t n_blocks = B * blocks_per_image;
  const int64_t stride = 2 * n_bins;
  std::unique_ptr<double[]> partial(new double[n_blocks * stride]);
#pragma omp parallel if (parallel)
  {
    std::vector<T> acc(std::max<int64_t>(rows_per_block * Wh, 1)), sq(std::max<int64_t>(Wh, 1));
#pragma omp for schedule(static)
    for (int64_t blk = 0; blk < n_blocks; ++blk) {
      const int64_t b = blk / blocks_per_image;
      const int64_t h0 = (blk % blocks_per_image) * rows_per_block;
      double* even = partial.get() + blk * stride;
      pool_rows(re, im, b, h0, std::min(H, h0 + rows_per_block), C, Wh, rs, is, index, n_bins,
                amplitude, acc.data(), sq.data(), even, even + n_bins);
    }
    // (Implicit barrier.)
#pragma omp for schedule(static)
    for (int64_t b = 0; b < B; ++b) {
      for (int64_t k = 0; k < n_bins; ++k) {
        double s = 0.0;
        for (int64_t j = 0; j < blocks_per_image; ++j) {
          const double* bins = partial.get() + (b * blocks_per_image + j) * stride;
          s += bins[k] + bins[n_bins + k];
        }
        out[b * n_bins + k] = static_cast<T>(finish(s, offsets, k, C, mean));
      }
    }
  }
}

template <typename T>
void scatter_impl(const T* values, int64_t B, int64_t n_bins, const int32_t* index,
                  const int32_t* offsets, int64_t HW, bool div_count, T* out) {
  if (B <= 0 || HW <= 0) return;
  const bool parallel = B * HW >= kParallelGather;
  // div_count: the table values / count per bin first (the reference's `grad / counts`),
  // so each position reads one number.
  std::unique_ptr<T[]> scaled;
  const T* table = values;
  if (div_count) {
    scaled.reset(new T[std::max<int64_t>(B * n_bins, 1)]);
    for (int64_t i = 0; i < B * n_bins; ++i) {
      const int64_t k = i % n_bins;
      scaled[i] = values[i] / static_cast<T>(std::max<int32_t>(offsets[k + 1] - offsets[k], 1));
    }
    table = scaled.get();
  }
  const int64_t chunk = std::min<int64_t>(HW, kBlockItems);
  const int64_t chunks_per_image = (HW + chunk - 1) / chunk;
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t i = 0; i < B * chunks_per_image; ++i) {
    const int64_t b = i / chunks_per_image;
    const int64_t p0 = (i % chunks_per_image) * chunk, p1 = std::min(HW, p0 + chunk);
    const T* v = table + b * n_bins;
    T* o = out + b * HW;
    for (int64_t p = p0; p < p1; ++p) o[p] = v[index[p]];
  }
}

template <typename T>
void amplitude_bwd_impl(const T* grad, const T* re, const T* im, int64_t B, int64_t C,
                        int64_t H, int64_t Wh, Strides4 rs, Strides4 is, const int32_t* index,
                        const int32_t* offsets, int64_t n_bins, T* g_re, T* g_im) {
  if (B <= 0 || C <= 0 || H <= 0 || Wh <= 0) return;
  // Upstream gradient of each position's amplitude, per bin: (grad / count) / C, the
  // order in which the reference's mean-pool and channel-mean backwards divide.
  std::unique_ptr<T[]> scale(new T[std::max<int64_t>(B * n_bins, 1)]);
  for (int64_t i = 0; i < B * n_bins; ++i) {
    const int64_t k = i % n_bins;
    const T n = static_cast<T>(std::max<int32_t>(offsets[k + 1] - offsets[k], 1));
    scale[i] = grad[i] / n / static_cast<T>(C);
  }
  const bool parallel = B * C * H * Wh >= kParallelItems;
#pragma omp parallel if (parallel)
  {
    std::vector<T> row_g(Wh), f(Wh);
#pragma omp for schedule(static)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      const int32_t* idx = index + h * Wh;
      const T* sb = scale.get() + b * n_bins;
      for (int64_t w = 0; w < Wh; ++w) row_g[w] = sb[idx[w]];
      for (int64_t c = 0; c < C; ++c) {
        const T* r = re + b * rs.b + c * rs.c + h * rs.h;
        const T* m = im + b * is.b + c * is.c + h * is.h;
        square_norm(r, m, rs.w, is.w, Wh, f.data());
        grad_factor_row(f.data(), row_g.data(), Wh);        // f = g / |X|, 0 at X = 0
        T* gr = g_re + ((b * C + c) * H + h) * Wh;
        T* gi = g_im + ((b * C + c) * H + h) * Wh;
        mul_row(r, rs.w, f.data(), Wh, gr);
        mul_row(m, is.w, f.data(), Wh, gi);
      }
    }
  }
}

}  // namespace

void ring_pool_cpu(const float* re, const float* im, int64_t B, int64_t C, int64_t H,
                   int64_t Wh, Strides4 rs, Strides4 is, const int32_t* index,
                   const int32_t* offsets, int64_t n_bins, bool amplitude, bool mean, float* out) {
  pool_impl(re, im, B, C, H, Wh, rs, is, index, offsets, n_bins, amplitude, mean, out);
}

void ring_pool_cpu(const double* re, const double* im, int64_t B, int64_t C, int64_t H,
                   int64_t Wh, Strides4 rs, Strides4 is, const int32_t* index,
                   const int32_t* offsets, int64_t n_bins, bool amplitude, bool mean, double* out) {
  pool_impl(re, im, B, C, H, Wh, rs, is, index, offsets, n_bins, amplitude, mean, out);
}

void ring_scatter_cpu(const float* values, int64_t B, int64_t n_bins, const int32_t* index,
                      const int32_t* offsets, int64_t HW, bool div_count, float* out) {
  scatter_impl(values, B, n_bins, index, offsets, HW, div_count, out);
}

void ring_scatter_cpu(const double* values, int64_t B, int64_t n_bins, const int32_t* index,
                      const int32_t* offsets, int64_t HW, bool div_count, double* out) {
  scatter_impl(values, B, n_bins, index, offsets, HW, div_count, out);
}

void ring_pool_amplitude_bwd_cpu(const float* grad, const float* re, const float* im,
                                 int64_t B, int64_t C, int64_t H, int64_t Wh, Strides4 rs,
                                 Strides4 is, const int32_t* index, const int32_t* offsets,
                                 int64_t n_bins, float* g_re, float* g_im) {
  amplitude_bwd_impl(grad, re, im, B, C, H, Wh, rs, is, index, offsets, n_bins, g_re, g_im);
}

void ring_pool_amplitude_bwd_cpu(const double* grad, const double* re, const double* im,
                                 int64_t B, int64_t C, int64_t H, int64_t Wh, Strides4 rs,
                                 Strides4 is, const int32_t* index, const int32_t* offsets,
                                 int64_t n_bins, double* g_re, double* g_im) {
  amplitude_bwd_impl(grad, re, im, B, C, H, Wh, rs, is, index, offsets, n_bins, g_re, g_im);
}

}  // namespace frerec
