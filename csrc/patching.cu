// Launchers for the unfold / fold kernels (bodies in patching.cuh).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "host_utils.h"
#include "ops.h"
#include "patching.cuh"

namespace mobilevitv2 {
namespace {

template <typename T, int VW>
__global__ void __launch_bounds__(kThreads) unfold_kernel(const PatchArgs<T> args) {
  unfold_thread<T, VW>(args, static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x);
}

template <typename T, int VW>
__global__ void __launch_bounds__(kThreads) fold_kernel(const PatchArgs<T> args) {
  fold_thread<T, VW>(args, static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x);
}

void check_patch(int64_t patch_h, int64_t patch_w, const char* op) {
  TORCH_CHECK(patch_h >= 1 && patch_w >= 1, op, ": patch size must be positive, got (", patch_h, ", ", patch_w,
              ")");
}

int64_t grid_for(int64_t total, const char* op) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  TORCH_CHECK(blocks <= INT32_MAX, op, ": the input is too large for one launch (", blocks, " blocks)");
  return blocks;
}

}  // namespace

at::Tensor unfold_forward(const at::Tensor& x, int64_t patch_h, int64_t patch_w) {
  const char* op = "unfold_forward";
  check_input(x, op, "x");
  check_patch(patch_h, patch_w, op);
  const int64_t H = x.size(2), W = x.size(3);
  const int64_t nh = H / patch_h, nw = W / patch_w;
  const c10::cuda::CUDAGuard guard(x.device());
  at::Tensor out = x.new_empty({x.size(0), x.size(1), patch_h * patch_w, nh * nw});
  if (out.numel() == 0) return out;

  const int64_t row_length = nw * patch_w;  // columns beyond a multiple of the patch are dropped
  const int width = image_row_width(layout_of(x), row_length, /*full_rows=*/false);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "unfold_forward", [&] {
    with_packed_width<scalar_t>(width, [&](auto vw) {
      constexpr int VW = decltype(vw)::value;
      const PatchArgs<scalar_t> args = unfold_args(x.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(),
                                                   x.sizes().data(), x.strides().data(), patch_h, patch_w, VW);
      unfold_kernel<scalar_t, VW>
          <<<static_cast<unsigned>(grid_for(args.total, op)), kThreads, 0, stream>>>(args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor fold_forward(const at::Tensor& patches, int64_t height, int64_t width, int64_t patch_h,
                        int64_t patch_w) {
  const char* op = "fold_forward";
  check_input(patches, op, "patches");
  check_patch(patch_h, patch_w, op);
  TORCH_CHECK(height >= 0 && width >= 0, op, ": output size must be non-negative, got (", height, ", ", width, ")");
  const int64_t nh = height / patch_h, nw = width / patch_w;
  TORCH_CHECK(patches.size(2) == patch_h * patch_w && patches.size(3) == nh * nw, op, ": patches of shape ",
              patches.sizes(), " do not fit output size (", height, ", ", width, ") with patch (", patch_h, ", ",
              patch_w, "); expected (B, C, ", patch_h * patch_w, ", ", nh * nw, ")");
  const c10::cuda::CUDAGuard guard(patches.device());
  at::Tensor out = patches.new_empty({patches.size(0), patches.size(1), height, width});
  if (out.numel() == 0) return out;

  const int vector = image_row_width(layout_of(out), width, /*full_rows=*/true);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, patches.scalar_type(), "fold_forward", [&] {
    with_packed_width<scalar_t>(vector, [&](auto vw) {
      constexpr int VW = decltype(vw)::value;
      const PatchArgs<scalar_t> args =
          fold_args(patches.const_data_ptr<scalar_t>(), out.mutable_data_ptr<scalar_t>(), patches.sizes().data(),
                    patches.strides().data(), height, width, patch_h, patch_w, VW);
      fold_kernel<scalar_t, VW><<<static_cast<unsigned>(grid_for(args.total, op)), kThreads, 0, stream>>>(args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

}  // namespace mobilevitv2
