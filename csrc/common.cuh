// Device helpers shared by the kernels: packed loads/stores, group and block reductions.
//
// Kernel bodies in this directory are plain templated functions of (args, shared memory, thread, block)
// so that they also compile as host C++ against csrc/emulation/cuda_emulator.h, the CPU emulator the tests
// use to check the kernels' logic on machines without a GPU. They therefore use only: __syncthreads,
// __shfl_xor_sync over the full warp, atomicAdd(float*), __expf, and plain loads/stores.
#pragma once

#include <cmath>
#include <cstdint>

#if defined(__CUDACC__)
#define MVIT_DEVICE __device__ __forceinline__
#else
#define MVIT_DEVICE inline
#endif

namespace mobilevitv2 {

constexpr int kThreads = 256;  // threads per block of every kernel
constexpr int kWarps = kThreads / 32;
constexpr unsigned kFullMask = 0xffffffffu;
// Shared floats reserved at the start of dynamic shared memory for block reductions (two reductions of
// kWarps partials each), padded to 128 bytes so that the arrays after it stay 16-byte aligned.
constexpr int kReductionFloats = 32;
static_assert(2 * kWarps <= kReductionFloats, "reduction slots do not fit");

// VEC consecutive elements, aligned so that one access moves all of them (16 or 8 bytes).
template <typename T, int VEC>
struct alignas(sizeof(T) * VEC) Pack {
  T v[VEC];
};

// Loads the VEC elements at p. VEC > 1: one packed access (the host checked that the innermost stride
// is 1 and that p is aligned); VEC == 1: one element, so any stride works.
template <typename T, int VEC>
MVIT_DEVICE Pack<T, VEC> load_pack(const T* p) {
  if constexpr (VEC == 1) {
    return Pack<T, 1>{{*p}};
  } else {
    return *reinterpret_cast<const Pack<T, VEC>*>(p);
  }
}

template <typename T, int VEC>
MVIT_DEVICE void to_floats(const Pack<T, VEC>& pack, float (&out)[VEC]) {
#pragma unroll
  for (int j = 0; j < VEC; ++j) out[j] = static_cast<float>(pack.v[j]);
}

template <typename T, int VEC>
MVIT_DEVICE void load_floats(const T* p, float (&out)[VEC]) {
  to_floats<T, VEC>(load_pack<T, VEC>(p), out);
}

template <typename T, int VEC>
MVIT_DEVICE void store_floats(T* p, const float (&in)[VEC]) {
  if constexpr (VEC == 1) {
    *p = static_cast<T>(in[0]);
  } else {
    Pack<T, VEC> pack;
#pragma unroll
    for (int j = 0; j < VEC; ++j) pack.v[j] = static_cast<T>(in[j]);
    *reinterpret_cast<Pack<T, VEC>*>(p) = pack;
  }
}

// Loads VEC floats from shared memory (16-byte accesses when VEC is a multiple of 4; `p` is then
// 16-byte aligned because it is the aligned array base plus a multiple of VEC).
template <int VEC>
MVIT_DEVICE void load_shared(const float* p, float (&out)[VEC]) {
  if constexpr (VEC % 4 == 0) {
#pragma unroll
    for (int j = 0; j < VEC; j += 4) {
      const Pack<float, 4> pack = *reinterpret_cast<const Pack<float, 4>*>(p + j);
#pragma unroll
      for (int i = 0; i < 4; ++i) out[j + i] = pack.v[i];
    }
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = p[j];
  }
}

// ReLU that propagates NaN like torch.relu.
MVIT_DEVICE float relu(float x) { return x > 0.f || x != x ? x : 0.f; }

// Sum over aligned groups of `group_size` lanes (a power of two <= 32); every lane gets its group's sum.
// All 32 lanes of the warp must call it (full-mask shuffles).
MVIT_DEVICE float group_sum(float x, int group_size) {
  for (int offset = group_size >> 1; offset > 0; offset >>= 1) x += __shfl_xor_sync(kFullMask, x, offset);
  return x;
}

MVIT_DEVICE float warp_max(float x) {
  for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(kFullMask, x, offset));
  return x;
}

// Block-wide max / sum; every thread gets the result. `slots` (kWarps floats of shared memory) must not
// be reused by another reduction in the same kernel, which is what lets these skip a trailing barrier.
MVIT_DEVICE float block_max(float x, float* slots, int tid) {
  x = warp_max(x);
  if ((tid & 31) == 0) slots[tid >> 5] = x;
  __syncthreads();
  float result = slots[0];
  for (int w = 1; w < kWarps; ++w) result = fmaxf(result, slots[w]);
  return result;
}

MVIT_DEVICE float block_sum(float x, float* slots, int tid) {
  x = group_sum(x, 32);
  if ((tid & 31) == 0) slots[tid >> 5] = x;
  __syncthreads();
  float result = 0.f;
  for (int w = 0; w < kWarps; ++w) result += slots[w];
  return result;
}

// Softmax statistics of one query row q[n * stride], n < N: the row max and 1 / sum_n exp(q[n] - max).
// When `weights` is not null it also receives exp(q[n] - max) for every n (the unnormalised softmax).
// Ends with a barrier, so anything the block wrote before the call is visible to all its threads after.
template <typename T>
MVIT_DEVICE void softmax_stats(const T* q, int64_t stride, int N, int tid, float* slots, float* weights,
                               float& row_max, float& inv_sum) {
  float m = -INFINITY;
  for (int n = tid; n < N; n += kThreads) m = fmaxf(m, static_cast<float>(q[n * stride]));
  m = block_max(m, slots, tid);
  float s = 0.f;
  for (int n = tid; n < N; n += kThreads) {
    const float e = __expf(static_cast<float>(q[n * stride]) - m);
    if (weights != nullptr) weights[n] = e;
    s += e;
  }
  s = block_sum(s, slots + kWarps, tid);
  row_max = m;
  inv_sum = 1.f / s;
}

// The unnormalised softmax weights exp(q[n + j] - max), j < VEC: from shared memory when the block
// stored them there, else recomputed from the query row (long rows that do not fit in shared memory).
template <typename T, int VEC>
MVIT_DEVICE void softmax_weights(const float* weights, const T* q, int64_t stride, float row_max, int n,
                                 float (&out)[VEC]) {
  if (weights != nullptr) {
    load_shared<VEC>(weights + n, out);
  } else {
#pragma unroll
    for (int j = 0; j < VEC; ++j) out[j] = __expf(static_cast<float>(q[(n + j) * stride]) - row_max);
  }
}

// ---- Host side: which packed width a tensor layout allows (shared with the CPU emulator) ----

// The address, sizes, strides (elements) and element size of a 4-D tensor.
struct Layout4 {
  uintptr_t address;
  int64_t size[4];
  int64_t stride[4];
  int64_t element_size;
};

// Largest packed width (elements of 16 bytes, then of 8 bytes) such that, in every layout, the last
// dimension has stride 1 and a length divisible by the width, the address is aligned to the pack, and the
// other strides keep every row start aligned; 1 (element-wise access, any strides) otherwise.
inline int packed_width(const Layout4* layouts, int count) {
  for (int bytes : {16, 8}) {
    bool ok = count > 0;
    int width = 1;
    for (int t = 0; t < count && ok; ++t) {
      const Layout4& l = layouts[t];
      width = bytes / static_cast<int>(l.element_size);
      ok = width > 1 && l.size[3] % width == 0 && (l.size[3] <= 1 || l.stride[3] == 1) &&
           l.address % static_cast<uintptr_t>(bytes) == 0;
      for (int dim = 0; dim < 3 && ok; ++dim) ok = l.size[dim] <= 1 || l.stride[dim] % width == 0;
    }
    if (ok) return width;
  }
  return 1;
}

// Packed width along the rows of an image (B, C, H, W) of which `row_length` leading elements per row
// are accessed: 16 or 8 bytes when the rows are contiguous and every row start is aligned. `full_rows`:
// the packs must also tile the whole row (W divisible by the width).
inline int image_row_width(const Layout4& image, int64_t row_length, bool full_rows) {
  for (int bytes : {16, 8}) {
    const int width = bytes / static_cast<int>(image.element_size);
    bool ok = width > 1 && row_length >= width && image.stride[3] == 1 &&
              image.address % static_cast<uintptr_t>(bytes) == 0 && (!full_rows || image.size[3] % width == 0);
    for (int dim = 0; dim < 3 && ok; ++dim) ok = image.size[dim] <= 1 || image.stride[dim] % width == 0;
    if (ok) return width;
  }
  return 1;
}

}  // namespace mobilevitv2
