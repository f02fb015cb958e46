// Ring/sector pooling of FESA's frequency branch (method §5), CUDA, deterministic.
// Plain extern "C" kernels on raw pointers, no torch headers: the same source is
// compiled by nvcc into frerec_fast._C (host launchers below) and at run time by
// NVRTC through CuPy (where __CUDACC_RTC__ hides the host code).
//
// The index map comes in CSR form (frerec_fast/fast/ring_plan.py): `order` [H*Wh] int32,
// the flat positions sorted by bin; `offsets` [n_bins+1] int32, bin k holding
// order[offsets[k] .. offsets[k+1]); `index` [H*Wh] int32, the map itself.
//
// Pooling: one warp per (image, bin). The warp's lanes stride over the bin's
// C * count (channel, position) items in a fixed order, each accumulating in T, and
// a fixed xor-shuffle tree sums the lanes: no atomics, so the result is bit-identical
// from run to run. Scatter and the backward of the fused amplitude pooling: one thread
// per output element, a gather.
//
// Each kernel exists for float (_f32) and double (_f64). Strides are in elements, so
// the .real / .imag views of a complex64 tensor (element stride 2) are read in place.

#ifndef __CUDACC_RTC__
#include <cuda_runtime.h>
#endif

#define FREREC_RING_WARPS 4                       // bins (warps) per block of the pool kernel
#define FREREC_RING_THREADS (32 * FREREC_RING_WARPS)
#define FREREC_RING_EW_BLOCK 256                  // threads per block, elementwise kernels

// Explicit per-type square roots (sqrtf for float): no reliance on C++ math overloads
// under NVRTC.
__device__ __forceinline__ float frerec_ring_sqrt(float x) { return sqrtf(x); }
__device__ __forceinline__ double frerec_ring_sqrt(double x) { return sqrt(x); }

template <typename T>
__device__ __forceinline__ T frerec_ring_warp_sum(T v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// src: [B, C, H, Wh] through strides (re, and im when amplitude); out: [B, n_bins].
// Grid: B * ceil(n_bins / FREREC_RING_WARPS) blocks of FREREC_RING_THREADS threads.
template <typename T>
__device__ __forceinline__ void frerec_ring_pool_body(
    const T* __restrict__ re, const T* __restrict__ im, const int* __restrict__ order,
    const int* __restrict__ offsets, T* __restrict__ out, int n_bins, int C, int Wh,
    long long r_sb, long long r_sc, long long r_sh, long long r_sw, long long i_sb,
    long long i_sc, long long i_sh, long long i_sw, int amplitude, int mean) {
  const int bin_blocks = (n_bins + FREREC_RING_WARPS - 1) / FREREC_RING_WARPS;
  const long long b = blockIdx.x / bin_blocks;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int bin = (int)(blockIdx.x % bin_blocks) * FREREC_RING_WARPS + warp;
  if (bin >= n_bins) return;  // the whole warp leaves together: the shuffles stay full-warp
  const int start = offsets[bin];
  const int count = offsets[bin + 1] - start;
  const long long items = (long long)count * C;
  const T* rb = re + b * r_sb;
  const T* ib = im + b * i_sb;
  T acc = 0;
  for (long long i = lane; i < items; i += 32) {
    const int c = (int)(i / count);
    const int pos = order[start + (int)(i - (long long)c * count)];
    const int row = pos / Wh, col = pos - row * Wh;
    T x = rb[c * r_sc + row * r_sh + col * r_sw];
    if (amplitude) {
      const T y = ib[c * i_sc + row * i_sh + col * i_sw];
      x = frerec_ring_sqrt(x * x + y * y);
    }
    acc += x;
  }
  acc = frerec_ring_warp_sum(acc);
  if (lane == 0) {
    if (mean) acc = count > 0 ? acc / ((T)count * (T)C) : (T)0;
    out[b * n_bins + bin] = acc;
  }
}

// out[b, p] = values[b, index[p]], divided by the bin's count when div_count.
// values: [B, n_bins]; out: [B, HW]; total = B * HW.
template <typename T>
__device__ __forceinline__ void frerec_ring_scatter_body(
    const T* __restrict__ values, const int* __restrict__ index, const int* __restrict__ offsets,
    T* __restrict__ out, long long total, int HW, int n_bins, int div_count) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const long long b = i / HW;
  const int k = index[i - b * HW];
  T v = values[b * n_bins + k];
  if (div_count) v /= (T)(offsets[k + 1] - offsets[k]);  // >= 1: the bin holds this position
  out[i] = v;
}

// Gradient of the fused pooling: g_re = grad[b, bin] / (C count) * re / |X| (0 at X = 0).
// grad: [B, n_bins]; re, im through strides; g_re, g_im: [B, C, HW]; total = B * C * HW.
template <typename T>
__device__ __forceinline__ void frerec_ring_amp_bwd_body(
    const T* __restrict__ grad, const T* __restrict__ re, const T* __restrict__ im,
    const int* __restrict__ index, const int* __restrict__ offsets, T* __restrict__ g_re,
    T* __restrict__ g_im, long long total, int C, int HW, int Wh, int n_bins, long long r_sb,
    long long r_sc, long long r_sh, long long r_sw, long long i_sb, long long i_sc,
    long long i_sh, long long i_sw) {
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= total) return;
  const long long plane = i / HW;
  const int p = (int)(i - plane * HW);
  const long long b = plane / C, c = plane - b * C;
  const int k = index[p];
  const int row = p / Wh, col = p - row * Wh;
  const T x = re[b * r_sb + c * r_sc + row * r_sh + col * r_sw];
  const T y = im[b * i_sb + c * i_sc + row * i_sh + col * i_sw];
  const T sq = x * x + y * y;
  T scale = 0;
  if (sq > 0) {
    const T count = (T)(offsets[k + 1] - offsets[k]);
    scale = grad[b * n_bins + k] / (count * (T)C * frerec_ring_sqrt(sq));
  }
  g_re[i] = x * scale;
  g_im[i] = y * scale;
}

#define FREREC_RING_KERNELS(T, SUF)                                                               \
  extern "C" __global__ void __launch_bounds__(FREREC_RING_THREADS) frerec_ring_pool_##SUF(      \
      const T* re, const T* im, const int* order, const int* offsets, T* out, int n_bins, int C,  \
      int Wh, long long r_sb, long long r_sc, long long r_sh, long long r_sw, long long i_sb,     \
      long long i_sc, long long i_sh, long long i_sw, int amplitude, int mean) {                 \
    frerec_ring_pool_body<T>(re, im, order, offsets, out, n_bins, C, Wh, r_sb, r_sc, r_sh, r_sw, \
                             i_sb, i_sc, i_sh, i_sw, amplitude, mean);                           \
  }                                                                                               \
  extern "C" __global__ void frerec_ring_scatter_##SUF(const T* values, const int* index,        \
                                                      const int* offsets, T* out,                \
                                                      long long total, int HW, int n_bins,       \
                                                      int div_count) {                           \
    frerec_ring_scatter_body<T>(values, index, offsets, out, total, HW, n_bins, div_count);      \
  }                                                                                               \
  extern "C" __global__ void frerec_ring_amp_bwd_##SUF(                                           \
      const T* grad, const T* re, const T* im, const int* index, const int* offsets, T* g_re,    \
      T* g_im, long long total, int C, int HW, int Wh, int n_bins, long long r_sb,               \
      long long r_sc, long long r_sh, long long r_sw, long long i_sb, long long i_sc,            \
      long long i_sh, long long i_sw) {                                                          \
    frerec_ring_amp_bwd_body<T>(grad, re, im, index, offsets, g_re, g_im, total, C, HW, Wh,      \
                                n_bins, r_sb, r_sc, r_sh, r_sw, i_sb, i_sc, i_sh, i_sw);         \
  }

FREREC_RING_KERNELS(float, f32)
FREREC_RING_KERNELS(double, f64)

#ifndef __CUDACC_RTC__
// Host launchers (used by csrc/cuda/ring_pool_binding.cpp). f64 selects the double
// kernels; strides are [4] arrays (b, c, h, w) in elements, read on the host.
extern "C" cudaError_t frerec_ring_pool_launch(int f64, const void* re, const void* im,
                                               const int* order, const int* offsets, void* out,
                                               long long B, int n_bins, int C, int Wh,
                                               const long long* rs, const long long* is,
                                               int amplitude, int mean, cudaStream_t stream) {
  if (B == 0 || n_bins == 0) return cudaSuccess;
  const long long blocks = B * ((n_bins + FREREC_RING_WARPS - 1) / FREREC_RING_WARPS);
  if (blocks > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  if (f64) {
    frerec_ring_pool_f64<<<(unsigned)blocks, FREREC_RING_THREADS, 0, stream>>>(
        (const double*)re, (const double*)im, order, offsets, (double*)out, n_bins, C, Wh, rs[0],
        rs[1], rs[2], rs[3], is[0], is[1], is[2], is[3], amplitude, mean);
  } else {
    frerec_ring_pool_f32<<<(unsigned)blocks, FREREC_RING_THREADS, 0, stream>>>(
        (const float*)re, (const float*)im, order, offsets, (float*)out, n_bins, C, Wh, rs[0],
        rs[1], rs[2], rs[3], is[0], is[1], is[2], is[3], amplitude, mean);
  }
  return cudaGetLastError();
}

extern "C" cudaError_t frerec_ring_scatter_launch(int f64, const void* values, const int* index,
                                                  const int* offsets, void* out, long long B,
                                                  int HW, int n_bins, int div_count,
                                                  cudaStream_t stream) {
  const long long total = B * (long long)HW;
  if (total == 0) return cudaSuccess;
  const long long grid = (total + FREREC_RING_EW_BLOCK - 1) / FREREC_RING_EW_BLOCK;
  if (grid > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  if (f64) {
    frerec_ring_scatter_f64<<<(unsigned)grid, FREREC_RING_EW_BLOCK, 0, stream>>>(
        (const double*)values, index, offsets, (double*)out, total, HW, n_bins, div_count);
  } else {
    frerec_ring_scatter_f32<<<(unsigned)grid, FREREC_RING_EW_BLOCK, 0, stream>>>(
        (const float*)values, index, offsets, (float*)out, total, HW, n_bins, div_count);
  }
  return cudaGetLastError();
}

extern "C" cudaError_t frerec_ring_amp_bwd_launch(int f64, const void* grad, const void* re,
                                                  const void* im, const int* index,
                                                  const int* offsets, void* g_re, void* g_im,
                                                  long long B, int C, int HW, int Wh, int n_bins,
                                                  const long long* rs, const long long* is,
                                                  cudaStream_t stream) {
  const long long total = B * C * (long long)HW;
  if (total == 0) return cudaSuccess;
  const long long grid = (total + FREREC_RING_EW_BLOCK - 1) / FREREC_RING_EW_BLOCK;
  if (grid > 0x7fffffffLL) return cudaErrorInvalidConfiguration;
  if (f64) {
    frerec_ring_amp_bwd_f64<<<(unsigned)grid, FREREC_RING_EW_BLOCK, 0, stream>>>(
        (const double*)grad, (const double*)re, (const double*)im, index, offsets, (double*)g_re,
        (double*)g_im, total, C, HW, Wh, n_bins, rs[0], rs[1], rs[2], rs[3], is[0], is[1], is[2],
        is[3]);
  } else {
    frerec_ring_amp_bwd_f32<<<(unsigned)grid, FREREC_RING_EW_BLOCK, 0, stream>>>(
        (const float*)grad, (const float*)re, (const float*)im, index, offsets, (float*)g_re,
        (float*)g_im, total, C, HW, Wh, n_bins, rs[0], rs[1], rs[2], rs[3], is[0], is[1], is[2],
        is[3]);
  }
  return cudaGetLastError();
}
#endif
