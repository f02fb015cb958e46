// ctest: band_stats_half / shr_apply_half against a brute-force full-spectrum DFT in double.
#include <cmath>
#include <complex>
#include <cstdio>
#include <random>
#include <vector>

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
  if (std::fabs(a - b) > tol) {
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

int main() {
  std::mt19937 rng(1234);
  const int sizes[][2] = {{8, 8}, {9, 7}, {6, 11}, {5, 5}, {12, 10}};
  for (auto& s : sizes)
    for (bool amp : {false, true}) run_case(s[0], s[1], 0.5, amp, rng);
  run_case(10, 9, 0.25, false, rng);
  if (failures) {
    std::printf("%d failure(s)\n", failures);
    return 1;
  }
  std::printf("cpu_ops: all cases passed\n");
  return 0;
}
