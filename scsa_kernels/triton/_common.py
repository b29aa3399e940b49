"""Shared pieces of the SCSA Triton kernels: autotune wrapper, small @triton.jit helpers."""
from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def autotune(configs, key):
    """``triton.autotune`` over ``configs``; the interpreter gets only ``configs[0]``.

    The interpreter has no benchmarker, and a single config is never benchmarked.
    ``configs[0]`` is by convention the smallest tile, so interpreter tests walk the
    multi-block loop paths. The full list stays on ``kernel.all_configs`` for the
    ahead-of-time compile test.
    """
    def wrap(fn):
        tuned = triton.autotune(configs=configs[:1] if INTERPRET else configs, key=key)(fn)
        tuned.all_configs = list(configs)
        return tuned
    return wrap


# Plane passes (one program per (b, c) plane, tiles of BLOCK_H x BLOCK_W): TILE is the
# element count of one tile. 7x7 planes fit one 8x8 tile; 56x56 planes take 64-wide rows;
# 160x160 planes 256-wide rows. Tiles stop at 2048 elements: 4096 spilled in the
# backward passes (AOT test). The smallest tile comes first (see ``autotune``).
PLANE_CONFIGS = [
    triton.Config({"TILE": 256}, num_warps=1),
    triton.Config({"TILE": 1024}, num_warps=4),
    triton.Config({"TILE": 2048}, num_warps=4),
]
PLANE_KEY = ["H", "W"]
# The pool pass caps its rows per step at the window height, so tiles past 1024 add nothing;
# these three compile without spills on triton 3.6 and 3.8 (ptxas spills a few bytes at
# 1024/4 warps on 3.6 and 2048/4 warps on 3.8 for this kernel).
POOL_CONFIGS = [
    triton.Config({"TILE": 256}, num_warps=1),
    triton.Config({"TILE": 1024}, num_warps=2),
    triton.Config({"TILE": 1024}, num_warps=8),
]
MAX_BLOCK_W = 256  # widest row tile; wider planes loop over column blocks


def plane_block_w(width: int) -> int:
    """Row-tile width of the plane passes for planes ``width`` wide."""
    return min(triton.next_power_of_2(max(width, 1)), MAX_BLOCK_W)


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def plane_index(C):
    """(b, c) of this plane program as int64 (so that b * stride never overflows)."""
    pid = tl.program_id(0).to(tl.int64)
    return pid // C, pid % C


@triton.jit
def window_rows_per_tile(TILE: tl.constexpr, BLOCK_W: tl.constexpr, WH_POW2: tl.constexpr):
    """Rows per tile of a plane pass that walks window rows (a constexpr): as many rows of
    BLOCK_W columns as fill TILE elements, at most one window's height (WH_POW2), at least 1."""
    return 1 if TILE <= BLOCK_W else (TILE // BLOCK_W if TILE // BLOCK_W < WH_POW2 else WH_POW2)


@triton.jit
def plane_offsets(rows, cols, s_h, s_w, WIDE: tl.constexpr):
    """Element offsets of rows x cols inside one plane (the plane base is an int64 scalar).

    int32 unless WIDE (a plane spanning >= 2**31 elements, e.g. channels_last with huge C*H*W):
    64-bit offset math costs registers in every full-size pass.
    """
    if WIDE:
        return rows.to(tl.int64)[:, None] * s_h + cols.to(tl.int64)[None, :] * s_w
    else:
        return rows[:, None] * s_h + cols[None, :] * s_w


@triton.jit
def tile_offsets(h0, w0, H, W, s_h, s_w, BLOCK_H: tl.constexpr, BLOCK_W: tl.constexpr, WIDE: tl.constexpr):
    """Rows hs (BLOCK_H), columns ws (BLOCK_W), element offsets and mask of one plane tile."""
    hs = h0 + tl.arange(0, BLOCK_H)
    ws = w0 + tl.arange(0, BLOCK_W)
    mask = (hs < H)[:, None] & (ws < W)[None, :]
    return hs, ws, plane_offsets(hs, ws, s_h, s_w, WIDE), mask
