"""SMSA small stage: depthwise convs + GroupNorm(4) + gate, both directions, forward and backward.

Grid (B * 4, 2): program (b * 4 + j, d) handles conv/GroupNorm group j of sample b in
direction d (0: along H, the row means x_h; 1: along W, the column means x_w). The
GroupNorm groups coincide with the conv groups, so one program owns one whole
normalisation group and needs no cross-program reduction.

Small buffers share one layout, (B, C, H + W): direction 0 in [:H], 1 in [H:].
When the whole group fits one tile (ONE_BLOCK: C/4 channels x BLOCK_L, every ResNet-50 stage
shape), its conv is computed once and kept in registers through the statistics, the gate and the
backward's sums; otherwise the conv is recomputed from the means in every loop over channel blocks
instead of being kept in a scratch buffer: K loads of a tiny, cached tensor are cheaper than a round trip.

The conv, the GroupNorm statistics and normalisation, and their gradients up to the conv's bias
gradients compute in float64 (GATE_T), as the C++ kernels do (csrc/cpu/small_stages.h): GroupNorm over
a group of few, near-equal values (C = 4 with H or W of 1 or 2) amplifies float32 rounding by rstd (up
to 1/sqrt(eps) = 316), which put the conv bias gradients (0 in exact arithmetic there) past the
tolerance rule. The steps that amplify nothing run in float32: the gate itself (forward), the row sums
of the GroupNorm affine gradients and of the conv weight gradients (centred, see ``_conv_grads``) and the
conv input gradient. float64 runs at 1/2 of float32's rate on an H100 but at 1/64 on consumer Ampere and
Ada cards; those steps and an rsqrt for 1 / sqrt took the kernels' float64 instructions per thread from
220 to 147 (forward) and from 347 to 217 (backward) (sm_89 SASS, 64x56x56).
The stage touches B*C*(H+W) values in B*8 programs; its inputs and outputs stay float32.
"""
import triton
import triton.language as tl

from ._common import sigmoid

GATE_T = tl.constexpr(tl.float64)


@triton.jit
def _direction(C, H, W):
    """(b, j, d, length L, offset of the direction in the H+W axis) of this program. b is int32: the
    parameter partials' offsets, past 2**31 from B*C ~ 1e8 on, cast it to int64 first; b * C itself stays
    below 2**31 (ops.triton refuses larger B*C). (b int64 throughout made the 4096-long rows spill.)"""
    b = tl.program_id(0) // 4
    j = tl.program_id(0) % 4
    d = tl.program_id(1)
    return b, j, d, H + d * (W - H), d * H


@triton.jit
def _group_block(b, j, g0, C, H, W, off, BLOCK_G: tl.constexpr):
    """Channels cs (BLOCK_G) of group j from g0 on, their mask, and their int64 row offsets.
    (The callers form the valid-position mask themselves: returned from here, it made
    spatial_gates_bwd_kernel spill 112-128 bytes at BLOCK_L 4096 on triton 3.5 and 3.6.)"""
    G = C // 4
    gi = g0 + tl.arange(0, BLOCK_G)
    cs = j * G + gi
    row = (b * C + cs).to(tl.int64) * (H + W) + off
    return cs, gi < G, row


@triton.jit
def _valid_sum(t, valid):
    """Sum of t over valid (a channel block's part of the group's sum)."""
    return tl.sum(tl.where(valid, t, 0.0))


@triton.jit
def _squared_deviation_sum(t, mean, valid):
    """Sum of (t - mean)^2 over valid: the variance from centred values, no cancellation."""
    return tl.sum(tl.where(valid, (t - mean) * (t - mean), 0.0))


@triton.jit
def _select(p_h_ptr, p_w_ptr, cs, cmask, d):
    """Per-channel parameter (GATE_T) of direction d: p_h for d == 0, p_w for d == 1 (one load each)."""
    return (tl.load(p_h_ptr + cs, mask=cmask & (d == 0), other=0.0)
            + tl.load(p_w_ptr + cs, mask=cmask & (d == 1), other=0.0)).to(GATE_T)


@triton.jit
def _conv(m_ptr, row, cs, cmask, ls, L, cw_ptr, cb_ptr, K: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr):
    """Depthwise conv (K taps, zero padding K//2) of the means rows -> (BLOCK_G, BLOCK_L) GATE_T.

    m: means rows at m_ptr + row (int64, BLOCK_G); cw: (C, K) fp32; cb: (C,) fp32.
    """
    acc = tl.zeros([BLOCK_G, BLOCK_L], dtype=GATE_T)
    acc += tl.load(cb_ptr + cs, mask=cmask, other=0.0).to(GATE_T)[:, None]
    for k in tl.static_range(K):
        src = ls + (k - K // 2)
        valid = cmask[:, None] & ((src >= 0) & (src < L))[None, :]
        m = tl.load(m_ptr + row[:, None] + src[None, :], mask=valid, other=0.0).to(GATE_T)
        acc += tl.load(cw_ptr + cs * K + k, mask=cmask, other=0.0).to(GATE_T)[:, None] * m
    return acc


@triton.jit
def _gate(u, valid, GATE_SOFTMAX: tl.constexpr):
    """sigmoid(u), or softmax of u along axis 1 over the valid positions."""
    if GATE_SOFTMAX:
        u = tl.where(valid, u, float("-inf"))
        e = tl.exp(u - tl.max(u, axis=1)[:, None])
        e = tl.where(valid, e, 0.0)
        return e / tl.sum(e, axis=1)[:, None]
    else:
        return sigmoid(u)


@triton.jit
def _gate_grad(a, da, GATE_SOFTMAX: tl.constexpr):
    """d(pre-gate) from the gate output a and its gradient da (both zero outside the valid area)."""
    if GATE_SOFTMAX:
        return a * (da - tl.sum(a * da, axis=1)[:, None])
    else:
        return da * a * (1.0 - a)


@triton.jit
def _store_gates(t, mean, rstd, gates_ptr, nh_w_ptr, nh_b_ptr, nw_w_ptr, nw_b_ptr, cs, cmask, row, ls, valid, d,
                 GATE_SOFTMAX: tl.constexpr):
    """Stores the gates of one channel block from its conv output t (BLOCK_G, BLOCK_L) GATE_T.
    The pre-gate values are O(1), their rounding no longer amplified: the gate runs in float32 (in
    float64, its exp and division took ~25 % of the kernel's float64 instructions)."""
    gamma = _select(nh_w_ptr, nw_w_ptr, cs, cmask, d)
    beta = _select(nh_b_ptr, nw_b_ptr, cs, cmask, d)
    a = _gate(((t - mean) * rstd * gamma[:, None] + beta[:, None]).to(tl.float32), valid, GATE_SOFTMAX)
    tl.store(gates_ptr + row[:, None] + ls[None, :], a, mask=valid)


@triton.jit
def spatial_gates_fwd_kernel(
        means_ptr, cw_ptr, cb_ptr, nh_w_ptr, nh_b_ptr, nw_w_ptr, nw_b_ptr, gates_ptr, stats_ptr,
        C, H, W, eps,
        GATE_SOFTMAX: tl.constexpr, K: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr,
        ONE_BLOCK: tl.constexpr):
    """a = gate(GroupNorm4(conv(means))) for one (sample, group, direction).

    means: (B, C, H+W) fp32 (x_h | x_w). cw: (C, K), cb: (C,), norm params (C,), all fp32.
    gates: (B, C, H+W) fp32 out (a_h | a_w). stats: (B, 2, 4, 2) fp64 out, (mean, rstd) per group.
    BLOCK_L >= max(H, W) (softmax gates need whole rows); BLOCK_G channels per step; ONE_BLOCK:
    C/4 <= BLOCK_G.
    """
    eps = tl.cast(eps, GATE_T)  # fp32 in eager launches, fp64 under torch.compile
    b, j, d, L, off = _direction(C, H, W)
    ls = tl.arange(0, BLOCK_L)
    G = C // 4
    n = G * L
    if ONE_BLOCK:
        cs, cmask, row = _group_block(b, j, 0, C, H, W, off, BLOCK_G)
        valid = cmask[:, None] & (ls < L)[None, :]
        t = _conv(means_ptr, row, cs, cmask, ls, L, cw_ptr, cb_ptr, K, BLOCK_G, BLOCK_L)
        mean = _valid_sum(t, valid) / n
        rstd = tl.math.rsqrt(_squared_deviation_sum(t, mean, valid) / n + eps)
        _store_gates(t, mean, rstd, gates_ptr, nh_w_ptr, nh_b_ptr, nw_w_ptr, nw_b_ptr, cs, cmask, row, ls, valid, d,
                     GATE_SOFTMAX)
    else:
        total = tl.full([], 0.0, GATE_T)
        for g0 in range(0, G, BLOCK_G):
            cs, cmask, row = _group_block(b, j, g0, C, H, W, off, BLOCK_G)
            valid = cmask[:, None] & (ls < L)[None, :]
            t = _conv(means_ptr, row, cs, cmask, ls, L, cw_ptr, cb_ptr, K, BLOCK_G, BLOCK_L)
            total += _valid_sum(t, valid)
        mean = total / n
        sq = tl.full([], 0.0, GATE_T)  # second pass for the variance
        for g0 in range(0, G, BLOCK_G):
            cs, cmask, row = _group_block(b, j, g0, C, H, W, off, BLOCK_G)
            valid = cmask[:, None] & (ls < L)[None, :]
            t = _conv(means_ptr, row, cs, cmask, ls, L, cw_ptr, cb_ptr, K, BLOCK_G, BLOCK_L)
            sq += _squared_deviation_sum(t, mean, valid)
        rstd = tl.math.rsqrt(sq / n + eps)
        for g0 in range(0, G, BLOCK_G):
            cs, cmask, row = _group_block(b, j, g0, C, H, W, off, BLOCK_G)
            valid = cmask[:, None] & (ls < L)[None, :]
            t = _conv(means_ptr, row, cs, cmask, ls, L, cw_ptr, cb_ptr, K, BLOCK_G, BLOCK_L)
            _store_gates(t, mean, rstd, gates_ptr, nh_w_ptr, nh_b_ptr, nw_w_ptr, nw_b_ptr, cs, cmask, row, ls, valid,
                         d, GATE_SOFTMAX)
    stat = stats_ptr + ((b * 2 + d) * 4 + j) * 2
    tl.store(stat, mean)
    tl.store(stat + 1, rstd)


@triton.jit
def _pre_gate_grad(means_ptr, gates_ptr, rsum_ptr, psum_ptr, ca_ptr, cw_ptr, cb_ptr, b, C,
                   cs, cmask, row, ls, L, valid, mean, rstd, GATE_SOFTMAX: tl.constexpr, K: tl.constexpr,
                   BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr):
    """(normalised conv output tn, gradient du of the pre-gate values) of one channel block.

    d(a) = ca * rsum + psum: rsum = sum of grad_out * x * (other gate) from backward pass (a),
    psum = the pooling path's sum from backward pass (b).
    """
    tn = (_conv(means_ptr, row, cs, cmask, ls, L, cw_ptr, cb_ptr, K, BLOCK_G, BLOCK_L) - mean) * rstd
    idx = row[:, None] + ls[None, :]
    a = tl.load(gates_ptr + idx, mask=valid, other=0.0).to(GATE_T)
    ca = tl.load(ca_ptr + b * C + cs, mask=cmask, other=0.0)
    da = ca[:, None] * tl.load(rsum_ptr + idx, mask=valid, other=0.0) + tl.load(psum_ptr + idx, mask=valid, other=0.0)
    return tn, _gate_grad(a, da.to(GATE_T), GATE_SOFTMAX)


@triton.jit
def _norm_grads(tn, du, norm_part_ptr, nh_w_ptr, nw_w_ptr, b, C, cs, cmask, d):
    """Stores one channel block's GroupNorm weight and bias gradients (direction d) -> its parts
    (sum dtn, sum dtn * tn) of the group sums of the GroupNorm backward, dtn = du * gamma."""
    part = norm_part_ptr + b.to(tl.int64) * 12 * C + d * 2 * C
    tl.store(part + cs, tl.sum((du * tn).to(tl.float32), axis=1), mask=cmask)  # float32 sums: nothing amplified
    tl.store(part + C + cs, tl.sum(du.to(tl.float32), axis=1), mask=cmask)
    dtn = du * _select(nh_w_ptr, nw_w_ptr, cs, cmask, d)[:, None]
    return tl.sum(dtn), tl.sum(dtn * tn)


@triton.jit
def _conv_grads(tn, du, s1, s2, n, rstd, means_ptr, nh_w_ptr, nw_w_ptr, dt_ptr, part, C, cs, cmask, row, ls, L, valid,
                d, K: tl.constexpr):
    """One channel block's gradient dt of the conv output (stored for the conv input gradient) and its
    conv weight and bias gradients (stored at part: this sample's and direction's (C*K + C,) row).

    The weight gradients sum dt * m in float32 (K float64 row sums took ~60 % of the kernel's float64
    additions), with m centred on its row's first mean c: sum_l dt m = sum_l dt (m - c) + c * sum_l dt,
    the last sum the float64 bias gradient (0 where the group is one channel). On a row of near-equal
    means, where dt ~ rstd is large and the true sum small, m - c is exact and small: the float32 sum's
    rounding stays relative to the result instead of to rstd * |c|."""
    dtn = du * _select(nh_w_ptr, nw_w_ptr, cs, cmask, d)[:, None]
    dt = tl.where(valid, rstd * (dtn - s1 / n - tn * (s2 / n)), 0.0)
    dt_sum = tl.sum(dt, axis=1)
    tl.store(part + C * K + cs, dt_sum, mask=cmask)
    first = tl.load(means_ptr + row, mask=cmask, other=0.0)  # c
    dt32 = dt.to(tl.float32)
    for k in tl.static_range(K):  # dw[k] = sum_l dt[l] * m[l + shift]
        src = ls + (k - K // 2)
        ok = cmask[:, None] & ((src >= 0) & (src < L))[None, :]
        m = tl.load(means_ptr + row[:, None] + src[None, :], mask=ok, other=0.0)
        centred = tl.sum(dt32 * (m - first[:, None]), axis=1)
        tl.store(part + cs * K + k, centred.to(GATE_T) + first.to(GATE_T) * dt_sum, mask=cmask)
    tl.store(dt_ptr + row[:, None] + ls[None, :], dt, mask=valid)


@triton.jit
def spatial_gates_bwd_kernel(
        means_ptr, gates_ptr, stats_ptr, rsum_ptr, psum_ptr, ca_ptr,
        cw_ptr, cb_ptr, nh_w_ptr, nw_w_ptr,
        dt_ptr, dmeans_ptr, conv_part_ptr, norm_part_ptr,
        C, H, W,
        GATE_SOFTMAX: tl.constexpr, K: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_L: tl.constexpr,
        ONE_BLOCK: tl.constexpr):
    """Backward of spatial_gates_fwd_kernel for one (sample, group, direction).

    In (fp32): means, gates, rsum, psum (B, C, H+W); ca (B, C); cw (C, K); cb, norm weights (C,);
    stats (B, 2, 4, 2) fp64.
    dt: (B, C, H+W) fp32 scratch (gradient of the conv output, re-read shifted by the conv input gradient).
    dmeans: (B, C, H+W) fp32 out: d(x_h) / W | d(x_w) / H, ready to broadcast into dx.
    conv_part: (B, 2, C*K + C) fp32 out: this sample's and direction's conv weight and bias gradients.
    norm_part: (B, 12*C) fp32: writes [2dC, 2dC + 2C) = GroupNorm weight and bias gradients of direction d.
    ONE_BLOCK: C/4 <= BLOCK_G, one channel block (its tn and du computed once).
    """
    b, j, d, L, off = _direction(C, H, W)
    ls = tl.arange(0, BLOCK_L)
    G = C // 4
    n = G * L
    stat = stats_ptr + ((b * 2 + d) * 4 + j) * 2
    mean = tl.load(stat)
    rstd = tl.load(stat + 1)
    part = conv_part_ptr + (b * 2 + d).to(tl.int64) * (C * K + C)
    if ONE_BLOCK:
        cs, cmask, row = _group_block(b, j, 0, C, H, W, off, BLOCK_G)
        valid = cmask[:, None] & (ls < L)[None, :]
        tn, du = _pre_gate_grad(means_ptr, gates_ptr, rsum_ptr, psum_ptr, ca_ptr, cw_ptr, cb_ptr, b, C,
                                cs, cmask, row, ls, L, valid, mean, rstd, GATE_SOFTMAX, K, BLOCK_G, BLOCK_L)
        s1, s2 = _norm_grads(tn, du, norm_part_ptr, nh_w_ptr, nw_w_ptr, b, C, cs, cmask, d)
        _conv_grads(tn, du, s1, s2, n, rstd, means_ptr, nh_w_ptr, nw_w_ptr, dt_ptr, part, C, cs, cmask, row, ls, L,
                    valid, d, K)
    else:
        s1 = tl.full([], 0.0, GATE_T)
        s2 = tl.full([], 0.0, GATE_T)
        for g0 in range(0, G, BLOCK_G):  # GroupNorm affine gradients and the group sums of its backward
            cs, cmask, row = _group_block(b, j, g0, C, H, W, off, BLOCK_G)
            valid = cmask[:, None] & (ls < L)[None, :]
            tn, du = _pre_gate_grad(means_ptr, gates_ptr, rsum_ptr, psum_ptr, ca_ptr, cw_ptr, cb_ptr, b, C,
                                    cs, cmask, row, ls, L, valid, mean, rstd, GATE_SOFTMAX, K, BLOCK_G, BLOCK_L)
            block_s1, block_s2 = _norm_grads(tn, du, norm_part_ptr, nh_w_ptr, nw_w_ptr, b, C, cs, cmask, d)
            s1 += block_s1
            s2 += block_s2
        for g0 in range(0, G, BLOCK_G):  # gradient dt of the conv output, the conv weight and bias gradients
            cs, cmask, row = _group_block(b, j, g0, C, H, W, off, BLOCK_G)
            valid = cmask[:, None] & (ls < L)[None, :]
            tn, du = _pre_gate_grad(means_ptr, gates_ptr, rsum_ptr, psum_ptr, ca_ptr, cw_ptr, cb_ptr, b, C,
                                    cs, cmask, row, ls, L, valid, mean, rstd, GATE_SOFTMAX, K, BLOCK_G, BLOCK_L)
            _conv_grads(tn, du, s1, s2, n, rstd, means_ptr, nh_w_ptr, nw_w_ptr, dt_ptr, part, C, cs, cmask, row, ls,
                        L, valid, d, K)
    tl.debug_barrier()  # the conv input gradient reads dt shifted: other threads' stores must be visible
    scale = 1.0 / (W + d * (H - W))  # x_h is a mean over W columns, x_w over H rows
    for g0 in range(0, G, BLOCK_G):  # conv input gradient, in fp32 (rstd no longer amplifies its rounding)
        cs, cmask, row = _group_block(b, j, g0, C, H, W, off, BLOCK_G)
        valid = cmask[:, None] & (ls < L)[None, :]
        dm = tl.zeros([BLOCK_G, BLOCK_L], dtype=tl.float32)
        for k in tl.static_range(K):  # dm[l] += w[k] * dt[l - shift]
            src = ls - (k - K // 2)
            ok = cmask[:, None] & ((src >= 0) & (src < L))[None, :]
            w_k = tl.load(cw_ptr + cs * K + k, mask=cmask, other=0.0)
            dm += w_k[:, None] * tl.load(dt_ptr + row[:, None] + src[None, :], mask=ok, other=0.0)
        tl.store(dmeans_ptr + row[:, None] + ls[None, :], dm * scale, mask=valid)
