// The small middle stages shared by the forward and the backward: building the
// per-group SMSA parameters and the channel-branch buffers from tensors.
#pragma once

#include "channel_attention.h"
#include "common.h"
#include "spatial_gate.h"
#include "../shape_checks.h"

namespace scsa_kernels::cpu {

constexpr int64_t kGroups = 4;  // SMSA conv groups == GroupNorm(4) groups

template <typename T>
PackedParams<T> packed_params(const PackedWeightArgs& w) {
  auto p = [&](size_t i) { return w.tensors[i].template const_data_ptr<T>(); };
  return {p(0), p(1), p(2), p(3), p(4), p(5), p(6), p(7), p(8), p(9), w.conv_weight().size(1)};
}

// Parameters of group `group` for the H direction (horizontal=false: x_h, norm_h)
// or the W direction (x_w, norm_w).
template <typename T>
SpatialGateParams<T> direction_params(const PackedParams<T>& w, int64_t group, int64_t g, bool w_direction,
                                      bool softmax_gate) {
  const int64_t c0 = group * g;
  return {w.conv_weight + c0 * w.kernel_size, w.conv_bias + c0,
          (w_direction ? w.norm_w_weight : w.norm_h_weight) + c0,
          (w_direction ? w.norm_w_bias : w.norm_h_bias) + c0, w.kernel_size, softmax_gate};
}

// The SMSA small stage (depthwise conv + GroupNorm(4) + gate) computes in double for every x
// dtype: GroupNorm over a group of few, near-equal values (C = 4 with H or W of 1 or 2)
// amplifies rounding by rstd (up to 1/sqrt(eps) = 316), and the stage touches only
// B*C*(H+W) values, so double costs nothing measurable.
using gate_t = double;

// The packed parameters in gate_t: `params` points into `owned`, the converted copies.
struct GateWeights {
  PackedWeightArgs owned;
  PackedParams<gate_t> params;

  explicit GateWeights(const PackedWeightArgs& w) : owned(w) {
    for (auto& t : owned.tensors) t = t.to(c10::CppTypeToScalarType<gate_t>::value);
    params = packed_params<gate_t>(owned);
  }
};

// a_h, a_w (B, C, H|W) from the means x_h, x_w, for (sample, group) tasks
// [begin, end) (task = b * kGroups + group).
template <typename T>
void spatial_gates_forward(const T* x_h, const T* x_w, const PackedParams<gate_t>& w, int64_t begin, int64_t end,
                           int64_t C, int64_t H, int64_t W, bool softmax_gate, T* a_h, T* a_w) {
  const int64_t g = C / kGroups, L = std::max(H, W);
  std::vector<gate_t> m(g * L), a(g * L), f_hat(g * L), padded(padded_row_size<gate_t>(L, w.kernel_size));
  for (int64_t task = begin; task < end; ++task) {
    const int64_t b = task / kGroups, group = task % kGroups, c0 = b * C + group * g;
    for (const bool w_direction : {false, true}) {
      const int64_t len = w_direction ? W : H;
      const T* means = (w_direction ? x_w : x_h) + c0 * len;
      std::copy(means, means + g * len, m.data());
      spatial_gate_forward(m.data(), g, len, direction_params(w, group, g, w_direction, softmax_gate), f_hat.data(),
                           a.data(), padded.data());
      std::copy(a.data(), a.data() + g * len, (w_direction ? a_w : a_h) + c0 * len);
    }
  }
}

inline CellLayout cell_layout(const Tensor& pooled, const PoolGeometry& pg) {
  return {pooled.size(0), pooled.size(1), pg.kh * pg.kw, pg.positions()};
}

// Recombination's cells (C*kh*kw, B*N) (CellLayout) in pooled's (compute) type; undefined without
// recombination.
inline Tensor recombination_cells(const Tensor& pooled, const PoolGeometry& pg) {
  if (!pg.recombine) return Tensor();
  const CellLayout cl = cell_layout(pooled, pg);
  return at::empty({cl.C * cl.cells_per_window, cl.row_stride()}, pooled.options());
}

// Recombination's GEMMs run in the compute type also inside an autocast region: the dispatcher
// passes the op through autocast to its CPU kernel, so the ATen calls in it would be autocast
// (bfloat16 GEMMs) unless autocast is excluded around them.
inline c10::impl::ExcludeDispatchKeyGuard no_autocast() {
  return c10::impl::ExcludeDispatchKeyGuard(c10::autocast_dispatch_keyset);
}

// pooled (B, C, N) = conv_d (C, C*kh*kw) @ cells, one GEMM for the batch (ATen's matmul).
inline void project_cells(const Tensor& conv_d, const Tensor& cells, Tensor& pooled) {
  const auto guard = no_autocast();
  const int64_t B = pooled.size(0), C = pooled.size(1), N = pooled.size(2);
  pooled.copy_(at::mm(conv_d, cells).view({C, B, N}).permute({1, 0, 2}));
}

// Recombination's backward GEMMs from d_pooled (B, C, N): the cells' gradient conv_d^T d_pooled
// into d_cells (CellLayout), and conv_d's gradient d_pooled cells^T (C, C*kh*kw).
inline Tensor project_cells_backward(const Tensor& conv_d, const Tensor& cells, const Tensor& d_pooled,
                                     Tensor& d_cells) {
  const auto guard = no_autocast();
  const Tensor d_pooled_cbn = d_pooled.permute({1, 0, 2}).reshape({d_pooled.size(1), -1});
  at::mm_out(d_cells, conv_d.t(), d_pooled_cbn);
  return at::mm(d_pooled_cbn, cells.t());
}

// Owns the channel-branch work buffers of one call.
template <typename T>
struct ChannelAttentionState {
  Tensor y, q, k_t, v_mean, attn_out;
  ChannelAttentionBuffers<T> buf;
  ChannelGeometry geom;

  ChannelAttentionState(const Tensor& pooled, const Tensor& attn_lse, const Tensor& ca, int64_t head_num) {
    const int64_t B = pooled.size(0), C = pooled.size(1), N = pooled.size(2);
    geom = {C, N, head_num, C / head_num};
    auto opts = pooled.options();
    y = at::empty({B, C, N}, opts);
    q = at::empty({B, C, N}, opts);
    k_t = at::empty({B, C, N}, opts);
    v_mean = at::empty({B, C}, opts);
    attn_out = at::empty({B, C}, opts);  // the forward's; the backward needs no o (softmax_row_backward)
    buf = {pooled.const_data_ptr<T>(), y.data_ptr<T>(), q.data_ptr<T>(), k_t.data_ptr<T>(), v_mean.data_ptr<T>(),
           attn_out.data_ptr<T>(), const_cast<T*>(attn_lse.const_data_ptr<T>()),
           const_cast<T*>(ca.const_data_ptr<T>())};
  }

  // Samples [begin, end).
  void project(const PackedParams<T>& w, int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) project_qkv(buf, w, geom, b);
  }
};

}  // namespace scsa_kernels::cpu
