// Torch-facing wrappers of the CUDA ring/sector pooling kernels in ring_pool.cu
// (built only into a CUDA _C). The CSR plan (order, offsets, index) comes from
// frerec_fast/fast/ring_plan.py; autograd lives in frerec_fast/fast/ring_pool_cuda.py.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/extension.h>

extern "C" cudaError_t frerec_ring_pool_launch(int f64, const void* re, const void* im,
                                               const int* order, const int* offsets, void* out,
                                               long long B, int n_bins, int C, int Wh,
                                               const long long* rs, const long long* is,
                                               int amplitude, int mean, cudaStream_t stream);
extern "C" cudaError_t frerec_ring_scatter_launch(int f64, const void* values, const int* index,
                                                  const int* offsets, void* out, long long B,
                                                  int HW, int n_bins, int div_count,
                                                  cudaStream_t stream);
extern "C" cudaError_t frerec_ring_amp_bwd_launch(int f64, const void* grad, const void* re,
                                                  const void* im, const int* index,
                                                  const int* offsets, void* g_re, void* g_im,
                                                  long long B, int C, int HW, int Wh, int n_bins,
                                                  const long long* rs, const long long* is,
                                                  cudaStream_t stream);

namespace {
void check_float(const torch::Tensor& t, const char* what, const char* name) {
  TORCH_CHECK(t.is_cuda(), what, ": ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.scalar_type() == torch::kFloat || t.scalar_type() == torch::kDouble, what, ": ",
              name, " must be float32 or float64, got ", t.scalar_type());
}

void check_int_vec(const torch::Tensor& t, const torch::Tensor& like, int64_t n, const char* what,
                   const char* name) {
  TORCH_CHECK(t.is_cuda() && t.get_device() == like.get_device() &&
                  t.scalar_type() == torch::kInt && t.dim() == 1 && t.size(0) == n &&
                  t.is_contiguous(),
              what, ": ", name, " must be a contiguous int32 [", n,
              "] tensor on the data's GPU, got ", t.scalar_type(), " ", t.sizes());
}

void check_spectrum(const torch::Tensor& re, const torch::Tensor& im, const char* what) {
  check_float(re, what, "re");
  check_float(im, what, "im");
  TORCH_CHECK(re.dim() == 4 && re.sizes() == im.sizes(), what, ": re ", re.sizes(), " and im ",
              im.sizes(), " must both be [B, C, H, Wh]");
  TORCH_CHECK(re.scalar_type() == im.scalar_type() && re.get_device() == im.get_device(), what,
              ": re and im must share dtype and device");
  TORCH_CHECK(re.size(1) <= INT32_MAX && re.size(2) * re.size(3) <= INT32_MAX, what,
              ": spectrum too large for int32 indexing");
}

void strides4(const torch::Tensor& t, long long* s) {
  for (int d = 0; d < 4; ++d) s[d] = (long long)t.stride(d);
}
}  // namespace

// Per-bin sum (mean: divided by C * count, empty bins 0) of re ([B, C, H, Wh]), or of
// sqrt(re^2 + im^2) when amplitude. Returns [B, n_bins] of re's dtype.
torch::Tensor ring_pool_cuda(const torch::Tensor& re, const torch::Tensor& im,
                             const torch::Tensor& order, const torch::Tensor& offsets,
                             int64_t n_bins, bool amplitude, bool mean) {
  const char* what = "ring_pool_cuda";
  check_spectrum(re, im, what);
  const int64_t hw = re.size(2) * re.size(3);
  check_int_vec(order, re, hw, what, "order");
  check_int_vec(offsets, re, n_bins + 1, what, "offsets");
  const c10::cuda::CUDAGuard guard(re.device());
  auto out = torch::empty({re.size(0), n_bins}, re.options());
  if (hw == 0 || re.size(1) == 0) return out.zero_();
  long long rs[4], is[4];
  strides4(re, rs);
  strides4(im, is);
  auto err = frerec_ring_pool_launch(re.scalar_type() == torch::kDouble, re.data_ptr(),
                                     im.data_ptr(), order.data_ptr<int>(), offsets.data_ptr<int>(),
                                     out.data_ptr(), re.size(0), (int)n_bins, (int)re.size(1),
                                     (int)re.size(3), rs, is, amplitude, mean,
                                     at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, what, ": ", cudaGetErrorString(err));
  return out;
}

// out[b, h, w] = values[b, index[h * Wh + w]] (divided by the bin's count when div_count).
torch::Tensor ring_scatter_cuda(const torch::Tensor& values, const torch::Tensor& index,
                                const torch::Tensor& offsets, int64_t H, int64_t Wh,
                                bool div_count) {
  const char* what = "ring_scatter_cuda";
  check_float(values, what, "values");
  TORCH_CHECK(values.dim() == 2 && values.is_contiguous(), what,
              ": values must be contiguous [B, n_bins], got ", values.sizes());
  TORCH_CHECK(H * Wh <= INT32_MAX, what, ": map too large for int32 indexing");
  check_int_vec(index, values, H * Wh, what, "index");
  check_int_vec(offsets, values, values.size(1) + 1, what, "offsets");
  const c10::cuda::CUDAGuard guard(values.device());
  auto out = torch::empty({values.size(0), H, Wh}, values.options());
  auto err = frerec_ring_scatter_launch(values.scalar_type() == torch::kDouble, values.data_ptr(),
                                        index.data_ptr<int>(), offsets.data_ptr<int>(),
                                        out.data_ptr(), values.size(0), (int)(H * Wh),
                                        (int)values.size(1), div_count,
                                        at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, what, ": ", cudaGetErrorString(err));
  return out;
}

// Gradients of the fused amplitude pooling w.r.t. re and im: contiguous [B, C, H, Wh].
std::tuple<torch::Tensor, torch::Tensor> ring_pool_amplitude_bwd_cuda(
    const torch::Tensor& grad, const torch::Tensor& re, const torch::Tensor& im,
    const torch::Tensor& index, const torch::Tensor& offsets) {
  const char* what = "ring_pool_amplitude_bwd_cuda";
  check_spectrum(re, im, what);
  check_float(grad, what, "grad");
  TORCH_CHECK(grad.scalar_type() == re.scalar_type() && grad.get_device() == re.get_device(), what,
              ": grad must share the spectrum's dtype and device");
  TORCH_CHECK(grad.dim() == 2 && grad.size(0) == re.size(0) && grad.is_contiguous(), what,
              ": grad must be contiguous [B, n_bins], got ", grad.sizes());
  const int64_t hw = re.size(2) * re.size(3);
  check_int_vec(index, re, hw, what, "index");
  check_int_vec(offsets, re, grad.size(1) + 1, what, "offsets");
  const c10::cuda::CUDAGuard guard(re.device());
  auto g_re = torch::empty(re.sizes(), re.options().memory_format(torch::MemoryFormat::Contiguous));
  auto g_im = torch::empty_like(g_re);
  long long rs[4], is[4];
  strides4(re, rs);
  strides4(im, is);
  auto err = frerec_ring_amp_bwd_launch(re.scalar_type() == torch::kDouble, grad.data_ptr(),
                                        re.data_ptr(), im.data_ptr(), index.data_ptr<int>(),
                                        offsets.data_ptr<int>(), g_re.data_ptr(), g_im.data_ptr(),
                                        re.size(0), (int)re.size(1), (int)hw, (int)re.size(3),
                                        (int)grad.size(1), rs, is,
                                        at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, what, ": ", cudaGetErrorString(err));
  return {g_re, g_im};
}
