// SSIM of every query against every database image (method §4), CPU, raw pointers.
#pragma once
#include <cstdint>

namespace frerec {

// q: [Q, h, w], db: [N, h, w] float32 luma in [0, 1]; out: [Q, N] float32.
// Gaussian window 11x11 (sigma 1.5), K1 0.01, K2 0.03, data range 1, population
// covariance, mean over the valid region. Requires h, w >= 11.
void ssim_matrix(const float* q, int64_t Q, const float* db, int64_t N, int64_t h, int64_t w,
                 float* out);

// The same SSIM for chosen pairs only: out[a, c] = SSIM(q[a], db[cand[a, c]]).
// cand: [Q, C] int64 positions in [0, N) (checked by the caller); out: [Q, C] float32.
// Bit-identical to the matching ssim_matrix entries.
void ssim_pairs(const float* q, int64_t Q, const float* db, int64_t N, int64_t h, int64_t w,
                const int64_t* cand, int64_t C, float* out);

}  // namespace frerec
