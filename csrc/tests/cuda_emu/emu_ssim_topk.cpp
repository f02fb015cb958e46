// csrc/cuda/ssim_topk.cu on the CPU (see emu.h). The exported launchers mirror the host
// launchers of ssim_topk.cu (its #ifndef __CUDACC_RTC__ section) line for line: same
// early returns, map-plane offsets, grid and block sizes, and the split of the query
// blocks over several launches of at most FREREC_SSIM_MAX_GRID_Y blocks in grid.y. The
// CUDA stream argument is dropped and the return value is emu::kOk / kFault /
// kInvalidConfiguration instead of a cudaError_t.
#include "emu.h"

#include "../../cuda/ssim_topk.cu"

extern "C" {

// The launch geometry, so that tests can compare it with the Python side's copies.
void emu_ssim_geometry(int* out) {
  out[0] = FREREC_SSIM_TQ;
  out[1] = FREREC_SSIM_TN;
  out[2] = FREREC_SSIM_THREADS;
  out[3] = FREREC_SSIM_STATS_BLOCK;
  out[4] = FREREC_SSIM_MAX_GRID_Y;
}

int emu_ssim_stats_launch(const float* img, const float* taps, float* maps, int N, int H, int W) {
  if (N <= 0) return emu::kOk;
  const long long plane =
      (long long)(H - (FREREC_SSIM_WIN - 1)) * (W - (FREREC_SSIM_WIN - 1)) * N;
  const unsigned blocks =
      (unsigned)(((long long)N + FREREC_SSIM_STATS_BLOCK - 1) / FREREC_SSIM_STATS_BLOCK);
  return emu::launch(dim3(blocks), dim3(FREREC_SSIM_STATS_BLOCK), [=] {
    frerec_ssim_stats(img, taps, maps, maps + plane, maps + 2 * plane, N, H, W);
  });
}

// max_grid_y: FREREC_SSIM_MAX_GRID_Y in the real launcher; a parameter here so that a
// test can force the multi-launch split (q_block0 > 0) without 2 million queries.
int emu_ssim_pairs_launch(const float* x, const float* y, const float* q_maps,
                          const float* d_maps, const float* taps, float* out, long long ld_out,
                          int Q, int N, int H, int W, int max_grid_y) {
  if (Q <= 0 || N <= 0) return emu::kOk;
  const long long hw = (long long)(H - (FREREC_SSIM_WIN - 1)) * (W - (FREREC_SSIM_WIN - 1));
  const long long pq = hw * Q, pn = hw * N;
  const unsigned n_blocks = (unsigned)(((long long)N + FREREC_SSIM_TN - 1) / FREREC_SSIM_TN);
  const int q_blocks = (int)(((long long)Q + FREREC_SSIM_TQ - 1) / FREREC_SSIM_TQ);
  for (int qb = 0; qb < q_blocks; qb += max_grid_y) {
    const int left = q_blocks - qb;
    const int count = left < max_grid_y ? left : max_grid_y;
    const int err = emu::launch(dim3(n_blocks, (unsigned)count), dim3(FREREC_SSIM_THREADS), [=] {
      frerec_ssim_pairs(x, y, q_maps, q_maps + pq, q_maps + 2 * pq, d_maps, d_maps + pn,
                        d_maps + 2 * pn, taps, out, ld_out, Q, N, H, W, qb);
    });
    if (err != emu::kOk) return err;
  }
  return emu::kOk;
}

}  // extern "C"
