"""Row and column means of every (b, c) plane: one read of x.

The forward's stats pass, and the first pass of a backward that recomputes the means (when the
forward did not keep them, see ``saves_means`` in scsa_kernels/ops/triton.py).
"""
import triton
import triton.language as tl

from ._common import (FORWARD_PLANE_CONFIGS, PLANE_CONFIGS, PLANE_KEY, aligned, autotune, channel_block, channel_tile,
                      plane_bases, rows_per_tile, tile_offsets)


@autotune(FORWARD_PLANE_CONFIGS, PLANE_KEY + ["BLOCK_C"], PLANE_CONFIGS)
@triton.jit
def plane_means_kernel(
        x_ptr, means_ptr, C, H, W, sx_b, sx_c, sx_h, sx_w,
        BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, H_POW2: tl.constexpr, ONE_COL_BLOCK: tl.constexpr,
        WIDE: tl.constexpr, VEC: tl.constexpr, TILE: tl.constexpr):
    """One program per BLOCK_C channels of one sample (grid B * cdiv(C, BLOCK_C)).

    x: (B, C, H, W) fp32/fp16/bf16, strides sx_*.
    means: (B, C, H+W) fp32 out: mean over w of each row in [:H], mean over h of each column in [H:].
    ONE_COL_BLOCK: W <= BLOCK_W, so row results need no read-modify-write across column blocks.
    VEC: W and x's strides but sx_w are multiples of VEC (see ``aligned``).
    """
    BLOCK_H: tl.constexpr = rows_per_tile(TILE, BLOCK_C * BLOCK_W, H_POW2)
    W, sx_h = aligned(W, VEC), aligned(sx_h, VEC)
    b, cs, cmask = channel_block(C, BLOCK_C)
    x_bases = plane_bases(x_ptr, b, cs, sx_b, sx_c, VEC)
    small = (b * C + cs) * (H + W)  # offsets of these planes' rows of the (B, C, H+W) buffer
    # Column blocks outside, rows inside: a column mean is complete after the inner loop;
    # row sums of later column blocks add to what earlier ones stored (same program, no atomics).
    for w0 in range(0, W, BLOCK_W):
        if not ONE_COL_BLOCK:
            tl.debug_barrier()  # row sums stored by the previous column block are re-read below
        cols = w0 + tl.arange(0, BLOCK_W)
        col_means = tl.zeros([BLOCK_C, BLOCK_W], dtype=tl.float32)
        for h0 in range(0, H, BLOCK_H):
            hs, ws, offs, mask = tile_offsets(h0, w0, H, W, sx_h, sx_w, BLOCK_H, BLOCK_W, WIDE)
            v = tl.load(channel_tile(x_bases, offs), mask=cmask[:, None, None] & mask[None, :, :],
                        other=0.0).to(tl.float32)
            row_means = tl.sum(v, axis=2) / W
            col_means += tl.sum(v, axis=1) / H
            row_ptrs = means_ptr + small[:, None] + hs[None, :]
            row_mask = cmask[:, None] & (hs < H)[None, :]
            if not ONE_COL_BLOCK:
                row_means += tl.load(row_ptrs, mask=row_mask & (w0 > 0), other=0.0)
            tl.store(row_ptrs, row_means, mask=row_mask)
        tl.store(means_ptr + small[:, None] + H + cols[None, :], col_means, mask=cmask[:, None] & (cols < W)[None, :])
