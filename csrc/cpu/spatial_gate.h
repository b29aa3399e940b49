// SMSA small stage: depthwise conv (packed (C, K) taps) + GroupNorm(4) + gate
// along one direction (H or W), forward and backward. One call handles one
// (sample, group) slice: the conv groups coincide with the GroupNorm groups, so
// a slice is self-contained and slices run in parallel.
#pragma once

#include "common.h"

namespace scsa_kernels::cpu {

constexpr double kGroupNormEps = 1e-5;

// Parameters of one direction for the g channels of one group.
template <typename T>
struct SpatialGateParams {
  const T* conv_weight;  // (g, K), shared by both directions
  const T* conv_bias;    // (g)
  const T* norm_weight;  // (g), norm_h or norm_w
  const T* norm_bias;    // (g)
  int64_t kernel_size;
  bool softmax_gate;
};

// f[c, l] = bias[c] + sum_t w[c, t] * m[c, l + t - K/2], zero padding.
template <typename T>
void depthwise_conv(const T* m, int64_t channels, int64_t length, const SpatialGateParams<T>& p, T* f) {
  const int64_t K = p.kernel_size, pad = K / 2;
  for (int64_t c = 0; c < channels; ++c) {
    const T* mc = m + c * length;
    const T* wc = p.conv_weight + c * K;
    for (int64_t l = 0; l < length; ++l) {
      T acc = p.conv_bias[c];
      const int64_t t0 = std::max<int64_t>(0, pad - l), t1 = std::min<int64_t>(K, length + pad - l);
      for (int64_t t = t0; t < t1; ++t) acc += wc[t] * mc[l + t - pad];
      f[c * length + l] = acc;
    }
  }
}

// Mean and 1/sqrt(biased var + eps) of n values (two passes: no cancellation).
template <typename T>
std::pair<T, T> normal_stats(const T* v, int64_t n) {
  const T mean = sum(v, n) / T(n);
  T var = 0;
  for (int64_t i = 0; i < n; ++i) var += (v[i] - mean) * (v[i] - mean);
  var /= T(n);
  return {mean, T(1) / std::sqrt(var + T(kGroupNormEps))};
}

// Forward of one group: means m (g, L) -> gate a (g, L). f_hat (g, L) receives the
// normalised conv output (the backward reuses it); returns rstd.
template <typename T>
T spatial_gate_forward(const T* m, int64_t channels, int64_t length, const SpatialGateParams<T>& p,
                       T* f_hat, T* a) {
  const int64_t n = channels * length;
  depthwise_conv(m, channels, length, p, f_hat);
  const auto [mean, rstd] = normal_stats(f_hat, n);
  for (int64_t c = 0; c < channels; ++c) {
    for (int64_t l = 0; l < length; ++l) {
      const int64_t i = c * length + l;
      f_hat[i] = (f_hat[i] - mean) * rstd;
      a[i] = f_hat[i] * p.norm_weight[c] + p.norm_bias[c];
    }
    if (p.softmax_gate) gate_forward(a + c * length, length, true);  // softmax along the length axis
  }
  if (!p.softmax_gate) sigmoid_inplace(a, n);  // elementwise: one flat vectorised pass over the group
  return rstd;
}

// Gradients of one group's slice of the parameters, accumulated (both directions add
// into the same conv_weight / conv_bias rows).
template <typename T>
struct SpatialGateGrads {
  T* conv_weight;  // (g, K)
  T* conv_bias;    // (g)
  T* norm_weight;  // (g)
  T* norm_bias;    // (g)
};

// Backward of one group: da (g, L) -> dm (g, L) (gradient of the means), parameter
// grads accumulated into `grads`. Recomputes the forward (the inputs are tiny).
// scratch: 3 * g * L values.
template <typename T>
void spatial_gate_backward(const T* m, const T* da, int64_t channels, int64_t length,
                           const SpatialGateParams<T>& p, const SpatialGateGrads<T>& grads, T* dm, T* scratch) {
  const int64_t n = channels * length, K = p.kernel_size, pad = K / 2;
  T* f_hat = scratch;
  T* a = scratch + n;
  T* d = scratch + 2 * n;  // dn, then df
  const T rstd = spatial_gate_forward(m, channels, length, p, f_hat, a);

  T mean_d = 0, mean_d_fhat = 0;
  if (!p.softmax_gate) gate_backward(a, da, d, n, false);  // elementwise: one flat pass
  for (int64_t c = 0; c < channels; ++c) {
    T* dc = d + c * length;
    const T* fc = f_hat + c * length;
    if (p.softmax_gate) gate_backward(a + c * length, da + c * length, dc, length, true);
    grads.norm_weight[c] += dot(dc, fc, length);
    grads.norm_bias[c] += sum(dc, length);
    scale(dc, p.norm_weight[c], length);  // d(f_hat)
    mean_d += sum(dc, length);
    mean_d_fhat += dot(dc, fc, length);
  }
  mean_d /= T(n);
  mean_d_fhat /= T(n);
  for (int64_t i = 0; i < n; ++i) d[i] = rstd * (d[i] - mean_d - f_hat[i] * mean_d_fhat);  // df

  // Conv backward: bias, taps (correlation with the input), input (transposed conv).
  for (int64_t c = 0; c < channels; ++c) {
    const T* dfc = d + c * length;
    const T* mc = m + c * length;
    const T* wc = p.conv_weight + c * K;
    grads.conv_bias[c] += sum(dfc, length);
    for (int64_t t = 0; t < K; ++t) {
      const int64_t l0 = std::max<int64_t>(0, pad - t), l1 = std::min<int64_t>(length, length + pad - t);
      T acc = 0;
      for (int64_t l = l0; l < l1; ++l) acc += dfc[l] * mc[l + t - pad];
      grads.conv_weight[c * K + t] += acc;
    }
    T* dmc = dm + c * length;
    for (int64_t j = 0; j < length; ++j) {
      // j = l + t - pad  =>  l = j - t + pad
      const int64_t t0 = std::max<int64_t>(0, j + pad - (length - 1)), t1 = std::min<int64_t>(K, j + pad + 1);
      T acc = 0;
      for (int64_t t = t0; t < t1; ++t) acc += wc[t] * dfc[j - t + pad];
      dmc[j] = acc;
    }
  }
}

}  // namespace scsa_kernels::cpu
