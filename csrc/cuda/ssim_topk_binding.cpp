// Torch-facing wrappers of the CUDA SSIM kernels in ssim_topk.cu (built only into a CUDA
// _C). The host side (pixel-major copies, database chunks, the top-K merge) lives in
// frerec_fast/fast/ssim_cuda.py.
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <cuda_runtime.h>
#include <torch/extension.h>

extern "C" cudaError_t frerec_ssim_stats_launch(const float* img, const float* taps, float* maps,
                                                int N, int H, int W, cudaStream_t stream);
extern "C" cudaError_t frerec_ssim_pairs_launch(const float* x, const float* y,
                                                const float* q_maps, const float* d_maps,
                                                const float* taps, float* out, long long ld_out,
                                                int Q, int N, int H, int W, cudaStream_t stream);

namespace {
constexpr int64_t kWin = 11;

void check_f32(const torch::Tensor& t, const torch::Tensor& like, const char* what,
               const char* name) {
  TORCH_CHECK(t.is_cuda(), what, ": ", name, " must be a CUDA tensor");
  TORCH_CHECK(t.get_device() == like.get_device(), what, ": ", name,
              " must be on the same GPU as the other inputs");
  TORCH_CHECK(t.scalar_type() == torch::kFloat && t.is_contiguous(), what, ": ", name,
              " must be contiguous float32, got ", t.scalar_type(),
              t.is_contiguous() ? "" : " (not contiguous)");
}

void check_size(int64_t H, int64_t W, const char* what) {
  TORCH_CHECK(H >= kWin && W >= kWin, what, ": SSIM needs images of at least 11x11, got ", H, "x",
              W);
  TORCH_CHECK(H * W <= INT32_MAX, what, ": images too large for int32 indexing");
}

// img: [H*W, N] pixel-major images; taps: [11].
void check_images(const torch::Tensor& img, const torch::Tensor& taps, int64_t H, int64_t W,
                  const char* what, const char* name) {
  check_f32(img, taps, what, name);
  TORCH_CHECK(img.dim() == 2 && img.size(0) == H * W, what, ": ", name,
              " must be pixel-major [H*W=", H * W, ", count], got ", img.sizes());
  TORCH_CHECK(img.size(1) <= INT32_MAX, what, ": ", name, " holds too many images for one call");
}

// maps: [3, (H-10)*(W-10), count] statistic maps of `img`.
void check_maps(const torch::Tensor& maps, const torch::Tensor& img, int64_t H, int64_t W,
                const char* what, const char* name) {
  check_f32(maps, img, what, name);
  const int64_t plane = (H - kWin + 1) * (W - kWin + 1);
  TORCH_CHECK(maps.dim() == 3 && maps.size(0) == 3 && maps.size(1) == plane &&
                  maps.size(2) == img.size(1),
              what, ": ", name, " must be [3, ", plane, ", ", img.size(1), "], got ", maps.sizes());
}

void check_taps(const torch::Tensor& taps, const char* what) {
  TORCH_CHECK(taps.is_cuda() && taps.scalar_type() == torch::kFloat && taps.dim() == 1 &&
                  taps.size(0) == kWin && taps.is_contiguous(),
              what, ": taps must be a contiguous float32 CUDA tensor [11], got ",
              taps.scalar_type(), " ", taps.sizes());
}
}  // namespace

// Local statistic maps of pixel-major images img [H*W, N]: returns [3, H'*W', N] float32
// holding M = mu, A = mu^2 + C1/2, V = var + C2/2 (H' = H - 10, W' = W - 10).
torch::Tensor ssim_stats_cuda(const torch::Tensor& img, const torch::Tensor& taps, int64_t H,
                              int64_t W) {
  const char* what = "ssim_stats_cuda";
  check_size(H, W, what);
  check_taps(taps, what);
  check_images(img, taps, H, W, what, "img");
  const c10::cuda::CUDAGuard guard(img.device());
  auto maps = torch::empty({3, (H - kWin + 1) * (W - kWin + 1), img.size(1)}, img.options());
  auto err = frerec_ssim_stats_launch(img.data_ptr<float>(), taps.data_ptr<float>(),
                                      maps.data_ptr<float>(), (int)img.size(1), (int)H, (int)W,
                                      at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, what, ": ", cudaGetErrorString(err));
  return maps;
}

// Mean SSIM of every (query, database image) pair: q_img [H*W, Q], d_img [H*W, N]
// pixel-major, q_maps / d_maps from ssim_stats_cuda. Returns [Q, N] float32.
torch::Tensor ssim_pairs_cuda(const torch::Tensor& q_img, const torch::Tensor& q_maps,
                              const torch::Tensor& d_img, const torch::Tensor& d_maps,
                              const torch::Tensor& taps, int64_t H, int64_t W) {
  const char* what = "ssim_pairs_cuda";
  check_size(H, W, what);
  check_taps(taps, what);
  check_images(q_img, taps, H, W, what, "q_img");
  check_images(d_img, taps, H, W, what, "d_img");
  check_maps(q_maps, q_img, H, W, what, "q_maps");
  check_maps(d_maps, d_img, H, W, what, "d_maps");
  const c10::cuda::CUDAGuard guard(q_img.device());
  const int64_t Q = q_img.size(1), N = d_img.size(1);
  auto out = torch::empty({Q, N}, q_img.options());
  auto err = frerec_ssim_pairs_launch(q_img.data_ptr<float>(), d_img.data_ptr<float>(),
                                      q_maps.data_ptr<float>(), d_maps.data_ptr<float>(),
                                      taps.data_ptr<float>(), out.data_ptr<float>(), (long long)N,
                                      (int)Q, (int)N, (int)H, (int)W,
                                      at::cuda::getCurrentCUDAStream());
  TORCH_CHECK(err == cudaSuccess, what, ": ", cudaGetErrorString(err));
  return out;
}
