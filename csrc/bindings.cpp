// The module definition of frerec_fast._C: shape/device checks and the Python names only.
// Kernels live in csrc/cpu/*.cpp (raw pointers) and csrc/cuda/*.cu (extern "C").
#include <torch/extension.h>

#include "cpu/shr.h"
#include "cpu/ssim.h"

namespace {

void check_half_spectrum(const torch::Tensor& spec, int64_t W, const char* what) {
  TORCH_CHECK(spec.scalar_type() == torch::kComplexFloat, what,
              ": spectrum must be complex64 (rfft2 of float32 images), got ", spec.scalar_type());
  TORCH_CHECK(spec.dim() == 3, what, ": spectrum must be [planes, H, W/2+1], got ", spec.sizes());
  TORCH_CHECK(spec.is_contiguous(), what, ": spectrum must be contiguous");
  TORCH_CHECK(W >= 1 && spec.size(2) == W / 2 + 1, what, ": last dim ", spec.size(2),
              " does not match W/2+1 for W=", W);
}

void check_stat(const torch::Tensor& t, int64_t planes, const char* name) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat && t.dim() == 1 && t.size(0) == planes &&
                  t.is_contiguous() && t.device() == torch::kCPU,
              name, " must be a contiguous float32 CPU tensor of shape [", planes, "], got ",
              t.scalar_type(), " ", t.sizes());
}

std::tuple<torch::Tensor, torch::Tensor> band_stats_half_cpu(const torch::Tensor& spec, int64_t W,
                                                             double ratio, bool amplitude) {
  check_half_spectrum(spec, W, "band_stats_half");
  TORCH_CHECK(spec.device() == torch::kCPU, "band_stats_half: expected a CPU tensor");
  const int64_t planes = spec.size(0);
  auto mu = torch::empty({planes}, spec.options().dtype(torch::kFloat));
  auto sigma = torch::empty({planes}, spec.options().dtype(torch::kFloat));
  frerec::band_stats_half(reinterpret_cast<const std::complex<float>*>(spec.data_ptr()), planes,
                          spec.size(1), W, ratio, amplitude, mu.data_ptr<float>(),
                          sigma.data_ptr<float>());
  return {mu, sigma};
}

void shr_apply_half_cpu(torch::Tensor spec, int64_t W, double ratio, bool amplitude,
                        const torch::Tensor& mu_s, const torch::Tensor& sigma_s,
                        const torch::Tensor& mu_hat, const torch::Tensor& sigma_hat) {
  check_half_spectrum(spec, W, "shr_apply_half_");
  TORCH_CHECK(spec.device() == torch::kCPU, "shr_apply_half_: expected a CPU tensor");
  const int64_t planes = spec.size(0);
  check_stat(mu_s, planes, "mu_s");
  check_stat(sigma_s, planes, "sigma_s");
  check_stat(mu_hat, planes, "mu_hat");
  check_stat(sigma_hat, planes, "sigma_hat");
  frerec::shr_apply_half(reinterpret_cast<std::complex<float>*>(spec.data_ptr()), planes,
                         spec.size(1), W, ratio, amplitude, mu_s.data_ptr<float>(),
                         sigma_s.data_ptr<float>(), mu_hat.data_ptr<float>(),
                         sigma_hat.data_ptr<float>());
}

torch::Tensor ssim_matrix_cpu(const torch::Tensor& q, const torch::Tensor& db) {
  for (const auto* t : {&q, &db}) {
    TORCH_CHECK(t->device() == torch::kCPU && t->scalar_type() == torch::kFloat &&
                    t->is_contiguous() && t->dim() == 3,
                "ssim_matrix: expected contiguous float32 CPU tensors [N, h, w], got ",
                t->scalar_type(), " ", t->sizes());
  }
  TORCH_CHECK(q.size(1) == db.size(1) && q.size(2) == db.size(2),
              "ssim_matrix: query size ", q.sizes(), " differs from database size ", db.sizes());
  TORCH_CHECK(q.size(1) >= 11 && q.size(2) >= 11, "ssim_matrix: images must be at least 11x11");
  auto out = torch::empty({q.size(0), db.size(0)}, q.options());
  frerec::ssim_matrix(q.data_ptr<float>(), q.size(0), db.data_ptr<float>(), db.size(0), q.size(1),
                      q.size(2), out.data_ptr<float>());
  return out;
}

}  // namespace

#ifdef FREREC_WITH_CUDA
std::tuple<torch::Tensor, torch::Tensor> band_stats_half_cuda(const torch::Tensor& spec, int64_t W,
                                                              double ratio, bool amplitude);
void shr_apply_half_cuda(torch::Tensor spec, int64_t W, double ratio, bool amplitude,
                         const torch::Tensor& mu_s, const torch::Tensor& sigma_s,
                         const torch::Tensor& mu_hat, const torch::Tensor& sigma_hat);
// csrc/cuda/ring_pool_binding.cpp: FESA ring/sector pooling (deterministic, no atomics).
torch::Tensor ring_pool_cuda(const torch::Tensor& re, const torch::Tensor& im,
                             const torch::Tensor& order, const torch::Tensor& offsets,
                             int64_t n_bins, bool amplitude, bool mean);
torch::Tensor ring_scatter_cuda(const torch::Tensor& values, const torch::Tensor& index,
                                const torch::Tensor& offsets, int64_t H, int64_t Wh,
                                bool div_count);
std::tuple<torch::Tensor, torch::Tensor> ring_pool_amplitude_bwd_cuda(
    const torch::Tensor& grad, const torch::Tensor& re, const torch::Tensor& im,
    const torch::Tensor& index, const torch::Tensor& offsets);
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "frerec_fast compiled ops (C++ CPU, optional CUDA)";
  m.def("band_stats_half", &band_stats_half_cpu, "High-band mu, sigma from an rfft2 half spectrum",
        py::arg("spec"), py::arg("W"), py::arg("ratio"), py::arg("amplitude"));
  m.def("shr_apply_half_", &shr_apply_half_cpu, "In-place SHR on an rfft2 half spectrum",
        py::arg("spec"), py::arg("W"), py::arg("ratio"), py::arg("amplitude"), py::arg("mu_s"),
        py::arg("sigma_s"), py::arg("mu_hat"), py::arg("sigma_hat"));
  m.def("ssim_matrix", &ssim_matrix_cpu, "All-pairs SSIM [Q, N] of [Q,h,w] and [N,h,w] luma",
        py::arg("q"), py::arg("db"));
#ifdef FREREC_WITH_CUDA
  m.attr("WITH_CUDA") = true;
  m.def("band_stats_half_cuda", &band_stats_half_cuda, py::arg("spec"), py::arg("W"),
        py::arg("ratio"), py::arg("amplitude"));
  m.def("shr_apply_half_cuda_", &shr_apply_half_cuda, py::arg("spec"), py::arg("W"),
        py::arg("ratio"), py::arg("amplitude"), py::arg("mu_s"), py::arg("sigma_s"),
        py::arg("mu_hat"), py::arg("sigma_hat"));
  m.def("ring_pool_cuda", &ring_pool_cuda, "Per-bin sum/mean of [B,C,H,Wh] (or of |re + i im|)",
        py::arg("re"), py::arg("im"), py::arg("order"), py::arg("offsets"), py::arg("n_bins"),
        py::arg("amplitude"), py::arg("mean"));
  m.def("ring_scatter_cuda", &ring_scatter_cuda, "[B, n_bins] -> [B, H, Wh] by the bin map",
        py::arg("values"), py::arg("index"), py::arg("offsets"), py::arg("H"), py::arg("Wh"),
        py::arg("div_count"));
  m.def("ring_pool_amplitude_bwd_cuda", &ring_pool_amplitude_bwd_cuda,
        "Gradients of the fused amplitude ring pooling w.r.t. re and im", py::arg("grad"),
        py::arg("re"), py::arg("im"), py::arg("index"), py::arg("offsets"));
#else
  m.attr("WITH_CUDA") = false;
#endif
}
