// CPU implementations of the scsa_kernels ops (registered in csrc/scsa_ops.cpp).
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <tuple>

namespace scsa_kernels::cpu {

using at::Tensor;

// Returns (out, x_h, x_w, a_h, a_w, pooled, argmax, attn_lse, ca); see csrc/scsa_ops.cpp.
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> scsa_forward(
    const Tensor& x, const Tensor& conv_weight, const Tensor& conv_bias, const Tensor& norm_h_weight,
    const Tensor& norm_h_bias, const Tensor& norm_w_weight, const Tensor& norm_w_bias, const Tensor& norm_weight,
    const Tensor& norm_bias, const Tensor& qkv_weight, const Tensor& qkv_bias, int64_t head_num,
    int64_t window_size, bool max_pool, bool softmax_gate, double dropout_p, const std::optional<Tensor>& dropout_seed,
    const std::optional<Tensor>& conv_d);

// Returns (grad_x, the gradient of each of the ten packed weights in order, conv_d's gradient in
// conv_d's dtype (empty without conv_d)).
std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> scsa_backward(
    const Tensor& grad_out, const Tensor& x, const Tensor& conv_weight, const Tensor& conv_bias,
    const Tensor& norm_h_weight, const Tensor& norm_h_bias, const Tensor& norm_w_weight,
    const Tensor& norm_w_bias, const Tensor& norm_weight, const Tensor& norm_bias, const Tensor& qkv_weight,
    const Tensor& qkv_bias, const Tensor& x_h, const Tensor& x_w, const Tensor& a_h, const Tensor& a_w,
    const Tensor& pooled, const Tensor& argmax, const Tensor& attn_lse, const Tensor& ca, int64_t head_num, int64_t window_size, bool max_pool, bool softmax_gate, double dropout_p,
    const std::optional<Tensor>& dropout_seed, const std::optional<Tensor>& conv_d);

}  // namespace scsa_kernels::cpu
