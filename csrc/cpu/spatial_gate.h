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

// Zero-padded copy of a row of `length` values: pad zeros, the row, pad zeros
// (padded holds length + 2 * pad values), so the taps loop has no bounds checks.
template <typename T>
const T* zero_padded(const T* row, int64_t length, int64_t pad, T* padded) {
  std::fill(padded, padded + pad, T(0));
  std::copy(row, row + length, padded + pad);
  std::fill(padded + pad + length, padded + length + 2 * pad, T(0));
  return padded;
}

// Vectors of out per tap_sum chunk: each tap's broadcast serves kTapChunk fma
// chains in flight.
constexpr int64_t kTapChunk = 4;

// out[l] = init + sum_t taps[t * tap_stride] * in[l + t], vectorised over l.
// The forward conv and its input gradient (taps reversed: tap_stride -1) are both this.
// Chunks of kTapChunk vectors; `in` holds padded_row_size values, so the last chunk
// is computed whole and only its lanes below `length` are stored.
template <typename T>
void tap_sum(const T* in, const T* taps, int64_t tap_stride, int64_t K, T init, int64_t length, T* out) {
  using V = Vectorized<T>;
  constexpr int64_t step = V::size();
  for (int64_t l0 = 0; l0 < length; l0 += kTapChunk * step) {
    V acc[kTapChunk];
    for (int64_t k = 0; k < kTapChunk; ++k) acc[k] = V(init);
    for (int64_t t = 0; t < K; ++t) {
      const V tap(taps[t * tap_stride]);
      for (int64_t k = 0; k < kTapChunk; ++k) acc[k] = at::vec::fmadd(tap, V::loadu(in + l0 + k * step + t), acc[k]);
    }
    for_each_vector<T>(std::min(length - l0, kTapChunk * step),
                       [&](int64_t i, auto lanes) { lanes.store(out + l0 + i, acc[i / step]); });
  }
}

// Scratch size of the zero-padded rows (tap_sum's `in`) of `length` values and K
// taps: the row and its padding, and the reads of tap_sum's last chunk beyond them.
template <typename T>
constexpr int64_t padded_row_size(int64_t length, int64_t K) {
  constexpr int64_t chunk = kTapChunk * Vectorized<T>::size();
  return (length + chunk - 1) / chunk * chunk + K - 1;
}

// f[c, l] = bias[c] + sum_t w[c, t] * m[c, l + t - K/2], zero padding.
// padded: padded_row_size values; f: channels * length values.
template <typename T>
void depthwise_conv(const T* m, int64_t channels, int64_t length, const SpatialGateParams<T>& p, T* padded, T* f) {
  const int64_t K = p.kernel_size, pad = K / 2;
  for (int64_t c = 0; c < channels; ++c)
    tap_sum(zero_padded(m + c * length, length, pad, padded), p.conv_weight + c * K, 1, K, p.conv_bias[c], length,
            f + c * length);
}

// Mean and 1/sqrt(biased var + eps) of n values (two passes: no cancellation).
template <typename T>
std::pair<T, T> normal_stats(const T* v, int64_t n) {
  using V = Vectorized<T>;
  const T mean = sum(v, n) / T(n);
  const V vmean(mean);
  V acc(T(0));
  int64_t i = 0;
  for (; i + V::size() <= n; i += V::size()) {
    const V d = V::loadu(v + i) - vmean;
    acc = at::vec::fmadd(d, d, acc);
  }
  T var = horizontal_sum(acc);
  for (; i < n; ++i) var += (v[i] - mean) * (v[i] - mean);
  var /= T(n);
  return {mean, T(1) / std::sqrt(var + T(kGroupNormEps))};
}

// Forward of one group: means m (g, L) -> gate a (g, L). f_hat (g * L values)
// receives the normalised conv output (the backward reuses it); returns rstd.
// padded: padded_row_size values.
template <typename T>
T spatial_gate_forward(const T* m, int64_t channels, int64_t length, const SpatialGateParams<T>& p,
                       T* f_hat, T* a, T* padded) {
  const int64_t n = channels * length;
  depthwise_conv(m, channels, length, p, padded, f_hat);
  const auto [mean, rstd] = normal_stats(f_hat, n);
  normalize(f_hat, mean, rstd, f_hat, n);
  for (int64_t c = 0; c < channels; ++c) {
    affine(f_hat + c * length, p.norm_weight[c], p.norm_bias[c], a + c * length, length);
    if (p.softmax_gate) gate_forward(a + c * length, length, true);  // softmax along the length axis
  }
  if (!p.softmax_gate) sigmoid_inplace(a, n);  // elementwise: one flat vectorised pass over the group
  return rstd;
}

template <typename T>
constexpr int64_t spatial_gate_backward_scratch(int64_t channels, int64_t length, int64_t K) {
  return 3 * channels * length + padded_row_size<T>(length, K);
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
// scratch: spatial_gate_backward_scratch values.
template <typename T>
void spatial_gate_backward(const T* m, const T* da, int64_t channels, int64_t length,
                           const SpatialGateParams<T>& p, const SpatialGateGrads<T>& grads, T* dm, T* scratch) {
  const int64_t n = channels * length, K = p.kernel_size, pad = K / 2;
  T* f_hat = scratch;
  T* a = f_hat + channels * length;
  T* d = a + n;  // dn, then df
  T* padded = d + n;
  const T rstd = spatial_gate_forward(m, channels, length, p, f_hat, a, padded);

  T mean_d = 0, mean_d_fhat = 0;
  if (!p.softmax_gate) gate_backward(a, da, d, n, false);  // elementwise: one flat pass
  for (int64_t c = 0; c < channels; ++c) {
    T* dc = d + c * length;
    const T* fc = f_hat + c * length;
    if (p.softmax_gate) gate_backward(a + c * length, da + c * length, dc, length, true);
    grads.norm_weight[c] += dot(dc, fc, length);
    grads.norm_bias[c] += sum(dc, length);
    scale(dc, p.norm_weight[c], dc, length);  // d(f_hat)
    mean_d += sum(dc, length);
    mean_d_fhat += dot(dc, fc, length);
  }
  mean_d /= T(n);
  mean_d_fhat /= T(n);
  // df = rstd * (d - mean_d - f_hat * mean_d_fhat)
  axpy(d, -mean_d_fhat, f_hat, n);
  normalize(d, mean_d, rstd, d, n);

  // Conv backward: bias, taps (correlation with the padded input), input (the
  // transposed conv: taps reversed over the padded gradient).
  for (int64_t c = 0; c < channels; ++c) {
    const T* dfc = d + c * length;
    grads.conv_bias[c] += sum(dfc, length);
    const T* mc = zero_padded(m + c * length, length, pad, padded);
    for (int64_t t = 0; t < K; ++t) grads.conv_weight[c * K + t] += dot(dfc, mc + t, length);
    tap_sum(zero_padded(dfc, length, pad, padded), p.conv_weight + c * K + K - 1, -1, K, T(0), length,
            dm + c * length);
  }
}

}  // namespace scsa_kernels::cpu
