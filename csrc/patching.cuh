// Unfold / fold kernels (bodies), shared by patching.cu and the CPU emulator in csrc/emulation.
// Contract: mobilevitv2_kernels/reference.py. With P = ph*pw and N = nh*nw:
//   unfold: x (B, C, H, W), any strides -> out (B, C, P, N) contiguous,
//           out[b, c, i*pw + j, hi*nw + wi] = x[b, c, hi*ph + i, wi*pw + j]
//   fold:   patches (B, C, P, N), any strides -> out (B, C, H, W) contiguous, the inverse map, zeros in
//           the rows/columns beyond nh*ph / nw*pw.
// One thread moves VW consecutive elements of one image row (b, c, h): the image side is accessed in
// packs of VW (16 bytes when the row is contiguous and aligned), the patch side element by element, which
// stays coalesced across the warp because consecutive columns of one patch column j are consecutive n.
#pragma once

#include "common.cuh"

namespace mobilevitv2 {

template <typename T>
struct PatchArgs {
  const T* in;
  T* out;
  int64_t stride_b, stride_c, stride_1, stride_2;  // input strides: (b, c, h, w) or (b, c, p, n)
  int64_t C, H, W, ph, pw, nh, nw;
  int64_t row_length;      // image-row elements the threads cover: unfold nw*pw, fold W
  int64_t chunks_per_row;  // ceil(row_length / VW)
  int64_t rows;            // image rows covered: unfold nh*ph, fold H
  int64_t total;           // threads: B * C * rows * chunks_per_row
};

template <typename T, int VW>
MVIT_DEVICE void unfold_thread(const PatchArgs<T>& a, int64_t index) {
  if (index >= a.total) return;
  const int64_t row = index / a.chunks_per_row;
  const int64_t w0 = (index - row * a.chunks_per_row) * VW;
  const int64_t h = row % a.rows;
  const int64_t bc = row / a.rows;
  const int64_t c = bc % a.C;
  const int64_t b = bc / a.C;
  const T* src = a.in + b * a.stride_b + c * a.stride_c + h * a.stride_1;
  T vals[VW];
  if (VW > 1 && w0 + VW <= a.row_length) {
    const Pack<T, VW> pack = *reinterpret_cast<const Pack<T, VW>*>(src + w0);
#pragma unroll
    for (int j = 0; j < VW; ++j) vals[j] = pack.v[j];
  } else {
#pragma unroll
    for (int j = 0; j < VW; ++j) {
      if (w0 + j < a.row_length) vals[j] = src[(w0 + j) * a.stride_2];
    }
  }
  const int64_t hi = h / a.ph;
  const int64_t i = h - hi * a.ph;
  const int64_t N = a.nh * a.nw;
  T* dst = a.out + (bc * a.ph * a.pw + i * a.pw) * N + hi * a.nw;  // out[b, c, i*pw, hi*nw]
#pragma unroll
  for (int j = 0; j < VW; ++j) {
    const int64_t w = w0 + j;
    if (w < a.row_length) {
      const int64_t wi = w / a.pw;
      dst[(w - wi * a.pw) * N + wi] = vals[j];
    }
  }
}

template <typename T, int VW>
MVIT_DEVICE void fold_thread(const PatchArgs<T>& a, int64_t index) {
  if (index >= a.total) return;
  const int64_t row = index / a.chunks_per_row;
  const int64_t w0 = (index - row * a.chunks_per_row) * VW;
  const int64_t h = row % a.rows;
  const int64_t bc = row / a.rows;
  const int64_t c = bc % a.C;
  const int64_t b = bc / a.C;
  const int64_t hi = h / a.ph;
  const int64_t i = h - hi * a.ph;
  const bool inside = hi < a.nh;
  const T* src = a.in + b * a.stride_b + c * a.stride_c + (i * a.pw) * a.stride_1 + (hi * a.nw) * a.stride_2;
  T vals[VW];
#pragma unroll
  for (int j = 0; j < VW; ++j) {
    const int64_t w = w0 + j;
    const int64_t wi = w / a.pw;
    vals[j] = inside && wi < a.nw ? src[(w - wi * a.pw) * a.stride_1 + wi * a.stride_2] : static_cast<T>(0.f);
  }
  T* dst = a.out + row * a.W + w0;  // out is contiguous (B, C, H, W): row = (b*C + c)*H + h
  if (VW > 1) {  // the host picks VW > 1 only when W % VW == 0, so the pack is inside the row
    Pack<T, VW> pack;
#pragma unroll
    for (int j = 0; j < VW; ++j) pack.v[j] = vals[j];
    *reinterpret_cast<Pack<T, VW>*>(dst) = pack;
  } else {
    dst[0] = vals[0];
  }
}

}  // namespace mobilevitv2
