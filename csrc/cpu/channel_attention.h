// PCSA small stage: GroupNorm(1) over the pooled map, per-channel q/k/v scales,
// channel attention per head, gate. Flash style: scores are formed one row of d
// values at a time against a transposed operand, and the mean over positions is taken before P multiplies v
// (mean_N(P v) = P mean_N(v)), so neither the d x d matrix nor P v ever exists.
#pragma once

#include "common.h"
#include "spatial_gate.h"  // normal_stats, kGroupNormEps

#include <algorithm>
#include <limits>

namespace scsa_kernels::cpu {

// Per-sample buffers of the channel branch, all (B, ...) contiguous compute type.
template <typename T>
struct ChannelAttentionBuffers {
  const T* pooled;  // (B, C, N)
  T* y;             // (B, C, N) GroupNorm(1) output
  T* q;             // (B, C, N)
  T* k_t;           // (B, heads, N, d)
  T* v_mean;        // (B, C): mean over positions of v
  T* attn_out;      // (B, C): o = P v_mean (the forward's, before the gate)
  T* attn_lse;      // (B, C): log-sum-exp of each score row (saved for the backward)
  T* ca;            // (B, C): gate
};

struct ChannelGeometry {
  int64_t C, N, heads, d;
  int64_t head_of(int64_t c) const { return c / d; }
};

// GroupNorm(1) statistics of one sample's pooled map: (mean, rstd).
template <typename T>
std::pair<T, T> pooled_stats(const T* pooled, int64_t n) {
  return normal_stats(pooled, n);
}

// y, q, k (and their per-head transposes), v_mean of sample b.
template <typename T>
void project_qkv(const ChannelAttentionBuffers<T>& buf, const PackedParams<T>& w, const ChannelGeometry& g,
                 int64_t b) {
  const int64_t C = g.C, N = g.N, d = g.d;
  const T* p = buf.pooled + b * C * N;
  const auto [mean, rstd] = pooled_stats(p, C * N);
  T* y = buf.y + b * C * N;
  T* q = buf.q + b * C * N;
  T* k_t = buf.k_t + b * C * N;
  for (int64_t c = 0; c < C; ++c) {
    const T gw = w.norm_weight[c], gb = w.norm_bias[c];
    const T wq = w.qkv_weight[c], wk = w.qkv_weight[C + c], wv = w.qkv_weight[2 * C + c];
    const T bq = w.qkv_bias[c], bk = w.qkv_bias[C + c], bv = w.qkv_bias[2 * C + c];
    const int64_t head = g.head_of(c), i = c - head * d;
    T y_sum = 0;
    for (int64_t n = 0; n < N; ++n) {
      const T yv = (p[c * N + n] - mean) * rstd * gw + gb;
      y[c * N + n] = yv;
      y_sum += yv;
      const T qv = wq * yv + bq, kv = wk * yv + bk;
      q[c * N + n] = qv;
      k_t[(head * N + n) * d + i] = kv;
    }
    buf.v_mean[b * C + c] = wv * (y_sum / T(N)) + bv;
  }
}

// Scores j .. j + V::size() of one row (or column) of a head's score matrix:
// scale * sum_n a[n] * b_t[n * d + j], the sum over n kept in a register.
template <typename T>
inline Vectorized<T> score_lanes(const T* a, const T* b_t, int64_t N, int64_t d, int64_t j,
                                 const Vectorized<T>& vscale) {
  using V = Vectorized<T>;
  V acc(T(0));
  for (int64_t n = 0; n < N; ++n) acc = at::vec::fmadd(V(a[n]), V::loadu(b_t + n * d + j), acc);
  return acc * vscale;
}

// Score j alone (the tail of a row), rounded as score_lanes rounds it.
template <typename T>
inline T score_at(const T* a, const T* b_t, int64_t N, int64_t d, int64_t j, T scale_) {
  T acc = 0;
  for (int64_t n = 0; n < N; ++n) acc = std::fma(a[n], b_t[n * d + j], acc);
  return acc * scale_;
}

// Scores j .. j + kVectors * V::size() of one row: score_lanes for kVectors vectors
// at once. One accumulator chain waits on the fma latency at every n; kVectors
// independent chains keep the fma units busy. Each lane is rounded as in score_lanes.
template <int kVectors, typename T>
inline void score_block(const T* a, const T* b_t, int64_t N, int64_t d, int64_t j, const Vectorized<T>& vscale,
                        T* scores) {
  using V = Vectorized<T>;
  V acc[kVectors];
  for (int k = 0; k < kVectors; ++k) acc[k] = V(T(0));
  for (int64_t n = 0; n < N; ++n) {
    const V an(a[n]);
    const T* row = b_t + n * d + j;
    for (int k = 0; k < kVectors; ++k) acc[k] = at::vec::fmadd(an, V::loadu(row + k * V::size()), acc[k]);
  }
  for (int k = 0; k < kVectors; ++k) (acc[k] * vscale).store(scores + j + k * V::size());
}

// scores[0, d) of one row (or column), each rounded as score_lanes / score_at round it.
template <typename T>
void score_row(const T* a, const T* b_t, int64_t N, int64_t d, T scale_, T* scores) {
  constexpr int64_t step = Vectorized<T>::size();
  const Vectorized<T> vscale(scale_);
  int64_t j = 0;
  for (; j + 8 * step <= d; j += 8 * step) score_block<8>(a, b_t, N, d, j, vscale, scores);
  for (; j + 2 * step <= d; j += 2 * step) score_block<2>(a, b_t, N, d, j, vscale, scores);
  for (; j + step <= d; j += step) score_block<1>(a, b_t, N, d, j, vscale, scores);
  for (; j < d; ++j) scores[j] = score_at(a, b_t, N, d, j, scale_);
}

// scores[0, d) of one row (score_row); returns their maximum.
template <typename T>
T score_vector(const T* a, const T* b_t, int64_t N, int64_t d, T scale_, T* scores) {
  using V = Vectorized<T>;
  score_row(a, b_t, N, d, scale_, scores);
  V vmax(-std::numeric_limits<T>::infinity());
  int64_t j = 0;
  for (; j + V::size() <= d; j += V::size()) vmax = at::vec::maximum(vmax, V::loadu(scores + j));
  alignas(64) T lanes[V::size()];
  vmax.store(lanes);
  T m = lanes[0];
  for (int64_t i = 1; i < V::size(); ++i) m = std::max(m, lanes[i]);
  for (; j < d; ++j) m = std::max(m, scores[j]);
  return m;
}

// With one pooled position (N == 1) a score row is scale * q_i * k_j: rounding is
// monotone, so its maximum is at max_j k_j (q_i >= 0) or min_j k_j (q_i < 0), and the
// softmax needs no stored row. The head's k extremes are kept for its consecutive rows.
template <typename T>
class SinglePositionRowMax {
 public:
  // The row's maximum score.
  T operator()(const T* k, int64_t d, int64_t head_key, T q_i, T scale_) {
    update(k, d, head_key);
    return score_at(&q_i, q_i >= T(0) ? &k_hi_ : &k_lo_, 1, 1, 0, scale_);
  }

  // A column of the row's maximum score (0 where k holds NaN: every score of the row is NaN then).
  int64_t top_column(const T* k, int64_t d, int64_t head_key, T q_i) {
    update(k, d, head_key);
    return q_i >= T(0) ? column_hi_ : column_lo_;
  }

 private:
  void update(const T* k, int64_t d, int64_t head_key) {
    if (head_key == head_key_) return;
    min_max(k, d);
    column_lo_ = std::find(k, k + d, k_lo_) - k;  // d where not found (NaN)
    column_hi_ = std::find(k, k + d, k_hi_) - k;
    if (column_lo_ == d) column_lo_ = 0;
    if (column_hi_ == d) column_hi_ = 0;
    head_key_ = head_key;
  }

  void min_max(const T* k, int64_t d) {
    using V = Vectorized<T>;
    V vmin(std::numeric_limits<T>::infinity()), vmax(-std::numeric_limits<T>::infinity());
    int64_t j = 0;
    for (; j + V::size() <= d; j += V::size()) {
      const V kv = V::loadu(k + j);
      vmin = at::vec::minimum(vmin, kv);
      vmax = at::vec::maximum(vmax, kv);
    }
    alignas(64) T lo[V::size()], hi[V::size()];
    vmin.store(lo);
    vmax.store(hi);
    k_lo_ = lo[0], k_hi_ = hi[0];
    for (int64_t i = 1; i < V::size(); ++i) k_lo_ = std::min(k_lo_, lo[i]), k_hi_ = std::max(k_hi_, hi[i]);
    for (; j < d; ++j) k_lo_ = std::min(k_lo_, k[j]), k_hi_ = std::max(k_hi_, k[j]);
  }

  int64_t head_key_ = -1;
  T k_lo_ = 0, k_hi_ = 0;
  int64_t column_lo_ = 0, column_hi_ = 0;
};

// exp for softmax weights: ATen's fast vectorised exp (documented as 20 ulp), as its own softmax
// uses; the attention outputs stay within the tolerance rule (tests).
template <typename T>
inline Vectorized<T> softmax_exp(const Vectorized<T>& v) {
  return v.exp_u20();
}

// With attention dropout, row c of sample b sees v_mean scaled by its row of masks M:
// o = (P * M) v_mean = P (M v_mean). Writes M (d values) to scales and M * v_mean to
// masked_v and returns masked_v; without dropout returns v_mean (scales untouched).
template <typename T>
const T* dropout_row(const AttentionDropout& dropout, const T* v_mean, int64_t b, int64_t C, int64_t c, int64_t d,
                     T* scales, T* masked_v) {
  if (!dropout.active()) return v_mean;
  dropout.row_scales(b, C, c, d, scales);
  for (int64_t j = 0; j < d; ++j) masked_v[j] = scales[j] * v_mean[j];
  return masked_v;
}

// Row c of sample b: o = softmax(S row) . v_mean over the head (with dropout: (P * M) . v_mean),
// and the row's lse. scratch: attention_row_scratch values; single_max: the caller's, reused across rows.
template <typename T>
void attention_row_forward(const ChannelAttentionBuffers<T>& buf, const ChannelGeometry& g,
                           const AttentionDropout& dropout, int64_t b, int64_t c, T* scratch,
                           SinglePositionRowMax<T>& single_max) {
  using V = Vectorized<T>;
  const int64_t C = g.C, N = g.N, d = g.d, head = g.head_of(c);
  const T scale_ = T(1) / std::sqrt(T(d));
  const V vscale(scale_);
  const T* q = buf.q + (b * C + c) * N;
  const T* k_t = buf.k_t + (b * C + head * d) * N;
  const T* v_row = dropout_row(dropout, buf.v_mean + b * C + head * d, b, C, c, d, scratch + d, scratch + 2 * d);
  // Scores are stored by the max pass, except with one position, where the max is known
  // up front and each score is recomputed in the exp pass (one fma, cheaper than a store).
  const bool single = N == 1;
  const T m = single ? single_max(k_t, d, b * g.heads + head, q[0], scale_)
                     : score_vector(q, k_t, N, d, scale_, scratch);
  // One pass: sum of exp(S - m) and its dot with v_mean.
  const V vm(m);
  V vtotal(T(0)), vdot(T(0));
  int64_t j = 0;
  for (; j + V::size() <= d; j += V::size()) {
    const V s = single ? score_lanes(q, k_t, 1, d, j, vscale) : V::loadu(scratch + j);
    const V e = softmax_exp(s - vm);
    vtotal += e;
    vdot = at::vec::fmadd(e, V::loadu(v_row + j), vdot);
  }
  T total = horizontal_sum(vtotal), weighted = horizontal_sum(vdot);
  for (; j < d; ++j) {
    const T e = std::exp((single ? score_at(q, k_t, 1, d, j, scale_) : scratch[j]) - m);
    total += e;
    weighted += e * v_row[j];
  }
  buf.attn_out[b * C + c] = weighted / total;
  buf.attn_lse[b * C + c] = m + std::log(total);
}

template <typename T>
constexpr int64_t attention_row_scratch(const ChannelGeometry& g) {
  return 3 * g.d;  // scores, dropout scales, masked v_mean
}

// Gradient buffers of the channel branch.
template <typename T>
struct ChannelAttentionGrads {
  T* d_out;     // (B, C): d(o), from d(ca) through the gate
  T* dq;        // (B, C, N)
  T* dk;        // (B, C, N)
  T* dv_mean;   // (B, C)
  T* d_pooled;  // (B, C, N)
  // per-sample parameter gradients
  T* norm_weight;  // (B, C)
  T* norm_bias;    // (B, C)
  T* qkv_weight;   // (B, 3, C)
  T* qkv_bias;     // (B, 3, C)
};

// u at a column of scores' maximum over d values (on ties the first in some vector lane: any top
// column would do; NaN scores are passed over), in one vectorised pass.
template <typename T>
T value_at_top_score(const T* scores, const T* u, int64_t d) {
  using V = Vectorized<T>;
  V vtop(-std::numeric_limits<T>::infinity()), vvalue(T(0));
  int64_t j = 0;
  for (; j + V::size() <= d; j += V::size()) {
    const V s = V::loadu(scores + j), higher = s > vtop;
    vvalue = V::blendv(vvalue, V::loadu(u + j), higher);
    vtop = V::blendv(vtop, s, higher);
  }
  alignas(64) T tops[V::size()], values[V::size()];
  vtop.store(tops);
  vvalue.store(values);
  T top = -std::numeric_limits<T>::infinity(), value = 0;
  for (int64_t lane = 0; lane < V::size(); ++lane) {
    if (tops[lane] > top) top = tops[lane], value = values[lane];
  }
  for (; j < d; ++j) {
    if (scores[j] > top) top = scores[j], value = u[j];
  }
  return value;
}

// Row i of the softmax backward, from its scores (d values) and lse:
// P_ij = exp(S_ij - lse) is added, times M_ij do_i, to dv (d values), and ds gets
// dS_ij = P_ij (u_j - z_i) coef, u = M v_mean (the row's values), z_i = sum_j P_ij u_j,
// coef = do_i * scale. u_j - z_i is taken as (u_j - anchor) - offset: anchor = u at the row's top
// score, offset = sum_j P_ij (u_j - anchor) / sum_j P_ij (this row's own P, so dS sums to 0 over the
// row). Where one score dominates a row (long rows: scores of 10-30), z_i is within 1e-4 of that
// column's u, and u_j - z_i from a rounded z kept a few bits only (q/k gradients far past the
// tolerance rule on some draws); so the top column's term is exact and the others small.
// anchor: u at a column of the row's top score (value_at_top_score, or SinglePositionRowMax's column).
template <typename T>
void softmax_row_backward(const T* scores, const T* u, const T* keep, T anchor, T lse, T do_i, T coef, int64_t d,
                          T* ds, T* dv) {
  using V = Vectorized<T>;
  const V vlse(lse), vdo(do_i), vanchor(anchor);
  V vtotal(T(0)), vdot(T(0));
  int64_t j = 0;
  for (; j + V::size() <= d; j += V::size()) {  // P (kept in ds), its sums, dv
    const V p = softmax_exp(V::loadu(scores + j) - vlse);
    p.store(ds + j);
    vtotal += p;
    vdot = at::vec::fmadd(p, V::loadu(u + j) - vanchor, vdot);
    at::vec::fmadd(keep ? p * V::loadu(keep + j) : p, vdo, V::loadu(dv + j)).store(dv + j);
  }
  T total = horizontal_sum(vtotal), dot = horizontal_sum(vdot);
  for (; j < d; ++j) {
    const T p = std::exp(scores[j] - lse);
    ds[j] = p;
    total += p;
    dot += p * (u[j] - anchor);
    dv[j] += (keep ? p * keep[j] : p) * do_i;
  }
  const T offset = dot / total;
  const V voffset(offset), vcoef(coef);
  for (j = 0; j + V::size() <= d; j += V::size())
    (V::loadu(ds + j) * ((V::loadu(u + j) - vanchor) - voffset) * vcoef).store(ds + j);
  for (; j < d; ++j) ds[j] = ds[j] * ((u[j] - anchor) - offset) * coef;
}

// Head `head` of sample b, in one pass over its score matrix: each
// P_ij = exp(S_ij - lse_i) is formed once (row i against k) and feeds the row sum
// dq_i[n] = sum_j dS_ij k_j[n] and the column sums dk_j[n] = sum_i dS_ij q_i[n],
// dv_mean_j = sum_i P_ij M_ij do_i, where dS_ij = P_ij do_i (M_ij v_mean_j - o_i) scale (the
// softmax backward with dP_ij = do_i M_ij v_mean_j; M = 1 without dropout, else the
// forward's masks, drawn again from the seed; softmax_row_backward). Rows are taken in order, so the
// column sums are deterministic. scratch: head_backward_scratch values.
template <typename T>
void attention_head_backward(const ChannelAttentionBuffers<T>& buf, const ChannelAttentionGrads<T>& gr,
                             const ChannelGeometry& g, const AttentionDropout& dropout, int64_t b, int64_t head,
                             T* scratch) {
  const int64_t C = g.C, N = g.N, d = g.d, row0 = b * C + head * d;
  const T scale_ = T(1) / std::sqrt(T(d));
  const T* k_t = buf.k_t + row0 * N;  // (N, d)
  const T* v_mean = buf.v_mean + row0;
  T* ds = scratch;         // (d): dS row i
  T* dk_t = ds + d;        // (N, d): dk transposed, summed over rows
  T* dv = dk_t + N * d;    // (d)
  T* scores = dv + d;      // (d): S row i
  T* scales = scores + d;  // (d): dropout scales M of row i
  T* masked_v = scales + d;  // (d): M * v_mean of row i
  const T* keep = dropout.active() ? scales : nullptr;
  std::fill(dk_t, dv + d, T(0));
  SinglePositionRowMax<T> single_max;  // N == 1: the top column is the head's max or min of k
  for (int64_t i = 0; i < d; ++i) {
    const T* q = buf.q + (row0 + i) * N;
    const T* v_row = dropout_row(dropout, v_mean, b, C, head * d + i, d, scales, masked_v);
    const T do_i = gr.d_out[row0 + i];
    score_row(q, k_t, N, d, scale_, scores);
    const T anchor = N == 1 ? v_row[single_max.top_column(k_t, d, 0, q[0])] : value_at_top_score(scores, v_row, d);
    softmax_row_backward(scores, v_row, keep, anchor, buf.attn_lse[row0 + i], do_i, do_i * scale_, d, ds, dv);
    dots(ds, k_t, N, d, gr.dq + (row0 + i) * N);
    for (int64_t n = 0; n < N; ++n) axpy(dk_t + n * d, q[n], ds, d);
  }
  for (int64_t j = 0; j < d; ++j) {
    gr.dv_mean[row0 + j] = dv[j];
    for (int64_t n = 0; n < N; ++n) gr.dk[(row0 + j) * N + n] = dk_t[n * d + j];
  }
}

template <typename T>
constexpr int64_t head_backward_scratch(const ChannelGeometry& g) {
  return (g.N + 5) * g.d;
}

// From dq, dk, dv_mean of sample b: q/k/v parameter grads, back through GroupNorm(1)
// to d_pooled. dv[c, n] = dv_mean[c] / N for every n.
template <typename T>
void channel_projection_backward(const ChannelAttentionBuffers<T>& buf, const ChannelAttentionGrads<T>& gr,
                                 const PackedParams<T>& w, const ChannelGeometry& g, int64_t b) {
  const int64_t C = g.C, N = g.N, CN = C * N;
  const T* p = buf.pooled + b * CN;
  const T* y = buf.y + b * CN;
  const T* dq = gr.dq + b * CN;
  const T* dk = gr.dk + b * CN;
  T* dp = gr.d_pooled + b * CN;  // holds d(x_hat) until the last loop
  const auto [mean, rstd] = pooled_stats(p, CN);
  T mean_d = 0, mean_d_xhat = 0;
  for (int64_t c = 0; c < C; ++c) {
    const T wq = w.qkv_weight[c], wk = w.qkv_weight[C + c], wv = w.qkv_weight[2 * C + c];
    const T dv = gr.dv_mean[b * C + c] / T(N);
    const T* yc = y + c * N;
    gr.qkv_weight[b * 3 * C + c] = dot(dq + c * N, yc, N);
    gr.qkv_weight[b * 3 * C + C + c] = dot(dk + c * N, yc, N);
    gr.qkv_weight[b * 3 * C + 2 * C + c] = dv * sum(yc, N);
    gr.qkv_bias[b * 3 * C + c] = sum(dq + c * N, N);
    gr.qkv_bias[b * 3 * C + C + c] = sum(dk + c * N, N);
    gr.qkv_bias[b * 3 * C + 2 * C + c] = gr.dv_mean[b * C + c];
    T dgw = 0, dgb = 0;
    for (int64_t n = 0; n < N; ++n) {
      const T dy = wq * dq[c * N + n] + wk * dk[c * N + n] + wv * dv;
      const T x_hat = (p[c * N + n] - mean) * rstd;
      dgw += dy * x_hat;
      dgb += dy;
      const T dx_hat = dy * w.norm_weight[c];
      dp[c * N + n] = dx_hat;
      mean_d += dx_hat;
      mean_d_xhat += dx_hat * x_hat;
    }
    gr.norm_weight[b * C + c] = dgw;
    gr.norm_bias[b * C + c] = dgb;
  }
  mean_d /= T(CN);
  mean_d_xhat /= T(CN);
  for (int64_t i = 0; i < CN; ++i) {
    const T x_hat = (p[i] - mean) * rstd;
    dp[i] = rstd * (dp[i] - mean_d - x_hat * mean_d_xhat);
  }
}

}  // namespace scsa_kernels::cpu
