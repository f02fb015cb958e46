// Torch-facing wrappers of the CUDA SHR kernels in shr.cu (built only into a CUDA _C).
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/extension.h>

extern "C" cudaError_t frerec_band_stats_half_launch(const void* spec, long long planes, int H, int W,
                                                     double ratio, int amplitude, float* mu,
                                                     float* sigma, cudaStream_t stream);
extern "C" cudaError_t frerec_shr_apply_half_launch(void* spec, long long planes, int H, int W,
                                                    double ratio, int amplitude, const float* mu_s,
                                                    const float* sigma_s, const float* mu_hat,
                                                    const float* sigma_hat, cudaStream_t stream);

namespace {
void check_spec(const torch::Tensor& spec, int64_t W, const char* what) {
  TORCH_CHECK(spec.is_cuda(), what, ": expected a CUDA tensor");
  TORCH_CHECK(spec.scalar_type() == torch::kComplexFloat && spec.dim() == 3 && spec.is_contiguous(),
              what, ": spectrum must be contiguous complex64 [planes, H, W/2+1], got ",
              spec.scalar_type(), " ", spec.sizes());
  TORCH_CHECK(spec.size(2) == W / 2 + 1, what, ": last dim does not match W/2+1 for W=", W);
}
void check_stat(const torch::Tensor& t, const torch::Tensor& spec, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.get_device() == spec.get_device() &&
                  t.scalar_type() == torch::kFloat && t.dim() == 1 && t.size(0) == spec.size(0) &&
                  t.is_contiguous(),
              name, " must be a contiguous float32 [planes] tensor on the spectrum's GPU");
}
}  // namespace

std::tuple<torch::Tensor, torch::Tensor> band_stats_half_cuda(const torch::Tensor& spec, int64_t W,
                                                              double ratio, bool amplitude) {
  check_spec(spec, W, "band_stats_half_cuda");
  const c10::cuda::CUDAGuard guard(spec.device());
  auto mu = torch::empty({spec.size(0)}, spec.options().dtype(torch::kFloat));
  auto sigma = torch::empty_like(mu);
  auto err = frerec_band_stats_half_launch(spec.data_ptr(), spec.size(0), (int)spec.size(1), (int)W,
                                           ratio, amplitude, mu.data_ptr<float>(),
                                           sigma.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "band_stats_half_cuda: ", cudaGetErrorString(err));
  return {mu, sigma};
}

void shr_apply_half_cuda(torch::Tensor spec, int64_t W, double ratio, bool amplitude,
                         const torch::Tensor& mu_s, const torch::Tensor& sigma_s,
                         const torch::Tensor& mu_hat, const torch::Tensor& sigma_hat) {
  check_spec(spec, W, "shr_apply_half_cuda_");
  check_stat(mu_s, spec, "mu_s");
  check_stat(sigma_s, spec, "sigma_s");
  check_stat(mu_hat, spec, "mu_hat");
  check_stat(sigma_hat, spec, "sigma_hat");
  const c10::cuda::CUDAGuard guard(spec.device());
  auto err = frerec_shr_apply_half_launch(spec.data_ptr(), spec.size(0), (int)spec.size(1), (int)W,
                                          ratio, amplitude, mu_s.data_ptr<float>(),
                                          sigma_s.data_ptr<float>(), mu_hat.data_ptr<float>(),
                                          sigma_hat.data_ptr<float>(), at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, "shr_apply_half_cuda_: ", cudaGetErrorString(err));
}
