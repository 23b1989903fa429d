// The four functions the extension binds; each implements the contract of the function of the same name
// in mobilevitv2_kernels/reference.py on CUDA tensors (float32, float16, bfloat16; float64 works too) with
// any strides, and returns a new contiguous tensor of the input's dtype. Kernels accumulate in float32 and
// run on the current CUDA stream without synchronising the host.
#pragma once

#include <ATen/core/Tensor.h>

#include <cstdint>

namespace mobilevitv2 {

// qkv (B, 1+2d, P, N) -> (B, d, P, N) = relu(value) * sum_N(key * softmax_N(query)).
at::Tensor separable_attention_forward(const at::Tensor& qkv);

// Gradient of separable_attention_forward with respect to qkv: (B, 1+2d, P, N).
at::Tensor separable_attention_backward(const at::Tensor& grad_out, const at::Tensor& qkv);

// (B, C, H, W) -> (B, C, patch_h*patch_w, (H/patch_h)*(W/patch_w)), transformers' patch order.
at::Tensor unfold_forward(const at::Tensor& x, int64_t patch_h, int64_t patch_w);

// The adjoint of unfold_forward: (B, C, patch_h*patch_w, N) -> (B, C, height, width), zeros where unfold
// dropped pixels.
at::Tensor fold_forward(const at::Tensor& patches, int64_t height, int64_t width, int64_t patch_h,
                        int64_t patch_w);

}  // namespace mobilevitv2
