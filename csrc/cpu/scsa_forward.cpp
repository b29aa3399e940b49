// Forward: three passes over x (means, pooled modulated map, apply) around two
// small stages (spatial gates, channel attention). See DESIGN.md "Kernel plan".
#include "scsa_cpu.h"

#include <limits>

#include "row_visitor.h"
#include "schedule.h"
#include "small_stages.h"

namespace scsa_kernels::cpu {
namespace {

// total += row (elementwise, total padded to whole vectors); returns the row's sum.
template <typename T>
T accumulate_row(T* total, const T* row, int64_t n) {
  using V = Vectorized<T>;
  V acc(T(0));
  for_each_vector<T>(n, [&](int64_t i, auto lanes) {
    const V v = lanes.load(row + i);
    acc += v;
    (V::loadu(total + i) + v).store(total + i);
  });
  return horizontal_sum(acc);
}

// Pass 1 over planes [begin, end): x_h[p, h] = mean_w x, x_w[p, w] = mean_h x.
template <typename scalar_t, typename acc_t>
void row_col_means(const Tensor& x, int64_t begin, int64_t end, acc_t* x_h, acc_t* x_w) {
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  const Planes<const scalar_t> xs(x);
  const RowVisitor<scalar_t, acc_t> rows(&xs, nullptr, nullptr, C, H, W, Prefetch::kInputs);
  const acc_t inv_w = acc_t(1) / acc_t(W), inv_h = acc_t(1) / acc_t(H);
  PlaneRowBuffers<acc_t> column_sums(W, rows.planes_in_flight());
  rows.run(begin, end, [&](int64_t p, int64_t h, const acc_t* r, const acc_t*, acc_t*) {
    acc_t* sums = h == 0 ? column_sums.zeroed(p) : column_sums[p];
    x_h[p * H + h] = accumulate_row(sums, r, W) * inv_w;
    if (h == H - 1) scale(sums, inv_h, x_w + p * W, W);
  });
}

// Pass 3 over planes [begin, end): pooled[p, n] = pool over window n of x * a_h * a_w, formed on the fly.
// Average: rows are folded into a band as sum_h a_h[h] x[h, :] (one axpy per
// row), then each window's dot with a_w.
// Max: scans each window in (h, w) order with PyTorch's rule (first maximum wins,
// NaN wins), recording the plane offset. Rows below the last window are skipped.
// Recombination: stores the cells (store_cells_row) instead; project_cells makes pooled.
template <typename scalar_t, typename acc_t>
void pool_modulated(const Tensor& x, int64_t begin, int64_t end, const acc_t* a_h, const acc_t* a_w,
                    const PoolGeometry& pg, acc_t* pooled, int64_t* argmax, const CellLayout& cl, acc_t* cells) {
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3), N = pg.positions();
  const Planes<const scalar_t> xs(x);
  const RowVisitor<scalar_t, acc_t> rows(&xs, nullptr, nullptr, C, H, W);
  const acc_t inv_area = acc_t(1) / acc_t(pg.kh * pg.kw);
  const int64_t covered_w = pg.wp * pg.kw;
  const PoolRows pool_rows(pg, H);
  PlaneRowBuffers<acc_t> bands(W, rows.planes_in_flight());
  rows.run(begin, end, [&](int64_t p, int64_t h, const acc_t* r, const acc_t*, acc_t*) {
    const int64_t hn = pool_rows.window[h];
    if (hn < 0) return;
    if (pg.recombine)
      return store_cells_row(r, a_h[p * H + h], a_w + p * W, pg, cl.row_stride(), hn, h, cells + cl.plane_offset(p));
    const bool first_row = pool_rows.first[h], last_row = pool_rows.last[h];
    const acc_t ah = a_h[p * H + h];
    const acc_t* aw = a_w + p * W;
    acc_t* out = pooled + p * N + hn * pg.wp;
    if (!pg.max_pool) {
      // band = sum over the window rows so far of a_h[h] * x[h, :]; one band per
      // plane in flight. Windows are closed with a dot against a_w.
      acc_t* band = first_row ? bands.zeroed(p) : bands[p];
      accumulate_scaled(band, ah, r, covered_w);
      if (last_row)
        for (int64_t wn = 0; wn < pg.wp; ++wn)
          out[wn] = dot(band + wn * pg.kw, aw + wn * pg.kw, pg.kw) * inv_area;
      return;
    }
    int64_t* where = argmax + p * N + hn * pg.wp;
    for (int64_t wn = 0; wn < pg.wp; ++wn) {
      if (first_row) {
        out[wn] = -std::numeric_limits<acc_t>::infinity();
        where[wn] = h * W + wn * pg.kw;
      }
      for (int64_t w = wn * pg.kw; w < (wn + 1) * pg.kw; ++w) {
        const acc_t v = r[w] * ah * aw[w];  // x_s rounded as the reference forms it
        if (v > out[wn] || std::isnan(v)) {
          out[wn] = v;
          where[wn] = h * W + w;
        }
      }
    }
  });
}

// Pass 5 over planes [begin, end): out = x * a_w * (a_h * ca).
template <typename scalar_t, typename acc_t>
void apply_gates(const Tensor& x, int64_t begin, int64_t end, const acc_t* a_h, const acc_t* a_w, const acc_t* ca,
                 Tensor& out) {
  using V = Vectorized<acc_t>;
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  const Planes<const scalar_t> xs(x);
  const Planes<scalar_t> dst(out);
  const RowVisitor<scalar_t, acc_t> rows(&xs, nullptr, &dst, C, H, W);
  rows.run(begin, end, [&](int64_t p, int64_t h, const acc_t* r, const acc_t*, acc_t* o) {
    const acc_t* aw = a_w + p * W;
    const acc_t s = a_h[p * H + h] * ca[p];
    const V vs(s);
    for_each_vector<acc_t>(W, [&](int64_t w, auto lanes) {
      lanes.store(o + w, lanes.load(r + w) * lanes.load(aw + w) * vs);
    });
  });
}

template <typename scalar_t>
void forward_impl(const Tensor& x, const PackedWeightArgs& weights, const Tensor& conv_d, const Options& opt,
                  Tensor& out, Tensor& x_h, Tensor& x_w, Tensor& a_h, Tensor& a_w, Tensor& pooled, Tensor& argmax,
                  Tensor& attn_lse, Tensor& ca) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const PoolGeometry pg = pool_geometry(H, W, opt);
  const PackedParams<acc_t> w = packed_params<acc_t>(weights);
  const GateWeights gate(weights);

  acc_t *x_h_ptr = x_h.data_ptr<acc_t>(), *x_w_ptr = x_w.data_ptr<acc_t>();
  acc_t *a_h_ptr = a_h.data_ptr<acc_t>(), *a_w_ptr = a_w.data_ptr<acc_t>(), *ca_ptr = ca.data_ptr<acc_t>();
  acc_t* pooled_ptr = pooled.data_ptr<acc_t>();
  int64_t* argmax_ptr = pg.max_pool ? argmax.data_ptr<int64_t>() : nullptr;
  const Tensor cells = recombination_cells(pooled, pg);
  const CellLayout cl = cell_layout(pooled, pg);
  acc_t* cells_ptr = pg.recombine ? cells.data_ptr<acc_t>() : nullptr;
  ChannelAttentionState<acc_t> state(pooled, attn_lse, ca, opt.head_num);
  const int64_t planes = plane_grain(H * W);
  std::function<void()> project;  // recombination: pooled from the cells, one GEMM for the batch
  if (pg.recombine) project = [&] { project_cells(conv_d, cells, pooled); };
  run_stages(B, {
      {C, planes, [&](int64_t p0, int64_t p1) { row_col_means<scalar_t>(x, p0, p1, x_h_ptr, x_w_ptr); }},
      {kGroups, 1,
       [&](int64_t g0, int64_t g1) {
         spatial_gates_forward(x_h_ptr, x_w_ptr, gate.params, g0, g1, C, H, W, opt.softmax_gate, a_h_ptr, a_w_ptr);
       }},
      {C, planes,
       [&](int64_t p0, int64_t p1) {
         pool_modulated<scalar_t>(x, p0, p1, a_h_ptr, a_w_ptr, pg, pooled_ptr, argmax_ptr, cl, cells_ptr);
       }},
  }, project, {
      {1, 1, [&](int64_t b0, int64_t b1) { state.project(w, b0, b1); }},
      {C, 1,
       [&](int64_t r0, int64_t r1) {
         std::vector<acc_t> scratch(attention_row_scratch<acc_t>(state.geom));
         SinglePositionRowMax<acc_t> single_max;
         for (int64_t row = r0; row < r1; ++row)
           attention_row_forward(state.buf, state.geom, opt.dropout, row / C, row % C, scratch.data(), single_max);
       }},
      {1, 1,
       [&](int64_t b0, int64_t b1) {
         const acc_t* o_ptr = state.buf.attn_out;
         for (int64_t b = b0; b < b1; ++b) {
           std::copy(o_ptr + b * C, o_ptr + (b + 1) * C, ca_ptr + b * C);
           gate_forward(ca_ptr + b * C, C, opt.softmax_gate);
         }
       }},
      {C, planes, [&](int64_t p0, int64_t p1) { apply_gates<scalar_t>(x, p0, p1, a_h_ptr, a_w_ptr, ca_ptr, out); }},
  });
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> scsa_forward(
    const Tensor& x, const Tensor& conv_weight, const Tensor& conv_bias, const Tensor& norm_h_weight,
    const Tensor& norm_h_bias, const Tensor& norm_w_weight, const Tensor& norm_w_bias, const Tensor& norm_weight,
    const Tensor& norm_bias, const Tensor& qkv_weight, const Tensor& qkv_bias, int64_t head_num,
    int64_t window_size, bool max_pool, bool softmax_gate, double dropout_p, const std::optional<Tensor>& dropout_seed,
    const std::optional<Tensor>& conv_d) {
  const CheckedArgs args =
      check_args(x, {{conv_weight, conv_bias, norm_h_weight, norm_h_bias, norm_w_weight, norm_w_bias, norm_weight,
                      norm_bias, qkv_weight, qkv_bias}},
                 head_num, window_size, max_pool, softmax_gate, dropout_p, dropout_seed, conv_d);
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const PoolGeometry pg = pool_geometry(H, W, args.opt);
  const auto small = x.options().dtype(args.weights.conv_weight().scalar_type());

  // Same strides as x for dense layouts (NCHW, channels_last), like the reference's elementwise ops.
  Tensor out = at::empty_like(x, at::MemoryFormat::Preserve);
  Tensor x_h = at::empty({B, C, H}, small), x_w = at::empty({B, C, W}, small);
  Tensor a_h = at::empty({B, C, H}, small), a_w = at::empty({B, C, W}, small);
  Tensor pooled = at::empty({B, C, pg.positions()}, small);
  Tensor argmax = at::empty({pg.max_pool ? B : 0, C, pg.positions()}, x.options().dtype(at::kLong));
  Tensor attn_lse = at::empty({B, C}, small), ca = at::empty({B, C}, small);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scsa_forward_cpu", [&] {
    forward_impl<scalar_t>(x, args.weights, args.conv_d, args.opt, out, x_h, x_w, a_h, a_w, pooled, argmax, attn_lse,
                           ca);
  });
  return {out, x_h, x_w, a_h, a_w, pooled, argmax, attn_lse, ca};
}

}  // namespace scsa_kernels::cpu
