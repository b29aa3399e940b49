// Shared building blocks of the CPU kernels: geometry, strided row access in the
// compute type, and the few vector loops every pass is made of.
#pragma once

#include <ATen/ATen.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/cpu/vec/vec.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../shape_checks.h"
#include "attention_dropout.h"

namespace scsa_kernels::cpu {

using at::Tensor;
using at::vec::Vectorized;

// Options of one call, as the kernels need them.
struct Options {
  int64_t head_num;
  int64_t window_size;  // -1: global average pooling
  bool max_pool;        // ignored for window_size == -1 (SPEC: adaptive average, any mode)
  bool softmax_gate;
  bool recombine;  // recombination with a window: conv_d given
  AttentionDropout dropout;
};

// What both ops check and derive from their shared arguments, before any kernel runs:
// x and the packed weights (made contiguous), conv_d (undefined without recombination)
// and the options.
struct CheckedArgs {
  PackedWeightArgs weights;
  Tensor conv_d;
  Options opt;
};

inline CheckedArgs check_args(const Tensor& x, PackedWeightArgs weights, int64_t head_num, int64_t window_size,
                              bool max_pool, bool softmax_gate, double dropout_p,
                              const std::optional<Tensor>& dropout_seed, const std::optional<Tensor>& conv_d) {
  check_forward_args(x, weights, head_num, window_size);
  for (auto& t : weights.tensors) t = t.contiguous();
  Tensor projection = check_conv_d(conv_d, x, weights, window_size, max_pool);
  const bool recombine = projection.defined();
  return {std::move(weights), std::move(projection),
          {head_num, window_size, max_pool, softmax_gate, recombine, attention_dropout(dropout_p, dropout_seed)}};
}

// Pooling windows. Global pooling is one window of the whole plane, so every
// pass treats all three modes alike; rows >= hp*kh and columns >= wp*kw lie
// outside every window (SPEC: floor mode drops them).
struct PoolGeometry {
  int64_t kh, kw;  // window size
  int64_t hp, wp;  // pooled map size
  bool max_pool;
  bool recombine;  // windows become cells, projected by conv_d (CellLayout)
  int64_t positions() const { return hp * wp; }
};

// Recombination's cells: (C*kh*kw, B, N), so that one GEMM conv_d (C, C*kh*kw) @ cells (C*kh*kw, B*N)
// projects the whole batch (conv_d is read once, not once per sample). Plane p = b*C + c owns rows
// c*kh*kw .. c*kh*kw + kh*kw - 1 (pixel_unshuffle's channel order), columns b*N .. b*N + N - 1.
struct CellLayout {
  int64_t B, C, cells_per_window, N;
  int64_t row_stride() const { return B * N; }
  int64_t plane_offset(int64_t p) const { return (p % C) * cells_per_window * row_stride() + (p / C) * N; }
};

// Window row of each image row (-1 below the last window) and whether the row opens /
// closes its window: tables, so per-row code does no integer division.
struct PoolRows {
  std::vector<int64_t> window;
  std::vector<uint8_t> first, last;
  PoolRows(const PoolGeometry& pg, int64_t H) : window(H, -1), first(H, 0), last(H, 0) {
    for (int64_t h = 0; h < pg.hp * pg.kh; ++h) {
      window[h] = h / pg.kh;
      first[h] = h % pg.kh == 0;
      last[h] = h % pg.kh == pg.kh - 1;
    }
  }
};

inline PoolGeometry pool_geometry(int64_t H, int64_t W, const Options& opt) {
  if (opt.window_size == -1) return {H, W, 1, 1, false, false};
  return {opt.window_size, opt.window_size, H / opt.window_size, W / opt.window_size, opt.max_pool, opt.recombine};
}

// Recombination's space-to-depth: row h (window row hn) of one plane's x_s = x * a_h * a_w into its
// cells (CellLayout; plane_cells at the plane's offset): cell (dh*kw + dw, hn*wp + wn) =
// x_s[h, wn*kw + dw], dh = h - hn*kh. x_s is rounded as the reference forms it.
template <typename T>
void store_cells_row(const T* x_row, T a_h, const T* a_w, const PoolGeometry& pg, int64_t row_stride, int64_t hn,
                     int64_t h, T* plane_cells) {
  T* cells = plane_cells + (h - hn * pg.kh) * pg.kw * row_stride + hn * pg.wp;
  for (int64_t wn = 0; wn < pg.wp; ++wn)
    for (int64_t dw = 0; dw < pg.kw; ++dw) {
      const int64_t w = wn * pg.kw + dw;
      cells[dw * row_stride + wn] = x_row[w] * a_h * a_w[w];
    }
}

// The packed parameters (weights.py PackedWeights), as raw pointers in the compute type.
template <typename acc_t>
struct PackedParams {
  const acc_t* conv_weight;  // (C, K)
  const acc_t* conv_bias;    // (C)
  const acc_t* norm_h_weight;
  const acc_t* norm_h_bias;
  const acc_t* norm_w_weight;
  const acc_t* norm_w_bias;
  const acc_t* norm_weight;
  const acc_t* norm_bias;
  const acc_t* qkv_weight;  // (3, C)
  const acc_t* qkv_bias;    // (3, C)
  int64_t kernel_size;      // K
};

// A (B, C, H, W) tensor with arbitrary strides, addressed by plane p = b * C + c.
template <typename T>
struct Planes {
  T* data;
  int64_t C, stride_b, stride_c, stride_h, stride_w;
  explicit Planes(const Tensor& t)
      : data(static_cast<T*>(t.data_ptr())), C(t.size(1)), stride_b(t.stride(0)),
        stride_c(t.stride(1)), stride_h(t.stride(2)), stride_w(t.stride(3)) {}
  // One plane's rows; taken once per plane so the row loop does no divisions.
  struct Plane {
    T* base;
    int64_t stride_h;
    T* row(int64_t h) const { return base + h * stride_h; }
  };
  Plane plane(int64_t b, int64_t c) const { return {data + b * stride_b + c * stride_c, stride_h}; }
  Plane plane(int64_t p) const { return plane(p / C, p % C); }
};

// Reads rows of x (any dtype, any stride) as contiguous compute-type arrays. A
// unit-stride row already in the compute type is used in place (the fp32/fp64
// NCHW fast path); anything else is converted into a per-thread buffer.
template <typename scalar_t, typename acc_t>
class RowReader {
 public:
  explicit RowReader(int64_t n) : buffer_(n) {}
  const acc_t* read(const scalar_t* src, int64_t stride, int64_t n) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (stride == 1) return src;
    }
    acc_t* dst = buffer_.data();
    if (stride == 1) {
      at::vec::convert(src, dst, n);
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i * stride]);
    }
    return dst;
  }

 private:
  std::vector<acc_t> buffer_;
};

// Writes rows: compute into target(), then commit() converts/scatters when the
// destination is not a unit-stride row of the compute type.
template <typename scalar_t, typename acc_t>
class RowWriter {
 public:
  explicit RowWriter(int64_t n) : buffer_(n) {}
  acc_t* target(scalar_t* dst, int64_t stride) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (stride == 1) return dst;
    }
    return buffer_.data();
  }
  void commit(scalar_t* dst, int64_t stride, int64_t n) {
    if constexpr (std::is_same_v<scalar_t, acc_t>) {
      if (stride == 1) return;
    }
    const acc_t* src = buffer_.data();
    if (stride == 1) {
      at::vec::convert(src, dst, n);
    } else {
      for (int64_t i = 0; i < n; ++i) dst[i * stride] = static_cast<scalar_t>(src[i]);
    }
  }

 private:
  std::vector<acc_t> buffer_;
};

// ---- vector loops over contiguous compute-type arrays ----------------------
// Lane sums are folded in a fixed order, so results never depend on threads.

// Row tails as partial vectors. Short rows (W = 7, 14, 28) would otherwise spend
// most of their time in scalar tail loops. load_head: lanes [0, n) from memory,
// zeros above. store_head: writes lanes [0, n) only. 0 < n < V::size().
// AVX2 (float: every input dtype but float64 computes in it; double: the small SMSA
// stage of every dtype): a masked load, which never touches the lanes it skips, and
// 16/8/4-byte stores (masked stores are slow on Zen 3).
template <typename T>
inline Vectorized<T> load_head(const T* p, int64_t n) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int32_t>(n)),
                                            _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    return _mm256_maskload_ps(p, mask);
  }
  if constexpr (std::is_same_v<T, double>) {
    const __m256i mask = _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3));
    return _mm256_maskload_pd(p, mask);
  }
#endif
  alignas(64) T lanes[Vectorized<T>::size()] = {};
  std::copy(p, p + n, lanes);
  return Vectorized<T>::loadu(lanes);
}

template <typename T>
inline void store_head(T* p, const Vectorized<T>& v, int64_t n) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, float>) {
    const __m256 all = v;
    __m128 part = _mm256_castps256_ps128(all);
    if (n >= 4) {
      _mm_storeu_ps(p, part);
      p += 4;
      n -= 4;
      part = _mm256_extractf128_ps(all, 1);
    }
    if (n >= 2) {
      _mm_storel_pi(reinterpret_cast<__m64*>(p), part);
      p += 2;
      n -= 2;
      part = _mm_movehl_ps(part, part);
    }
    if (n) _mm_store_ss(p, part);
    return;
  }
  if constexpr (std::is_same_v<T, double>) {
    const __m256d all = v;
    __m128d part = _mm256_castpd256_pd128(all);
    if (n >= 2) {
      _mm_storeu_pd(p, part);
      p += 2;
      n -= 2;
      part = _mm256_extractf128_pd(all, 1);
    }
    if (n) _mm_store_sd(p, part);
    return;
  }
#endif
  alignas(64) T lanes[Vectorized<T>::size()];
  v.store(lanes);
  std::copy(lanes, lanes + n, p);
}

// The lanes of one step of for_each_vector: a whole vector, or the row's partial last one.
template <typename T>
struct WholeVector {
  static Vectorized<T> load(const T* p) { return Vectorized<T>::loadu(p); }
  static void store(T* p, const Vectorized<T>& v) { v.store(p); }
};

template <typename T>
struct VectorHead {
  int64_t n;
  Vectorized<T> load(const T* p) const { return load_head(p, n); }
  void store(T* p, const Vectorized<T>& v) const { store_head(p, v, n); }
};

// body(i, lanes) for i = 0, V::size(), ... < n; lanes.load / lanes.store touch only
// elements [i, min(i + V::size(), n)) (loads give zeros above n).
template <typename T, typename Body>
inline void for_each_vector(int64_t n, Body&& body) {
  constexpr int64_t step = Vectorized<T>::size();
  int64_t i = 0;
  for (; i + step <= n; i += step) body(i, WholeVector<T>{});
  if (i < n) body(i, VectorHead<T>{n - i});
}

// Elements in a buffer of n values padded to whole vectors: per-row accumulators
// are read and written as whole vectors (a partial store followed by a whole
// load of the same bytes would stall store-to-load forwarding).
template <typename T>
constexpr int64_t padded_to_vectors(int64_t n) {
  constexpr int64_t step = Vectorized<T>::size();
  return (n + step - 1) / step * step;
}

// acc[0, n) += alpha * x[0, n); acc holds padded_to_vectors(n) values (the lanes
// above n gain zeros).
template <typename T>
inline void accumulate_scaled(T* acc, T alpha, const T* x, int64_t n) {
  using V = Vectorized<T>;
  const V va(alpha);
  for_each_vector<T>(n, [&](int64_t i, auto lanes) {
    at::vec::fmadd(va, lanes.load(x + i), V::loadu(acc + i)).store(acc + i);
  });
}

// Sum of the lanes. ATen's vec_reduce_all has a shuffle path for float only; its
// generic path (a lane array round trip per step) made double dots 8x slower.
template <typename T>
inline T horizontal_sum(const Vectorized<T>& v) {
#if defined(CPU_CAPABILITY_AVX2)
  if constexpr (std::is_same_v<T, double>) {
    const __m256d all = v;
    const __m128d pairs = _mm_add_pd(_mm256_castpd256_pd128(all), _mm256_extractf128_pd(all, 1));
    return _mm_cvtsd_f64(_mm_add_sd(pairs, _mm_unpackhi_pd(pairs, pairs)));
  }
#endif
  return at::vec::vec_reduce_all<T>([](const Vectorized<T>& a, const Vectorized<T>& b) { return a + b; }, v);
}

template <typename T>
inline T sum(const T* a, int64_t n) {
  Vectorized<T> acc(T(0));
  for_each_vector<T>(n, [&](int64_t i, auto lanes) { acc += lanes.load(a + i); });
  return horizontal_sum(acc);
}

template <typename T>
inline T dot(const T* a, const T* b, int64_t n) {
  Vectorized<T> acc(T(0));
  for_each_vector<T>(n, [&](int64_t i, auto lanes) {
    acc = at::vec::fmadd(lanes.load(a + i), lanes.load(b + i), acc);
  });
  return horizontal_sum(acc);
}

// out[r] = dot(a, rows + r * n, n) for r in [0, count), each rounded as dot rounds
// it; four rows at a time, so their fma chains overlap.
template <typename T>
inline void dots(const T* a, const T* rows, int64_t count, int64_t n, T* out) {
  using V = Vectorized<T>;
  int64_t r = 0;
  for (; r + 4 <= count; r += 4) {
    V acc[4] = {V(T(0)), V(T(0)), V(T(0)), V(T(0))};
    for_each_vector<T>(n, [&](int64_t i, auto lanes) {
      const V av = lanes.load(a + i);
      for (int k = 0; k < 4; ++k) acc[k] = at::vec::fmadd(av, lanes.load(rows + (r + k) * n + i), acc[k]);
    });
    for (int k = 0; k < 4; ++k) out[r + k] = horizontal_sum(acc[k]);
  }
  for (; r < count; ++r) out[r] = dot(a, rows + r * n, n);
}

// y += alpha * x
template <typename T>
inline void axpy(T* y, T alpha, const T* x, int64_t n) {
  const Vectorized<T> va(alpha);
  for_each_vector<T>(n, [&](int64_t i, auto lanes) {
    lanes.store(y + i, at::vec::fmadd(va, lanes.load(x + i), lanes.load(y + i)));
  });
}

// out = in * alpha (out may be in)
template <typename T>
inline void scale(const T* in, T alpha, T* out, int64_t n) {
  const Vectorized<T> va(alpha);
  for_each_vector<T>(n, [&](int64_t i, auto lanes) { lanes.store(out + i, lanes.load(in + i) * va); });
}

// out = in * alpha + beta (out may be in)
template <typename T>
inline void affine(const T* in, T alpha, T beta, T* out, int64_t n) {
  const Vectorized<T> va(alpha), vb(beta);
  for_each_vector<T>(n, [&](int64_t i, auto lanes) {
    lanes.store(out + i, at::vec::fmadd(lanes.load(in + i), va, vb));
  });
}

// out = (in - shift) * alpha (out may be in). Subtracting before scaling keeps a
// group of near-equal values exact: folded into one fma (in * alpha - shift * alpha),
// the rounding of shift * alpha is amplified by alpha = rstd (up to 1/sqrt(eps) = 316).
template <typename T>
inline void normalize(const T* in, T shift, T alpha, T* out, int64_t n) {
  const Vectorized<T> vs(shift), va(alpha);
  for_each_vector<T>(n, [&](int64_t i, auto lanes) { lanes.store(out + i, (lanes.load(in + i) - vs) * va); });
}

// Chunk size for at::parallel_for over planes: about 16K elements per task.
inline int64_t plane_grain(int64_t plane_elements) {
  return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, plane_elements));
}

// Gate backward, elementwise sigmoid: dn = da * a * (1 - a).
// Softmax over n entries: dn = a * (da - sum(a * da)).
template <typename T>
inline void gate_backward(const T* a, const T* da, T* dn, int64_t n, bool softmax) {
  if (softmax) {
    const T s = dot(a, da, n);
    for (int64_t i = 0; i < n; ++i) dn[i] = a[i] * (da[i] - s);
  } else {
    const Vectorized<T> one(T(1));
    for_each_vector<T>(n, [&](int64_t i, auto lanes) {
      const Vectorized<T> av = lanes.load(a + i);
      lanes.store(dn + i, lanes.load(da + i) * av * (one - av));
    });
  }
}

// Elementwise sigmoid in place, vectorised (the gates are the one place with many exps).
template <typename T>
inline void sigmoid_inplace(T* v, int64_t n) {
  const Vectorized<T> one(T(1));
  for_each_vector<T>(n, [&](int64_t i, auto lanes) {
    lanes.store(v + i, one / (one + lanes.load(v + i).neg().exp()));
  });
}

// Gate forward in place over n entries: sigmoid, or a softmax over all of them.
template <typename T>
inline void gate_forward(T* v, int64_t n, bool softmax) {
  if (softmax) {
    T m = -std::numeric_limits<T>::infinity();
    for (int64_t i = 0; i < n; ++i) m = std::max(m, v[i]);
    T total = 0;
    for (int64_t i = 0; i < n; ++i) total += (v[i] = std::exp(v[i] - m));
    scale(v, T(1) / total, v, n);
  } else {
    sigmoid_inplace(v, n);
  }
}

// Sums per-sample parameter gradients (B, n) over the batch in a fixed order
// (deterministic, unlike atomics or thread-count dependent reductions).
template <typename T>
inline void sum_over_batch(const T* per_sample, int64_t batch, int64_t n, T* out) {
  at::parallel_for(0, n, 1024, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = 0;
    for (int64_t b = 0; b < batch; ++b) {
      const T* row = per_sample + b * n;
      for (int64_t i = begin; i < end; ++i) out[i] += row[i];
    }
  });
}

}  // namespace scsa_kernels::cpu
