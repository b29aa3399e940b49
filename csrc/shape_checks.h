// Argument checks shared by every device's implementation of the ops. Python
// (scsa_kernels/config.py) validates user input with friendly messages; these
// checks guard the op boundary itself (direct torch.ops calls, opcheck).
#pragma once

#include <ATen/ATen.h>

#include <array>
#include <optional>

namespace scsa_kernels {

// The ten packed parameter tensors (scsa_kernels/weights.py PackedWeights), in order.
struct PackedWeightArgs {
  std::array<at::Tensor, 10> tensors;
  const at::Tensor& conv_weight() const { return tensors[0]; }
  const at::Tensor& qkv_weight() const { return tensors[8]; }
};

inline const char* packed_weight_name(size_t i) {
  static const char* names[] = {"conv_weight", "conv_bias",   "norm_h_weight", "norm_h_bias", "norm_w_weight",
                                "norm_w_bias", "norm_weight", "norm_bias",     "qkv_weight",  "qkv_bias"};
  return names[i];
}

// x: (B, C, H, W) floating; packed weights contiguous in the compute type
// (float32 for float16/bfloat16/float32 x, float64 for float64 x) with the
// PackedWeights shapes; C divisible by 4 and head_num; a non-empty pool.
inline void check_forward_args(const at::Tensor& x, const PackedWeightArgs& w, int64_t head_num,
                               int64_t window_size) {
  TORCH_CHECK(x.dim() == 4, "scsa_kernels: x must be 4-D (B, C, H, W), got ", x.sizes());
  TORCH_CHECK(at::isFloatingType(x.scalar_type()), "scsa_kernels: x must be floating point, got ", x.scalar_type());
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  TORCH_CHECK(C > 0 && C % 4 == 0, "scsa_kernels: channels must be a positive multiple of 4, got ", C);
  TORCH_CHECK(head_num >= 1 && C % head_num == 0, "scsa_kernels: head_num must divide channels, got head_num=",
              head_num, ", C=", C);
  TORCH_CHECK(window_size == -1 || (window_size >= 1 && H >= window_size && W >= window_size),
              "scsa_kernels: window_size must be -1 or in [1, min(H, W)], got ", window_size, " for H=", H,
              ", W=", W);
  TORCH_CHECK(H > 0 && W > 0, "scsa_kernels: H and W must be positive, got ", x.sizes());
  const auto compute = x.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t K = w.conv_weight().dim() == 2 ? w.conv_weight().size(1) : -1;
  TORCH_CHECK(K >= 1 && K % 2 == 1, "scsa_kernels: conv_weight must be (C, K) with odd K, got ",
              w.conv_weight().sizes());
  for (size_t i = 0; i < w.tensors.size(); ++i) {
    const at::Tensor& t = w.tensors[i];
    const bool qkv = i >= 8;
    const std::vector<int64_t> expected = i == 0 ? std::vector<int64_t>{C, K}
                                          : qkv  ? std::vector<int64_t>{3, C}
                                                 : std::vector<int64_t>{C};
    TORCH_CHECK(t.sizes() == at::IntArrayRef(expected), "scsa_kernels: ", packed_weight_name(i), " must have shape ",
                at::IntArrayRef(expected), ", got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == compute, "scsa_kernels: ", packed_weight_name(i), " must be ", compute,
                " for x of dtype ", x.scalar_type(), ", got ", t.scalar_type());
    TORCH_CHECK(t.device() == x.device(), "scsa_kernels: ", packed_weight_name(i), " is on ", t.device(),
                " but x is on ", x.device());
  }
}

// conv_d: recombination's projection (C, C*ws*ws) with a real window, else absent. Returns it
// contiguous in the compute type and detached (the kernels' own matmuls, on worker threads too,
// must not see a tensor that requires grad), or an undefined tensor.
inline at::Tensor check_conv_d(const std::optional<at::Tensor>& conv_d, const at::Tensor& x, const PackedWeightArgs& w,
                               int64_t window_size, bool max_pool) {
  if (!conv_d.has_value() || !conv_d->defined()) return {};
  const int64_t C = x.size(1);
  TORCH_CHECK(window_size >= 1 && !max_pool,
              "scsa_kernels: conv_d (recombination) needs window_size >= 1 and max_pool=False, got window_size=",
              window_size, ", max_pool=", max_pool);
  TORCH_CHECK(conv_d->dim() == 2 && conv_d->size(0) == C && conv_d->size(1) == C * window_size * window_size,
              "scsa_kernels: conv_d must have shape (C, C*window_size**2) = (", C, ", ", C * window_size * window_size,
              "), got ", conv_d->sizes());
  TORCH_CHECK(at::isFloatingType(conv_d->scalar_type()) && conv_d->device() == x.device(),
              "scsa_kernels: conv_d must be a floating tensor on x's device, got ", conv_d->scalar_type(), " on ",
              conv_d->device());
  return conv_d->detach().to(w.conv_weight().scalar_type()).contiguous();
}

// A small saved tensor: shape and compute dtype as the forward produced it.
inline void check_saved(const at::Tensor& t, const char* name, at::IntArrayRef shape, at::ScalarType dtype) {
  TORCH_CHECK(t.sizes() == shape, "scsa_kernels: saved ", name, " must have shape ", shape, ", got ", t.sizes());
  TORCH_CHECK(t.scalar_type() == dtype, "scsa_kernels: saved ", name, " must be ", dtype, ", got ",
              t.scalar_type());
}

// The forward's max-pool argmax: flat in-plane indices h*W + w. The backward writes each window's
// gradient at its index into a row buffer of the plane: an index outside [0, plane) from a caller's
// corrupt tensor would write outside it. (Within the plane, any index is memory-safe.)
inline void check_argmax(const at::Tensor& argmax, int64_t plane) {
  if (argmax.numel() == 0) return;
  const auto [low, high] = at::aminmax(argmax);
  const int64_t lo = low.item<int64_t>(), hi = high.item<int64_t>();
  TORCH_CHECK(lo >= 0 && hi < plane, "scsa_kernels: saved argmax must hold in-plane indices h*W + w in [0, ", plane,
              "), got values in [", lo, ", ", hi, "]");
}

}  // namespace scsa_kernels
