// Backward: three passes over full-size tensors (DESIGN.md "Backward"):
//   (a) read x and grad_out: per-plane sums feeding d(ca), d(a_h), d(a_w);
//   (b) read x: the pooling path's share of d(a_h), d(a_w);
//   (c) read grad_out, write dx.
// Between them the small stages run backwards: channel attention after (a),
// spatial gates after (b). Only x and small tensors are saved by the forward.
#include "scsa_cpu.h"

#include "row_visitor.h"
#include "schedule.h"
#include "small_stages.h"

namespace scsa_kernels::cpu {
namespace {

// Row h of S = d(x_s) through the pool (zero outside every window):
// average: the window's gradient spread over its kh*kw cells; max: at the argmax;
// recombination: the cells' gradient (d_source = the plane's cells in d_cells, rows
// cell_row_stride apart, as store_cells_row lays them out). hn: the window row of h (PoolRows),
// -1 below the last window.
template <typename T>
void pool_scatter_row(const T* d_source, const int64_t* argmax, const PoolGeometry& pg, int64_t cell_row_stride,
                      int64_t hn, int64_t h, int64_t W, T* s) {
  std::fill(s, s + W, T(0));
  if (hn < 0) return;
  if (pg.recombine) {
    const T* cells = d_source + (h - hn * pg.kh) * pg.kw * cell_row_stride + hn * pg.wp;
    for (int64_t wn = 0; wn < pg.wp; ++wn)
      for (int64_t dw = 0; dw < pg.kw; ++dw) s[wn * pg.kw + dw] = cells[dw * cell_row_stride + wn];
    return;
  }
  const T* dp = d_source + hn * pg.wp;
  if (!pg.max_pool) {
    const T inv_area = T(1) / T(pg.kh * pg.kw);
    for (int64_t wn = 0; wn < pg.wp; ++wn) std::fill(s + wn * pg.kw, s + (wn + 1) * pg.kw, dp[wn] * inv_area);
    return;
  }
  const int64_t* where = argmax + hn * pg.wp;
  for (int64_t wn = 0; wn < pg.wp; ++wn)
    if (where[wn] / W == h) s[where[wn] % W] = dp[wn];
}

// Rows of S for one pass over planes. With average pooling every image row of a
// window row has the same S row, so it is rebuilt only when the plane or the window
// row changes (always with max pooling and recombination, where it depends on h).
// d_source: d_pooled (B, C, N), or with recombination d_cells (CellLayout cl).
template <typename T>
class PoolScatterRows {
 public:
  PoolScatterRows(const T* d_source, const int64_t* argmax, const PoolGeometry& pg, const CellLayout& cl, int64_t W)
      : d_source_(d_source), argmax_(argmax), pg_(pg), cl_(cl), W_(W), s_(W) {}

  const T* row(int64_t p, int64_t hn, int64_t h) {
    if (pg_.max_pool || pg_.recombine || p != plane_ || hn != window_row_) {
      const int64_t N = pg_.positions();
      const T* plane = d_source_ + (pg_.recombine ? cl_.plane_offset(p) : p * N);
      pool_scatter_row(plane, argmax_ ? argmax_ + p * N : nullptr, pg_, cl_.row_stride(), hn, h, W_, s_.data());
      plane_ = p;
      window_row_ = hn;
    }
    return s_.data();
  }

 private:
  const T* d_source_;
  const int64_t* argmax_;
  PoolGeometry pg_;
  CellLayout cl_;
  int64_t W_;
  std::vector<T> s_;
  int64_t plane_ = -1, window_row_ = -2;
};

// For one row: r_w[w] += u[w] x[w] a_h (r_w padded to whole vectors); returns
// sum_w u[w] x[w] a_w[w]. (u = grad_out in pass (a), u = pool scatter S in pass (b).)
template <typename T>
T modulated_products(const T* u, const T* x, const T* a_w, T a_h, T* r_w, int64_t W) {
  using V = Vectorized<T>;
  const V vh(a_h);
  V acc(T(0));
  for_each_vector<T>(W, [&](int64_t w, auto lanes) {
    const V t = lanes.load(u + w) * lanes.load(x + w);
    acc = at::vec::fmadd(t, lanes.load(a_w + w), acc);
    at::vec::fmadd(t, vh, V::loadu(r_w + w)).store(r_w + w);
  });
  return horizontal_sum(acc);
}

// Pass (a) over planes [begin, end): r_h = sum_w g x a_w, r_w = sum_h g x a_h, d_ca = sum_hw g x_s;
// with recombination also the cells again (store_cells_row; conv_d's gradient needs them).
template <typename scalar_t, typename acc_t>
void grad_products(const Tensor& grad_out, const Tensor& x, int64_t begin, int64_t end, const acc_t* a_h,
                   const acc_t* a_w, const PoolGeometry& pg, acc_t* r_h, acc_t* r_w, acc_t* d_ca, const CellLayout& cl,
                   acc_t* cells) {
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  const Planes<const scalar_t> xs(x), gs(grad_out);
  const RowVisitor<scalar_t, acc_t> rows(&xs, &gs, nullptr, C, H, W, Prefetch::kInputs);
  const PoolRows pool_rows(pg, H);
  PlaneRowBuffers<acc_t> column_sums(W, rows.planes_in_flight());
  rows.run(begin, end, [&](int64_t p, int64_t h, const acc_t* xr, const acc_t* gr, acc_t*) {
    acc_t* rw = h == 0 ? column_sums.zeroed(p) : column_sums[p];
    if (h == 0) d_ca[p] = 0;
    const acc_t ah = a_h[p * H + h];
    if (pg.recombine && pool_rows.window[h] >= 0)
      store_cells_row(xr, ah, a_w + p * W, pg, cl.row_stride(), pool_rows.window[h], h, cells + cl.plane_offset(p));
    const acc_t rh = modulated_products(gr, xr, a_w + p * W, ah, rw, W);
    r_h[p * H + h] = rh;
    d_ca[p] += ah * rh;
    if (h == H - 1) std::copy(rw, rw + W, r_w + p * W);
  });
}

// Pass (b) over planes [begin, end): t_h = sum_w S x a_w, t_w = sum_h S x a_h (S: pool
// scatter of d_source, see PoolScatterRows).
template <typename scalar_t, typename acc_t>
void pool_grad_products(const Tensor& x, int64_t begin, int64_t end, const acc_t* a_h, const acc_t* a_w,
                        const acc_t* d_source, const int64_t* argmax, const PoolGeometry& pg, const CellLayout& cl,
                        acc_t* t_h, acc_t* t_w) {
  const int64_t C = x.size(1), H = x.size(2), W = x.size(3);
  const Planes<const scalar_t> xs(x);
  const RowVisitor<scalar_t, acc_t> rows(&xs, nullptr, nullptr, C, H, W);
  const PoolRows pool_rows(pg, H);
  PoolScatterRows<acc_t> scatter(d_source, argmax, pg, cl, W);
  PlaneRowBuffers<acc_t> column_sums(W, rows.planes_in_flight());
  rows.run(begin, end, [&](int64_t p, int64_t h, const acc_t* xr, const acc_t*, acc_t*) {
    acc_t* tw = h == 0 ? column_sums.zeroed(p) : column_sums[p];
    const int64_t hn = pool_rows.window[h];
    // rows below every window get no pooling gradient
    t_h[p * H + h] = hn < 0 ? acc_t(0)
                            : modulated_products(scatter.row(p, hn, h), xr, a_w + p * W, a_h[p * H + h], tw, W);
    if (h == H - 1) std::copy(tw, tw + W, t_w + p * W);
  });
}

// Pass (c) over planes [begin, end): dx = (g ca + S) a_h a_w + d(x_h)/W + d(x_w)/H.
template <typename scalar_t, typename acc_t>
void input_grad(const Tensor& grad_out, int64_t begin, int64_t end, const acc_t* a_h, const acc_t* a_w, const acc_t* ca,
                const acc_t* d_source, const int64_t* argmax, const PoolGeometry& pg, const CellLayout& cl,
                const acc_t* dm_h, const acc_t* dm_w, Tensor& dx) {
  using V = Vectorized<acc_t>;
  const int64_t C = dx.size(1), H = dx.size(2), W = dx.size(3);
  const Planes<const scalar_t> gs(grad_out);
  const Planes<scalar_t> dst(dx);
  const RowVisitor<scalar_t, acc_t> rows(&gs, nullptr, &dst, C, H, W);
  const acc_t inv_h = acc_t(1) / acc_t(H), inv_w = acc_t(1) / acc_t(W);
  const PoolRows pool_rows(pg, H);
  PoolScatterRows<acc_t> scatter(d_source, argmax, pg, cl, W);
  rows.run(begin, end, [&](int64_t p, int64_t h, const acc_t* gr, const acc_t*, acc_t* o) {
    const acc_t* s = scatter.row(p, pool_rows.window[h], h);
    const acc_t* aw = a_w + p * W;
    const acc_t* mw = dm_w + p * W;
    const acc_t ah = a_h[p * H + h], mean_h_grad = dm_h[p * H + h] * inv_w;
    const V vca(ca[p]), vah(ah), vmh(mean_h_grad), vih(inv_h);
    for_each_vector<acc_t>(W, [&](int64_t w, auto lanes) {
      const V e = at::vec::fmadd(lanes.load(gr + w), vca, lanes.load(s + w));
      lanes.store(o + w, at::vec::fmadd(lanes.load(mw + w), vih, at::vec::fmadd(e * lanes.load(aw + w), vah, vmh)));
    });
  });
}

Tensor per_sample_zeros(const at::TensorOptions& options, int64_t B, at::IntArrayRef shape) {
  std::vector<int64_t> full{B};
  full.insert(full.end(), shape.begin(), shape.end());
  return at::zeros(full, options);
}

// (B, ...) per-sample gradients -> (...) summed over the batch in a fixed order.
template <typename T>
Tensor reduce_batch(const Tensor& per_sample) {
  Tensor out = at::empty(per_sample.sizes().slice(1), per_sample.options());
  sum_over_batch(per_sample.const_data_ptr<T>(), per_sample.size(0), out.numel(), out.data_ptr<T>());
  return out;
}

template <typename scalar_t>
std::array<Tensor, 12> backward_impl(const Tensor& grad_out, const Tensor& x, const PackedWeightArgs& weights,
                                     const Tensor& conv_d, const Tensor& x_h, const Tensor& x_w, const Tensor& a_h,
                                     const Tensor& a_w, const Tensor& pooled, const Tensor& argmax,
                                     const Tensor& attn_lse, const Tensor& ca, const Options& opt) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3), K = weights.conv_weight().size(1);
  const PoolGeometry pg = pool_geometry(H, W, opt);
  const PackedParams<acc_t> w = packed_params<acc_t>(weights);
  const GateWeights gate(weights);
  const auto small = a_h.options(), gate_opts = small.dtype(c10::CppTypeToScalarType<gate_t>::value);
  auto ptr = [](const Tensor& t) { return t.const_data_ptr<acc_t>(); };
  const int64_t* argmax_ptr = pg.max_pool ? argmax.const_data_ptr<int64_t>() : nullptr;

  const int64_t N = pg.positions(), g = C / kGroups;
  Tensor r_h = at::empty({B, C, H}, small), r_w = at::empty({B, C, W}, small), d_ca = at::empty({B, C}, small);
  Tensor t_h = at::empty({B, C, H}, small), t_w = at::empty({B, C, W}, small);
  Tensor dm_h = at::empty({B, C, H}, small), dm_w = at::empty({B, C, W}, small);
  Tensor dx = at::empty_like(x, at::MemoryFormat::Preserve);

  // Channel branch buffers and per-sample parameter gradients (summed over the batch at the end).
  ChannelAttentionState<acc_t> state(pooled, attn_lse, ca, opt.head_num);
  Tensor d_out = at::empty({B, C}, small), dq = at::empty({B, C, N}, small), dk = at::empty({B, C, N}, small);
  Tensor dv_mean = at::empty({B, C}, small), d_pooled = at::empty({B, C, N}, small);
  Tensor cells = recombination_cells(pooled, pg), d_cells = recombination_cells(pooled, pg), grad_conv_d;
  const CellLayout cl = cell_layout(pooled, pg);
  acc_t* cells_ptr = pg.recombine ? cells.data_ptr<acc_t>() : nullptr;
  // what the pooling path's gradient is read from (PoolScatterRows)
  const acc_t* d_source_ptr = pg.recombine ? ptr(d_cells) : ptr(d_pooled);
  Tensor g_norm_w = per_sample_zeros(small, B, {C}), g_norm_b = per_sample_zeros(small, B, {C});
  Tensor g_qkv_w = per_sample_zeros(small, B, {3, C}), g_qkv_b = per_sample_zeros(small, B, {3, C});
  const ChannelAttentionGrads<acc_t> cg{d_out.data_ptr<acc_t>(),    dq.data_ptr<acc_t>(),
                                        dk.data_ptr<acc_t>(),       dv_mean.data_ptr<acc_t>(),
                                        d_pooled.data_ptr<acc_t>(), g_norm_w.data_ptr<acc_t>(),
                                        g_norm_b.data_ptr<acc_t>(), g_qkv_w.data_ptr<acc_t>(),
                                        g_qkv_b.data_ptr<acc_t>()};
  // the SMSA parameters' gradients, in gate_t like the stage (small_stages.h)
  Tensor g_conv_w = per_sample_zeros(gate_opts, B, {C, K}), g_conv_b = per_sample_zeros(gate_opts, B, {C});
  Tensor g_nh_w = per_sample_zeros(gate_opts, B, {C}), g_nh_b = per_sample_zeros(gate_opts, B, {C});
  Tensor g_nw_w = per_sample_zeros(gate_opts, B, {C}), g_nw_b = per_sample_zeros(gate_opts, B, {C});

  // Raw pointers hoisted out of the loops (Tensor accessors are out-of-line calls).
  const acc_t *a_h_ptr = ptr(a_h), *a_w_ptr = ptr(a_w), *ca_ptr = ptr(ca);
  acc_t *r_h_ptr = r_h.data_ptr<acc_t>(), *r_w_ptr = r_w.data_ptr<acc_t>(), *d_ca_ptr = d_ca.data_ptr<acc_t>();
  acc_t *t_h_ptr = t_h.data_ptr<acc_t>(), *t_w_ptr = t_w.data_ptr<acc_t>();
  gate_t *g_conv_w_ptr = g_conv_w.data_ptr<gate_t>(), *g_conv_b_ptr = g_conv_b.data_ptr<gate_t>();
  struct Direction {
    const acc_t *means, *r, *t;
    acc_t* dm;
    gate_t *g_norm_w, *g_norm_b;
    int64_t len;
  };
  const Direction directions[2] = {
      {ptr(x_h), r_h_ptr, t_h_ptr, dm_h.data_ptr<acc_t>(), g_nh_w.data_ptr<gate_t>(), g_nh_b.data_ptr<gate_t>(), H},
      {ptr(x_w), r_w_ptr, t_w_ptr, dm_w.data_ptr<acc_t>(), g_nw_w.data_ptr<gate_t>(), g_nw_b.data_ptr<gate_t>(), W}};

  // Spatial gates backward of (sample, group) tasks, in gate_t: both directions per task, so
  // the shared conv gradients accumulate in a fixed order (H then W).
  auto spatial_gates_backward = [&](int64_t begin, int64_t end) {
    const int64_t L = std::max(H, W);
    std::vector<gate_t> m(g * L), da(g * L), dm(g * L), scratch(spatial_gate_backward_scratch<gate_t>(g, L, K));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / kGroups, group = task % kGroups, c0 = b * C + group * g;
      for (const int dir : {0, 1}) {
        const Direction& D = directions[dir];
        const int64_t len = D.len;
        const acc_t* r = D.r + c0 * len;
        const acc_t* t = D.t + c0 * len;
        // d(a) = ca * (grad_out share) + (pooling share)
        for (int64_t c = 0; c < g; ++c)
          for (int64_t l = 0; l < len; ++l)
            da[c * len + l] = gate_t(t[c * len + l]) + gate_t(ca_ptr[c0 + c]) * gate_t(r[c * len + l]);
        std::copy(D.means + c0 * len, D.means + (c0 + g) * len, m.data());
        const SpatialGateGrads<gate_t> grads{g_conv_w_ptr + c0 * K, g_conv_b_ptr + c0, D.g_norm_w + c0,
                                             D.g_norm_b + c0};
        spatial_gate_backward(m.data(), da.data(), g, len,
                              direction_params(gate.params, group, g, dir == 1, opt.softmax_gate), grads, dm.data(),
                              scratch.data());
        std::copy(dm.data(), dm.data() + g * len, D.dm + c0 * len);
      }
    }
  };

  // recombination, between the channel branch and pass (b): d_cells and conv_d's gradient, one GEMM each
  std::function<void()> project_back;
  if (pg.recombine) project_back = [&] { grad_conv_d = project_cells_backward(conv_d, cells, d_pooled, d_cells); };
  const int64_t planes = plane_grain(H * W);
  run_stages(B, {
      // (a)
      {C, planes,
       [&](int64_t p0, int64_t p1) {
         grad_products<scalar_t>(grad_out, x, p0, p1, a_h_ptr, a_w_ptr, pg, r_h_ptr, r_w_ptr, d_ca_ptr, cl,
                                 cells_ptr);
       }},
      // channel branch backward -> d_pooled and its parameter gradients
      {1, 1,
       [&](int64_t b0, int64_t b1) {
         for (int64_t b = b0; b < b1; ++b)
           gate_backward(ca_ptr + b * C, d_ca_ptr + b * C, cg.d_out + b * C, C, opt.softmax_gate);
         state.project(w, b0, b1);
       }},
      {opt.head_num, 1,
       [&](int64_t h0, int64_t h1) {
         std::vector<acc_t> scratch(head_backward_scratch<acc_t>(state.geom));
         for (int64_t task = h0; task < h1; ++task)
           attention_head_backward(state.buf, cg, state.geom, opt.dropout, task / opt.head_num,
                                   task % opt.head_num, scratch.data());
       }},
      {1, 1,
       [&](int64_t b0, int64_t b1) {
         for (int64_t b = b0; b < b1; ++b) channel_projection_backward(state.buf, cg, w, state.geom, b);
       }},
  }, project_back, {
      // (b)
      {C, planes,
       [&](int64_t p0, int64_t p1) {
         pool_grad_products<scalar_t>(x, p0, p1, a_h_ptr, a_w_ptr, d_source_ptr, argmax_ptr, pg, cl, t_h_ptr,
                                      t_w_ptr);
       }},
      {kGroups, 1, spatial_gates_backward},
      // (c)
      {C, planes,
       [&](int64_t p0, int64_t p1) {
         input_grad<scalar_t>(grad_out, p0, p1, a_h_ptr, a_w_ptr, ca_ptr, d_source_ptr, argmax_ptr, pg, cl,
                              ptr(dm_h), ptr(dm_w), dx);
       }},
  });

  auto gate_grad = [&](const Tensor& per_sample) { return reduce_batch<gate_t>(per_sample).to(small.dtype()); };
  return {dx,
          gate_grad(g_conv_w),
          gate_grad(g_conv_b),
          gate_grad(g_nh_w),
          gate_grad(g_nh_b),
          gate_grad(g_nw_w),
          gate_grad(g_nw_b),
          reduce_batch<acc_t>(g_norm_w),
          reduce_batch<acc_t>(g_norm_b),
          reduce_batch<acc_t>(g_qkv_w),
          reduce_batch<acc_t>(g_qkv_b),
          pg.recombine ? grad_conv_d : at::empty({0}, small)};
}

}  // namespace

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor> scsa_backward(
    const Tensor& grad_out, const Tensor& x, const Tensor& conv_weight, const Tensor& conv_bias,
    const Tensor& norm_h_weight, const Tensor& norm_h_bias, const Tensor& norm_w_weight,
    const Tensor& norm_w_bias, const Tensor& norm_weight, const Tensor& norm_bias, const Tensor& qkv_weight,
    const Tensor& qkv_bias, const Tensor& x_h, const Tensor& x_w, const Tensor& a_h, const Tensor& a_w,
    const Tensor& pooled, const Tensor& argmax, const Tensor& attn_lse, const Tensor& ca, int64_t head_num, int64_t window_size, bool max_pool, bool softmax_gate, double dropout_p,
    const std::optional<Tensor>& dropout_seed, const std::optional<Tensor>& conv_d) {
  const CheckedArgs args =
      check_args(x, {{conv_weight, conv_bias, norm_h_weight, norm_h_bias, norm_w_weight, norm_w_bias, norm_weight,
                      norm_bias, qkv_weight, qkv_bias}},
                 head_num, window_size, max_pool, softmax_gate, dropout_p, dropout_seed, conv_d);
  TORCH_CHECK(grad_out.sizes() == x.sizes() && grad_out.scalar_type() == x.scalar_type(),
              "scsa_kernels: grad_out must match x in shape and dtype, got ", grad_out.sizes(), " ",
              grad_out.scalar_type(), " for x ", x.sizes(), " ", x.scalar_type());
  const int64_t B = x.size(0), C = x.size(1), H = x.size(2), W = x.size(3);
  const PoolGeometry pg = pool_geometry(H, W, args.opt);
  const auto dt = args.weights.conv_weight().scalar_type();
  check_saved(x_h, "x_h", {B, C, H}, dt);
  check_saved(x_w, "x_w", {B, C, W}, dt);
  check_saved(a_h, "a_h", {B, C, H}, dt);
  check_saved(a_w, "a_w", {B, C, W}, dt);
  check_saved(pooled, "pooled", {B, C, pg.positions()}, dt);
  check_saved(argmax, "argmax", {pg.max_pool ? B : 0, C, pg.positions()}, at::kLong);
  check_argmax(argmax, H * W);
  check_saved(attn_lse, "attn_lse", {B, C}, dt);
  check_saved(ca, "ca", {B, C}, dt);
  std::array<Tensor, 12> r;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "scsa_backward_cpu", [&] {
    r = backward_impl<scalar_t>(grad_out, x, args.weights, args.conv_d, x_h.contiguous(), x_w.contiguous(),
                                a_h.contiguous(), a_w.contiguous(), pooled.contiguous(), argmax.contiguous(),
                                attn_lse.contiguous(), ca.contiguous(), args.opt);
  });
  if (args.conv_d.defined()) r[11] = r[11].to(conv_d->scalar_type());
  return {r[0], r[1], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[9], r[10], r[11]};
}

}  // namespace scsa_kernels::cpu
