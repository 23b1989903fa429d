// Separable attention kernels (bodies and launch plan), shared by separable_attention.cu and the CPU
// emulator in csrc/emulation. Contract: mobilevitv2_kernels/reference.py.
//
// qkv is (B, 1+2d, P, N) with any strides, channels [query (1), key (d), value (d)]. Work is split by
// row r = (b, p) and by a block of channels: each block recomputes its row's softmax statistics (cheap: N
// query values against 3*N per channel it handles), then assigns every channel row of N elements to a
// group of G lanes (G = a power of two, so the N elements take about one packed access per lane) and
// reduces over N inside the group with warp shuffles.
//
//   forward:  out[c, n] = relu(v[c, n]) * ctx[c],   ctx[c] = sum_n k[c, n] * s[n]
//   backward: dv = g * ctx * [v > 0],  dc = sum_n g * relu(v),  dk = dc * s,
//             dq[n] = s[n] * sum_c dc[c] * (k[c, n] - ctx[c])
// The dq form uses sum_n ds[n] s[n] = sum_c dc[c] ctx[c] (ds[n] = sum_c dc[c] k[c, n]), so it needs no
// second pass over the row: each block accumulates its channels' share of the sum over c, and shares of
// several channel blocks of one row are added by a small finalize kernel. The block's share is summed with
// float atomics, so dq is not bitwise reproducible from run to run (dk, dv and the forward are).
#pragma once

#include "common.cuh"

namespace mobilevitv2 {

// Rows of at most this many elements keep their softmax weights (and, in backward, the dq accumulator)
// in shared memory; longer rows recompute the weights from the query and accumulate dq in global memory.
constexpr int kForwardSharedRow = 8192;   // 32 KB of weights
constexpr int kBackwardSharedRow = 4096;  // 16 KB of weights + 16 KB of dq accumulator

struct AttentionPlan {
  int vec;                  // elements per packed access along N (1: scalar, any stride)
  int group_size;           // lanes per channel row, a power of two <= 32
  int channels_per_block;   // channels handled by one block
  int64_t channel_blocks;   // blocks per (b, p) row
  int64_t blocks;           // grid size: rows * channel_blocks
  bool shared_row;          // softmax weights (and backward accumulator) in shared memory
  bool direct;              // backward: the block writes dq itself (one channel block, shared accumulator)
  int64_t shared_bytes;     // dynamic shared memory per block
};

// Launch plan for a (B, d, P, N) problem with packed accesses of `vec` elements. Both kernels aim at
// about eight channels per group (to spread each block's softmax statistics over enough work), and split
// the channels into more blocks while there are fewer than ~2048 blocks, so that small batches still
// fill the GPU.
inline AttentionPlan plan_attention(int64_t B, int64_t d, int64_t P, int64_t N, int vec, bool backward) {
  AttentionPlan plan{};
  plan.vec = vec;
  const int64_t chunks = (N + vec - 1) / vec;
  int group = 1;
  while (group < 32 && group < chunks) group *= 2;
  plan.group_size = group;
  const int64_t groups = kThreads / group;
  const int64_t rows = B * P;
  const int64_t max_blocks = (d + groups - 1) / groups;  // one channel per group
  int64_t cblocks = (d + 8 * groups - 1) / (8 * groups);
  while (cblocks < max_blocks && rows * cblocks < 2048) cblocks = cblocks * 2 < max_blocks ? cblocks * 2 : max_blocks;
  if (cblocks < 1) cblocks = 1;
  const int64_t per_block = (d + cblocks - 1) / cblocks;
  plan.channels_per_block = static_cast<int>(per_block < 1 ? 1 : per_block);
  plan.channel_blocks = d > 0 ? (d + plan.channels_per_block - 1) / plan.channels_per_block : 1;
  plan.blocks = rows * plan.channel_blocks;
  plan.shared_row = N <= (backward ? kBackwardSharedRow : kForwardSharedRow);
  plan.direct = backward && plan.shared_row && plan.channel_blocks == 1;
  const int64_t row_arrays = plan.shared_row ? (backward ? 2 : 1) : 0;
  plan.shared_bytes = static_cast<int64_t>(sizeof(float)) * (kReductionFloats + row_arrays * N);
  return plan;
}

template <typename T>
struct AttentionArgs {
  const T* qkv;       // (B, 1+2d, P, N), strides below (elements)
  const T* grad_out;  // backward: (B, d, P, N), strides below
  T* out;             // forward: out (B, d, P, N); backward: grad_qkv (B, 1+2d, P, N); contiguous
  float* partial;     // backward, !direct: (B*P, channel_blocks, N) float32 dq shares
  int64_t qkv_stride_b, qkv_stride_c, qkv_stride_p, qkv_stride_n;
  int64_t grad_stride_b, grad_stride_c, grad_stride_p, grad_stride_n;
  int d, P, N;
  int group_size, channels_per_block;
  int64_t channel_blocks;
  bool shared_row, direct;
};

// One block of the forward kernel: row (b, p) = block / channel_blocks, channel block = the remainder.
template <typename T, int VEC>
MVIT_DEVICE void separable_attention_forward_block(const AttentionArgs<T>& a, float* smem, int tid,
                                                   int64_t block) {
  const int64_t row = block / a.channel_blocks;
  const int cblock = static_cast<int>(block - row * a.channel_blocks);
  const int64_t b = row / a.P;
  const int p = static_cast<int>(row - b * a.P);
  const T* query = a.qkv + b * a.qkv_stride_b + p * a.qkv_stride_p;  // channel 0 of (b, :, p, :)
  const int64_t sn = a.qkv_stride_n;
  const int64_t sc = a.qkv_stride_c;
  float* weights = a.shared_row ? smem + kReductionFloats : nullptr;

  const int G = a.group_size;
  const int lane = tid & (G - 1);
  const int group = tid / G;
  const int groups = kThreads / G;
  const int c_begin = cblock * a.channels_per_block;
  const int count = a.d - c_begin < a.channels_per_block ? a.d - c_begin : a.channels_per_block;
  const int first = lane * VEC;  // this lane's first element; later ones follow every G * VEC
  const int step = G * VEC;
  const bool lane_in_row = first < a.N;

  // Software pipeline over this group's channels c = c_begin + group + i (i += groups): the first chunk
  // (for N <= G * VEC the whole row) of the next channel's key is loaded while this channel's context is
  // reduced, and of its value while this channel's output is stored; the first channel's loads overlap
  // the softmax statistics.
  Pack<T, VEC> k0{}, v0{};
  if (group < count && lane_in_row) {
    k0 = load_pack<T, VEC>(query + (1 + c_begin + group) * sc + first * sn);
    v0 = load_pack<T, VEC>(query + (1 + a.d + c_begin + group) * sc + first * sn);
  }
  float row_max, inv_sum;
  softmax_stats(query, sn, a.N, tid, smem, weights, row_max, inv_sum);

  // Every group runs the same number of iterations (shuffles need the whole warp); groups past the end
  // of the channel block idle through the last one.
  for (int i = 0; i < count; i += groups) {
    const bool active = i + group < count;
    const bool next_active = i + groups + group < count;
    const int c = c_begin + i + group;
    const T* key = query + (1 + c) * sc;
    const T* value = query + (1 + a.d + c) * sc;
    T* out = a.out + ((b * a.d + c) * a.P + p) * static_cast<int64_t>(a.N);

    float acc = 0.f;
    if (active && lane_in_row) {
      float k[VEC], w[VEC];
      to_floats<T, VEC>(k0, k);
      softmax_weights<T, VEC>(weights, query, sn, row_max, first, w);
#pragma unroll
      for (int j = 0; j < VEC; ++j) acc += k[j] * w[j];
    }
    if (active) {
      for (int n = first + step; n < a.N; n += step) {
        float k[VEC], w[VEC];
        load_floats<T, VEC>(key + n * sn, k);
        softmax_weights<T, VEC>(weights, query, sn, row_max, n, w);
#pragma unroll
        for (int j = 0; j < VEC; ++j) acc += k[j] * w[j];
      }
    }
    k0 = next_active && lane_in_row ? load_pack<T, VEC>(key + groups * sc + first * sn) : Pack<T, VEC>{};
    const float ctx = group_sum(acc, G) * inv_sum;
    if (active && lane_in_row) {
      float v[VEC];
      to_floats<T, VEC>(v0, v);
#pragma unroll
      for (int j = 0; j < VEC; ++j) v[j] = relu(v[j]) * ctx;
      store_floats<T, VEC>(out + first, v);
    }
    if (active) {
      for (int n = first + step; n < a.N; n += step) {
        float v[VEC];
        load_floats<T, VEC>(value + n * sn, v);
#pragma unroll
        for (int j = 0; j < VEC; ++j) v[j] = relu(v[j]) * ctx;
        store_floats<T, VEC>(out + n, v);
      }
    }
    v0 = next_active && lane_in_row ? load_pack<T, VEC>(value + groups * sc + first * sn) : Pack<T, VEC>{};
  }
}

// One block of the backward kernel (same split as forward). Writes dk and dv of its channels, and either
// dq (direct) or its share s[n] * sum_{c in block} dc[c] * (k[c, n] - ctx[c]) to `partial`.
template <typename T, int VEC>
MVIT_DEVICE void separable_attention_backward_block(const AttentionArgs<T>& a, float* smem, int tid,
                                                    int64_t block) {
  const int64_t row = block / a.channel_blocks;
  const int cblock = static_cast<int>(block - row * a.channel_blocks);
  const int64_t b = row / a.P;
  const int p = static_cast<int>(row - b * a.P);
  const int N = a.N;
  const T* query = a.qkv + b * a.qkv_stride_b + p * a.qkv_stride_p;
  const T* grad = a.grad_out + b * a.grad_stride_b + p * a.grad_stride_p;
  const int64_t sn = a.qkv_stride_n;
  const int64_t gn = a.grad_stride_n;
  const int64_t channels = 1 + 2 * static_cast<int64_t>(a.d);
  T* grad_row = a.out + (b * channels * a.P + p) * static_cast<int64_t>(N);  // grad_qkv[b, 0, p, :]
  const int64_t channel_pitch = static_cast<int64_t>(a.P) * N;               // grad_qkv channel stride
  float* weights = a.shared_row ? smem + kReductionFloats : nullptr;
  float* share_out = a.direct ? nullptr : a.partial + (row * a.channel_blocks + cblock) * N;
  float* share = a.shared_row ? smem + kReductionFloats + N : share_out;  // sum_c dc * (k - ctx)

  const int G = a.group_size;
  const int lane = tid & (G - 1);
  const int group = tid / G;
  const int groups = kThreads / G;
  const int c_begin = cblock * a.channels_per_block;
  const int count = a.d - c_begin < a.channels_per_block ? a.d - c_begin : a.channels_per_block;
  const int first = lane * VEC;
  const int step = G * VEC;
  const bool lane_in_row = first < N;

  // The first chunk (the whole row when N <= G * VEC) of key, value and grad of a group's channel stays in
  // registers, in the input dtype, from pass 1 to pass 2. The first channel's are loaded before the
  // softmax statistics so that the loads overlap them; each later channel's after the previous one.
  // (Assigned on every path, so that the previous channel's values are dead once used.)
  Pack<T, VEC> k0{}, v0{}, g0{};
  auto load_first = [&](int c, bool load) {
    k0 = load ? load_pack<T, VEC>(query + (1 + c) * a.qkv_stride_c + first * sn) : Pack<T, VEC>{};
    v0 = load ? load_pack<T, VEC>(query + (1 + a.d + c) * a.qkv_stride_c + first * sn) : Pack<T, VEC>{};
    g0 = load ? load_pack<T, VEC>(grad + c * a.grad_stride_c + first * gn) : Pack<T, VEC>{};
  };
  load_first(c_begin + group, group < count && lane_in_row);

  for (int n = tid; n < N; n += kThreads) share[n] = 0.f;
  float row_max, inv_sum;
  softmax_stats(query, sn, N, tid, smem, weights, row_max, inv_sum);  // its barriers order the zeroing

  float share0[VEC];  // this lane's part of the share for its first chunk, summed over its channels
#pragma unroll
  for (int j = 0; j < VEC; ++j) share0[j] = 0.f;

  for (int i = 0; i < count; i += groups) {
    const bool active = i + group < count;
    const int c = c_begin + i + group;
    const T* key = query + (1 + c) * a.qkv_stride_c;
    const T* value = query + (1 + a.d + c) * a.qkv_stride_c;
    const T* g_row = grad + c * a.grad_stride_c;
    T* dkey = grad_row + (1 + c) * channel_pitch;
    T* dvalue = grad_row + (1 + a.d + c) * channel_pitch;

    // Pass 1: ctx = sum k * s and dc = sum g * relu(v).
    const bool has_first = active && lane_in_row;
    float ctx_acc = 0.f, dc_acc = 0.f;
    if (has_first) {
      float w[VEC];
      softmax_weights<T, VEC>(weights, query, sn, row_max, first, w);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        ctx_acc += static_cast<float>(k0.v[j]) * w[j];
        dc_acc += static_cast<float>(g0.v[j]) * relu(static_cast<float>(v0.v[j]));
      }
    }
    if (active) {
#pragma unroll 1
      for (int n = first + step; n < N; n += step) {
        float k[VEC], v[VEC], g[VEC], w[VEC];
        load_floats<T, VEC>(key + n * sn, k);
        load_floats<T, VEC>(value + n * sn, v);
        load_floats<T, VEC>(g_row + n * gn, g);
        softmax_weights<T, VEC>(weights, query, sn, row_max, n, w);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          ctx_acc += k[j] * w[j];
          dc_acc += g[j] * relu(v[j]);
        }
      }
    }
    const float ctx = group_sum(ctx_acc, G) * inv_sum;
    const float dc = group_sum(dc_acc, G);

    // Pass 2: dk = dc * s, dv = g * ctx * [v > 0], share += dc * (k - ctx).
    if (has_first) {
      float w[VEC], dk[VEC], dv[VEC];
      softmax_weights<T, VEC>(weights, query, sn, row_max, first, w);
#pragma unroll
      for (int j = 0; j < VEC; ++j) {
        dk[j] = dc * (w[j] * inv_sum);
        dv[j] = static_cast<float>(v0.v[j]) > 0.f ? static_cast<float>(g0.v[j]) * ctx : 0.f;
        share0[j] += dc * (static_cast<float>(k0.v[j]) - ctx);
      }
      store_floats<T, VEC>(dkey + first, dk);
      store_floats<T, VEC>(dvalue + first, dv);
    }
    if (active) {
#pragma unroll 1
      for (int n = first + step; n < N; n += step) {
        float k[VEC], v[VEC], g[VEC], w[VEC], dk[VEC], dv[VEC];
        load_floats<T, VEC>(key + n * sn, k);
        load_floats<T, VEC>(value + n * sn, v);
        load_floats<T, VEC>(g_row + n * gn, g);
        softmax_weights<T, VEC>(weights, query, sn, row_max, n, w);
#pragma unroll
        for (int j = 0; j < VEC; ++j) {
          dk[j] = dc * (w[j] * inv_sum);
          dv[j] = v[j] > 0.f ? g[j] * ctx : 0.f;
          atomicAdd(share + n + j, dc * (k[j] - ctx));
        }
        store_floats<T, VEC>(dkey + n, dk);
        store_floats<T, VEC>(dvalue + n, dv);
      }
    }
    load_first(c + groups, i + groups + group < count && lane_in_row);
  }
  if (lane_in_row) {
#pragma unroll
    for (int j = 0; j < VEC; ++j) atomicAdd(share + first + j, share0[j]);
  }
  __syncthreads();

  // dq = s * share: written directly, or as this block's share for the finalize kernel.
  for (int n = tid; n < N; n += kThreads) {
    float w[1];
    softmax_weights<T, 1>(weights, query, sn, row_max, n, w);
    const float value = w[0] * inv_sum * share[n];
    if (a.direct) {
      grad_row[n] = static_cast<T>(value);
    } else {
      share_out[n] = value;
    }
  }
}

// Finalize (backward with several channel blocks or long rows): dq[r, n] = sum over blocks of the shares.
template <typename T>
MVIT_DEVICE void separable_attention_dq_element(const AttentionArgs<T>& a, int64_t index) {
  const int64_t N = a.N;
  const int64_t row = index / N;
  const int64_t n = index - row * N;
  const float* share = a.partial + row * a.channel_blocks * N + n;
  float sum = 0.f;
  for (int64_t cb = 0; cb < a.channel_blocks; ++cb) sum += share[cb * N];
  const int64_t b = row / a.P;
  const int64_t p = row - b * a.P;
  const int64_t channels = 1 + 2 * static_cast<int64_t>(a.d);
  a.out[(b * channels * a.P + p) * N + n] = static_cast<T>(sum);
}

}  // namespace mobilevitv2
