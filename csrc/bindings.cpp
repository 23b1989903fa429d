// Python bindings (pybind11) of the four functions in ops.h. The registered torch ops in
// mobilevitv2_kernels call them through mobilevitv2_kernels.cuda_extension; nothing else should.
#include <torch/extension.h>

#include "ops.h"

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "CUDA kernels of mobilevitv2_kernels: separable attention forward/backward, unfold, fold";
  m.def("separable_attention_forward", &mobilevitv2::separable_attention_forward, pybind11::arg("qkv"),
        "qkv (B, 1+2d, P, N) -> relu(value) * sum_N(key * softmax_N(query)), shape (B, d, P, N)");
  m.def("separable_attention_backward", &mobilevitv2::separable_attention_backward, pybind11::arg("grad_out"),
        pybind11::arg("qkv"), "gradient of separable_attention_forward with respect to qkv");
  m.def("unfold_forward", &mobilevitv2::unfold_forward, pybind11::arg("x"), pybind11::arg("patch_h"),
        pybind11::arg("patch_w"), "(B, C, H, W) -> (B, C, patch_h*patch_w, N) patches");
  m.def("fold_forward", &mobilevitv2::fold_forward, pybind11::arg("patches"), pybind11::arg("height"),
        pybind11::arg("width"), pybind11::arg("patch_h"), pybind11::arg("patch_w"),
        "(B, C, patch_h*patch_w, N) patches -> (B, C, height, width), the adjoint of unfold_forward");
}
