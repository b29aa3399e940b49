"""Forward apply pass: read x once, write out = x * a_h * a_w * ca (in x's dtype)."""
import triton
import triton.language as tl

from ._common import PLANE_CONFIGS, PLANE_KEY, autotune, plane_index, plane_offsets, tile_offsets


@autotune(PLANE_CONFIGS, PLANE_KEY)
@triton.jit
def apply_gates_kernel(
        x_ptr, out_ptr, gates_ptr, ca_ptr,
        C, H, W, sx_b, sx_c, sx_h, sx_w, so_b, so_c, so_h, so_w,
        BLOCK_W: tl.constexpr, H_POW2: tl.constexpr, WIDE: tl.constexpr, TILE: tl.constexpr):
    """One program per plane (grid B*C).

    x: (B, C, H, W) fp32/fp16/bf16, strides sx_*. out: same shape and dtype, strides so_*.
    gates: (B, C, H+W) fp32 (a_h | a_w). ca: (B, C) fp32. Computed in fp32 in the
    reference's order ((x * a_h) * a_w) * ca.
    """
    BLOCK_H: tl.constexpr = TILE // BLOCK_W if TILE // BLOCK_W < H_POW2 else H_POW2
    b, c = plane_index(C)
    x_base = x_ptr + b * sx_b + c * sx_c
    o_base = out_ptr + b * so_b + c * so_c
    small = (b * C + c) * (H + W)
    ca = tl.load(ca_ptr + b * C + c)
    for h0 in range(0, H, BLOCK_H):
        for w0 in range(0, W, BLOCK_W):
            hs, ws, offs, mask = tile_offsets(h0, w0, H, W, sx_h, sx_w, BLOCK_H, BLOCK_W, WIDE)
            x = tl.load(x_base + offs, mask=mask, other=0.0).to(tl.float32)
            a_h = tl.load(gates_ptr + small + hs, mask=hs < H, other=0.0)
            a_w = tl.load(gates_ptr + small + H + ws, mask=ws < W, other=0.0)
            out = x * a_h[:, None] * a_w[None, :] * ca
            o_offs = plane_offsets(hs, ws, so_h, so_w, WIDE)
            tl.store(o_base + o_offs, out.to(out_ptr.dtype.element_ty), mask=mask)
