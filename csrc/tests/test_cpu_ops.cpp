// ctest: band_stats_half / shr_apply_half against a brute-force full-spectrum DFT in double;
// the ring/sector pooling ops (ring_pool.h) against naive loops in double.
#include <algorithm>
#include <cmath>
#include <complex>
#include <cstdio>
#include <random>
#include <vector>

#include "cpu/ring_pool.h"
#include "cpu/shr.h"

using cd = std::complex<double>;
static const double kPi = 3.14159265358979323846;

// Orthonormal 2-D DFT of a real or complex H x W grid, O(H^2 W^2): fine for tiny sizes.
static std::vector<cd> dft2(const std::vector<cd>& x, int H, int W, int sign) {
  std::vector<cd> out(H * W);
  for (int u = 0; u < H; ++u)
    for (int v = 0; v < W; ++v) {
      cd acc = 0;
      for (int h = 0; h < H; ++h)
        for (int w = 0; w < W; ++w)
          acc += x[h * W + w] * std::polar(1.0, sign * 2 * kPi * (double(u) * h / H + double(v) * w / W));
      out[u * W + v] = acc / std::sqrt(double(H * W));
    }
  return out;
}

static bool high(int u, int v, int H, int W, double r) {
  int fu = u < (H + 1) / 2 ? u : u - H, fv = v < (W + 1) / 2 ? v : v - W;
  return !(std::abs(fu) < r * H / 2.0 && std::abs(fv) < r * W / 2.0);
}

static int failures = 0;
static void expect_close(double a, double b, double tol, const char* what, int H, int W, bool amp) {
  if (!(std::fabs(a - b) <= tol)) {  // NaN fails too
    std::printf("FAIL %s H=%d W=%d amplitude=%d: %.9g vs %.9g\n", what, H, W, amp, a, b);
    ++failures;
  }
}

static void run_case(int H, int W, double r, bool amp, std::mt19937& rng) {
  std::uniform_real_distribution<double> U(0, 1);
  std::vector<cd> img(H * W);
  for (auto& p : img) p = U(rng);
  auto F = dft2(img, H, W, -1);
  // Reference statistics over the full band.
  double sum = 0, n = 0;
  for (int u = 0; u < H; ++u)
    for (int v = 0; v < W; ++v)
      if (high(u, v, H, W, r)) { sum += amp ? std::abs(F[u * W + v]) : F[u * W + v].real(); n += 1; }
  const double mu = sum / n;
  double dev = 0;
  for (int u = 0; u < H; ++u)
    for (int v = 0; v < W; ++v)
      if (high(u, v, H, W, r)) dev += amp ? std::fabs(std::abs(F[u * W + v]) - mu) : std::abs(F[u * W + v] - mu);
  const double sigma = dev / n;
  // The half spectrum the op consumes.
  const int Wh = W / 2 + 1;
  std::vector<std::complex<float>> half(H * Wh);
  for (int u = 0; u < H; ++u)
    for (int v = 0; v < Wh; ++v) half[u * Wh + v] = std::complex<float>(F[u * W + v]);
  float mu_c, sigma_c;
  frerec::band_stats_half(half.data(), 1, H, W, r, amp, &mu_c, &sigma_c);
  expect_close(mu_c, mu, 1e-5, "mu", H, W, amp);
  expect_close(sigma_c, sigma, 1e-5, "sigma", H, W, amp);
  // SHR on the full spectrum, then back to pixels, versus the op on the half spectrum.
  const double mu_hat = 0.01, sigma_hat = 0.3, scale = sigma_hat / sigma;
  std::vector<cd> G = F;
  for (int u = 0; u < H; ++u)
    for (int v = 0; v < W; ++v) {
      if (!high(u, v, H, W, r)) continue;
      cd& z = G[u * W + v];
      if (amp) {
        double a = std::abs(z), na = std::max((a - mu) * scale + mu_hat, 0.0);
        z = a > 0 ? z * (na / a) : cd(na, 0);
      } else {
        z = (z - mu) * scale + mu_hat;
      }
    }
  auto ref = dft2(G, H, W, +1);
  const float ms = mu_c, ss = sigma_c, mh = float(mu_hat), sh = float(sigma_hat);
  frerec::shr_apply_half(half.data(), 1, H, W, r, amp, &ms, &ss, &mh, &sh);
  // Rebuild the full spectrum from the half by Hermitian symmetry, invert, compare pixels.
  std::vector<cd> full(H * W);
  for (int u = 0; u < H; ++u)
    for (int v = 0; v < W; ++v)
      full[u * W + v] = v < Wh ? cd(half[u * Wh + v]) : std::conj(cd(half[((H - u) % H) * Wh + (W - v)]));
  auto out = dft2(full, H, W, +1);
  double worst = 0;
  for (int i = 0; i < H * W; ++i) worst = std::max(worst, std::abs(out[i].real() - ref[i].real()));
  expect_close(worst, 0.0, 2e-5, "shr pixels", H, W, amp);
}

// Ring pooling on a random bin map (trailing bins left empty) over a [B, C, H, Wh] spectrum
// stored either interleaved (re/im element stride 2, as the .real/.imag of a complex
// tensor) or as two contiguous planes; forward, scatter and backward vs naive loops.
template <typename T>
static void ring_case(int B, int C, int H, int Wh, int n_bins, bool interleaved, std::mt19937& rng,
                      double tol) {
  const int HW = H * Wh;
  std::uniform_int_distribution<int> bin(0, std::max(n_bins - 3, 0));
  std::normal_distribution<double> N(0, 1);
  std::vector<int32_t> index(HW), offsets(n_bins + 1, 0);
  for (auto& k : index) k = bin(rng);
  for (int k : index) ++offsets[k + 1];
  for (int k = 0; k < n_bins; ++k) offsets[k + 1] += offsets[k];
  const int64_t n = int64_t(B) * C * HW;
  std::vector<T> store(2 * n);
  for (auto& v : store) v = T(N(rng));
  for (int64_t i = 0; i < 2 * n; i += 7) store[i] = store[i ^ 1] = 0;  // some X = 0
  const T* re = store.data();
  const T* im = interleaved ? store.data() + 1 : store.data() + n;
  const int64_t e = interleaved ? 2 : 1;
  const frerec::Strides4 st{int64_t(C) * HW * e, int64_t(HW) * e, int64_t(Wh) * e, e};
  auto at = [&](const T* p, int b, int c, int p_) { return double(p[b * st.b + c * st.c + p_ * st.w]); };
  // Naive: per bin, the mean over channels and positions of |X| (and of re alone).
  std::vector<double> amp_ref(B * n_bins, 0), sum_ref(B * n_bins, 0);
  for (int b = 0; b < B; ++b)
    for (int c = 0; c < C; ++c)
      for (int q = 0; q < HW; ++q) {
        const double x = at(re, b, c, q), y = at(im, b, c, q);
        amp_ref[b * n_bins + index[q]] += std::sqrt(x * x + y * y);
        sum_ref[b * n_bins + index[q]] += x;
      }
  std::vector<T> out(B * n_bins), out_sum(B * n_bins);
  frerec::ring_pool_cpu(re, im, B, C, H, Wh, st, st, index.data(), offsets.data(), n_bins, true,
                        true, out.data());
  frerec::ring_pool_cpu(re, re, B, C, H, Wh, st, st, index.data(), offsets.data(), n_bins, false,
                        false, out_sum.data());
  char what[96];
  std::snprintf(what, sizeof what, "ring_pool B=%d C=%d n_bins=%d interleaved=%d %s", B, C,
                n_bins, interleaved, sizeof(T) == 4 ? "f32" : "f64");
  for (int b = 0; b < B; ++b)
    for (int k = 0; k < n_bins; ++k) {
      const double cnt = offsets[k + 1] - offsets[k];
      const double want = cnt > 0 ? amp_ref[b * n_bins + k] / (cnt * C) : 0.0;
      expect_close(out[b * n_bins + k], want, tol * (1 + std::fabs(want)), what, H, Wh, true);
      const double want_sum = sum_ref[b * n_bins + k];
      expect_close(out_sum[b * n_bins + k], want_sum, tol * (1 + std::fabs(want_sum)) * HW, what,
                   H, Wh, false);
    }
  // Scatter (plain and divided by the count): exact gathers.
  std::vector<T> vals(B * n_bins), sc(int64_t(B) * HW), sc_div(int64_t(B) * HW);
  for (auto& v : vals) v = T(N(rng));
  frerec::ring_scatter_cpu(vals.data(), B, n_bins, index.data(), offsets.data(), HW, false,
                           sc.data());
  frerec::ring_scatter_cpu(vals.data(), B, n_bins, index.data(), offsets.data(), HW, true,
                           sc_div.data());
  for (int b = 0; b < B; ++b)
    for (int q = 0; q < HW; ++q) {
      const int k = index[q];
      const T cnt = T(offsets[k + 1] - offsets[k]);
      expect_close(sc[b * HW + q], vals[b * n_bins + k], 0.0, "ring_scatter", H, Wh, false);
      expect_close(sc_div[b * HW + q], vals[b * n_bins + k] / cnt, 0.0, "ring_scatter/count", H,
                   Wh, false);
    }
  // Backward of the mean amplitude pool: g / (count C) * re / |X|, 0 at X = 0.
  std::vector<T> g_re(n), g_im(n);
  frerec::ring_pool_amplitude_bwd_cpu(vals.data(), re, im, B, C, H, Wh, st, st, index.data(),
                                      offsets.data(), n_bins, g_re.data(), g_im.data());
  for (int b = 0; b < B; ++b)
    for (int c = 0; c < C; ++c)
      for (int q = 0; q < HW; ++q) {
        const int k = index[q];
        const double x = at(re, b, c, q), y = at(im, b, c, q), a = std::sqrt(x * x + y * y);
        const double f = a > 0 ? vals[b * n_bins + k] / ((offsets[k + 1] - offsets[k]) * double(C) * a) : 0;
        const int64_t o = (int64_t(b) * C + c) * HW + q;
        expect_close(g_re[o], x * f, tol * (1 + std::fabs(x * f)), "ring bwd re", H, Wh, true);
        expect_close(g_im[o], y * f, tol * (1 + std::fabs(y * f)), "ring bwd im", H, Wh, true);
      }
}

static void ring_cases(std::mt19937& rng) {
  // (B, C, H, Wh, n_bins): odd sizes, 1xN and 1x1 maps, one bin, more bins than positions,
  // and a 64 x 33 x 24-channel map that splits into several row blocks per image.
  const int cases[][5] = {{2, 3, 9, 6, 24}, {1, 1, 1, 7, 12}, {3, 2, 7, 1, 6}, {1, 1, 1, 1, 1},
                          {2, 2, 12, 4, 1}, {1, 2, 8, 5, 512}, {2, 24, 64, 33, 512}};
  for (auto& c : cases)
    for (bool inter : {false, true}) {
      ring_case<float>(c[0], c[1], c[2], c[3], c[4], inter, rng, 2e-5);
      ring_case<double>(c[0], c[1], c[2], c[3], c[4], inter, rng, 1e-12);
    }
}

int main() {
  std::mt19937 rng(1234);
  const int sizes[][2] = {{8, 8}, {9, 7}, {6, 11}, {5, 5}, {12, 10}};
  for (auto& s : sizes)
    for (bool amp : {false, true}) run_case(s[0], s[1], 0.5, amp, rng);
  run_case(10, 9, 0.25, false, rng);
  ring_cases(rng);
  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("cpu_ops: all cases passed\n");
  return 0;
}
