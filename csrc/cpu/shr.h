// Band statistics and SHR on an rfft2 half spectrum (method §1-3), CPU, raw pointers.
// No torch headers: the same code is linked into the Python extension and the ctest binary.
#pragma once
#include <complex>
#include <cstdint>

namespace frerec {

// spec: [planes, H, W/2+1] complex64, the rfft2 (norm="ortho") of real [planes, H, W] images.
// mu, sigma: [planes] outputs. Statistics are over the full fft2 high band, recovered
// exactly from the half spectrum through Hermitian symmetry (mirrored columns weigh 2).
void band_stats_half(const std::complex<float>* spec, int64_t planes, int64_t H, int64_t W,
                     double ratio, bool amplitude, float* mu, float* sigma);

// In place on the high band of each plane: AdaIN replacement with the plane's own
// statistics (mu_s, sigma_s) and the targets (mu_hat, sigma_hat), all [planes].
void shr_apply_half(std::complex<float>* spec, int64_t planes, int64_t H, int64_t W,
                    double ratio, bool amplitude, const float* mu_s, const float* sigma_s,
                    const float* mu_hat, const float* sigma_hat);

}  // namespace frerec
