// Band statistics and SHR on an rfft2 half spectrum (method §1-3), CUDA.
// Plain extern "C" kernels on raw pointers, no torch headers: the same source is
// compiled by nvcc into frerec_fast._C (host launchers below) and at run time by
// NVRTC through CuPy (where __CUDACC_RTC__ hides the host code).
// spec: [planes, H, Wh] interleaved complex64 (float2), Wh = W/2 + 1.

#ifndef __CUDACC_RTC__
#include <cuda_runtime.h>
#endif

#define FREREC_BLOCK 256

__device__ __forceinline__ bool frerec_high(int u, int v, int H, int W, double ratio) {
  int fu = u < (H + 1) / 2 ? u : u - H;
  bool low_row = (fu < 0 ? -fu : fu) < ratio * H / 2.0;
  bool low_col = v < ratio * W / 2.0;
  return !(low_row && low_col);
}

__device__ __forceinline__ double frerec_weight(int v, int W) {
  return (v == 0 || (W % 2 == 0 && v == W / 2)) ? 1.0 : 2.0;
}

__device__ double frerec_block_sum(double x, double* shared) {
  shared[threadIdx.x] = x;
  __syncthreads();
  for (int s = blockDim.x / 2; s > 0; s >>= 1) {
    if (threadIdx.x < s) shared[threadIdx.x] += shared[threadIdx.x + s];
    __syncthreads();
  }
  double total = shared[0];
  __syncthreads();
  return total;
}

// One block per plane; two passes (mean, then mean absolute deviation) in double.
extern "C" __global__ void frerec_band_stats_half(const float2* __restrict__ spec, int H, int W,
                                                  double ratio, int amplitude,
                                                  float* __restrict__ mu, float* __restrict__ sigma) {
  __shared__ double shared[FREREC_BLOCK];
  const int Wh = W / 2 + 1;
  const long long n = (long long)H * Wh;
  const float2* s = spec + (long long)blockIdx.x * n;
  double sum = 0.0, count = 0.0;
  for (long long i = threadIdx.x; i < n; i += blockDim.x) {
    int u = (int)(i / Wh), v = (int)(i % Wh);
    if (!frerec_high(u, v, H, W, ratio)) continue;
    double w = frerec_weight(v, W);
    float2 z = s[i];
    sum += w * (amplitude ? hypot((double)z.x, (double)z.y) : (double)z.x);
    count += w;
  }
  sum = frerec_block_sum(sum, shared);
  count = frerec_block_sum(count, shared);
  const double m = count > 0 ? sum / count : 0.0;
  double dev = 0.0;
  for (long long i = threadIdx.x; i < n; i += blockDim.x) {
    int u = (int)(i / Wh), v = (int)(i % Wh);
    if (!frerec_high(u, v, H, W, ratio)) continue;
    float2 z = s[i];
    double d = amplitude ? fabs(hypot((double)z.x, (double)z.y) - m) : hypot((double)z.x - m, (double)z.y);
    dev += frerec_weight(v, W) * d;
  }
  dev = frerec_block_sum(dev, shared);
  if (threadIdx.x == 0) {
    mu[blockIdx.x] = (float)m;
    sigma[blockIdx.x] = (float)(count > 0 ? dev / count : 0.0);
  }
}

// One thread per half-spectrum element; in place on the high band.
extern "C" __global__ void frerec_shr_apply_half(float2* __restrict__ spec, long long planes, int H,
                                                 int W, double ratio, int amplitude,
                                                 const float* __restrict__ mu_s,
                                                 const float* __restrict__ sigma_s,
                                                 const float* __restrict__ mu_hat,
                                                 const float* __restrict__ sigma_hat) {
  const int Wh = W / 2 + 1;
  const long long n = (long long)H * Wh;
  const long long i = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= planes * n) return;
  const long long p = i / n;
  const int u = (int)((i % n) / Wh), v = (int)(i % Wh);
  if (!frerec_high(u, v, H, W, ratio)) return;
  const double scale = sigma_s[p] > 0.f ? (double)sigma_hat[p] / sigma_s[p] : 0.0;
  const double ms = mu_s[p], mh = mu_hat[p];
  float2 z = spec[i];
  if (amplitude) {
    double a = hypot((double)z.x, (double)z.y);
    double na = fmax((a - ms) * scale + mh, 0.0);
    spec[i] = a > 0 ? make_float2((float)(z.x * (na / a)), (float)(z.y * (na / a)))
                    : make_float2((float)na, 0.f);
  } else {
    spec[i] = make_float2((float)((z.x - ms) * scale + mh), (float)(z.y * scale));
  }
}

#ifndef __CUDACC_RTC__
extern "C" cudaError_t frerec_band_stats_half_launch(const void* spec, long long planes, int H, int W,
                                                     double ratio, int amplitude, float* mu,
                                                     float* sigma, cudaStream_t stream) {
  if (planes == 0) return cudaSuccess;
  frerec_band_stats_half<<<(unsigned)planes, FREREC_BLOCK, 0, stream>>>(
      (const float2*)spec, H, W, ratio, amplitude, mu, sigma);
  return cudaGetLastError();
}

extern "C" cudaError_t frerec_shr_apply_half_launch(void* spec, long long planes, int H, int W,
                                                    double ratio, int amplitude, const float* mu_s,
                                                    const float* sigma_s, const float* mu_hat,
                                                    const float* sigma_hat, cudaStream_t stream) {
  const long long total = planes * (long long)H * (W / 2 + 1);
  if (total == 0) return cudaSuccess;
  const unsigned grid = (unsigned)((total + FREREC_BLOCK - 1) / FREREC_BLOCK);
  frerec_shr_apply_half<<<grid, FREREC_BLOCK, 0, stream>>>((float2*)spec, planes, H, W, ratio,
                                                           amplitude, mu_s, sigma_s, mu_hat,
                                                           sigma_hat);
  return cudaGetLastError();
}
#endif
