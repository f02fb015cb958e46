// csrc/cuda/shr.cu on the CPU (see emu.h). The exported launchers mirror the host
// launchers of shr.cu (its #ifndef __CUDACC_RTC__ section) line for line: same early
// returns, same grid and block sizes; the CUDA stream argument is dropped and the
// return value is emu::kOk / kFault / kInvalidConfiguration instead of a cudaError_t.
#include "emu.h"

#include "../../cuda/shr.cu"

extern "C" {

int emu_shr_block() { return FREREC_BLOCK; }

// frerec_band_stats_half_launch: one block of FREREC_BLOCK threads per plane.
int emu_band_stats_half_launch(const void* spec, long long planes, int H, int W, double ratio,
                               int amplitude, float* mu, float* sigma) {
  if (planes == 0) return emu::kOk;
  return emu::launch(dim3((unsigned)planes), dim3(FREREC_BLOCK), [=] {
    frerec_band_stats_half((const float2*)spec, H, W, ratio, amplitude, mu, sigma);
  });
}

// frerec_shr_apply_half_launch: one thread per half-spectrum element.
int emu_shr_apply_half_launch(void* spec, long long planes, int H, int W, double ratio,
                              int amplitude, const float* mu_s, const float* sigma_s,
                              const float* mu_hat, const float* sigma_hat) {
  const long long total = planes * (long long)H * (W / 2 + 1);
  if (total == 0) return emu::kOk;
  const unsigned grid = (unsigned)((total + FREREC_BLOCK - 1) / FREREC_BLOCK);
  return emu::launch(dim3(grid), dim3(FREREC_BLOCK), [=] {
    frerec_shr_apply_half((float2*)spec, planes, H, W, ratio, amplitude, mu_s, sigma_s, mu_hat,
                          sigma_hat);
  });
}

}  // extern "C"
