"""Weight packing and parameter gradients of the eager training path (ops/eager.py's autograd node).

- ``pack_parameters_kernel``: the module's parameters -> the packed float32 table every other kernel
  reads (``weights.PackedWeights``, its fields back to back), in one launch where
  ``weights.pack_weights`` takes a cat, a gather and a cast: three torch ops, each a CUDA launch
  with its host cost, on every training step.
- ``parameter_grads_kernel``: the backward's per-sample parameter partials -> every packed
  parameter's gradient, in the parameters' layout and dtype: the sum over the batch, the adjoint
  gather (``weights.unpack_gradients``) and the cast in one launch, where torch took two sums, a
  gather and a cast.

torch.compile keeps the torch ops (traced, and fused by Inductor): these kernels serve eager calls.
"""
import triton
import triton.language as tl


@triton.jit
def _conv_taps(weight, row, tap, in_group, value, KJ: tl.constexpr, K: tl.constexpr):
    """value, with tap ``tap`` of a K-wide packed row taken from this group's (g, 1, KJ) weight where
    in_group: its KJ taps centred in the K (padding taps stay as they are: zero)."""
    t = tap - (K - KJ) // 2
    m = in_group & (t >= 0) & (t < KJ)
    return tl.where(m, tl.load(weight + row * KJ + t, mask=m, other=0.0).to(tl.float32), value)


@triton.jit
def _field(param, index, is_field, value):
    """value, with param[index] (cast to fp32) where is_field."""
    return tl.where(is_field, tl.load(param + index, mask=is_field, other=0.0).to(tl.float32), value)


@triton.jit
def pack_parameters_kernel(
        conv_w0, conv_w1, conv_w2, conv_w3, conv_b0, conv_b1, conv_b2, conv_b3,
        norm_h_w, norm_h_b, norm_w_w, norm_w_b, norm_w, norm_b, q_w, k_w, v_w, q_b, k_b, v_b,
        packed_ptr, G,
        K: tl.constexpr, K0: tl.constexpr, K1: tl.constexpr, K2: tl.constexpr, K3: tl.constexpr,
        QKV_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    """packed (C*K + 13*C,) fp32, C = 4*G, from the parameters (contiguous, any float dtype): the
    conv table (C, K) (group j's (G, 1, Kj) weight in rows j*G.., its taps centred, zeros around),
    then per channel: conv bias, norm_h w, b, norm_w w, b, norm w, b, q, k, v scales ((C, 1, 1, 1)
    each), q, k, v biases ((C,) each; zeros without QKV_BIAS, when q_b, k_b, v_b are unread).
    Every element is a copy (a select, not a sum: a parameter's -0.0 or NaN arrives as it is).
    Grid: cdiv(C*K + 13*C, BLOCK)."""
    C = 4 * G
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    value = tl.zeros((BLOCK,), tl.float32)
    in_conv = e < C * K
    c = e // K
    tap, group, row = e - c * K, c // G, c % G
    value = _conv_taps(conv_w0, row, tap, in_conv & (group == 0), value, K0, K)
    value = _conv_taps(conv_w1, row, tap, in_conv & (group == 1), value, K1, K)
    value = _conv_taps(conv_w2, row, tap, in_conv & (group == 2), value, K2, K)
    value = _conv_taps(conv_w3, row, tap, in_conv & (group == 3), value, K3, K)
    rest = tl.maximum(e - C * K, 0)  # the per-channel fields: field f of channel ch
    live = (e >= C * K) & (e < C * K + 13 * C)
    f, ch = rest // C, rest % C
    is_bias = live & (f == 0)
    value = _field(conv_b0, ch, is_bias & (ch // G == 0), value)
    value = _field(conv_b1, ch - G, is_bias & (ch // G == 1), value)
    value = _field(conv_b2, ch - 2 * G, is_bias & (ch // G == 2), value)
    value = _field(conv_b3, ch - 3 * G, is_bias & (ch // G == 3), value)
    value = _field(norm_h_w, ch, live & (f == 1), value)
    value = _field(norm_h_b, ch, live & (f == 2), value)
    value = _field(norm_w_w, ch, live & (f == 3), value)
    value = _field(norm_w_b, ch, live & (f == 4), value)
    value = _field(norm_w, ch, live & (f == 5), value)
    value = _field(norm_b, ch, live & (f == 6), value)
    value = _field(q_w, ch, live & (f == 7), value)
    value = _field(k_w, ch, live & (f == 8), value)
    value = _field(v_w, ch, live & (f == 9), value)
    if QKV_BIAS:
        value = _field(q_b, ch, live & (f == 10), value)
        value = _field(k_b, ch, live & (f == 11), value)
        value = _field(v_b, ch, live & (f == 12), value)
    tl.store(packed_ptr + e, value, mask=e < C * K + 13 * C)


@triton.jit
def parameter_grads_kernel(
        conv_part_ptr, small_part_ptr, index_ptr, grads_ptr,
        n_grads, conv_rows, conv_size, small_rows, small_size,
        BLOCK_E: tl.constexpr, BLOCK_R: tl.constexpr):
    """grads[e] = sum over the rows r of part[r, p], p = index[e]: part is conv_part (conv_rows,
    conv_size) fp32 where p < conv_size (the packed conv table and bias), else small_part (small_rows,
    small_size) fp32 at p - conv_size (the 12 per-channel fields after them). index (n_grads,) int64:
    weights.gradient_index, each parameter element's packed position; grads (n_grads,) in the
    parameters' dtype, their flat concatenation. Rows are summed BLOCK_R at a time (a tree within
    the step, steps in order): deterministic, no atomics. Grid: cdiv(n_grads, BLOCK_E)."""
    e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)
    live = e < n_grads
    p = tl.load(index_ptr + e, mask=live, other=0)
    in_conv = live & (p < conv_size)
    in_small = live & (p >= conv_size)
    acc = tl.zeros((BLOCK_E,), tl.float32)
    for r0 in range(0, tl.maximum(conv_rows, small_rows), BLOCK_R):
        r = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)[:, None]
        conv = tl.load(conv_part_ptr + r * conv_size + p[None, :],
                       mask=in_conv[None, :] & (r < conv_rows), other=0.0)
        small = tl.load(small_part_ptr + r * small_size + (p - conv_size)[None, :],
                        mask=in_small[None, :] & (r < small_rows), other=0.0)
        acc += tl.sum(conv + small, axis=0)
    tl.store(grads_ptr + e, acc.to(grads_ptr.dtype.element_ty), mask=live)
