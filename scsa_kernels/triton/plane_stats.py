"""Row and column (weighted) sums of every (b, c) plane: one read of x (and of grad_out).

Forward stats pass: ``rows = mean over w of x``, ``cols = mean over h of x``.
Backward pass (a): with v = grad_out * x, ``rows[h] = sum_w v * a_w[w]``,
``cols[w] = sum_h v * a_h[h]`` and ``total = sum_hw v * a_h * a_w`` (= d ca before the gate);
it also recomputes the means from the x tiles it reads anyway, so the forward does not
have to keep them for the backward.
"""
import triton
import triton.language as tl

from ._common import PLANE_CONFIGS, PLANE_KEY, autotune, plane_index, plane_offsets, tile_offsets


@autotune(PLANE_CONFIGS, PLANE_KEY + ["HAS_GRAD"])  # forward and backward tune separately
@triton.jit
def plane_row_col_sums_kernel(
        x_ptr, g_ptr, gates_ptr, sums_ptr, total_ptr, means_ptr,
        C, H, W, sx_b, sx_c, sx_h, sx_w, sg_b, sg_c, sg_h, sg_w,
        HAS_GRAD: tl.constexpr, BLOCK_W: tl.constexpr, H_POW2: tl.constexpr, ONE_COL_BLOCK: tl.constexpr,
        WIDE: tl.constexpr, TILE: tl.constexpr):
    """One program per plane (grid B*C).

    x: (B, C, H, W) fp32/fp16/bf16, strides sx_*. g: grad_out, same shape, strides sg_*
    (read only when HAS_GRAD). gates: (B, C, H+W) fp32, a_h then a_w (read only when HAS_GRAD).
    sums: (B, C, H+W) fp32 out: row results in [:H], column results in [H:].
    total: (B*C,) fp32 out, written only when HAS_GRAD.
    means: (B, C, H+W) fp32 out, written only when HAS_GRAD: the row and column means of x.
    Without HAS_GRAD the weights are the constants 1/W (rows) and 1/H (columns): sums = means.
    ONE_COL_BLOCK: W <= BLOCK_W, so row results need no read-modify-write across column blocks.
    """
    BLOCK_H: tl.constexpr = TILE // BLOCK_W if TILE // BLOCK_W < H_POW2 else H_POW2
    b, c = plane_index(C)
    x_base = x_ptr + b * sx_b + c * sx_c
    g_base = g_ptr + b * sg_b + c * sg_c
    small = (b * C + c) * (H + W)  # offset of this plane's row of the (B, C, H+W) buffers
    total = tl.full([], 0.0, tl.float32)
    # Column blocks outside, rows inside: a column sum is complete after the inner loop;
    # row sums of later column blocks add to what earlier ones stored (same program, no atomics).
    for w0 in range(0, W, BLOCK_W):
        if not ONE_COL_BLOCK:
            tl.debug_barrier()  # row sums stored by the previous column block are re-read below
        cols = w0 + tl.arange(0, BLOCK_W)
        cols_acc = tl.zeros([BLOCK_W], dtype=tl.float32)
        col_means = tl.zeros([BLOCK_W], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            hs, ws, offs, mask = tile_offsets(h0, w0, H, W, sx_h, sx_w, BLOCK_H, BLOCK_W, WIDE)
            v = tl.load(x_base + offs, mask=mask, other=0.0).to(tl.float32)
            if HAS_GRAD:
                col_means += tl.sum(v, axis=0) / H
                row_means = tl.sum(v, axis=1) / W
                if not ONE_COL_BLOCK:
                    row_means += tl.load(means_ptr + small + hs, mask=(hs < H) & (w0 > 0), other=0.0)
                tl.store(means_ptr + small + hs, row_means, mask=hs < H)
                goffs = plane_offsets(hs, ws, sg_h, sg_w, WIDE)
                v = v * tl.load(g_base + goffs, mask=mask, other=0.0).to(tl.float32)
                a_h = tl.load(gates_ptr + small + hs, mask=hs < H, other=0.0)
                a_w = tl.load(gates_ptr + small + H + ws, mask=ws < W, other=0.0)
                row_part = tl.sum(v * a_w[None, :], axis=1)
                cols_acc += tl.sum(v * a_h[:, None], axis=0)
                total += tl.sum(row_part * a_h)
            else:
                row_part = tl.sum(v, axis=1) / W
                cols_acc += tl.sum(v, axis=0) / H
            if not ONE_COL_BLOCK:
                row_part += tl.load(sums_ptr + small + hs, mask=(hs < H) & (w0 > 0), other=0.0)
            tl.store(sums_ptr + small + hs, row_part, mask=hs < H)
        tl.store(sums_ptr + small + H + cols, cols_acc, mask=cols < W)
        if HAS_GRAD:
            tl.store(means_ptr + small + H + cols, col_means, mask=cols < W)
    if HAS_GRAD:
        tl.store(total_ptr + b * C + c, total)
