// The module definition of frerec_fast._C: shape/device checks and the Python names only.
// Kernels live in csrc/cpu/*.cpp (raw pointers) and csrc/cuda/*.cu (extern "C").
#include <torch/extension.h>

#include "cpu/ring_pool.h"
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

torch::Tensor ssim_pairs_cpu(const torch::Tensor& q, const torch::Tensor& db,
                             const torch::Tensor& cand) {
  for (const auto* t : {&q, &db}) {
    TORCH_CHECK(t->device() == torch::kCPU && t->scalar_type() == torch::kFloat &&
                    t->is_contiguous() && t->dim() == 3,
                "ssim_pairs: expected contiguous float32 CPU tensors [N, h, w], got ",
                t->scalar_type(), " ", t->sizes());
  }
  TORCH_CHECK(q.size(1) == db.size(1) && q.size(2) == db.size(2),
              "ssim_pairs: query size ", q.sizes(), " differs from database size ", db.sizes());
  TORCH_CHECK(q.size(1) >= 11 && q.size(2) >= 11, "ssim_pairs: images must be at least 11x11");
  TORCH_CHECK(cand.device() == torch::kCPU && cand.scalar_type() == torch::kLong &&
                  cand.is_contiguous() && cand.dim() == 2 && cand.size(0) == q.size(0),
              "ssim_pairs: cand must be a contiguous int64 CPU tensor [Q, C], got ",
              cand.scalar_type(), " ", cand.sizes());
  if (cand.numel()) {
    const auto mm = torch::aminmax(cand);
    TORCH_CHECK(std::get<0>(mm).item<int64_t>() >= 0 && std::get<1>(mm).item<int64_t>() < db.size(0),
                "ssim_pairs: candidate positions outside [0, ", db.size(0), ")");
  }
  auto out = torch::empty({q.size(0), cand.size(1)}, q.options());
  {
    py::gil_scoped_release release;
    frerec::ssim_pairs(q.data_ptr<float>(), q.size(0), db.data_ptr<float>(), db.size(0),
                       q.size(1), q.size(2), cand.data_ptr<int64_t>(), cand.size(1),
                       out.data_ptr<float>());
  }
  return out;
}

// ---- FESA ring/sector pooling on CPU (csrc/cpu/ring_pool.cpp). The bin map arrives as the
// host plan of frerec_fast/fast/ring_plan.py: index [H*Wh] int32, offsets [n_bins+1] int32.

void check_ring_spectrum(const torch::Tensor& t, const char* what, const char* name) {
  TORCH_CHECK(t.device() == torch::kCPU, what, ": ", name, " must be a CPU tensor, got ",
              t.device());
  TORCH_CHECK(t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kDouble, what, ": ",
              name, " must be float32 or float64, got ", t.scalar_type());
  TORCH_CHECK(t.dim() == 4, what, ": ", name, " must be [B, C, H, Wh], got ", t.sizes());
}

// Checks the plan against the map size and returns nothing; the index range is checked
// here too (one pass over H*Wh int32), so no call can read or write outside the bins.
void check_ring_plan(const torch::Tensor& index, const torch::Tensor& offsets, int64_t hw,
                     int64_t n_bins, const char* what) {
  TORCH_CHECK(n_bins >= 0, what, ": n_bins must be >= 0, got ", n_bins);
  for (const auto* t : {&index, &offsets}) {
    TORCH_CHECK(t->device() == torch::kCPU && t->scalar_type() == torch::kInt && t->dim() == 1 &&
                    t->is_contiguous(),
                what, ": the plan's index/offsets must be contiguous 1-D int32 CPU tensors, got ",
                t->scalar_type(), " ", t->sizes());
  }
  TORCH_CHECK(index.numel() == hw, what, ": index has ", index.numel(), " entries for a map of ",
              hw, " positions");
  TORCH_CHECK(offsets.numel() == n_bins + 1, what, ": offsets has ", offsets.numel(),
              " entries, expected n_bins + 1 = ", n_bins + 1);
  const int32_t* off = offsets.data_ptr<int32_t>();
  TORCH_CHECK(off[0] == 0 && off[n_bins] == hw, what, ": offsets must run from 0 to ", hw);
  const int32_t* idx = index.data_ptr<int32_t>();
  int64_t bad = 0;
  for (int64_t p = 0; p < hw; ++p) bad += (idx[p] < 0) | (idx[p] >= n_bins);
  TORCH_CHECK(bad == 0, what, ": ", bad, " index value(s) outside [0, n_bins=", n_bins, ")");
}

frerec::Strides4 strides4(const torch::Tensor& t) {
  return {t.stride(0), t.stride(1), t.stride(2), t.stride(3)};
}

torch::Tensor ring_pool_cpu_op(const torch::Tensor& re, const torch::Tensor& im,
                               const torch::Tensor& index, const torch::Tensor& offsets,
                               int64_t n_bins, bool amplitude, bool mean) {
  const char* what = "ring_pool_cpu";
  check_ring_spectrum(re, what, "re");
  if (amplitude) {
    check_ring_spectrum(im, what, "im");
    TORCH_CHECK(im.sizes() == re.sizes() && im.scalar_type() == re.scalar_type(), what,
                ": re ", re.sizes(), " ", re.scalar_type(), " and im ", im.sizes(), " ",
                im.scalar_type(), " must agree");
  }
  const int64_t B = re.size(0), C = re.size(1), H = re.size(2), Wh = re.size(3);
  check_ring_plan(index, offsets, H * Wh, n_bins, what);
  const torch::Tensor& imag = amplitude ? im : re;
  auto out = torch::empty({B, n_bins}, re.options());
  if (re.scalar_type() == torch::kDouble) {
    frerec::ring_pool_cpu(re.data_ptr<double>(), imag.data_ptr<double>(), B, C, H, Wh,
                          strides4(re), strides4(imag), index.data_ptr<int32_t>(),
                          offsets.data_ptr<int32_t>(), n_bins, amplitude, mean,
                          out.data_ptr<double>());
  } else {
    frerec::ring_pool_cpu(re.data_ptr<float>(), imag.data_ptr<float>(), B, C, H, Wh,
                          strides4(re), strides4(imag), index.data_ptr<int32_t>(),
                          offsets.data_ptr<int32_t>(), n_bins, amplitude, mean,
                          out.data_ptr<float>());
  }
  return out;
}

torch::Tensor ring_scatter_cpu_op(const torch::Tensor& values, const torch::Tensor& index,
                                  const torch::Tensor& offsets, int64_t H, int64_t Wh,
                                  bool div_count) {
  const char* what = "ring_scatter_cpu";
  TORCH_CHECK(values.device() == torch::kCPU && values.dim() == 2 && values.is_contiguous() &&
                  (values.scalar_type() == torch::kFloat || values.scalar_type() == torch::kDouble),
              what, ": values must be a contiguous float32/float64 CPU tensor [B, n_bins], got ",
              values.scalar_type(), " ", values.sizes());
  TORCH_CHECK(H >= 0 && Wh >= 0, what, ": bad map size ", H, "x", Wh);
  const int64_t B = values.size(0), n_bins = values.size(1);
  check_ring_plan(index, offsets, H * Wh, n_bins, what);
  auto out = torch::empty({B, H, Wh}, values.options());
  if (values.scalar_type() == torch::kDouble) {
    frerec::ring_scatter_cpu(values.data_ptr<double>(), B, n_bins, index.data_ptr<int32_t>(),
                             offsets.data_ptr<int32_t>(), H * Wh, div_count,
                             out.data_ptr<double>());
  } else {
    frerec::ring_scatter_cpu(values.data_ptr<float>(), B, n_bins, index.data_ptr<int32_t>(),
                             offsets.data_ptr<int32_t>(), H * Wh, div_count,
                             out.data_ptr<float>());
  }
  return out;
}

std::tuple<torch::Tensor, torch::Tensor> ring_pool_amplitude_bwd_cpu_op(
    const torch::Tensor& grad, const torch::Tensor& re, const torch::Tensor& im,
    const torch::Tensor& index, const torch::Tensor& offsets) {
  const char* what = "ring_pool_amplitude_bwd_cpu";
  check_ring_spectrum(re, what, "re");
  check_ring_spectrum(im, what, "im");
  TORCH_CHECK(im.sizes() == re.sizes() && im.scalar_type() == re.scalar_type(), what, ": re ",
              re.sizes(), " and im ", im.sizes(), " must agree");
  const int64_t B = re.size(0), C = re.size(1), H = re.size(2), Wh = re.size(3);
  TORCH_CHECK(grad.device() == torch::kCPU && grad.dim() == 2 && grad.size(0) == B &&
                  grad.is_contiguous() && grad.scalar_type() == re.scalar_type(),
              what, ": grad must be a contiguous [", B, ", n_bins] ", re.scalar_type(),
              " CPU tensor, got ", grad.scalar_type(), " ", grad.sizes());
  const int64_t n_bins = grad.size(1);
  check_ring_plan(index, offsets, H * Wh, n_bins, what);
  auto g_re = torch::empty({B, C, H, Wh}, re.options());
  auto g_im = torch::empty_like(g_re);
  if (re.scalar_type() == torch::kDouble) {
    frerec::ring_pool_amplitude_bwd_cpu(grad.data_ptr<double>(), re.data_ptr<double>(),
                                        im.data_ptr<double>(), B, C, H, Wh, strides4(re),
                                        strides4(im), index.data_ptr<int32_t>(),
                                        offsets.data_ptr<int32_t>(), n_bins,
                                        g_re.data_ptr<double>(), g_im.data_ptr<double>());
  } else {
    frerec::ring_pool_amplitude_bwd_cpu(grad.data_ptr<float>(), re.data_ptr<float>(),
                                        im.data_ptr<float>(), B, C, H, Wh, strides4(re),
                                        strides4(im), index.data_ptr<int32_t>(),
                                        offsets.data_ptr<int32_t>(), n_bins,
                                        g_re.data_ptr<float>(), g_im.data_ptr<float>());
  }
  return {g_re, g_im};
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
// csrc/cuda/ssim_topk_binding.cpp: exact all-pairs SSIM (statistic maps, then pairs).
torch::Tensor ssim_stats_cuda(const torch::Tensor& img, const torch::Tensor& taps, int64_t H,
                              int64_t W);
torch::Tensor ssim_pairs_cuda(const torch::Tensor& q_img, const torch::Tensor& q_maps,
                              const torch::Tensor& d_img, const torch::Tensor& d_maps,
                              const torch::Tensor& taps, int64_t H, int64_t W);
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
  m.def("ssim_pairs", &ssim_pairs_cpu, "SSIM of chosen pairs [Q, C]: q[a] vs db[cand[a, c]]",
        py::arg("q"), py::arg("db"), py::arg("cand"));
  m.def("ring_pool_cpu", &ring_pool_cpu_op,
        "Per-bin sum/mean of [B,C,H,Wh] (or of |re + i im|), deterministic, any strides",
        py::arg("re"), py::arg("im"), py::arg("index"), py::arg("offsets"), py::arg("n_bins"),
        py::arg("amplitude"), py::arg("mean"), py::call_guard<py::gil_scoped_release>());
  m.def("ring_scatter_cpu", &ring_scatter_cpu_op, "[B, n_bins] -> [B, H, Wh] by the bin map",
        py::arg("values"), py::arg("index"), py::arg("offsets"), py::arg("H"), py::arg("Wh"),
        py::arg("div_count"), py::call_guard<py::gil_scoped_release>());
  m.def("ring_pool_amplitude_bwd_cpu", &ring_pool_amplitude_bwd_cpu_op,
        "Gradients of the fused amplitude ring pooling w.r.t. re and im", py::arg("grad"),
        py::arg("re"), py::arg("im"), py::arg("index"), py::arg("offsets"),
        py::call_guard<py::gil_scoped_release>());
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
  m.def("ssim_stats_cuda", &ssim_stats_cuda,
        "SSIM statistic maps [3, H'*W', N] (mu, mu^2 + C1/2, var + C2/2) of [H*W, N] images",
        py::arg("img"), py::arg("taps"), py::arg("H"), py::arg("W"));
  m.def("ssim_pairs_cuda", &ssim_pairs_cuda,
        "Mean SSIM [Q, N] of pixel-major queries [H*W, Q] and images [H*W, N]", py::arg("q_img"),
        py::arg("q_maps"), py::arg("d_img"), py::arg("d_maps"), py::arg("taps"), py::arg("H"),
        py::arg("W"));
#else
  m.attr("WITH_CUDA") = false;
#endif
}
