// The CUDA kernel bodies of csrc/*.cuh compiled for the CPU emulator (cuda_emulator.h), with C entry
// points for ctypes: tests/cuda_kernels.py builds this with g++ and runs it on CPU tensors. The
// launch plan, the packed-width choice and the kernels' arguments come from the same functions as the
// launchers in csrc/*.cu (launch_args.h); only the grid loop is the emulator's.
#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <exception>
#include <type_traits>

#include "cuda_emulator.h"
// clang-format off: the emulator must come before the kernel bodies
#include "../launch_args.h"
// clang-format on

namespace {

using namespace mobilevitv2;

char g_error[1024] = "";

// dtype codes of the C API
enum DType { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2, kFloat64 = 3 };

template <typename F>
int dispatch(int dtype, F&& f) {
  switch (dtype) {
    case kFloat32: f(float{}); return 0;
    case kFloat16: f(c10::Half{}); return 0;
    case kBFloat16: f(c10::BFloat16{}); return 0;
    case kFloat64: f(double{}); return 0;
    default: std::snprintf(g_error, sizeof(g_error), "unknown dtype code %d", dtype); return 1;
  }
}

Layout4 layout(const void* data, const int64_t* sizes, const int64_t* strides, int64_t element_size) {
  Layout4 l{};
  l.address = reinterpret_cast<uintptr_t>(data);
  for (int i = 0; i < 4; ++i) {
    l.size[i] = sizes[i];
    l.stride[i] = strides[i];
  }
  l.element_size = element_size;
  return l;
}

// Runs f(zero value of the dtype's C++ type); returns 0, or 1 with the reason in g_error.
template <typename F>
int run(int dtype, F&& f) {
  g_error[0] = '\0';
  try {
    return dispatch(dtype, f);
  } catch (const std::exception& e) {
    std::snprintf(g_error, sizeof(g_error), "%s", e.what());
    return 1;
  }
}

}  // namespace

extern "C" {

const char* emu_last_error() { return g_error; }

// The launch plan, for tests that check which code paths a shape takes:
// out = {vec, group_size, channels_per_block, channel_blocks, shared_row, direct}.
void emu_plan(int64_t B, int64_t d, int64_t P, int64_t N, int vec, int backward, int64_t* out) {
  const AttentionPlan p = plan_attention(B, d, P, N, vec, backward != 0);
  out[0] = p.vec;
  out[1] = p.group_size;
  out[2] = p.channels_per_block;
  out[3] = p.channel_blocks;
  out[4] = p.shared_row;
  out[5] = p.direct;
}

// qkv (B, 1+2d, P, N) with strides -> out (B, d, P, N) contiguous. Writes the packed width used to *vec.
int emu_separable_attention_forward(int dtype, const void* qkv, const int64_t* sizes, const int64_t* strides,
                                    void* out, int* vec) {
  return run(dtype, [&](auto zero) {
    using T = decltype(zero);
    {
      const int64_t B = sizes[0], d = (sizes[1] - 1) / 2, P = sizes[2], N = sizes[3];
      const int64_t out_sizes[4] = {B, d, P, N};
      const int64_t out_strides[4] = {d * P * N, P * N, N, 1};
      const Layout4 layouts[2] = {layout(qkv, sizes, strides, sizeof(T)),
                                  layout(out, out_sizes, out_strides, sizeof(T))};
      const AttentionPlan plan = plan_attention(B, d, P, N, packed_width(layouts, 2), false);
      *vec = plan.vec;
      AttentionArgs<T> a = attention_args(static_cast<const T*>(qkv), strides, d, P, N, plan);
      a.out = static_cast<T*>(out);
      with_packed_width<T>(plan.vec, [&](auto width) {
        constexpr int VEC = decltype(width)::value;
        cuda_emulator::launch_blocks(plan.blocks, kThreads, plan.shared_bytes / 4,
                                     [&](float* smem, int tid, int64_t block) {
                                       separable_attention_forward_block<T, VEC>(a, smem, tid, block);
                                     });
      });
    }
  });
}

// grad_out (B, d, P, N) and qkv (B, 1+2d, P, N) with strides -> grad_qkv (B, 1+2d, P, N) contiguous.
int emu_separable_attention_backward(int dtype, const void* grad_out, const int64_t* grad_strides, const void* qkv,
                                     const int64_t* sizes, const int64_t* strides, void* grad_qkv, int* vec) {
  return run(dtype, [&](auto zero) {
    using T = decltype(zero);
    {
      const int64_t B = sizes[0], C = sizes[1], d = (C - 1) / 2, P = sizes[2], N = sizes[3];
      const int64_t grad_sizes[4] = {B, d, P, N};
      const int64_t out_strides[4] = {C * P * N, P * N, N, 1};
      const Layout4 layouts[3] = {layout(qkv, sizes, strides, sizeof(T)),
                                  layout(grad_out, grad_sizes, grad_strides, sizeof(T)),
                                  layout(grad_qkv, sizes, out_strides, sizeof(T))};
      const AttentionPlan plan = plan_attention(B, d, P, N, packed_width(layouts, 3), true);
      *vec = plan.vec;
      std::vector<float> partial(plan.direct ? 0 : static_cast<size_t>(B * P * plan.channel_blocks * N),
                                 std::numeric_limits<float>::quiet_NaN());
      AttentionArgs<T> a = attention_args(static_cast<const T*>(qkv), strides, d, P, N, plan);
      set_backward_args(a, static_cast<const T*>(grad_out), grad_strides, plan.direct ? nullptr : partial.data());
      a.out = static_cast<T*>(grad_qkv);
      with_packed_width<T>(plan.vec, [&](auto width) {
        constexpr int VEC = decltype(width)::value;
        cuda_emulator::launch_blocks(plan.blocks, kThreads, plan.shared_bytes / 4,
                                     [&](float* smem, int tid, int64_t block) {
                                       separable_attention_backward_block<T, VEC>(a, smem, tid, block);
                                     });
      });
      if (!plan.direct) {
        for (int64_t i = 0; i < B * P * N; ++i) separable_attention_dq_element<T>(a, i);
      }
    }
  });
}

// x (B, C, H, W) with strides -> out (B, C, ph*pw, nh*nw) contiguous.
int emu_unfold(int dtype, const void* x, const int64_t* sizes, const int64_t* strides, int64_t ph, int64_t pw,
               void* out, int* vec) {
  return run(dtype, [&](auto zero) {
    using T = decltype(zero);
    const int64_t nw = sizes[3] / pw;
    const int width = image_row_width(layout(x, sizes, strides, sizeof(T)), nw * pw, false);
    *vec = width;
    with_packed_width<T>(width, [&](auto w) {
      constexpr int VW = decltype(w)::value;
      const PatchArgs<T> a = unfold_args(static_cast<const T*>(x), static_cast<T*>(out), sizes, strides, ph, pw, VW);
      const int64_t threads = (a.total + kThreads - 1) / kThreads * kThreads;  // whole blocks, as on the GPU
      for (int64_t i = 0; i < threads; ++i) unfold_thread<T, VW>(a, i);
    });
  });
}

// patches (B, C, ph*pw, N) with strides -> out (B, C, height, width) contiguous.
int emu_fold(int dtype, const void* patches, const int64_t* sizes, const int64_t* strides, int64_t height,
             int64_t width, int64_t ph, int64_t pw, void* out, int* vec) {
  return run(dtype, [&](auto zero) {
    using T = decltype(zero);
    const int64_t out_sizes[4] = {sizes[0], sizes[1], height, width};
    const int64_t out_strides[4] = {sizes[1] * height * width, height * width, width, 1};
    const int packed = image_row_width(layout(out, out_sizes, out_strides, sizeof(T)), width, true);
    *vec = packed;
    with_packed_width<T>(packed, [&](auto w) {
      constexpr int VW = decltype(w)::value;
      const PatchArgs<T> a =
          fold_args(static_cast<const T*>(patches), static_cast<T*>(out), sizes, strides, height, width, ph, pw, VW);
      const int64_t threads = (a.total + kThreads - 1) / kThreads * kThreads;
      for (int64_t i = 0; i < threads; ++i) fold_thread<T, VW>(a, i);
    });
  });
}

}  // extern "C"
