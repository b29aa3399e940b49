"""Backward full-size passes after the small PCSA backward.

Pass (b), ``pool_grad_sums_kernel``: reads x (inside the window grid only) and sums the
pooling path's gradient P (the pooled gradient dp scattered back over its window) into
psum_h[h] = sum_w P * x * a_w and psum_w[w] = sum_h P * x * a_h.
Pass (c), ``input_grad_kernel``: reads grad_out g, writes
dx = (g * ca + P) * a_h * a_w + d(x_h)[h] / W + d(x_w)[w] / H; no read of x.

Both walk each plane by window rows (rows i*WH ... i*WH+WH-1), so the gradient dp of the
windows under a column block is one vector per window row, not a gather per element.
dp is recomputed from the GroupNorm(1) backward (dy, pooled, the per-sample sums) in
both passes instead of being stored: it is a handful of loads per window.

Recombination (RECOMBINE) pools by a 1x1 projection of the space-to-depth cells, done by
torch: ``pooled_grad_kernel`` writes dp for it, torch projects dp back onto the cells, and
both passes read that per-element gradient instead of spreading dp over the windows.
"""
import triton
import triton.language as tl

from ._common import (PLANE_CONFIGS, aligned, autotune, channel_block, channel_tile, plane_bases, plane_index, plane_offsets,
                      rows_per_tile)


@triton.jit
def _group_norm1_grad_coefs(gn_ptr, gnsum_ptr, nw_ptr, b, c, C, N, NPROG, BLOCK_P: tl.constexpr):
    """(A, P, Q) with dp = A * dy + P * pooled + Q for channel(s) c (a scalar, or (BLOCK_C,) with A
    of that shape; A is 0 for c >= C) of sample b.

    The GroupNorm(1) backward dp = rstd * (gamma * dy - k1 - yhat * k2), yhat = (pooled - mean) * rstd,
    k1, k2 = sample means of gamma*dy and gamma*dy*yhat (summed from the attention programs' gnsum),
    is linear in (dy, pooled): three values stay live in the loops instead of five.
    """
    ps = tl.arange(0, BLOCK_P)
    sums = gnsum_ptr + (b * NPROG + ps) * 2
    k1 = tl.sum(tl.load(sums, mask=ps < NPROG, other=0.0)) / (C * N)
    k2 = tl.sum(tl.load(sums + 1, mask=ps < NPROG, other=0.0)) / (C * N)
    mean = tl.load(gn_ptr + b * 2)
    rstd = tl.load(gn_ptr + b * 2 + 1)
    q = -rstd * rstd * k2
    return rstd * tl.load(nw_ptr + c, mask=c < C, other=0.0), q, -rstd * k1 - mean * q


@triton.jit
def _window_grad_cols(dy_ptr, pooled_ptr, argmax_ptr, plane_n, i, cols, valid, WP, WW, WH,
                      coef_a, coef_p, coef_q, IS_MAX: tl.constexpr):
    """(dp, argmax) of window row i under each column, (BLOCK_C, BLOCK_W); dp already / (WH*WW) for avg.

    plane_n: (BLOCK_C,) offsets of the planes in the (B, C, N) buffers; valid (BLOCK_C, BLOCK_W):
    channels and columns inside the grid; coef_a (BLOCK_C,).
    """
    idx = plane_n[:, None] + i * WP + (cols // WW)[None, :]
    dy = tl.load(dy_ptr + idx, mask=valid, other=0.0)
    pooled = tl.load(pooled_ptr + idx, mask=valid, other=0.0)
    dp = tl.where(valid, coef_a[:, None] * dy + coef_p * pooled + coef_q, 0.0)
    if IS_MAX:
        return dp, tl.load(argmax_ptr + idx, mask=valid, other=-1)
    else:
        return dp / (WH * WW), cols


@triton.jit
def _pool_grad_tile(dp, arg, rows, cols, W, IS_MAX: tl.constexpr):
    """The pooling gradient at rows x cols of each channel: dp (BLOCK_C, cols) spread over the
    window (avg) or on its argmax (max)."""
    if IS_MAX:
        return tl.where((rows[:, None] * W + cols[None, :])[None, :, :] == arg[:, None, :], dp[:, None, :], 0.0)
    else:
        return dp[:, None, :]


@triton.jit
def _cell_columns(cols, HP, WP, WW):
    """Offset of column w's cell in the RECOMBINE cells (layout of pool_kernel's): (w % WW) * N + w // WW."""
    return (cols % WW) * (HP * WP) + cols // WW


@triton.jit
def _cell_grad_tile(cell_bases, i, rows, cell_cols, mask, HP, WP, WH, WW):
    """The recombination gradient at rows x columns of window row i, read from the cells' gradient:
    cell_bases (BLOCK_C,) pointers to the planes' cells, cell_cols = _cell_columns(columns); 0
    outside mask (BLOCK_C, rows, columns)."""
    cell_rows = (rows - i * WH) * (WW * HP * WP) + i * WP
    return tl.load(channel_tile(cell_bases, cell_rows[:, None] + cell_cols[None, :]), mask=mask, other=0.0)


@triton.jit
def pooled_grad_kernel(dy_ptr, pooled_ptr, gn_ptr, gnsum_ptr, nw_ptr, dp_ptr, C, N, NPROG,
                       BLOCK_N: tl.constexpr, BLOCK_P: tl.constexpr):
    """dp = gradient of the pooled values, for recombination's projection backward (torch).

    One program per (b, c) (grid B*C). dy, pooled: (B, C, N) fp32; gn (B, 2), gnsum (B, NPROG, 2),
    nw (C,) fp32. dp: (B, C, N) fp32 out.
    """
    b, c = plane_index(C)
    coef_a, coef_p, coef_q = _group_norm1_grad_coefs(gn_ptr, gnsum_ptr, nw_ptr, b, c, C, N, NPROG, BLOCK_P)
    row = (b * C + c) * N
    for n0 in range(0, N, BLOCK_N):
        ns = n0 + tl.arange(0, BLOCK_N)
        dy = tl.load(dy_ptr + row + ns, mask=ns < N, other=0.0)
        pooled = tl.load(pooled_ptr + row + ns, mask=ns < N, other=0.0)
        tl.store(dp_ptr + row + ns, coef_a * dy + coef_p * pooled + coef_q, mask=ns < N)


@autotune(PLANE_CONFIGS, ["H", "W", "WH", "WW", "IS_MAX", "RECOMBINE", "BLOCK_C"])
@triton.jit
def pool_grad_sums_kernel(
        x_ptr, gates_ptr, dy_ptr, pooled_ptr, argmax_ptr, gn_ptr, gnsum_ptr, nw_ptr, dcells_ptr, psum_ptr,
        C, H, W, sx_b, sx_c, sx_h, sx_w, HP, WP, WH, WW, NPROG,
        IS_MAX: tl.constexpr, RECOMBINE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
        WH_POW2: tl.constexpr, BLOCK_P: tl.constexpr, ONE_COL_BLOCK: tl.constexpr, WIDE: tl.constexpr,
        VEC: tl.constexpr, TILE: tl.constexpr):
    """Backward pass (b), one program per BLOCK_C channels of one sample (grid B * cdiv(C, BLOCK_C)).

    x: (B, C, H, W) fp32/fp16/bf16, strides sx_*. gates: (B, C, H+W) fp32. dy, pooled: (B, C, N)
    fp32, argmax (B, C, N) int32 (IS_MAX), N = HP*WP. gn (B, 2), gnsum (B, NPROG, 2), nw (C,) fp32.
    RECOMBINE: dcells (B, C*WH*WW, N) fp32, the cells' gradient, replaces all of these.
    psum: (B, C, H+W) fp32 out (psum_h | psum_w), zero outside the window grid.
    ONE_COL_BLOCK: W <= BLOCK_W, so row sums need no read-modify-write across column blocks.
    VEC: WP*WW and x's strides but sx_w are multiples of VEC (see ``aligned``).
    """
    BLOCK_R: tl.constexpr = rows_per_tile(TILE, BLOCK_C * BLOCK_W, WH_POW2)
    sx_h, grid_w = aligned(sx_h, VEC), aligned(WP * WW, VEC)
    b, cs, cmask = channel_block(C, BLOCK_C)
    x_bases = plane_bases(x_ptr, b, cs, sx_b, sx_c, VEC)
    small = (b * C + cs) * (H + W)
    plane_n = (b * C + cs) * HP * WP
    if not RECOMBINE:
        coef_a, coef_p, coef_q = _group_norm1_grad_coefs(gn_ptr, gnsum_ptr, nw_ptr, b, cs, C, HP * WP, NPROG, BLOCK_P)
    for w0 in range(0, W, BLOCK_W):
        if not ONE_COL_BLOCK:
            tl.debug_barrier()  # row sums stored by the previous column block are re-read below
        cols = w0 + tl.arange(0, BLOCK_W)
        if RECOMBINE:
            cell_cols = _cell_columns(cols, HP, WP, WW)
        inside = cols < grid_w
        plane_inside = cmask[:, None] & inside[None, :]
        a_w = tl.load(gates_ptr + small[:, None] + H + cols[None, :], mask=plane_inside, other=0.0)
        cols_acc = tl.zeros([BLOCK_C, BLOCK_W], dtype=tl.float32)
        for i in range(0, HP):
            if not RECOMBINE:
                dp, arg = _window_grad_cols(dy_ptr, pooled_ptr, argmax_ptr, plane_n, i, cols, plane_inside, WP, WW,
                                            WH, coef_a, coef_p, coef_q, IS_MAX)
            for r0 in range(0, WH, BLOCK_R):
                rr = r0 + tl.arange(0, BLOCK_R)
                rows = i * WH + rr
                plane_rows = cmask[:, None] & (rr < WH)[None, :]
                mask = plane_rows[:, :, None] & inside[None, None, :]
                x = tl.load(channel_tile(x_bases, plane_offsets(rows, cols, sx_h, sx_w, WIDE)), mask=mask,
                            other=0.0).to(tl.float32)
                if RECOMBINE:
                    v = x * _cell_grad_tile(dcells_ptr + plane_n * WH * WW, i, rows, cell_cols, mask, HP, WP, WH, WW)
                else:
                    v = _pool_grad_tile(dp, arg, rows, cols, W, IS_MAX) * x
                a_h = tl.load(gates_ptr + small[:, None] + rows[None, :], mask=plane_rows, other=0.0)
                cols_acc += tl.sum(v * a_h[:, :, None], axis=1)
                row_part = tl.sum(v * a_w[:, None, :], axis=2)
                row_ptrs = psum_ptr + small[:, None] + rows[None, :]
                if not ONE_COL_BLOCK:
                    row_part += tl.load(row_ptrs, mask=plane_rows & (w0 > 0), other=0.0)
                tl.store(row_ptrs, row_part, mask=plane_rows)
        tl.store(psum_ptr + small[:, None] + H + cols[None, :], cols_acc, mask=cmask[:, None] & (cols < W)[None, :])
    for h0 in range(HP * WH, H, BLOCK_W):  # rows below the window grid get no pooling gradient
        hs = h0 + tl.arange(0, BLOCK_W)
        tl.store(psum_ptr + small[:, None] + hs[None, :], tl.zeros([BLOCK_C, BLOCK_W], dtype=tl.float32),
                 mask=cmask[:, None] & (hs < H)[None, :])


@autotune(PLANE_CONFIGS, ["H", "W", "WH", "WW", "IS_MAX", "RECOMBINE", "BLOCK_C"])
@triton.jit
def input_grad_kernel(
        g_ptr, dx_ptr, gates_ptr, ca_ptr, dmeans_ptr, dy_ptr, pooled_ptr, argmax_ptr, gn_ptr, gnsum_ptr, nw_ptr,
        dcells_ptr, C, H, W, sg_b, sg_c, sg_h, sg_w, sd_b, sd_c, sd_h, sd_w, HP, WP, WH, WW, NPROG,
        IS_MAX: tl.constexpr, RECOMBINE: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr,
        WH_POW2: tl.constexpr, BLOCK_P: tl.constexpr, WIDE: tl.constexpr, VEC: tl.constexpr, TILE: tl.constexpr):
    """Backward pass (c), one program per BLOCK_C channels of one sample (grid B * cdiv(C, BLOCK_C)).

    g: grad_out (B, C, H, W), strides sg_*; dx: (B, C, H, W) out in x's dtype, strides sd_*.
    gates, dmeans: (B, C, H+W) fp32 (dmeans = d(x_h)/W | d(x_w)/H); ca: (B, C) fp32; the pooling
    inputs as in pool_grad_sums_kernel (dcells with RECOMBINE). Window row HP is the remainder below the grid (no dp).
    VEC: W and the strides but sg_w, sd_w are multiples of VEC (see ``aligned``).
    """
    BLOCK_R: tl.constexpr = rows_per_tile(TILE, BLOCK_C * BLOCK_W, WH_POW2)
    W, sg_h, sd_h = aligned(W, VEC), aligned(sg_h, VEC), aligned(sd_h, VEC)
    b, cs, cmask = channel_block(C, BLOCK_C)
    g_bases = plane_bases(g_ptr, b, cs, sg_b, sg_c, VEC)
    d_bases = plane_bases(dx_ptr, b, cs, sd_b, sd_c, VEC)
    small = (b * C + cs) * (H + W)
    plane_n = (b * C + cs) * HP * WP
    ca = tl.load(ca_ptr + b * C + cs, mask=cmask, other=0.0)
    if not RECOMBINE:
        coef_a, coef_p, coef_q = _group_norm1_grad_coefs(gn_ptr, gnsum_ptr, nw_ptr, b, cs, C, HP * WP, NPROG, BLOCK_P)
    for w0 in range(0, W, BLOCK_W):
        cols = w0 + tl.arange(0, BLOCK_W)
        if RECOMBINE:
            cell_cols = _cell_columns(cols, HP, WP, WW)
        col_mask = cols < W
        plane_cols = cmask[:, None] & col_mask[None, :]
        a_w = tl.load(gates_ptr + small[:, None] + H + cols[None, :], mask=plane_cols, other=0.0)
        dm_w = tl.load(dmeans_ptr + small[:, None] + H + cols[None, :], mask=plane_cols, other=0.0)
        for i in range(0, HP + 1):
            in_grid = (cols < WP * WW) & (i < HP)
            if not RECOMBINE:
                dp, arg = _window_grad_cols(dy_ptr, pooled_ptr, argmax_ptr, plane_n, i, cols,
                                            cmask[:, None] & in_grid[None, :], WP, WW, WH, coef_a, coef_p, coef_q,
                                            IS_MAX)
            for r0 in range(0, tl.minimum(WH, H - i * WH), BLOCK_R):
                rr = r0 + tl.arange(0, BLOCK_R)
                rows = i * WH + rr
                plane_rows = cmask[:, None] & ((rr < WH) & (rows < H))[None, :]
                mask = plane_rows[:, :, None] & col_mask[None, None, :]
                g = tl.load(channel_tile(g_bases, plane_offsets(rows, cols, sg_h, sg_w, WIDE)), mask=mask,
                            other=0.0).to(tl.float32)
                a_h = tl.load(gates_ptr + small[:, None] + rows[None, :], mask=plane_rows, other=0.0)
                dm_h = tl.load(dmeans_ptr + small[:, None] + rows[None, :], mask=plane_rows, other=0.0)
                if RECOMBINE:
                    e = g * ca[:, None, None] + _cell_grad_tile(dcells_ptr + plane_n * WH * WW, i, rows, cell_cols,
                                                                plane_rows[:, :, None] & in_grid[None, None, :],
                                                                HP, WP, WH, WW)
                else:
                    e = g * ca[:, None, None] + _pool_grad_tile(dp, arg, rows, cols, W, IS_MAX)
                dx = e * a_h[:, :, None] * a_w[:, None, :] + dm_h[:, :, None] + dm_w[:, None, :]
                tl.store(channel_tile(d_bases, plane_offsets(rows, cols, sd_h, sd_w, WIDE)),
                         dx.to(dx_ptr.dtype.element_ty), mask=mask)
