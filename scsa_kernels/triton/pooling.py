"""Pool pass: read x once, pool x_s = x * a_h * a_w into windows (avg, or max + argmax), or
with RECOMBINE write its space-to-depth cells (the input of recombination's 1x1 projection).

Windows are WH x WW (window_size x window_size, or the whole plane for window_size=-1)
on an HP x WP grid; rows and columns past HP*WH, WP*WW are dropped (floor).

The forward reads the window grid only. The backward's pass (a) runs the same walk with
HAS_GRAD over the whole plane, reading grad_out g beside x: it recomputes the pooled
values (so the forward does not keep them) and sums what the backward needs from (x, g),
``rows[h] = sum_w g x a_w``, ``cols[w] = sum_h g x a_h``, ``total = sum_hw g x a_h a_w``
(= d ca before the gate).
"""
import triton
import triton.language as tl

from ._common import (POOL_CHANNEL_TILE_CONFIGS, POOL_CONFIGS, aligned, autotune, channel_block, channel_tile, plane_bases,
                      plane_offsets, rows_per_tile)

BIG_INDEX = tl.constexpr(2 ** 31 - 1)


@triton.jit
def _grad_sums(x, g_bases, rows, rmask, cols, mask, a_h, a_w, sums_rows, w0, sg_h, sg_w,
               ONE_COL_BLOCK: tl.constexpr, WIDE: tl.constexpr):
    """Backward sums of one tile (x (BLOCK_C, rows, cols) already fp32; a_h (BLOCK_C, rows), a_w
    (BLOCK_C, cols); sums_rows: pointers (BLOCK_C,) to the planes' rows of sums): stores
    sum_w g x a_w of its rows (adding what earlier column blocks stored: same program, no
    atomics) -> sum_h g x a_h of its columns (BLOCK_C, cols)."""
    g = tl.load(channel_tile(g_bases, plane_offsets(rows, cols, sg_h, sg_w, WIDE)), mask=mask, other=0.0)
    gx = x * g.to(tl.float32)
    row_part = tl.sum(gx * a_w[:, None, :], axis=2)
    row_ptrs = sums_rows[:, None] + rows[None, :]
    if not ONE_COL_BLOCK:
        row_part += tl.load(row_ptrs, mask=rmask & (w0 > 0), other=0.0)
    tl.store(row_ptrs, row_part, mask=rmask)
    return tl.sum(gx * a_h[:, :, None], axis=1)


@autotune(POOL_CONFIGS, ["H", "W", "WH", "WW", "IS_MAX", "RECOMBINE", "HAS_GRAD", "BLOCK_C"], POOL_CHANNEL_TILE_CONFIGS)
@triton.jit
def pool_kernel(
        x_ptr, g_ptr, gates_ptr, pooled_ptr, argmax_ptr, sums_ptr, total_ptr,
        C, H, W, sx_b, sx_c, sx_h, sx_w, sg_b, sg_c, sg_h, sg_w, HP, WP, WH, WW, cols_per_block,
        IS_MAX: tl.constexpr, RECOMBINE: tl.constexpr, HAS_GRAD: tl.constexpr, BLOCK_C: tl.constexpr,
        BLOCK_W: tl.constexpr, BLOCK_J: tl.constexpr,
        WH_POW2: tl.constexpr, ONE_COL_BLOCK: tl.constexpr, WIDE: tl.constexpr, VEC: tl.constexpr,
        TILE: tl.constexpr, NUM_STAGES: tl.constexpr):
    """One program per BLOCK_C channels of one sample (grid B * cdiv(C, BLOCK_C)).

    x: (B, C, H, W) fp32/fp16/bf16, strides sx_*. gates: (B, C, H+W) fp32 (a_h | a_w).
    pooled: (B, C, HP*WP) fp32 out. argmax: (B, C, HP*WP) int32 out (IS_MAX only): the
    flat in-plane index h*W + w of each window's first maximum (PyTorch's tie rule).
    RECOMBINE: pooled is instead the cells (B, C*WH*WW, HP*WP) fp32 out, pixel_unshuffle of the
    cropped x_s: x_s[i*WH + dy, j*WW + dx] of channel c goes to row c*WH*WW + dy*WW + dx, column i*WP + j.
    Only with HAS_GRAD: g (grad_out, x's shape, strides sg_*) is read; sums (B, C, H+W) fp32
    out (rows | cols above), total (B*C,) fp32 out.
    cols_per_block: a multiple of WW (whole windows per column block), <= BLOCK_W;
    BLOCK_J >= cols_per_block // WW windows per block.
    ONE_COL_BLOCK (HAS_GRAD): W <= cols_per_block, so row results need no read-modify-write.
    VEC: the walked width (W with HAS_GRAD, else WP*WW), cols_per_block and the strides but sx_w, sg_w
    are multiples of VEC (see ``aligned``).
    The rows of a column block are one flat loop of steps (window bands x row chunks of BLOCK_R), so that
    NUM_STAGES > 1 software-pipelines it: the next step's tile is in flight (cp.async) while one is
    reduced. With one band per step and one plane per program, a 56x56 plane's pool pass made 8
    band-sized round trips in sequence and ran at 1.0 TB/s on an H200 (the means pass, one whole-plane
    step: 1.9).
    """
    BLOCK_R: tl.constexpr = rows_per_tile(TILE, BLOCK_C * BLOCK_W, WH_POW2)
    sx_h, sg_h, cols_per_block = aligned(sx_h, VEC), aligned(sg_h, VEC), aligned(cols_per_block, VEC)
    b, cs, cmask = channel_block(C, BLOCK_C)
    x_bases = plane_bases(x_ptr, b, cs, sx_b, sx_c, VEC)
    g_bases = plane_bases(g_ptr, b, cs, sg_b, sg_c, VEC)
    small = (b * C + cs) * (H + W)  # (BLOCK_C,) offsets of the planes' rows of the (B, C, H+W) buffers
    out = (b * C + cs) * HP * WP
    cells = pooled_ptr + out * WH * WW  # the planes' rows of the RECOMBINE cells
    walk_w = aligned(W if HAS_GRAD else WP * WW, VEC)  # the backward sums cover the columns right of the grid too
    total = tl.zeros([BLOCK_C], dtype=tl.float32)
    for w0 in range(0, walk_w, cols_per_block):
        if HAS_GRAD:
            if not ONE_COL_BLOCK:
                tl.debug_barrier()  # row sums stored by the previous column block are re-read below
        cols = w0 + tl.arange(0, BLOCK_W)
        col_mask = (cols < w0 + cols_per_block) & (cols < walk_w)
        plane_cols = cmask[:, None] & col_mask[None, :]
        a_w = tl.load(gates_ptr + small[:, None] + H + cols[None, :], mask=plane_cols, other=0.0)
        cols_acc = tl.zeros([BLOCK_C, BLOCK_W], dtype=tl.float32)
        acc = tl.zeros([BLOCK_C, BLOCK_W], dtype=tl.float32)
        arg = tl.zeros([BLOCK_C, BLOCK_W], dtype=tl.int32)
        chunks = tl.cdiv(WH, BLOCK_R)  # steps per window band
        bands = HP
        if HAS_GRAD:
            bands = HP + 1  # band HP: the rows below the grid (H - HP*WH < WH of them), backward sums only
        for step in tl.range(0, bands * chunks, num_stages=NUM_STAGES):
            i = step // chunks
            band_start = step == i * chunks  # the window accumulators start over
            band_end = step == i * chunks + chunks - 1  # the band's windows are complete: stored
            if IS_MAX:
                acc = tl.where(band_start, float("-inf"), acc)
                arg = tl.where(band_start, (i * WH * W + cols).to(tl.int32)[None, :], arg)
            else:
                acc = tl.where(band_start, 0.0, acc)
            rows = i * WH + (step - i * chunks) * BLOCK_R + tl.arange(0, BLOCK_R)
            in_rows = (rows < i * WH + WH) & (rows < H)
            pooled_rows = in_rows & (i < HP)
            mask = cmask[:, None, None] & in_rows[None, :, None] & col_mask[None, None, :]
            x = tl.load(channel_tile(x_bases, plane_offsets(rows, cols, sx_h, sx_w, WIDE)), mask=mask,
                        other=0.0).to(tl.float32)
            plane_rows = cmask[:, None] & in_rows[None, :]
            a_h = tl.load(gates_ptr + small[:, None] + rows[None, :], mask=plane_rows, other=0.0)
            if HAS_GRAD:
                cols_acc += _grad_sums(x, g_bases, rows, plane_rows, cols, mask, a_h, a_w, sums_ptr + small,
                                       w0, sg_h, sg_w, ONE_COL_BLOCK, WIDE)
            v = x * a_h[:, :, None] * a_w[:, None, :]
            if RECOMBINE:
                cell = (((rows - i * WH)[:, None] * WW + (cols % WW)[None, :]) * (HP * WP)
                        + i * WP + (cols // WW)[None, :])
                in_grid = pooled_rows[:, None] & (col_mask & (cols < WP * WW))[None, :]
                tl.store(channel_tile(cells, cell), v, mask=cmask[:, None, None] & in_grid[None, :, :])
            elif IS_MAX:
                v = tl.where(pooled_rows[None, :, None] & col_mask[None, None, :], v, float("-inf"))
                top = tl.max(v, axis=1)
                first = tl.min(tl.where(v == top[:, None, :], rows[None, :, None], BIG_INDEX), axis=1)
                better = top > acc  # strict: earlier rows keep ties
                arg = tl.where(better, (first * W + cols[None, :]).to(tl.int32), arg)
                acc = tl.where(better, top, acc)
            else:
                acc += tl.sum(tl.where(pooled_rows[None, :, None], v, 0.0), axis=1)
            if not RECOMBINE:
                # (BLOCK_J, BLOCK_W) column -> window map, built here rather than kept live through the row loop;
                # columns right of the grid map to window WP, never stored
                js = w0 // WW + tl.arange(0, BLOCK_J)
                jmask = (js < (w0 + cols_per_block) // WW) & (js < WP)
                in_window = (((cols // WW)[None, :] == js[:, None]) & col_mask[None, :])[None, :, :]
                windows = out[:, None] + i * WP + js[None, :]
                window_mask = cmask[:, None] & jmask[None, :] & (band_end & (i < HP))
                if IS_MAX:
                    wins = tl.where(in_window, acc[:, None, :], float("-inf"))
                    top = tl.max(wins, axis=2)
                    hit = in_window & (wins == top[:, :, None])
                    first = tl.min(tl.where(hit, arg[:, None, :], BIG_INDEX), axis=2)
                    tl.store(argmax_ptr + windows, first, mask=window_mask)
                    tl.store(pooled_ptr + windows, top, mask=window_mask)
                else:
                    window_sums = tl.sum(tl.where(in_window, acc[:, None, :], 0.0), axis=2)
                    tl.store(pooled_ptr + windows, window_sums / (WH * WW), mask=window_mask)
        if HAS_GRAD:
            tl.store(sums_ptr + small[:, None] + H + cols[None, :], cols_acc, mask=plane_cols)
            total += tl.sum(cols_acc * a_w, axis=1)  # sum_hw g x a_h a_w, a_w zero outside the block's columns
    if HAS_GRAD:
        tl.store(total_ptr + b * C + cs, total, mask=cmask)
