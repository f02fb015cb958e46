#include "shr.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <vector>

namespace frerec {
namespace {

// Per-row / per-column "inside the low band" flags; a position is high-band unless
// both its row and its column are low (method §1: |fu| < r*H/2 and |fv| < r*W/2).
struct Band {
  std::vector<char> low_row, low_col;
  std::vector<float> col_weight;  // 2 for columns whose mirror is not stored, else 1
  int64_t H, W, Wh;
  Band(int64_t H_, int64_t W_, double ratio) : H(H_), W(W_), Wh(W_ / 2 + 1) {
    low_row.resize(H);
    for (int64_t u = 0; u < H; ++u) {
      int64_t fu = u < (H + 1) / 2 ? u : u - H;
      low_row[u] = std::llabs(fu) < ratio * H / 2.0;
    }
    low_col.resize(Wh);
    col_weight.resize(Wh);
    for (int64_t v = 0; v < Wh; ++v) {
      low_col[v] = v < ratio * W / 2.0;
      bool self_mirror = (v == 0) || (W % 2 == 0 && v == W / 2);
      col_weight[v] = self_mirror ? 1.f : 2.f;
    }
  }
  bool high(int64_t u, int64_t v) const { return !(low_row[u] && low_col[v]); }
};

inline double value(const std::complex<float>& z, bool amplitude) {
  return amplitude ? std::abs(z) : z.real();
}

inline double deviation(const std::complex<float>& z, double mu, bool amplitude) {
  if (amplitude) return std::fabs(std::abs(z) - mu);
  // mu is real, so |F - mu| = hypot(Re F - mu, Im F).
  return std::hypot(z.real() - mu, static_cast<double>(z.imag()));
}

}  // namespace

void band_stats_half(const std::complex<float>* spec, int64_t planes, int64_t H, int64_t W,
                     double ratio, bool amplitude, float* mu, float* sigma) {
  const Band band(H, W, ratio);
  const int64_t plane_size = H * band.Wh;
#pragma omp parallel for schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    const std::complex<float>* s = spec + p * plane_size;
    double sum = 0.0, count = 0.0;
    for (int64_t u = 0; u < H; ++u)
      for (int64_t v = 0; v < band.Wh; ++v)
        if (band.high(u, v)) {
          sum += band.col_weight[v] * value(s[u * band.Wh + v], amplitude);
          count += band.col_weight[v];
        }
    // An empty band (ratio 1 on a 1x1 image) has no statistics: report zeros.
    const double m = count > 0 ? sum / count : 0.0;
    double dev = 0.0;
    for (int64_t u = 0; u < H; ++u)
      for (int64_t v = 0; v < band.Wh; ++v)
        if (band.high(u, v)) dev += band.col_weight[v] * deviation(s[u * band.Wh + v], m, amplitude);
    mu[p] = static_cast<float>(m);
    sigma[p] = static_cast<float>(count > 0 ? dev / count : 0.0);
  }
}

void shr_apply_half(std::complex<float>* spec, int64_t planes, int64_t H, int64_t W,
                    double ratio, bool amplitude, const float* mu_s, const float* sigma_s,
                    const float* mu_hat, const float* sigma_hat) {
  const Band band(H, W, ratio);
  const int64_t Wh = band.Wh;
#pragma omp parallel for collapse(2) schedule(static)
  for (int64_t p = 0; p < planes; ++p) {
    for (int64_t u = 0; u < H; ++u) {
      // sigma_s == 0: the normalised band is 0, so the band becomes mu_hat (method §3).
      const double scale = sigma_s[p] > 0 ? static_cast<double>(sigma_hat[p]) / sigma_s[p] : 0.0;
      const double ms = mu_s[p], mh = mu_hat[p];
      std::complex<float>* row = spec + (p * H + u) * Wh;
      for (int64_t v = 0; v < Wh; ++v) {
        if (!band.high(u, v)) continue;
        std::complex<float>& z = row[v];
        if (amplitude) {
          const double a = std::abs(z);
          const double na = std::max((a - ms) * scale + mh, 0.0);
          // The phase of an exactly-zero coefficient is taken as 0.
          z = a > 0 ? std::complex<float>(static_cast<float>(z.real() * (na / a)),
                                          static_cast<float>(z.imag() * (na / a)))
                    : std::complex<float>(static_cast<float>(na), 0.f);
        } else {
          z = std::complex<float>(static_cast<float>((z.real() - ms) * scale + mh),
                                  static_cast<float>(z.imag() * scale));
        }
      }
    }
  }
}

}  // namespace frerec
