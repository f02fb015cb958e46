// All-pairs SSIM (method §4), CUDA: per-image statistic maps and a pair kernel whose
// cross term E[x*y] lives in shared memory and registers only. Plain extern "C"
// kernels on raw pointers, no torch headers: the same source is compiled by nvcc into
// frerec_fast._C (host launchers below) and at run time by NVRTC through CuPy (where
// __CUDACC_RTC__ hides the host code). Python side: frerec_fast/fast/ssim_cuda.py.
//
// SSIM as in frerec_fast/ssim.py: 11x11 Gaussian window (sigma 1.5; the 11 float32
// taps come in as `taps`, the values torch's reference filters with), valid region,
// population covariance, C1 = 0.01^2, C2 = 0.03^2, data range 1, mean of the map.
//
// Layout: images pixel-major, [H*W, N] (image index fastest), so that a block reading
// one pixel of a run of consecutive images issues one coalesced load. Statistic maps
// likewise [HO*WO, N] with HO = H - 10, WO = W - 10.
//
// 1. frerec_ssim_stats: one thread per image. M = mu, A = mu^2 + C1/2,
//    V = var + C2/2: each image carries half of each constant, so that a pair's
//    denominator is (A_q + A_n) * (V_q + V_n).
// 2. frerec_ssim_pairs: one block per tile of FREREC_SSIM_TQ queries x FREREC_SSIM_TN
//    database images; each thread owns a 2 x 2 micro-tile of pairs (two adjacent
//    queries x two adjacent images: one float2 shared-memory load each). The block walks
//    the output columns j; for each it streams the input rows in chunks of 11. A chunk's
//    11 rows x 11 window columns of both image tiles are staged in shared memory
//    (queries pre-multiplied by the horizontal tap), together with the statistic maps of
//    the output rows that the chunk completes. Per input row r a thread forms, per
//    pair, the horizontal sum h_r = sum_b g_b x[r, j+b] y[r, j+b] (11 FMAs) and adds
//    g_k h_r into the accumulator of output row r - k, for k = 0..10. The 11 vertical
//    accumulators are a ring indexed by (output row mod 11); since chunks start at
//    multiples of 11 rows and the row loop inside a chunk is unrolled, every ring index
//    is a compile-time constant and the ring stays in registers with no moves. The slot
//    of output row r - 10 is then complete: it becomes SSIM map values, summed per
//    column in float32 and over columns in float64. Products x*y are never stored,
//    nor is any cross-term map: only the [TQ, TN] mean SSIM is written.
//
// Top-K is not in this file: the host merges [Q, chunk] score blocks into a running
// per-query selection with frerec_fast.ssim.chunked_topk (see ssim_cuda.py).
//
// Bit-exact conventions. All pair and statistic arithmetic uses the explicit
// round-to-nearest intrinsics (__fmul_rn, __fadd_rn, __fmaf_rn, __fdiv_rn), which the
// compiler never contracts or reorders, so:
// - a pair's score does not depend on where the pair sits in a tile, a grid or a
//   database chunk: exact duplicate images score bit-identically, and exact ties stay
//   ties (the host gives them to the lower index);
// - an image scored against itself gives exactly 1.0: the pair kernel's horizontal sum
//   (g x) y and the statistics kernel's (g y) y are the same operations, the
//   covariance fma(-mu_q, mu_n, E[xy]) is the variance fma(-mu, mu, E[y^2]), and the
//   numerator factors 2 mu^2 + C1 and 2 cov + C2 equal the doubled halves A + A and
//   V + V (doubling is exact), so every map value is x / x.
//
// Precision: float32 as the torch reference; each cross term is 11 + 11 float32 FMAs,
// and var = E[y^2] - mu^2 is one fma (one rounding, against two in the reference).

#ifndef __CUDACC_RTC__
#include <cuda_runtime.h>
#endif

#define FREREC_SSIM_WIN 11          // window taps; the unrolled ring below assumes 11
#define FREREC_SSIM_TQ 32           // queries per block of the pair kernel
#define FREREC_SSIM_TN 32           // database images per block of the pair kernel
#define FREREC_SSIM_TX (FREREC_SSIM_TN / 2)                 // threads along images: 16
#define FREREC_SSIM_THREADS (FREREC_SSIM_TX * (FREREC_SSIM_TQ / 2))  // 256
#define FREREC_SSIM_STATS_BLOCK 128 // images (threads) per block of the statistics kernel
#define FREREC_SSIM_MAX_GRID_Y 65535  // query blocks per launch (gridDim.y limit)

#define FREREC_SSIM_C1 1.0e-4f     // (0.01 * data range 1)^2, as float32
#define FREREC_SSIM_C2 9.0e-4f     // (0.03 * data range 1)^2

// ---------------------------------------------------------------------------------
// Per-image statistics. img: [H*W, N]; taps: [11]; m, a, v: [HO*WO, N] outputs.
// Grid: ceil(N / FREREC_SSIM_STATS_BLOCK) blocks of FREREC_SSIM_STATS_BLOCK threads.
// ---------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(FREREC_SSIM_STATS_BLOCK)
    frerec_ssim_stats(const float* __restrict__ img, const float* __restrict__ taps,
                      float* __restrict__ m_out, float* __restrict__ a_out,
                      float* __restrict__ v_out, int N, int H, int W) {
  const long long n = (long long)blockIdx.x * blockDim.x + threadIdx.x;
  if (n >= N) return;
  const int WO = W - (FREREC_SSIM_WIN - 1);
  const long long ld = N;
  float g[FREREC_SSIM_WIN];
#pragma unroll
  for (int k = 0; k < FREREC_SSIM_WIN; ++k) g[k] = taps[k];
  const float c1h = 0.5f * FREREC_SSIM_C1, c2h = 0.5f * FREREC_SSIM_C2;

  for (int j = 0; j < WO; ++j) {
    // Ring of vertical accumulators, slot = output row mod 11: mean (em) and E[y^2] (eq).
    float em[FREREC_SSIM_WIN], eq[FREREC_SSIM_WIN];
#pragma unroll
    for (int s = 0; s < FREREC_SSIM_WIN; ++s) em[s] = eq[s] = 0.f;
    for (int r0 = 0; r0 < H; r0 += FREREC_SSIM_WIN) {
#pragma unroll
      for (int u = 0; u < FREREC_SSIM_WIN; ++u) {
        const int r = r0 + u;
        if (r < H) {
          const float* row = img + ((long long)r * W + j) * ld + n;
          float hs = 0.f, hq = 0.f;
#pragma unroll
          for (int t = 0; t < FREREC_SSIM_WIN; ++t) {
            const float y = row[t * ld];
            const float gy = __fmul_rn(g[t], y);
            hs = __fadd_rn(hs, gy);
            hq = __fmaf_rn(gy, y, hq);
          }
          // Output row o = r - k takes tap k; its slot is o mod 11 = (u - k) mod 11
          // (r0 is a multiple of 11), i.e. slot s takes tap (u - s) mod 11.
#pragma unroll
          for (int s = 0; s < FREREC_SSIM_WIN; ++s) {
            const int k = (u - s + FREREC_SSIM_WIN) % FREREC_SSIM_WIN;
            em[s] = __fmaf_rn(g[k], hs, em[s]);
            eq[s] = __fmaf_rn(g[k], hq, eq[s]);
          }
          // Slot (u + 1) mod 11 holds output row r - 10, now complete (rows r < 10
          // complete rows above the image: discarded). It restarts as row r + 1.
          const int s = (u + 1) % FREREC_SSIM_WIN;
          if (r >= FREREC_SSIM_WIN - 1) {
            const long long p = ((long long)(r - (FREREC_SSIM_WIN - 1)) * WO + j) * ld + n;
            const float mu = em[s];
            m_out[p] = mu;
            a_out[p] = __fadd_rn(__fmul_rn(mu, mu), c1h);
            v_out[p] = __fadd_rn(__fmaf_rn(-mu, mu, eq[s]), c2h);
          }
          em[s] = 0.f;
          eq[s] = 0.f;
        }
      }
    }
  }
}

// ---------------------------------------------------------------------------------
// Pairs. x: [H*W, Q] queries, y: [H*W, N] database images (pixel-major); mq, aq, vq:
// [HO*WO, Q] and md, ad, vd: [HO*WO, N] statistic maps; taps: [11]; out: [Q, ld_out]
// row-major, columns 0..N-1 written with the mean SSIM of each pair. q_block0: the
// first query block of this launch (launches with more than 65535 query blocks are
// split by the host). Grid: (ceil(N / TN), query blocks), FREREC_SSIM_THREADS threads:
// database blocks vary fastest, so the blocks resident at one time share a query tile.
// ---------------------------------------------------------------------------------
extern "C" __global__ void __launch_bounds__(FREREC_SSIM_THREADS)
    frerec_ssim_pairs(const float* __restrict__ x, const float* __restrict__ y,
                      const float* __restrict__ mq, const float* __restrict__ aq,
                      const float* __restrict__ vq, const float* __restrict__ md,
                      const float* __restrict__ ad, const float* __restrict__ vd,
                      const float* __restrict__ taps, float* __restrict__ out,
                      long long ld_out, int Q, int N, int H, int W, int q_block0) {
  // Window tiles of one 11-row chunk: [row u][tap t][image]; queries pre-multiplied by
  // g[t]. Zero outside the image ranges.
  __shared__ __align__(16) float sx[FREREC_SSIM_WIN][FREREC_SSIM_WIN][FREREC_SSIM_TQ];
  __shared__ __align__(16) float sy[FREREC_SSIM_WIN][FREREC_SSIM_WIN][FREREC_SSIM_TN];
  // Statistics of the output row completed by chunk row u (row r0 + u - 10), column j.
  // Out-of-range images get A = C1/2, V = C2/2 so that no denominator is 0.
  __shared__ __align__(16) float smq[FREREC_SSIM_WIN][FREREC_SSIM_TQ];
  __shared__ __align__(16) float saq[FREREC_SSIM_WIN][FREREC_SSIM_TQ];
  __shared__ __align__(16) float svq[FREREC_SSIM_WIN][FREREC_SSIM_TQ];
  __shared__ __align__(16) float smn[FREREC_SSIM_WIN][FREREC_SSIM_TN];
  __shared__ __align__(16) float san[FREREC_SSIM_WIN][FREREC_SSIM_TN];
  __shared__ __align__(16) float svn[FREREC_SSIM_WIN][FREREC_SSIM_TN];

  const int tid = threadIdx.x;
  const int tx = tid % FREREC_SSIM_TX, ty = tid / FREREC_SSIM_TX;
  const long long q0 = (long long)(q_block0 + (int)blockIdx.y) * FREREC_SSIM_TQ;
  const long long n0 = (long long)blockIdx.x * FREREC_SSIM_TN;
  const int HO = H - (FREREC_SSIM_WIN - 1), WO = W - (FREREC_SSIM_WIN - 1);
  const long long ldq = Q, ldn = N;
  const float c1h = 0.5f * FREREC_SSIM_C1, c2h = 0.5f * FREREC_SSIM_C2;

  float g[FREREC_SSIM_WIN];
#pragma unroll
  for (int k = 0; k < FREREC_SSIM_WIN; ++k) g[k] = taps[k];

  double total[2][2];
#pragma unroll
  for (int a = 0; a < 2; ++a)
#pragma unroll
    for (int b = 0; b < 2; ++b) total[a][b] = 0.0;

  for (int j = 0; j < WO; ++j) {
    float e[FREREC_SSIM_WIN][2][2];  // ring of vertical accumulators, slot = row mod 11
    float col[2][2];                 // this column's sum of SSIM map values
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        col[a][b] = 0.f;
#pragma unroll
        for (int s = 0; s < FREREC_SSIM_WIN; ++s) e[s][a][b] = 0.f;
      }

    for (int r0 = 0; r0 < H; r0 += FREREC_SSIM_WIN) {
      const int rows = H - r0 < FREREC_SSIM_WIN ? H - r0 : FREREC_SSIM_WIN;
      __syncthreads();  // the previous chunk's shared tiles are no longer read
      for (int i = tid; i < rows * FREREC_SSIM_WIN * FREREC_SSIM_TQ; i += FREREC_SSIM_THREADS) {
        const int c = i % FREREC_SSIM_TQ, t = (i / FREREC_SSIM_TQ) % FREREC_SSIM_WIN;
        const int u = i / (FREREC_SSIM_TQ * FREREC_SSIM_WIN);
        const long long q = q0 + c;
        const long long pix = (long long)(r0 + u) * W + j + t;
        // taps[t], not g[t]: a run-time index would move g to local memory.
        sx[u][t][c] = q < Q ? __fmul_rn(taps[t], x[pix * ldq + q]) : 0.f;
      }
      for (int i = tid; i < rows * FREREC_SSIM_WIN * FREREC_SSIM_TN; i += FREREC_SSIM_THREADS) {
        const int c = i % FREREC_SSIM_TN, t = (i / FREREC_SSIM_TN) % FREREC_SSIM_WIN;
        const int u = i / (FREREC_SSIM_TN * FREREC_SSIM_WIN);
        const long long nn = n0 + c;
        const long long pix = (long long)(r0 + u) * W + j + t;
        sy[u][t][c] = nn < N ? y[pix * ldn + nn] : 0.f;
      }
      for (int i = tid; i < rows * FREREC_SSIM_TQ; i += FREREC_SSIM_THREADS) {
        const int c = i % FREREC_SSIM_TQ, u = i / FREREC_SSIM_TQ;
        const int o = r0 + u - (FREREC_SSIM_WIN - 1);
        if (o < 0) continue;
        const long long q = q0 + c, p = ((long long)o * WO + j) * ldq + q;
        const bool in = q < Q;
        smq[u][c] = in ? mq[p] : 0.f;
        saq[u][c] = in ? aq[p] : c1h;
        svq[u][c] = in ? vq[p] : c2h;
      }
      for (int i = tid; i < rows * FREREC_SSIM_TN; i += FREREC_SSIM_THREADS) {
        const int c = i % FREREC_SSIM_TN, u = i / FREREC_SSIM_TN;
        const int o = r0 + u - (FREREC_SSIM_WIN - 1);
        if (o < 0) continue;
        const long long nn = n0 + c, p = ((long long)o * WO + j) * ldn + nn;
        const bool in = nn < N;
        smn[u][c] = in ? md[p] : 0.f;
        san[u][c] = in ? ad[p] : c1h;
        svn[u][c] = in ? vd[p] : c2h;
      }
      __syncthreads();

#pragma unroll
      for (int u = 0; u < FREREC_SSIM_WIN; ++u) {
        if (u < rows) {  // uniform over the block
          float h[2][2] = {{0.f, 0.f}, {0.f, 0.f}};
#pragma unroll
          for (int t = 0; t < FREREC_SSIM_WIN; ++t) {
            const float2 xv = *reinterpret_cast<const float2*>(&sx[u][t][2 * ty]);
            const float2 yv = *reinterpret_cast<const float2*>(&sy[u][t][2 * tx]);
            h[0][0] = __fmaf_rn(xv.x, yv.x, h[0][0]);
            h[0][1] = __fmaf_rn(xv.x, yv.y, h[0][1]);
            h[1][0] = __fmaf_rn(xv.y, yv.x, h[1][0]);
            h[1][1] = __fmaf_rn(xv.y, yv.y, h[1][1]);
          }
#pragma unroll
          for (int s = 0; s < FREREC_SSIM_WIN; ++s) {
            const int k = (u - s + FREREC_SSIM_WIN) % FREREC_SSIM_WIN;
#pragma unroll
            for (int a = 0; a < 2; ++a)
#pragma unroll
              for (int b = 0; b < 2; ++b) e[s][a][b] = __fmaf_rn(g[k], h[a][b], e[s][a][b]);
          }
          const int s = (u + 1) % FREREC_SSIM_WIN;  // output row r0 + u - 10, complete
          if (r0 + u >= FREREC_SSIM_WIN - 1) {
            const float2 mu_q = *reinterpret_cast<const float2*>(&smq[u][2 * ty]);
            const float2 a_q = *reinterpret_cast<const float2*>(&saq[u][2 * ty]);
            const float2 v_q = *reinterpret_cast<const float2*>(&svq[u][2 * ty]);
            const float2 mu_n = *reinterpret_cast<const float2*>(&smn[u][2 * tx]);
            const float2 a_n = *reinterpret_cast<const float2*>(&san[u][2 * tx]);
            const float2 v_n = *reinterpret_cast<const float2*>(&svn[u][2 * tx]);
            const float mqa[2] = {mu_q.x, mu_q.y}, aqa[2] = {a_q.x, a_q.y},
                        vqa[2] = {v_q.x, v_q.y};
            const float mnb[2] = {mu_n.x, mu_n.y}, anb[2] = {a_n.x, a_n.y},
                        vnb[2] = {v_n.x, v_n.y};
#pragma unroll
            for (int a = 0; a < 2; ++a)
#pragma unroll
              for (int b = 0; b < 2; ++b) {
                const float mm = __fmul_rn(mqa[a], mnb[b]);
                const float cov = __fmaf_rn(-mqa[a], mnb[b], e[s][a][b]);
                const float num = __fmul_rn(__fmaf_rn(2.f, mm, FREREC_SSIM_C1),
                                            __fmaf_rn(2.f, cov, FREREC_SSIM_C2));
                const float den = __fmul_rn(__fadd_rn(aqa[a], anb[b]), __fadd_rn(vqa[a], vnb[b]));
                col[a][b] = __fadd_rn(col[a][b], __fdiv_rn(num, den));
              }
          }
#pragma unroll
          for (int a = 0; a < 2; ++a)
#pragma unroll
            for (int b = 0; b < 2; ++b) e[s][a][b] = 0.f;  // restarts as output row r + 1
        }
      }
    }
#pragma unroll
    for (int a = 0; a < 2; ++a)
#pragma unroll
      for (int b = 0; b < 2; ++b) total[a][b] += (double)col[a][b];
  }

  const double count = (double)HO * (double)WO;
#pragma unroll
  for (int a = 0; a < 2; ++a) {
    const long long q = q0 + 2 * ty + a;
    if (q >= Q) continue;
#pragma unroll
    for (int b = 0; b < 2; ++b) {
      const long long nn = n0 + 2 * tx + b;
      if (nn < N) out[q * ld_out + nn] = (float)(total[a][b] / count);
    }
  }
}

#ifndef __CUDACC_RTC__
// Host launchers (used by csrc/cuda/ssim_topk_binding.cpp). Shapes as in the kernels;
// maps: [3, HO*WO, n] (M, A, V). H, W >= 11 are checked by the caller.
extern "C" cudaError_t frerec_ssim_stats_launch(const float* img, const float* taps, float* maps,
                                                int N, int H, int W, cudaStream_t stream) {
  if (N <= 0) return cudaSuccess;
  const long long plane = (long long)(H - (FREREC_SSIM_WIN - 1)) * (W - (FREREC_SSIM_WIN - 1)) * N;
  const unsigned blocks =
      (unsigned)(((long long)N + FREREC_SSIM_STATS_BLOCK - 1) / FREREC_SSIM_STATS_BLOCK);
  frerec_ssim_stats<<<blocks, FREREC_SSIM_STATS_BLOCK, 0, stream>>>(img, taps, maps, maps + plane,
                                                                   maps + 2 * plane, N, H, W);
  return cudaGetLastError();
}

extern "C" cudaError_t frerec_ssim_pairs_launch(const float* x, const float* y,
                                                const float* q_maps, const float* d_maps,
                                                const float* taps, float* out, long long ld_out,
                                                int Q, int N, int H, int W, cudaStream_t stream) {
  if (Q <= 0 || N <= 0) return cudaSuccess;
  const long long hw = (long long)(H - (FREREC_SSIM_WIN - 1)) * (W - (FREREC_SSIM_WIN - 1));
  const long long pq = hw * Q, pn = hw * N;
  const unsigned n_blocks = (unsigned)(((long long)N + FREREC_SSIM_TN - 1) / FREREC_SSIM_TN);
  const int q_blocks = (int)(((long long)Q + FREREC_SSIM_TQ - 1) / FREREC_SSIM_TQ);
  for (int qb = 0; qb < q_blocks; qb += FREREC_SSIM_MAX_GRID_Y) {
    const int left = q_blocks - qb;
    const int count = left < FREREC_SSIM_MAX_GRID_Y ? left : FREREC_SSIM_MAX_GRID_Y;
    frerec_ssim_pairs<<<dim3(n_blocks, (unsigned)count), FREREC_SSIM_THREADS, 0, stream>>>(
        x, y, q_maps, q_maps + pq, q_maps + 2 * pq, d_maps, d_maps + pn, d_maps + 2 * pn, taps, out,
        ld_out, Q, N, H, W, qb);
    const cudaError_t err = cudaGetLastError();
    if (err != cudaSuccess) return err;
  }
  return cudaSuccess;
}
#endif
