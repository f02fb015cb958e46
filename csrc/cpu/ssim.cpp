// Exact all-pairs SSIM on the CPU. Per image, the local mean and variance maps are
// computed once; per pair, one fused pass filters the product q*d vertically, then a
// second filters it horizontally while accumulating the SSIM map's mean, so no
// product image or cross-term map is ever stored. OpenMP splits the pairs.
#include "ssim.h"

#include <cmath>
#include <vector>

namespace frerec {
namespace {

constexpr int kWin = 11;
constexpr double kC1 = 0.01 * 0.01, kC2 = 0.03 * 0.03;

struct Window {
  float g[kWin];
  Window() {
    double s = 0, t[kWin];
    for (int i = 0; i < kWin; ++i) {
      const double x = i - (kWin - 1) / 2.0;
      t[i] = std::exp(-(x * x) / (2 * 1.5 * 1.5));
      s += t[i];
    }
    for (int i = 0; i < kWin; ++i) g[i] = static_cast<float>(t[i] / s);
  }
};

// Vertical valid filter of a (or a*b when b is given): [h, w] -> tmp [h', w].
inline void filter_rows(const float* a, const float* b, int64_t h, int64_t w, const float* g,
                        float* tmp) {
  const int64_t hv = h - kWin + 1;
  for (int64_t i = 0; i < hv; ++i) {
    float* t = tmp + i * w;
    for (int64_t j = 0; j < w; ++j) t[j] = 0.f;
    for (int k = 0; k < kWin; ++k) {
      const float gk = g[k];
      const float* ar = a + (i + k) * w;
      if (b) {
        const float* br = b + (i + k) * w;
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) t[j] += gk * ar[j] * br[j];
      } else {
#pragma omp simd
        for (int64_t j = 0; j < w; ++j) t[j] += gk * ar[j];
      }
    }
  }
}

// Horizontal valid filter of one row: tmp row [w] -> out row [w'].
inline void filter_cols(const float* t, int64_t w, const float* g, float* out) {
  const int64_t wv = w - kWin + 1;
  for (int64_t j = 0; j < wv; ++j) out[j] = 0.f;
  for (int k = 0; k < kWin; ++k) {
    const float gk = g[k];
#pragma omp simd
    for (int64_t j = 0; j < wv; ++j) out[j] += gk * t[j + k];
  }
}

// mu and variance maps [h', w'] of each image (of x[ids[i]] when ids is given).
void local_stats(const float* x, int64_t n, int64_t h, int64_t w, const float* g, float* mu,
                 float* var, const int64_t* ids = nullptr) {
  const int64_t hv = h - kWin + 1, wv = w - kWin + 1;
#pragma omp parallel
  {
    std::vector<float> tmp(hv * w), tmp2(hv * w), row(wv);
#pragma omp for schedule(static)
    for (int64_t i = 0; i < n; ++i) {
      const float* xi = x + (ids ? ids[i] : i) * h * w;
      float* m = mu + i * hv * wv;
      float* v = var + i * hv * wv;
      filter_rows(xi, nullptr, h, w, g, tmp.data());
      filter_rows(xi, xi, h, w, g, tmp2.data());
      for (int64_t r = 0; r < hv; ++r) {
        filter_cols(tmp.data() + r * w, w, g, m + r * wv);
        filter_cols(tmp2.data() + r * w, w, g, row.data());
        for (int64_t j = 0; j < wv; ++j) v[r * wv + j] = row[j] - m[r * wv + j] * m[r * wv + j];
      }
    }
  }
}

// Mean SSIM of one pair from the images and their statistic maps; tmp: [h', w], exy: [w'].
inline float pair_ssim(const float* x, const float* y, const float* mq, const float* vq,
                       const float* md, const float* vd, int64_t h, int64_t w, const float* g,
                       float* tmp, float* exy) {
  const int64_t hv = h - kWin + 1, wv = w - kWin + 1;
  const float c1 = static_cast<float>(kC1), c2 = static_cast<float>(kC2);
  filter_rows(x, y, h, w, g, tmp);
  double total = 0.0;
  for (int64_t r = 0; r < hv; ++r) {
    filter_cols(tmp + r * w, w, g, exy);
    float row_sum = 0.f;
    const int64_t o = r * wv;
#pragma omp simd reduction(+ : row_sum)
    for (int64_t j = 0; j < wv; ++j) {
      const float mx = mq[o + j], my = md[o + j];
      const float cov = exy[j] - mx * my;
      const float num = (2.f * mx * my + c1) * (2.f * cov + c2);
      const float den = (mx * mx + my * my + c1) * (vq[o + j] + vd[o + j] + c2);
      row_sum += num / den;
    }
    total += row_sum;
  }
  return static_cast<float>(total / static_cast<double>(hv * wv));
}

}  // namespace

void ssim_matrix(const float* q, int64_t Q, const float* db, int64_t N, int64_t h, int64_t w,
                 float* out) {
  static const Window win;
  const float* g = win.g;
  const int64_t hv = h - kWin + 1, wv = w - kWin + 1, plane = hv * wv;
  std::vector<float> mu_q(Q * plane), var_q(Q * plane), mu_d(N * plane), var_d(N * plane);
  local_stats(q, Q, h, w, g, mu_q.data(), var_q.data());
  local_stats(db, N, h, w, g, mu_d.data(), var_d.data());
#pragma omp parallel
  {
    std::vector<float> tmp(hv * w), exy(wv);
#pragma omp for collapse(2) schedule(static)
    for (int64_t a = 0; a < Q; ++a) {
      for (int64_t b = 0; b < N; ++b) {
        out[a * N + b] = pair_ssim(q + a * h * w, db + b * h * w, mu_q.data() + a * plane,
                                   var_q.data() + a * plane, mu_d.data() + b * plane,
                                   var_d.data() + b * plane, h, w, g, tmp.data(), exy.data());
      }
    }
  }
}

void ssim_pairs(const float* q, int64_t Q, const float* db, int64_t N, int64_t h, int64_t w,
                const int64_t* cand, int64_t C, float* out) {
  static const Window win;
  const float* g = win.g;
  const int64_t hv = h - kWin + 1, wv = w - kWin + 1, plane = hv * wv;
  // Statistics once per database image that some query short-listed, not per pair.
  std::vector<int64_t> slot(N, -1), used;
  for (int64_t i = 0; i < Q * C; ++i) {
    if (slot[cand[i]] < 0) {
      slot[cand[i]] = static_cast<int64_t>(used.size());
      used.push_back(cand[i]);
    }
  }
  const int64_t U = static_cast<int64_t>(used.size());
  std::vector<float> mu_q(Q * plane), var_q(Q * plane), mu_d(U * plane), var_d(U * plane);
  local_stats(q, Q, h, w, g, mu_q.data(), var_q.data());
  local_stats(db, U, h, w, g, mu_d.data(), var_d.data(), used.data());
#pragma omp parallel
  {
    std::vector<float> tmp(hv * w), exy(wv);
#pragma omp for collapse(2) schedule(static)
    for (int64_t a = 0; a < Q; ++a) {
      for (int64_t c = 0; c < C; ++c) {
        const int64_t b = cand[a * C + c], u = slot[b];
        out[a * C + c] = pair_ssim(q + a * h * w, db + b * h * w, mu_q.data() + a * plane,
                                   var_q.data() + a * plane, mu_d.data() + u * plane,
                                   var_d.data() + u * plane, h, w, g, tmp.data(), exy.data());
      }
    }
  }
}

}  // namespace frerec
