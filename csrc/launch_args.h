// The launch plan's host side, shared by the CUDA launchers (*.cu) and the CPU emulator
// (emulation/emulated_kernels.cpp), so that the emulator runs exactly the arguments and packed widths the
// GPU launch would: the kernels' argument structs from sizes, strides and the plan, and the dispatch of a
// runtime packed width to a compile-time one. No ATen here: the emulator builds with a plain C++ compiler.
#pragma once

#include <cstdint>
#include <type_traits>

#include "patching.cuh"
#include "separable_attention.cuh"

namespace mobilevitv2 {

// Calls f(std::integral_constant<int, W>{}) for the packed width W == width of element type T
// (16 bytes, 8 bytes, or 1), so that every instantiation is a compile-time width.
template <typename T, typename F>
void with_packed_width(int width, F&& f) {
  constexpr int w16 = 16 / static_cast<int>(sizeof(T));
  constexpr int w8 = 8 / static_cast<int>(sizeof(T)) > 1 ? 8 / static_cast<int>(sizeof(T)) : 1;
  if (width == w16 && w16 > 1) {
    f(std::integral_constant<int, w16>{});
  } else if (width == w8 && w8 > 1) {
    f(std::integral_constant<int, w8>{});
  } else {
    f(std::integral_constant<int, 1>{});
  }
}

// qkv (B, 1+2d, P, N) with its strides, and the plan: the arguments both attention kernels share.
template <typename T>
AttentionArgs<T> attention_args(const T* qkv, const int64_t* strides, int64_t d, int64_t P, int64_t N,
                                const AttentionPlan& plan) {
  AttentionArgs<T> a{};
  a.qkv = qkv;
  a.qkv_stride_b = strides[0];
  a.qkv_stride_c = strides[1];
  a.qkv_stride_p = strides[2];
  a.qkv_stride_n = strides[3];
  a.d = static_cast<int>(d);
  a.P = static_cast<int>(P);
  a.N = static_cast<int>(N);
  a.group_size = plan.group_size;
  a.channels_per_block = plan.channels_per_block;
  a.channel_blocks = plan.channel_blocks;
  a.shared_row = plan.shared_row;
  a.direct = plan.direct;
  return a;
}

// The backward's additions: grad_out (B, d, P, N) with its strides, and the fp32 partial sums (null when
// the plan is direct).
template <typename T>
void set_backward_args(AttentionArgs<T>& a, const T* grad_out, const int64_t* grad_strides, float* partial) {
  a.grad_out = grad_out;
  a.grad_stride_b = grad_strides[0];
  a.grad_stride_c = grad_strides[1];
  a.grad_stride_p = grad_strides[2];
  a.grad_stride_n = grad_strides[3];
  a.partial = partial;
}

// One thread per packed chunk of an image row: `rows` rows of `row_length` elements in each (b, c) plane.
template <typename T>
PatchArgs<T> patch_args(const T* in, T* out, const int64_t* in_sizes, const int64_t* in_strides, int64_t H,
                        int64_t W, int64_t ph, int64_t pw, int64_t row_length, int64_t rows, int width) {
  PatchArgs<T> a{};
  a.in = in;
  a.out = out;
  a.stride_b = in_strides[0];
  a.stride_c = in_strides[1];
  a.stride_1 = in_strides[2];
  a.stride_2 = in_strides[3];
  a.C = in_sizes[1];
  a.H = H;
  a.W = W;
  a.ph = ph;
  a.pw = pw;
  a.nh = H / ph;
  a.nw = W / pw;
  a.row_length = row_length;
  a.chunks_per_row = (row_length + width - 1) / width;
  a.rows = rows;
  a.total = in_sizes[0] * a.C * rows * a.chunks_per_row;
  return a;
}

// unfold reads x (B, C, H, W): whole patches only, so (H // ph) * ph rows of (W // pw) * pw elements.
template <typename T>
PatchArgs<T> unfold_args(const T* x, T* out, const int64_t* sizes, const int64_t* strides, int64_t ph, int64_t pw,
                         int width) {
  const int64_t H = sizes[2], W = sizes[3];
  return patch_args(x, out, sizes, strides, H, W, ph, pw, W / pw * pw, H / ph * ph, width);
}

// fold writes out (B, C, height, width) whole, zeros where unfold dropped pixels.
template <typename T>
PatchArgs<T> fold_args(const T* patches, T* out, const int64_t* sizes, const int64_t* strides, int64_t height,
                       int64_t width, int64_t ph, int64_t pw, int vector) {
  return patch_args(patches, out, sizes, strides, height, width, ph, pw, width, height, vector);
}

}  // namespace mobilevitv2
