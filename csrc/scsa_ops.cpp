// The one registration file: op schemas of the scsa_kernels namespace, and the
// kernels of each device. Fake (meta) implementations and autograd are
// registered from Python (scsa_kernels/ops/cpu.py) with torch.library.
//
// scsa_forward returns the output and the small tensors the backward needs:
//   out (x's shape, dtype and layout), x_h (B,C,H) / x_w (B,C,W) row/column means,
//   a_h, a_w spatial gates, pooled (B,C,N), argmax (B,C,N) int64 plane offsets for
//   max pooling (else (0,C,N)), attn_lse (B,C) log-sum-exp of each score row, ca (B,C)
//   channel gate.
// Small tensors are float32 (float64 for float64 x), as are the packed weights.
#include <Python.h>
#include <torch/library.h>

#include "cpu/scsa_cpu.h"

extern "C" {
// `import scsa_kernels._C` loads this library and with it the registrations below.
PyObject* PyInit__C(void) {
#ifdef SCSA_REQUIRE_AVX2
  // Built with AVX2/FMA/F16C (setup.py, SCSA_CPU_CAPABILITY): refuse to load rather
  // than die of an illegal instruction on an older CPU.
  if (!__builtin_cpu_supports("avx2") || !__builtin_cpu_supports("fma")) {
    PyErr_SetString(PyExc_ImportError,
                    "scsa_kernels._C was built for AVX2+FMA CPUs but this CPU lacks them; rebuild with "
                    "SCSA_CPU_CAPABILITY=DEFAULT pip install --no-build-isolation -e .");
    return nullptr;
  }
#endif
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", "scsa_kernels C++ ops (torch.ops.scsa_kernels)",
                                          -1, nullptr};
  return PyModule_Create(&module_def);
}
}

#define SCSA_PACKED_WEIGHTS                                                                                    \
  "Tensor conv_weight, Tensor conv_bias, Tensor norm_h_weight, Tensor norm_h_bias, Tensor norm_w_weight, " \
  "Tensor norm_w_bias, Tensor norm_weight, Tensor norm_bias, Tensor qkv_weight, Tensor qkv_bias"
// dropout_p > 0: attention dropout with the masks of dropout_seed, a one-element int64 tensor
// (csrc/cpu/attention_dropout.h); the backward takes the forward's p and seed.
// conv_d: recombination's projection (C, C*ws*ws), any float dtype, with a real window; its
// gradient comes back in its dtype (empty without it).
#define SCSA_OPTIONS                                                                                             \
  "int head_num, int window_size, bool max_pool, bool softmax_gate, float dropout_p=0.0, Tensor? dropout_seed=None, " \
  "Tensor? conv_d=None"

TORCH_LIBRARY(scsa_kernels, m) {
  m.def("scsa_forward(Tensor x, " SCSA_PACKED_WEIGHTS ", " SCSA_OPTIONS
        ") -> (Tensor out, Tensor x_h, Tensor x_w, Tensor a_h, Tensor a_w, Tensor pooled, Tensor argmax, "
        "Tensor attn_lse, Tensor ca)");
  m.def("scsa_backward(Tensor grad_out, Tensor x, " SCSA_PACKED_WEIGHTS
        ", Tensor x_h, Tensor x_w, Tensor a_h, Tensor a_w, Tensor pooled, Tensor argmax, Tensor attn_lse, "
        "Tensor ca, " SCSA_OPTIONS
        ") -> (Tensor grad_x, Tensor grad_conv_weight, Tensor grad_conv_bias, Tensor grad_norm_h_weight, "
        "Tensor grad_norm_h_bias, Tensor grad_norm_w_weight, Tensor grad_norm_w_bias, Tensor grad_norm_weight, "
        "Tensor grad_norm_bias, Tensor grad_qkv_weight, Tensor grad_qkv_bias, Tensor grad_conv_d)");
}

TORCH_LIBRARY_IMPL(scsa_kernels, CPU, m) {
  m.impl("scsa_forward", &scsa_kernels::cpu::scsa_forward);
  m.impl("scsa_backward", &scsa_kernels::cpu::scsa_backward);
}
