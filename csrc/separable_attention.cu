// Launchers for the separable attention kernels (bodies in separable_attention.cuh).
#include <ATen/Dispatch.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "host_utils.h"
#include "ops.h"
#include "separable_attention.cuh"

namespace mobilevitv2 {
namespace {

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads, 5) separable_attention_forward_kernel(const AttentionArgs<T> args) {
  extern __shared__ __align__(16) float smem[];
  separable_attention_forward_block<T, VEC>(args, smem, threadIdx.x, blockIdx.x);
}

template <typename T, int VEC>
__global__ void __launch_bounds__(kThreads, 3) separable_attention_backward_kernel(const AttentionArgs<T> args) {
  extern __shared__ __align__(16) float smem[];
  separable_attention_backward_block<T, VEC>(args, smem, threadIdx.x, blockIdx.x);
}

template <typename T>
__global__ void __launch_bounds__(kThreads) separable_attention_dq_kernel(const AttentionArgs<T> args,
                                                                          int64_t total) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * kThreads + threadIdx.x;
  if (index < total) separable_attention_dq_element<T>(args, index);
}

// (B, 1+2d, P, N) -> d, with the checks both directions share.
int64_t check_qkv(const at::Tensor& qkv, const char* op) {
  check_input(qkv, op, "qkv");
  const int64_t channels = qkv.size(1);
  TORCH_CHECK(channels % 2 == 1, op, ": qkv must have 1+2d channels (query, d keys, d values), got ", channels,
              " channels in shape ", qkv.sizes());
  check_fits_int(qkv.size(3), op, "N (qkv.size(3))");
  check_fits_int(qkv.size(2), op, "P (qkv.size(2))");
  check_fits_int(channels, op, "1+2d (qkv.size(1))");
  return (channels - 1) / 2;
}

template <typename T>
AttentionArgs<T> make_args(const at::Tensor& qkv, int64_t d, const AttentionPlan& plan) {
  return attention_args(qkv.const_data_ptr<T>(), qkv.strides().data(), d, qkv.size(2), qkv.size(3), plan);
}

void check_grid(int64_t blocks, const char* op) {
  TORCH_CHECK(blocks <= INT32_MAX, op, ": the input is too large for one launch (", blocks, " blocks)");
}

}  // namespace

at::Tensor separable_attention_forward(const at::Tensor& qkv) {
  const char* op = "separable_attention_forward";
  const int64_t d = check_qkv(qkv, op);
  const c10::cuda::CUDAGuard guard(qkv.device());
  at::Tensor out = qkv.new_empty({qkv.size(0), d, qkv.size(2), qkv.size(3)});
  if (out.numel() == 0) return out;

  const AttentionPlan plan = plan_attention(qkv.size(0), d, qkv.size(2), qkv.size(3), packed_width({&qkv, &out}),
                                            /*backward=*/false);
  check_grid(plan.blocks, op);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qkv.scalar_type(), "separable_attention", [&] {
    AttentionArgs<scalar_t> args = make_args<scalar_t>(qkv, d, plan);
    args.out = out.mutable_data_ptr<scalar_t>();
    with_packed_width<scalar_t>(plan.vec, [&](auto width) {
      constexpr int VEC = decltype(width)::value;
      separable_attention_forward_kernel<scalar_t, VEC>
          <<<static_cast<unsigned>(plan.blocks), kThreads, plan.shared_bytes, stream>>>(args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  return out;
}

at::Tensor separable_attention_backward(const at::Tensor& grad_out, const at::Tensor& qkv) {
  const char* op = "separable_attention_backward";
  const int64_t d = check_qkv(qkv, op);
  check_input(grad_out, op, "grad_out");
  TORCH_CHECK(grad_out.device() == qkv.device(), op, ": grad_out is on ", grad_out.device(), " but qkv is on ",
              qkv.device());
  TORCH_CHECK(grad_out.scalar_type() == qkv.scalar_type(), op, ": grad_out has dtype ", grad_out.scalar_type(),
              " but qkv has dtype ", qkv.scalar_type());
  TORCH_CHECK(grad_out.size(0) == qkv.size(0) && grad_out.size(1) == d && grad_out.size(2) == qkv.size(2) &&
                  grad_out.size(3) == qkv.size(3),
              op, ": grad_out has shape ", grad_out.sizes(), ", expected (", qkv.size(0), ", ", d, ", ",
              qkv.size(2), ", ", qkv.size(3), ") for qkv of shape ", qkv.sizes());
  const c10::cuda::CUDAGuard guard(qkv.device());
  at::Tensor grad_qkv = qkv.new_empty(qkv.sizes());
  if (grad_qkv.numel() == 0) return grad_qkv;
  if (d == 0) return grad_qkv.zero_();  // no keys: the softmax has no effect on the output

  const AttentionPlan plan = plan_attention(qkv.size(0), d, qkv.size(2), qkv.size(3),
                                            packed_width({&qkv, &grad_out, &grad_qkv}), /*backward=*/true);
  check_grid(plan.blocks, op);
  at::Tensor partial;
  if (!plan.direct) {
    partial = qkv.new_empty({qkv.size(0) * qkv.size(2), plan.channel_blocks, qkv.size(3)},
                            qkv.options().dtype(at::kFloat));
  }
  const int64_t dq_total = qkv.size(0) * qkv.size(2) * qkv.size(3);
  const cudaStream_t stream = c10::cuda::getCurrentCUDAStream();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, qkv.scalar_type(), "separable_attention", [&] {
    AttentionArgs<scalar_t> args = make_args<scalar_t>(qkv, d, plan);
    set_backward_args(args, grad_out.const_data_ptr<scalar_t>(), grad_out.strides().data(),
                      plan.direct ? nullptr : partial.mutable_data_ptr<float>());
    args.out = grad_qkv.mutable_data_ptr<scalar_t>();
    with_packed_width<scalar_t>(plan.vec, [&](auto width) {
      constexpr int VEC = decltype(width)::value;
      separable_attention_backward_kernel<scalar_t, VEC>
          <<<static_cast<unsigned>(plan.blocks), kThreads, plan.shared_bytes, stream>>>(args);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
    if (!plan.direct) {
      const int64_t blocks = (dq_total + kThreads - 1) / kThreads;
      check_grid(blocks, op);
      separable_attention_dq_kernel<scalar_t><<<static_cast<unsigned>(blocks), kThreads, 0, stream>>>(args, dq_total);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }
  });
  return grad_qkv;
}

}  // namespace mobilevitv2
