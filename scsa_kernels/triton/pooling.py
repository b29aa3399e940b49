"""Forward pool pass: read x once, pool x_s = x * a_h * a_w into windows (avg or max + argmax).

Windows are WH x WW (window_size x window_size, or the whole plane for window_size=-1)
on an HP x WP grid; rows and columns past HP*WH, WP*WW are dropped (floor) and never read.
"""
import triton
import triton.language as tl

from ._common import POOL_CONFIGS, autotune, plane_index, plane_offsets

BIG_INDEX = tl.constexpr(2 ** 31 - 1)


@autotune(POOL_CONFIGS, ["H", "W", "WH", "WW", "IS_MAX"])
@triton.jit
def pool_fwd_kernel(
        x_ptr, gates_ptr, pooled_ptr, argmax_ptr,
        C, H, W, sx_b, sx_c, sx_h, sx_w, HP, WP, WH, WW, cols_per_block,
        IS_MAX: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_J: tl.constexpr, WH_POW2: tl.constexpr,
        WIDE: tl.constexpr, TILE: tl.constexpr):
    """One program per plane (grid B*C).

    x: (B, C, H, W) fp32/fp16/bf16, strides sx_*. gates: (B, C, H+W) fp32 (a_h | a_w).
    pooled: (B, C, HP*WP) fp32 out. argmax: (B, C, HP*WP) int32 out (IS_MAX only): the
    flat in-plane index h*W + w of each window's first maximum (PyTorch's tie rule).
    cols_per_block: a multiple of WW (whole windows per column block), <= BLOCK_W;
    BLOCK_J >= cols_per_block // WW windows per block.
    """
    BLOCK_R: tl.constexpr = 1 if TILE <= BLOCK_W else (TILE // BLOCK_W if TILE // BLOCK_W < WH_POW2 else WH_POW2)
    b, c = plane_index(C)
    x_base = x_ptr + b * sx_b + c * sx_c
    small = (b * C + c) * (H + W)
    out = (b * C + c) * HP * WP
    for w0 in range(0, WP * WW, cols_per_block):
        cols = w0 + tl.arange(0, BLOCK_W)
        cmask = (cols < w0 + cols_per_block) & (cols < WP * WW)
        a_w = tl.load(gates_ptr + small + H + cols, mask=cmask, other=0.0)
        for i in range(0, HP):
            if IS_MAX:
                acc = tl.full([BLOCK_W], float("-inf"), tl.float32)
                arg = (i * WH * W + cols).to(tl.int32)
            else:
                acc = tl.zeros([BLOCK_W], dtype=tl.float32)
            for r0 in range(0, WH, BLOCK_R):
                rr = r0 + tl.arange(0, BLOCK_R)
                rows = i * WH + rr
                mask = (rr < WH)[:, None] & cmask[None, :]
                offs = plane_offsets(rows, cols, sx_h, sx_w, WIDE)
                x = tl.load(x_base + offs, mask=mask, other=0.0).to(tl.float32)
                a_h = tl.load(gates_ptr + small + rows, mask=rr < WH, other=0.0)
                v = x * a_h[:, None] * a_w[None, :]
                if IS_MAX:
                    v = tl.where(mask, v, float("-inf"))
                    top = tl.max(v, axis=0)
                    first = tl.min(tl.where(v == top[None, :], rows[:, None], BIG_INDEX), axis=0)
                    better = top > acc  # strict: earlier rows keep ties
                    arg = tl.where(better, (first * W + cols).to(tl.int32), arg)
                    acc = tl.where(better, top, acc)
                else:
                    acc += tl.sum(v, axis=0)
            # (BLOCK_J, BLOCK_W) column -> window map, built here rather than kept live through the row loop
            js = w0 // WW + tl.arange(0, BLOCK_J)
            jmask = (js < (w0 + cols_per_block) // WW) & (js < WP)
            in_window = ((cols // WW)[None, :] == js[:, None]) & cmask[None, :]
            if IS_MAX:
                wins = tl.where(in_window, acc[None, :], float("-inf"))
                top = tl.max(wins, axis=1)
                hit = in_window & (wins == top[:, None])
                first = tl.min(tl.where(hit, arg[None, :], BIG_INDEX), axis=1)
                tl.store(argmax_ptr + out + i * WP + js, first, mask=jmask)
                tl.store(pooled_ptr + out + i * WP + js, top, mask=jmask)
            else:
                total = tl.sum(tl.where(in_window, acc[None, :], 0.0), axis=1)
                tl.store(pooled_ptr + out + i * WP + js, total / (WH * WW), mask=jmask)
