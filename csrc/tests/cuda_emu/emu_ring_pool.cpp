// csrc/cuda/ring_pool.cu on the CPU (see emu.h). The exported launchers mirror the host
// launchers of ring_pool.cu (its #ifndef __CUDACC_RTC__ section) line for line: same
// early returns, grid-size checks, grid and block sizes and f32/f64 dispatch; the CUDA
// stream argument is dropped and the return value is emu::kOk / kFault /
// kInvalidConfiguration instead of a cudaError_t.
#include "emu.h"

#include "../../cuda/ring_pool.cu"

extern "C" {

int emu_ring_warps() { return FREREC_RING_WARPS; }
int emu_ring_ew_block() { return FREREC_RING_EW_BLOCK; }

int emu_ring_pool_launch(int f64, const void* re, const void* im, const int* order,
                         const int* offsets, void* out, long long B, int n_bins, int C, int Wh,
                         const long long* rs, const long long* is, int amplitude, int mean) {
  if (B == 0 || n_bins == 0) return emu::kOk;
  const long long blocks = B * ((n_bins + FREREC_RING_WARPS - 1) / FREREC_RING_WARPS);
  if (blocks > 0x7fffffffLL) return emu::kInvalidConfiguration;
  // Strides are read on the host, as the real launcher does: copy them now.
  const long long r0 = rs[0], r1 = rs[1], r2 = rs[2], r3 = rs[3];
  const long long i0 = is[0], i1 = is[1], i2 = is[2], i3 = is[3];
  if (f64) {
    return emu::launch(dim3((unsigned)blocks), dim3(FREREC_RING_THREADS), [=] {
      frerec_ring_pool_f64((const double*)re, (const double*)im, order, offsets, (double*)out,
                           n_bins, C, Wh, r0, r1, r2, r3, i0, i1, i2, i3, amplitude, mean);
    });
  }
  return emu::launch(dim3((unsigned)blocks), dim3(FREREC_RING_THREADS), [=] {
    frerec_ring_pool_f32((const float*)re, (const float*)im, order, offsets, (float*)out, n_bins,
                         C, Wh, r0, r1, r2, r3, i0, i1, i2, i3, amplitude, mean);
  });
}

int emu_ring_scatter_launch(int f64, const void* values, const int* index, const int* offsets,
                            void* out, long long B, int HW, int n_bins, int div_count) {
  const long long total = B * (long long)HW;
  if (total == 0) return emu::kOk;
  const long long grid = (total + FREREC_RING_EW_BLOCK - 1) / FREREC_RING_EW_BLOCK;
  if (grid > 0x7fffffffLL) return emu::kInvalidConfiguration;
  if (f64) {
    return emu::launch(dim3((unsigned)grid), dim3(FREREC_RING_EW_BLOCK), [=] {
      frerec_ring_scatter_f64((const double*)values, index, offsets, (double*)out, total, HW,
                              n_bins, div_count);
    });
  }
  return emu::launch(dim3((unsigned)grid), dim3(FREREC_RING_EW_BLOCK), [=] {
    frerec_ring_scatter_f32((const float*)values, index, offsets, (float*)out, total, HW, n_bins,
                            div_count);
  });
}

int emu_ring_amp_bwd_launch(int f64, const void* grad, const void* re, const void* im,
                            const int* index, const int* offsets, void* g_re, void* g_im,
                            long long B, int C, int HW, int Wh, int n_bins, const long long* rs,
                            const long long* is) {
  const long long total = B * C * (long long)HW;
  if (total == 0) return emu::kOk;
  const long long grid = (total + FREREC_RING_EW_BLOCK - 1) / FREREC_RING_EW_BLOCK;
  if (grid > 0x7fffffffLL) return emu::kInvalidConfiguration;
  const long long r0 = rs[0], r1 = rs[1], r2 = rs[2], r3 = rs[3];
  const long long i0 = is[0], i1 = is[1], i2 = is[2], i3 = is[3];
  if (f64) {
    return emu::launch(dim3((unsigned)grid), dim3(FREREC_RING_EW_BLOCK), [=] {
      frerec_ring_amp_bwd_f64((const double*)grad, (const double*)re, (const double*)im, index,
                              offsets, (double*)g_re, (double*)g_im, total, C, HW, Wh, n_bins,
                              r0, r1, r2, r3, i0, i1, i2, i3);
    });
  }
  return emu::launch(dim3((unsigned)grid), dim3(FREREC_RING_EW_BLOCK), [=] {
    frerec_ring_amp_bwd_f32((const float*)grad, (const float*)re, (const float*)im, index,
                            offsets, (float*)g_re, (float*)g_im, total, C, HW, Wh, n_bins, r0, r1,
                            r2, r3, i0, i1, i2, i3);
  });
}

}  // extern "C"
