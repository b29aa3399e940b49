// Forward: three passes over x (means, pooled modulated map, apply) around two
// small stages (spatial gates, channel attention). See DESIGN.md "Kernel plan".
#include "scsa_cpu.h"

#include <limits>

#include "small_stages.h"

namespace scsa_kernels::cpu {
namespace {

// Pass 1: x_h[p, h] = mean_w x, x_w[p, w] = mean_h x, one plane per task.
template <typename scalar_t, typename acc_t>
void row_col_means(const Tensor& x, acc_t* x_h, acc_t* x_w) {
  const int64_t H = x.size(2), W = x.size(3);
  const Planes<const scalar_t> planes(x);
  at::parallel_for(0, x.size(0) * x.size(1), plane_grain(H * W), [&](int64_t begin, int64_t end) {
    RowReader<scalar_t, acc_t> rows(W);
    for (int64_t p = begin; p < end; ++p) {
      const auto x_plane = planes.plane(p);
      acc_t* mh = x_h + p * H;
      acc_t* mw = x_w + p * W;
      std::fill(mw, mw + W, acc_t(0));
      for (int64_t h = 0; h < H; ++h) {
        const acc_t* r = rows.read(x_plane.row(h), planes.stride_w, W);
        mh[h] = sum(r, W) / acc_t(W);
        axpy(mw, acc_t(1), r, W);
      }
      scale(mw, acc_t(1) / acc_t(H), W);
    }
  });
}

// Pass 3: pooled[p, n] = pool over window n of x * a_h * a_w, formed on the fly.
// Average: a band of kh rows is folded as sum_h a_h[h] x[h, :] (one axpy per row),
// then each window's dot with a_w. Max: scans each window in (h, w) order with
// PyTorch's rule (first maximum wins, NaN wins), recording the plane offset.
template <typename scalar_t, typename acc_t>
void pool_modulated(const Tensor& x, const acc_t* a_h, const acc_t* a_w, const PoolGeometry& pg, acc_t* pooled,
                    int64_t* argmax) {
  const int64_t H = x.size(2), W = x.size(3), N = pg.positions();
  const Planes<const scalar_t> planes(x);
  at::parallel_for(0, x.size(0) * x.size(1), plane_grain(H * W), [&](int64_t begin, int64_t end) {
    RowReader<scalar_t, acc_t> rows(W);
    std::vector<acc_t> band(W);
    const int64_t covered_w = pg.wp * pg.kw;
    for (int64_t p = begin; p < end; ++p) {
      const auto x_plane = planes.plane(p);
      const acc_t* ah = a_h + p * H;
      const acc_t* aw = a_w + p * W;
      acc_t* out = pooled + p * N;
      for (int64_t hn = 0; hn < pg.hp; ++hn) {
        if (!pg.max_pool) {
          std::fill(band.begin(), band.begin() + covered_w, acc_t(0));
          for (int64_t h = hn * pg.kh; h < (hn + 1) * pg.kh; ++h)
            axpy(band.data(), ah[h], rows.read(x_plane.row(h), planes.stride_w, W), covered_w);
          const acc_t inv_area = acc_t(1) / acc_t(pg.kh * pg.kw);
          for (int64_t wn = 0; wn < pg.wp; ++wn)
            out[hn * pg.wp + wn] = dot(band.data() + wn * pg.kw, aw + wn * pg.kw, pg.kw) * inv_area;
          continue;
        }
        acc_t* best = out + hn * pg.wp;
        int64_t* where = argmax + p * N + hn * pg.wp;
        for (int64_t wn = 0; wn < pg.wp; ++wn) {
          best[wn] = -std::numeric_limits<acc_t>::infinity();
          where[wn] = hn * pg.kh * W + wn * pg.kw;
        }
        for (int64_t h = hn * pg.kh; h < (hn + 1) * pg.kh; ++h) {
          const acc_t* r = rows.read(x_plane.row(h), planes.stride_w, W);
          for (int64_t wn = 0; wn < pg.wp; ++wn) {
            for (int64_t w = wn * pg.kw; w < (wn + 1) * pg.kw; ++w) {
              const acc_t v = r[w] * ah[h] * aw[w];  // x_s rounded as the reference forms it
              if (v > best[wn] || std::isnan(v)) {
                best[wn] = v;
                where[wn] = h * W + w;
              }
            }
          }
        }
      }
    }
  });
}

// Pass 5: out = x * a_w * (a_h * ca), one plane per task.
template <typename scalar_t, typename acc_t>
void apply_gates(const Tensor& x, const acc_t* a_h, const acc_t* a_w, const acc_t* ca, Tensor& out) {
  using V = Vectorized<acc_t>;
  const int64_t H = x.size(2), W = x.size(3);
  const Planes<const scalar_t> in(x);
  const Planes<scalar_t> dst(out);
  at::parallel_for(0, x.size(0) * x.size(1), plane_grain(H * W), [&](int64_t begin, int64_t end) {
    RowReader<scalar_t, acc_t> rows(W);
    RowWriter<scalar_t, acc_t> writer(W);
    for (int64_t p = begin; p < end; ++p) {
      const auto out_plane = dst.plane(p);
      const auto x_plane = in.plane(p);
      const acc_t* aw = a_w + p * W;
      for (int64_t h = 0; h < H; ++h) {
        const acc_t* r = rows.read(x_plane.row(h), in.stride_w, W);
        scalar_t* o_row = out_plane.row(h);
        acc_t* o = writer.target(o_row, dst.stride_w);
        const acc_t s = a_h[p * H + h] * ca[p];
        const V vs(s);
        int64_t w = 0;
        for (; w + V::size() <= W; w += V::size()) (V::loadu(r + w) * V::loadu(aw + w) * vs).store(o + w);
        for (; w < W; ++w) o[w] = r[w] * aw[w] * s;
        writer.commit(o_row, dst.stride_w, W);
      }
    }
  });
}

template <typename scalar_t>
void forward_impl(const Tensor& x, const PackedWeightArgs& weights, const Options& opt, Tensor& out, Tensor& x_h,
                  Tensor& x_w, Tensor& a_h, Tensor& a_w, Tensor& pooled, Tensor& argmax, Tensor& attn_out,
                  Tensor& attn_lse, Tensor& ca) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const PoolGeometry pg = pool_geometry(H, W, opt);
  const PackedParams<acc_t> w = packed_params<acc_t>(weights);

  row_col_means<scalar_t>(x, x_h.data_ptr<acc_t>(), x_w.data_ptr<acc_t>());
  spatial_gates_forward(x_h.const_data_ptr<acc_t>(), x_w.const_data_ptr<acc_t>(), w, B, C, H, W, opt.softmax_gate,
                        a_h.data_ptr<acc_t>(), a_w.data_ptr<acc_t>());
  pool_modulated<scalar_t>(x, a_h.const_data_ptr<acc_t>(), a_w.const_data_ptr<acc_t>(), pg,
                           pooled.data_ptr<acc_t>(), pg.max_pool ? argmax.data_ptr<int64_t>() : nullptr);

  ChannelAttentionState<acc_t> state(pooled, attn_out, attn_lse, ca, opt.head_num, /*need_q_t=*/false);
  state.project(w, B);
  at::parallel_for(0, B * C, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(state.geom.d);
    for (int64_t row = begin; row < end; ++row)
      attention_row_forward(state.buf, state.geom, row / C, row % C, scratch.data());
  });
  acc_t* ca_ptr = ca.data_ptr<acc_t>();
  const acc_t* o_ptr = attn_out.const_data_ptr<acc_t>();
  at::parallel_for(0, B, 1, [&](int64_t begin, int64_t end) {
    for (int64_t b = begin; b < end; ++b) {
      std::copy(o_ptr + b * C, o_ptr + (b + 1) * C, ca_ptr + b * C);
      gate_forward(ca_ptr + b * C, C, opt.softmax_gate);
    }
  });

  apply_gates<scalar_t>(x, a_h.const_data_ptr<acc_t>(), a_w.const_data_ptr<acc_t>(), ca.const_data_ptr<acc_t>(),
                        out);
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> scsa_forward(
    const Tensor& x, const Tensor& conv_weight, const Tensor& conv_bias, const Tensor& norm_h_weight,
    const Tensor& norm_h_bias, const Tensor& norm_w_weight, const Tensor& norm_w_bias, const Tensor& norm_weight,
    const Tensor& norm_bias, const Tensor& qkv_weight, const Tensor& qkv_bias, int64_t head_num,
    int64_t window_size, bool max_pool, bool softmax_gate) {
  PackedWeightArgs weights{{conv_weight, conv_bias, norm_h_weight, norm_h_bias, norm_w_weight, norm_w_bias,
                            norm_weight, norm_bias, qkv_weight, qkv_bias}};
  check_forward_args(x, weights, head_num, window_size);
  for (auto& t : weights.tensors) t = t.contiguous();
  const Options opt{head_num, window_size, max_pool, softmax_gate};
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const PoolGeometry pg = pool_geometry(H, W, opt);
  const auto small = x.options().dtype(weights.conv_weight().scalar_type());

  // Same strides as x for dense layouts (NCHW, channels_last), like the reference's elementwise ops.
  Tensor out = at::empty_like(x, at::MemoryFormat::Preserve);
  Tensor x_h = at::empty({B, C, H}, small), x_w = at::empty({B, C, W}, small);
  Tensor a_h = at::empty({B, C, H}, small), a_w = at::empty({B, C, W}, small);
  Tensor pooled = at::empty({B, C, pg.positions()}, small);
  Tensor argmax = at::empty({pg.max_pool ? B : 0, C, pg.positions()}, x.options().dtype(at::kLong));
  Tensor attn_out = at::empty({B, C}, small), attn_lse = at::empty({B, C}, small), ca = at::empty({B, C}, small);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scsa_forward_cpu", [&] {
    forward_impl<scalar_t>(x, weights, opt, out, x_h, x_w, a_h, a_w, pooled, argmax, attn_out, attn_lse, ca);
  });
  return {out, x_h, x_w, a_h, a_w, pooled, argmax, attn_out, attn_lse, ca};
}

}  // namespace scsa_kernels::cpu
