// Host-side helpers for the launchers in *.cu: input checks and the choice of packed-access width.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>

#include "common.cuh"
#include "launch_args.h"

#include <cstdint>
#include <initializer_list>

namespace mobilevitv2 {

inline void check_input(const at::Tensor& t, const char* op, const char* name) {
  TORCH_CHECK(t.is_cuda(), op, ": ", name, " must be a CUDA tensor, got a tensor on ", t.device());
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D, got shape ", t.sizes());
  const auto dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16 || dtype == at::kDouble, op,
              ": ", name, " must be float32, float16 or bfloat16 (or float64), got ", dtype);
}

inline void check_fits_int(int64_t value, const char* op, const char* what) {
  TORCH_CHECK(value <= INT32_MAX, op, ": ", what, " = ", value, " is too large (at most 2^31 - 1)");
}

inline Layout4 layout_of(const at::Tensor& t) {
  Layout4 l{};
  l.address = reinterpret_cast<uintptr_t>(t.data_ptr());
  for (int dim = 0; dim < 4; ++dim) {
    l.size[dim] = t.size(dim);
    l.stride[dim] = t.stride(dim);
  }
  l.element_size = static_cast<int64_t>(t.element_size());
  return l;
}

inline int packed_width(std::initializer_list<const at::Tensor*> tensors) {
  Layout4 layouts[4];
  int count = 0;
  for (const at::Tensor* t : tensors) layouts[count++] = layout_of(*t);
  return packed_width(layouts, count);
}

}  // namespace mobilevitv2
