"""Forward apply pass: read x once, write out = x * a_h * a_w * ca (in x's dtype)."""
import triton
import triton.language as tl

from ._common import (FORWARD_PLANE_CONFIGS, PLANE_KEY, aligned, autotune, channel_block, channel_tile, plane_bases,
                      plane_offsets, rows_per_tile, tile_offsets)


@autotune(FORWARD_PLANE_CONFIGS, PLANE_KEY + ["BLOCK_C"])
@triton.jit
def apply_gates_kernel(
        x_ptr, out_ptr, gates_ptr, ca_ptr,
        C, H, W, sx_b, sx_c, sx_h, sx_w, so_b, so_c, so_h, so_w,
        BLOCK_C: tl.constexpr, BLOCK_W: tl.constexpr, H_POW2: tl.constexpr, WIDE: tl.constexpr,
        VEC: tl.constexpr, TILE: tl.constexpr):
    """One program per BLOCK_C channels of one sample (grid B * cdiv(C, BLOCK_C)).

    x: (B, C, H, W) fp32/fp16/bf16, strides sx_*. out: same shape and dtype, strides so_*.
    gates: (B, C, H+W) fp32 (a_h | a_w). ca: (B, C) fp32. Computed in fp32 in the
    reference's order ((x * a_h) * a_w) * ca. VEC: W and the strides but sx_w, so_w are multiples of
    VEC (see ``aligned``).
    """
    BLOCK_H: tl.constexpr = rows_per_tile(TILE, BLOCK_C * BLOCK_W, H_POW2)
    W, sx_h, so_h = aligned(W, VEC), aligned(sx_h, VEC), aligned(so_h, VEC)
    b, cs, cmask = channel_block(C, BLOCK_C)
    x_bases = plane_bases(x_ptr, b, cs, sx_b, sx_c, VEC)
    o_bases = plane_bases(out_ptr, b, cs, so_b, so_c, VEC)
    small = gates_ptr + (b * C + cs) * (H + W)
    ca = tl.load(ca_ptr + b * C + cs, mask=cmask, other=0.0)
    for h0 in range(0, H, BLOCK_H):
        for w0 in range(0, W, BLOCK_W):
            hs, ws, offs, mask = tile_offsets(h0, w0, H, W, sx_h, sx_w, BLOCK_H, BLOCK_W, WIDE)
            mask = cmask[:, None, None] & mask[None, :, :]
            x = tl.load(channel_tile(x_bases, offs), mask=mask, other=0.0).to(tl.float32)
            a_h = tl.load(small[:, None] + hs[None, :], mask=cmask[:, None] & (hs < H)[None, :], other=0.0)
            a_w = tl.load(small[:, None] + H + ws[None, :], mask=cmask[:, None] & (ws < W)[None, :], other=0.0)
            out = x * a_h[:, :, None] * a_w[:, None, :] * ca[:, None, None]
            o_offs = plane_offsets(hs, ws, so_h, so_w, WIDE)
            tl.store(channel_tile(o_bases, o_offs), out.to(out_ptr.dtype.element_ty), mask=mask)
