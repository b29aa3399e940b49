"""PCSA small stage: GroupNorm(1) + q/k/v + flash-style channel attention + gate, forward and backward.

pooled: (B, C, N) float32, N = pooled positions. Per head (channels h*D ... h*D+D-1), rows of
length N: S = q k^T * D**-0.5 (D x D), P = softmax(S), z = P vbar with vbar = mean_N(v)
(mean_N(P v) = P mean_N(v)), ca = gate(z). Grid (B, heads * cdiv(D, BLOCK_D)): a program owns
a block of BLOCK_D channels and walks the head's column blocks with an online softmax, so
only BLOCK_D x BLOCK_D score tiles ever exist (registers), never the D x D matrix.

z is kept as anchor + offset: anchor_i = vbar at row i's largest score, offset_i = sum_j P_ij
(vbar_j - anchor_i). The softmax backward needs vbar_j - z_i, and where one score dominates a row
(long rows: scores of 10-30) z_i is within 1e-4 of that column's vbar: from a float32 z the
difference kept only a few bits (gradients of q/k 1e-5 off on a 0.02 value, past the tolerance
rule), from (vbar_j - anchor_i) - offset_i it is exact at the top column and accurate elsewhere.
The forward stores vbar too, so that the backward's vbar_j - anchor_i is the forward's bit for bit.

Score tiles and the backward's dq/dk rows take BLOCK_P pooled positions per step, as tl.dot
products in "ieee" precision (float32 FMAs: TF32 misses the float32 tolerance), with K = BLOCK_P
(scores) or BLOCK_D (dq/dk) so that each thread's operand slices stay small (no spills: AOT test).
The positions are the only serial loop of these kernels, and each step waits for its global
loads: one position per step (rank-1 updates) made them latency-bound, the same ~140 us per
backward call at batch 1 as at batch 64 (H200, 64x64x56x56). tl.dot needs every side >= 16:
the host pads BLOCK_D to 16 for heads of fewer channels (masked rows). With at most 8 positions
(DOT false: 7x7 and 14x14 planes at window 7, global pooling) the products are rank-1 updates
instead, one position per step (the backward's dq/dk rows: BLOCK_P = next power of two >= N,
in registers): a dot padded to K = 16 was 15/16 padding at N = 1, and the backward took 221-255
registers per thread (one program per SM): 1008 us per backward call at 64x512x7x7 on an H200.
Not (BLOCK_D, BLOCK_P, BLOCK_D) broadcast products summed over the middle axis: right under the
interpreter, they gave wrong results on an H200 with triton 3.6 at BLOCK_P 2 and 4 (relative
errors 0.06-0.27, right at 16).

Every program recomputes the GroupNorm(1) statistics of its sample (C*N values, a few KB)
instead of waiting for another launch.

Attention dropout (training, p = attn_drop_ratio > 0, constexpr DROPOUT): z = (P * M) vbar with
M = keep / (1 - p), the masks drawn in-kernel from Triton's Philox (definition: ops/dropout.py).
The row sums l stay those of P (dropout follows the softmax); the backward draws M again from
the same seed.
"""
import triton
import triton.language as tl
from triton.language.random import uint_to_uniform_float

from ._common import sigmoid


@triton.jit
def _group_norm1_stats(base, count, eps, BLOCK_F: tl.constexpr):
    """(mean, rstd) of the count values at base (fp32), two passes (no cancellation)."""
    total = tl.full([], 0.0, tl.float32)
    for f0 in range(0, count, BLOCK_F):
        fs = f0 + tl.arange(0, BLOCK_F)
        total += tl.sum(tl.load(base + fs, mask=fs < count, other=0.0))
    mean = total / count
    sq = tl.full([], 0.0, tl.float32)
    for f0 in range(0, count, BLOCK_F):
        fs = f0 + tl.arange(0, BLOCK_F)
        v = tl.load(base + fs, mask=fs < count, other=0.0) - mean
        sq += tl.sum(tl.where(fs < count, v * v, 0.0))
    return mean, 1.0 / tl.sqrt(sq / count + eps)


@triton.jit
def _normalized_at(base, chans, mask, n, N, mean, rstd, gamma, beta):
    """y = GroupNorm1(pooled) at channels chans, positions n (broadcast together, gamma and beta, the
    GroupNorm(1) affine of chans, likewise), 0 outside mask: one position's column of len(chans)."""
    p = tl.load(base + chans * N + n, mask=mask, other=0.0)
    return tl.where(mask, (p - mean) * rstd * gamma + beta, 0.0)


@triton.jit
def _normalized(base, chans, cmask, ns, nmask, N, mean, rstd, gamma, beta):
    """_normalized_at over channels chans x positions ns -> (len(chans), len(ns))."""
    return _normalized_at(base, chans[:, None], cmask[:, None] & nmask[None, :], ns[None, :], N, mean, rstd,
                          gamma[:, None], beta[:, None])


@triton.jit
def _scaled_at(y, scale, bias, mask):
    """scale * y + bias per channel (q, k or v of the normalized y; scale, bias broadcast with it),
    0 outside mask."""
    return tl.where(mask, scale * y + bias, 0.0)


@triton.jit
def _scaled(y, scale, bias, cmask, nmask):
    """_scaled_at of the normalized tile y (len(cmask), len(nmask)), scale and bias per row."""
    return _scaled_at(y, scale[:, None], bias[:, None], cmask[:, None] & nmask[None, :])


@triton.jit
def _dot_acc(a, b, acc):
    """acc + a @ b, a (M, K) and b (K, N) fp32 (every side >= 16), in "ieee" precision."""
    return tl.dot(a, b, acc, input_precision="ieee")


@triton.jit
def _affine(nw_ptr, nb_ptr, qkv_w_ptr, qkv_b_ptr, C, chans, cmask):
    """(gamma, beta, wq, bq, wk, bk) of channels chans: GroupNorm(1) affine, q and k scales/biases."""
    return (tl.load(nw_ptr + chans, mask=cmask, other=0.0), tl.load(nb_ptr + chans, mask=cmask, other=0.0),
            tl.load(qkv_w_ptr + chans, mask=cmask, other=0.0), tl.load(qkv_b_ptr + chans, mask=cmask, other=0.0),
            tl.load(qkv_w_ptr + C + chans, mask=cmask, other=0.0),
            tl.load(qkv_b_ptr + C + chans, mask=cmask, other=0.0))


@triton.jit
def _scores(base, rows, rmask, cols, cmask, C, N, mean, rstd, nw_ptr, nb_ptr, qkv_w_ptr, qkv_b_ptr,
            BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr, DOT: tl.constexpr):
    """(q_rows k_cols^T unscaled (BLOCK_D, BLOCK_D), vbar of the columns (BLOCK_D,)), over all N:
    tl.dots over BLOCK_P positions per step (DOT), else one rank-1 update per position."""
    gamma_r, beta_r, wq, bq, _, _ = _affine(nw_ptr, nb_ptr, qkv_w_ptr, qkv_b_ptr, C, rows, rmask)
    gamma_c, beta_c, _, _, wk, bk = _affine(nw_ptr, nb_ptr, qkv_w_ptr, qkv_b_ptr, C, cols, cmask)
    s = tl.zeros([BLOCK_D, BLOCK_D], dtype=tl.float32)
    ysum = tl.zeros([BLOCK_D], dtype=tl.float32)
    if DOT:
        for n0 in range(0, N, BLOCK_P):
            ns = n0 + tl.arange(0, BLOCK_P)
            nmask = ns < N
            q = _scaled(_normalized(base, rows, rmask, ns, nmask, N, mean, rstd, gamma_r, beta_r), wq, bq, rmask,
                        nmask)
            y = _normalized(base, cols, cmask, ns, nmask, N, mean, rstd, gamma_c, beta_c)
            s = _dot_acc(q, tl.trans(_scaled(y, wk, bk, cmask, nmask)), s)
            ysum += tl.sum(y, axis=1)
    else:
        for n in range(0, N):
            q = _scaled_at(_normalized_at(base, rows, rmask, n, N, mean, rstd, gamma_r, beta_r), wq, bq, rmask)
            y = _normalized_at(base, cols, cmask, n, N, mean, rstd, gamma_c, beta_c)
            s += q[:, None] * _scaled_at(y, wk, bk, cmask)[None, :]
            ysum += y
    wv = tl.load(qkv_w_ptr + 2 * C + cols, mask=cmask, other=0.0)
    bv = tl.load(qkv_b_ptr + 2 * C + cols, mask=cmask, other=0.0)
    return s, wv * ysum / N + bv


@triton.jit
def _dropout_scale(seed_ptr, drop_p, b, C, D, rows, cols):
    """M (len(rows), len(cols)) fp32 of sample b (int64): 1/(1-p) where the attention weight of row channel
    rows (global index) and column cols (index in the head) is kept, else 0. seed_ptr: (1,) int64.
    Element e = (b*C + row)*D + col draws word e % 4 of Philox counter e // 4 (ops/dropout.py)."""
    elements = (b * C + rows[:, None]) * D + cols[None, :]
    w0, w1, w2, w3 = tl.randint4x(tl.load(seed_ptr), elements // 4)
    word = elements % 4
    bits = tl.where(word == 0, w0, tl.where(word == 1, w1, tl.where(word == 2, w2, w3)))
    return tl.where(uint_to_uniform_float(bits) >= drop_p, 1.0 / (1.0 - drop_p), 0.0)


@triton.jit
def _head_block(D, NBLK, BLOCK_D: tl.constexpr):
    """(b, head, channel indices, in-head mask, in-head index of the first) of this program's channel block;
    b int64, so that the offsets it scales (the row statistics: ROW_STATS * B * C) do not wrap at 2**31."""
    b = tl.program_id(0).to(tl.int64)
    head = tl.program_id(1) // NBLK
    r0 = (tl.program_id(1) % NBLK) * BLOCK_D
    r = r0 + tl.arange(0, BLOCK_D)
    return b, head, head * D + r, r < D, r0


# The softmax row statistics, planes of (B, C) fp32 back to back in one (ROW_STATS, B, C) buffer.
ANCHOR = tl.constexpr(0)  # vbar (with dropout M * vbar) at the row's largest score
OFFSET = tl.constexpr(1)  # z - anchor = sum_j P_ij (M_ij vbar_j - anchor_i)
VBAR = tl.constexpr(2)  # vbar of each channel (its column of every score tile)
ROW_MAX = tl.constexpr(3)  # max_j of the scaled scores
ROW_SUM = tl.constexpr(4)  # sum_j exp(scaled score - row max)
ROW_STATS = tl.constexpr(5)


@triton.jit
def _row_stat_at(stats_ptr, which: tl.constexpr, b, C, chans):
    """Pointers to statistic ``which`` of channels chans of sample b (grids have B programs on axis 0)."""
    return stats_ptr + (which * tl.num_programs(0) + b) * C + chans


@triton.jit
def _online_softmax_step(s, u, m_i, l_i, anchor, acc):
    """One column block of the online softmax: s (BLOCK_D, BLOCK_D) scaled scores (-inf at masked
    columns), u the values they weigh (vbar, with dropout M * vbar; broadcast with s); m_i, l_i: row
    max and sum of exp(s - m_i) so far; acc = sum so far of exp(s - m_i) (u - anchor). A block holding
    a new row max moves the anchor to u at its top column (acc rebased: + l_i (old - new anchor))."""
    block_max = tl.max(s, axis=1)
    # u at a top column (the largest of them on ties: any top column would do); cheaper than tl.argmax
    block_anchor = tl.max(tl.where(s == block_max[:, None], u, float("-inf")), axis=1)
    new_anchor = tl.where(block_max > m_i, block_anchor, anchor)
    m_new = tl.maximum(m_i, block_max)
    alpha = tl.exp(m_i - m_new)
    p = tl.exp(s - m_new[:, None])
    acc = alpha * (acc + l_i * (anchor - new_anchor)) + tl.sum(p * (u - new_anchor[:, None]), axis=1)
    return m_new, l_i * alpha + tl.sum(p, axis=1), new_anchor, acc


@triton.jit
def channel_attention_fwd_kernel(
        pooled_ptr, nw_ptr, nb_ptr, qkv_w_ptr, qkv_b_ptr, seed_ptr, gn_ptr, stats_ptr, ca_ptr,
        C, N, D, NBLK, eps, scale, drop_p,
        GATE_SOFTMAX: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
        DOT: tl.constexpr, BLOCK_F: tl.constexpr):
    """Forward of PCSA steps 2-6 for one block of BLOCK_D channels.

    pooled: (B, C, N) fp32; nw, nb: GroupNorm(1) params (C,); qkv_w, qkv_b: (3, C). All fp32.
    seed (1,) int64 and drop_p: the attention dropout (read only when DROPOUT).
    Out (fp32): gn (B, 2) = (mean, rstd) of GroupNorm(1); stats (ROW_STATS, B, C): anchor, offset (z =
    anchor + offset = P vbar, pre-gate, with dropout (P * M) vbar), vbar, row max and row sum of exp
    of the scaled scores; ca (B, C) = sigmoid(z), written here unless GATE_SOFTMAX (then by
    channel_softmax_gate_kernel).
    """
    eps = tl.cast(eps, tl.float32)  # torch.compile passes Python floats as fp64: keep every loop in fp32
    scale = tl.cast(scale, tl.float32)
    drop_p = tl.cast(drop_p, tl.float32)
    b, head, rows, rmask, r0 = _head_block(D, NBLK, BLOCK_D)
    base = pooled_ptr + b * C * N
    mean, rstd = _group_norm1_stats(base, C * N, eps, BLOCK_F)
    if (head == 0) & (tl.program_id(1) == 0):
        tl.store(gn_ptr + b * 2, mean)
        tl.store(gn_ptr + b * 2 + 1, rstd)
    m_i = tl.full([BLOCK_D], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_D], dtype=tl.float32)
    anchor = tl.zeros([BLOCK_D], dtype=tl.float32)
    acc = tl.zeros([BLOCK_D], dtype=tl.float32)
    own_vbar = tl.zeros([BLOCK_D], dtype=tl.float32)
    for j0 in range(0, D, BLOCK_D):
        cj = j0 + tl.arange(0, BLOCK_D)
        cmask = cj < D
        s, vbar = _scores(base, rows, rmask, head * D + cj, cmask, C, N, mean, rstd,
                          nw_ptr, nb_ptr, qkv_w_ptr, qkv_b_ptr, BLOCK_D, BLOCK_P, DOT)
        own_vbar = tl.where(j0 == r0, vbar, own_vbar)  # this program's rows are this column block
        s = tl.where(cmask[None, :], s * scale, float("-inf"))
        if DROPOUT:
            u = vbar[None, :] * _dropout_scale(seed_ptr, drop_p, b, C, D, rows, cj)
        else:
            u = vbar[None, :]
        m_i, l_i, anchor, acc = _online_softmax_step(s, u, m_i, l_i, anchor, acc)
    offset = acc / l_i
    tl.store(_row_stat_at(stats_ptr, ANCHOR, b, C, rows), anchor, mask=rmask)
    tl.store(_row_stat_at(stats_ptr, OFFSET, b, C, rows), offset, mask=rmask)
    tl.store(_row_stat_at(stats_ptr, ROW_MAX, b, C, rows), m_i, mask=rmask)
    tl.store(_row_stat_at(stats_ptr, ROW_SUM, b, C, rows), l_i, mask=rmask)
    tl.store(_row_stat_at(stats_ptr, VBAR, b, C, rows), own_vbar, mask=rmask)
    if not GATE_SOFTMAX:
        tl.store(ca_ptr + b * C + rows, sigmoid(anchor + offset), mask=rmask)


@triton.jit
def _pre_gate(stats_ptr, b, C, chans, cmask):
    """z = anchor + offset of channels chans of sample b, -inf outside cmask."""
    anchor = tl.load(_row_stat_at(stats_ptr, ANCHOR, b, C, chans), mask=cmask, other=float("-inf"))
    return anchor + tl.load(_row_stat_at(stats_ptr, OFFSET, b, C, chans), mask=cmask, other=0.0)


@triton.jit
def channel_softmax_gate_kernel(stats_ptr, ca_ptr, C, BLOCK_C: tl.constexpr):
    """ca[b] = softmax over channels of z[b] = anchor + offset. stats: (ROW_STATS, B, C), ca: (B, C) fp32.
    Grid (B,)."""
    b = tl.program_id(0).to(tl.int64)
    top = tl.full([], float("-inf"), tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        top = tl.maximum(top, tl.max(_pre_gate(stats_ptr, b, C, cs, cs < C)))
    total = tl.full([], 0.0, tl.float32)
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        total += tl.sum(tl.exp(_pre_gate(stats_ptr, b, C, cs, cs < C) - top))
    for c0 in range(0, C, BLOCK_C):
        cs = c0 + tl.arange(0, BLOCK_C)
        e = tl.exp(_pre_gate(stats_ptr, b, C, cs, cs < C) - top)
        tl.store(ca_ptr + b * C + cs, e / total, mask=cs < C)


@triton.jit
def _gate_dot(ca_ptr, dca_ptr, b, C, GATE_SOFTMAX: tl.constexpr, BLOCK_C: tl.constexpr):
    """sum_c ca * d(ca) of sample b (the softmax gate's backward needs it); 0 for sigmoid."""
    total = tl.full([], 0.0, tl.float32)
    if GATE_SOFTMAX:
        for c0 in range(0, C, BLOCK_C):
            cs = c0 + tl.arange(0, BLOCK_C)
            total += tl.sum(tl.load(ca_ptr + b * C + cs, mask=cs < C, other=0.0)
                            * tl.load(dca_ptr + b * C + cs, mask=cs < C, other=0.0))
    return total


@triton.jit
def _row_state(ca_ptr, dca_ptr, stats_ptr, b, C, chans, cmask, dot, GATE_SOFTMAX: tl.constexpr):
    """(dz, anchor, offset, row max, row sum, vbar) of channels chans: dz = gradient of the pre-gate z."""
    idx = b * C + chans
    ca = tl.load(ca_ptr + idx, mask=cmask, other=0.0)
    dca = tl.load(dca_ptr + idx, mask=cmask, other=0.0)
    if GATE_SOFTMAX:
        dz = ca * (dca - dot)
    else:
        dz = dca * ca * (1.0 - ca)
    return (dz, tl.load(_row_stat_at(stats_ptr, ANCHOR, b, C, chans), mask=cmask, other=0.0),
            tl.load(_row_stat_at(stats_ptr, OFFSET, b, C, chans), mask=cmask, other=0.0),
            tl.load(_row_stat_at(stats_ptr, ROW_MAX, b, C, chans), mask=cmask, other=0.0),
            tl.load(_row_stat_at(stats_ptr, ROW_SUM, b, C, chans), mask=cmask, other=1.0),
            tl.load(_row_stat_at(stats_ptr, VBAR, b, C, chans), mask=cmask, other=0.0))


@triton.jit
def _score_grad(s, scale, rmask, cmask, dz, anchor, offset, m, l, vbar, keep):
    """dS = P * dz_i * ((M_ij vbar_j - anchor_i) - offset_i) (the softmax backward of z = (P * M) vbar:
    M_ij vbar_j - z_i, exact at the row's top column), and P * M. keep: the dropout scales M (a tile),
    or 1.0 without dropout; vbar: the columns'."""
    p = tl.where(rmask[:, None] & cmask[None, :], tl.exp(s * scale - m[:, None]) / l[:, None], 0.0)
    return p * dz[:, None] * ((vbar[None, :] * keep - anchor[:, None]) - offset[:, None]), p * keep


@triton.jit
def _add_dq_dk(dq, dk, ds_tj, ds_jt_transposed, y, wq, bq, wk, bk, cmask, nmask):
    """(dq + dS_Tj k_j, dk + dS_jT^T q_j) as tl.dots at the positions of the normalized column tile y
    (len(cols), BLOCK_P); dq, dk: (BLOCK_D, BLOCK_P) rows of T; wq, bq, wk, bk: the columns'."""
    dq = _dot_acc(ds_tj, _scaled(y, wk, bk, cmask, nmask), dq)
    dk = _dot_acc(ds_jt_transposed, _scaled(y, wq, bq, cmask, nmask), dk)
    return dq, dk


@triton.jit
def _add_dq_dk_by_position(dq, dk, ds_tj, ds_jt, base, cols, cmask, N, mean, rstd, gamma, beta, wq, bq, wk, bk,
                           BLOCK_P: tl.constexpr):
    """_add_dq_dk over all N <= BLOCK_P positions, one at a time: column n of dq, dk gets
    dS_Tj k_j[:, n], dS_jT^T q_j[:, n] (row sums of (BLOCK_D, BLOCK_D) tiles); gamma .. bk: the columns'."""
    at = tl.arange(0, BLOCK_P)
    for n in range(0, N):
        y = _normalized_at(base, cols, cmask, n, N, mean, rstd, gamma, beta)
        dq_n = tl.sum(ds_tj * _scaled_at(y, wk, bk, cmask)[None, :], axis=1)
        dk_n = tl.sum(ds_jt * _scaled_at(y, wq, bq, cmask)[:, None], axis=0)
        dq += tl.where((at == n)[None, :], dq_n[:, None], 0.0)
        dk += tl.where((at == n)[None, :], dk_n[:, None], 0.0)
    return dq, dk


@triton.jit
def _store_rows(ptr, plane, rows, rmask, N, values, BLOCK_P: tl.constexpr):
    """values (len(rows), BLOCK_P): positions 0 .. BLOCK_P-1 (those < N) of channels rows of the
    (C, N) plane at ptr + plane."""
    ns = tl.arange(0, BLOCK_P)
    tl.store(ptr + plane + rows[:, None] * N + ns[None, :], values, mask=rmask[:, None] & (ns < N)[None, :])


# Not specialized on N, D, NBLK == 1 (global pooling, one block per head): the loops those
# bound, unrolled, spilled registers (AOT test with the JIT's specializations).
@triton.jit(do_not_specialize=["N", "D", "NBLK"])
def channel_attention_bwd_kernel(
        pooled_ptr, nw_ptr, nb_ptr, qkv_w_ptr, qkv_b_ptr, seed_ptr, gn_ptr, stats_ptr, ca_ptr, dca_ptr,
        dq_ptr, dk_ptr, dy_ptr, part_ptr, gnsum_ptr,
        C, N, D, NBLK, scale, drop_p,
        GATE_SOFTMAX: tl.constexpr, DROPOUT: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_P: tl.constexpr,
        DOT: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, ONE_STEP: tl.constexpr):
    """Backward of PCSA steps 2-6 for one block T of BLOCK_D channels, without atomics.

    T is both a row block (dq_T = scale * sum_j dS_Tj k_j) and a column block
    (dk_T = scale * sum_i dS_iT q_i, dvbar_T = sum_i P_iT M_iT dz_i), with
    dS_ij = P_ij dz_i (M_ij vbar_j - z_i), the softmax backward of z = (P * M) vbar (M = 1 without
    dropout; with it, regenerated from the forward's seed). dS tiles do not
    depend on the position n, so each column block's contribution to dq_T[:, n], dk_T[:, n]
    is added into this program's own rows of the dq/dk scratch, BLOCK_P positions at a time. With
    ONE_STEP (N <= BLOCK_P: planes up to 28x28 at window 7) the (BLOCK_D, BLOCK_P) dq/dk rows stay
    in registers over the column blocks and reach the scratch once: no store, barrier and reload
    per column block (16 of them at D = 512).
    In: pooled (B, C, N); params as in the forward; gn (B, 2), stats (ROW_STATS, B, C), ca (B, C) from
    the forward; dca (B, C) = sum over the plane of grad_out * x_s. All fp32.
    Scratch: dq, dk (B, C, N) fp32 (unscaled). Out (fp32): dy (B, C, N) = gradient of the GroupNorm(1)
    output y; part (B, 12*C): writes [4C, 12C) = norm weight, norm bias, qkv weight (3C), qkv bias (3C)
    of this sample; gnsum (B, heads*NBLK, 2) = this block's sums of gamma*dy and gamma*dy*yhat.
    """
    tl.static_assert(DOT or ONE_STEP, "rank-1 products (DOT false) cover every position in one step")
    scale = tl.cast(scale, tl.float32)  # torch.compile passes Python floats as fp64
    drop_p = tl.cast(drop_p, tl.float32)
    b, head, rows, rmask, _ = _head_block(D, NBLK, BLOCK_D)
    base = pooled_ptr + b * C * N
    plane = b * C * N
    mean = tl.load(gn_ptr + b * 2)
    rstd = tl.load(gn_ptr + b * 2 + 1)
    dot = _gate_dot(ca_ptr, dca_ptr, b, C, GATE_SOFTMAX, BLOCK_C)
    dz_t, anchor_t, offset_t, m_t, l_t, vbar_t = _row_state(ca_ptr, dca_ptr, stats_ptr, b, C, rows, rmask, dot,
                                                            GATE_SOFTMAX)
    dvbar = tl.zeros([BLOCK_D], dtype=tl.float32)
    if ONE_STEP:
        dq_t = tl.zeros([BLOCK_D, BLOCK_P], dtype=tl.float32)
        dk_t = tl.zeros([BLOCK_D, BLOCK_P], dtype=tl.float32)
    for j0 in range(0, D, BLOCK_D):
        cj = j0 + tl.arange(0, BLOCK_D)
        cmask = cj < D
        cols = head * D + cj
        if DROPOUT:
            keep_tj = _dropout_scale(seed_ptr, drop_p, b, C, D, rows, cj)
            keep_jt = _dropout_scale(seed_ptr, drop_p, b, C, D, cols, rows - head * D)
        else:
            keep_tj = 1.0
            keep_jt = 1.0
        dz_j, anchor_j, offset_j, m_j, l_j, vbar_j = _row_state(ca_ptr, dca_ptr, stats_ptr, b, C, cols, cmask, dot,
                                                                GATE_SOFTMAX)
        s = _scores(base, rows, rmask, cols, cmask, C, N, mean, rstd,  # [0]: the forward's vbar, not these sums
                    nw_ptr, nb_ptr, qkv_w_ptr, qkv_b_ptr, BLOCK_D, BLOCK_P, DOT)[0]
        ds_tj, p = _score_grad(s, scale, rmask, cmask, dz_t, anchor_t, offset_t, m_t, l_t, vbar_j, keep_tj)
        s = _scores(base, cols, cmask, rows, rmask, C, N, mean, rstd,
                    nw_ptr, nb_ptr, qkv_w_ptr, qkv_b_ptr, BLOCK_D, BLOCK_P, DOT)[0]
        ds_jt, p = _score_grad(s, scale, cmask, rmask, dz_j, anchor_j, offset_j, m_j, l_j, vbar_t, keep_jt)
        dvbar += tl.sum(p * dz_j[:, None], axis=0)
        gamma_c, beta_c, wq_c, bq_c, wk_c, bk_c = _affine(nw_ptr, nb_ptr, qkv_w_ptr, qkv_b_ptr, C, cols, cmask)
        if ONE_STEP & DOT:
            ns = tl.arange(0, BLOCK_P)
            nmask = ns < N
            y = _normalized(base, cols, cmask, ns, nmask, N, mean, rstd, gamma_c, beta_c)
            dq_t, dk_t = _add_dq_dk(dq_t, dk_t, ds_tj, tl.trans(ds_jt), y, wq_c, bq_c, wk_c, bk_c, cmask, nmask)
        elif ONE_STEP:
            dq_t, dk_t = _add_dq_dk_by_position(dq_t, dk_t, ds_tj, ds_jt, base, cols, cmask, N, mean, rstd,
                                                gamma_c, beta_c, wq_c, bq_c, wk_c, bk_c, BLOCK_P)
        else:
            tl.debug_barrier()  # the previous column block's dq/dk stores are re-read below
            ds_jt_transposed = tl.trans(ds_jt)  # rows T, columns j
            for n0 in range(0, N, BLOCK_P):
                ns = n0 + tl.arange(0, BLOCK_P)
                nmask = ns < N
                y = _normalized(base, cols, cmask, ns, nmask, N, mean, rstd, gamma_c, beta_c)
                idx = plane + rows[:, None] * N + ns[None, :]
                tile = rmask[:, None] & nmask[None, :]
                dq = tl.load(dq_ptr + idx, mask=tile & (j0 > 0), other=0.0)
                dk = tl.load(dk_ptr + idx, mask=tile & (j0 > 0), other=0.0)
                dq, dk = _add_dq_dk(dq, dk, ds_tj, ds_jt_transposed, y, wq_c, bq_c, wk_c, bk_c, cmask, nmask)
                tl.store(dq_ptr + idx, dq, mask=tile)
                tl.store(dk_ptr + idx, dk, mask=tile)
    if ONE_STEP:
        _store_rows(dq_ptr, plane, rows, rmask, N, dq_t, BLOCK_P)
        _store_rows(dk_ptr, plane, rows, rmask, N, dk_t, BLOCK_P)
    tl.debug_barrier()  # dq/dk complete: read back as tiles below
    g_nw = tl.zeros([BLOCK_D], dtype=tl.float32)  # per-channel parameter partials of this sample
    g_nb = tl.zeros([BLOCK_D], dtype=tl.float32)
    g_wq = tl.zeros([BLOCK_D], dtype=tl.float32)
    g_wk = tl.zeros([BLOCK_D], dtype=tl.float32)
    g_wv = tl.zeros([BLOCK_D], dtype=tl.float32)
    g_bq = tl.zeros([BLOCK_D], dtype=tl.float32)
    g_bk = tl.zeros([BLOCK_D], dtype=tl.float32)
    s1 = tl.full([], 0.0, tl.float32)
    s2 = tl.full([], 0.0, tl.float32)
    gamma = tl.load(nw_ptr + rows, mask=rmask, other=0.0)
    beta = tl.load(nb_ptr + rows, mask=rmask, other=0.0)
    wq = tl.load(qkv_w_ptr + rows, mask=rmask, other=0.0)
    wk = tl.load(qkv_w_ptr + C + rows, mask=rmask, other=0.0)
    wv = tl.load(qkv_w_ptr + 2 * C + rows, mask=rmask, other=0.0)
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        mask = rmask[:, None] & (ns < N)[None, :]
        idx = plane + rows[:, None] * N + ns[None, :]
        dq = tl.load(dq_ptr + idx, mask=mask, other=0.0) * scale
        dk = tl.load(dk_ptr + idx, mask=mask, other=0.0) * scale
        dv = tl.where(mask, (dvbar / N)[:, None], 0.0)
        y = _normalized(base, rows, rmask, ns, ns < N, N, mean, rstd, gamma, beta)
        dy = wq[:, None] * dq + wk[:, None] * dk + wv[:, None] * dv
        tl.store(dy_ptr + idx, dy, mask=mask)
        yhat = tl.where(mask, (tl.load(base + rows[:, None] * N + ns[None, :], mask=mask, other=0.0) - mean) * rstd,
                        0.0)
        g_nw += tl.sum(dy * yhat, axis=1)
        g_nb += tl.sum(dy, axis=1)
        g_wq += tl.sum(dq * y, axis=1)
        g_wk += tl.sum(dk * y, axis=1)
        g_wv += tl.sum(dv * y, axis=1)
        g_bq += tl.sum(dq, axis=1)
        g_bk += tl.sum(dk, axis=1)
        s1 += tl.sum(gamma[:, None] * dy)
        s2 += tl.sum(gamma[:, None] * dy * yhat)
    part = part_ptr + b * 12 * C + rows
    tl.store(part + 4 * C, g_nw, mask=rmask)
    tl.store(part + 5 * C, g_nb, mask=rmask)
    tl.store(part + 6 * C, g_wq, mask=rmask)
    tl.store(part + 7 * C, g_wk, mask=rmask)
    tl.store(part + 8 * C, g_wv, mask=rmask)
    tl.store(part + 9 * C, g_bq, mask=rmask)
    tl.store(part + 10 * C, g_bk, mask=rmask)
    tl.store(part + 11 * C, dvbar, mask=rmask)  # d(bv) = sum_n dv = dvbar
    gs = gnsum_ptr + (b * tl.num_programs(1) + tl.program_id(1)) * 2
    tl.store(gs, s1)
    tl.store(gs + 1, s2)
