"""Shared pieces of the SCSA Triton kernels: autotune wrapper, small @triton.jit helpers."""
from __future__ import annotations

import os

import triton
import triton.language as tl

INTERPRET = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
AUTOTUNED_KERNELS = []  # every kernel autotune() wraps, as defined (scsa_kernels.triton.autotuned_kernels)


# The config of every autotuned kernel where no timing may choose it (torch.use_deterministic_algorithms:
# ops/triton_launch.py ``launch``): the first of its set with tiles of FIXED_TILE elements (4 warps, not pipelined).
FIXED_TILE = 1024


def autotune(configs, key, channel_tile_configs=None):
    """``triton.autotune`` over ``configs``; the interpreter gets only ``configs[0]``.

    The interpreter has no benchmarker, and a single config is never benchmarked.
    ``configs[0]`` is by convention the smallest tile, so interpreter tests walk the
    multi-block loop paths. With ``channel_tile_configs``, launches with BLOCK_C > 1
    (channel tiles) tune over those instead (an early prune picks the set), likewise first
    config only under the interpreter. ``kernel.all_configs`` lists every config and
    ``kernel.configs_for(BLOCK_C)`` a launch's set, for the ahead-of-time compile test;
    ``kernel.fixed_config_for(BLOCK_C)`` the set's config with FIXED_TILE.

    The picks are kept on disk (Triton's ``cache_results``, in its cache folder, keyed by the kernel's
    source, the target, the configs and the tuning key): a process tunes a shape only where none before
    it on this machine did, and later processes take its pick, hence its float32 summation order.
    """
    tile_configs = list(channel_tile_configs or configs)
    sets = {False: list(configs[:1] if INTERPRET else configs), True: tile_configs[:1] if INTERPRET else tile_configs}

    def pick_set(all_configs, named_args, **kwargs):
        return sets[kwargs.get("BLOCK_C", named_args.get("BLOCK_C", 1)) > 1]

    def wrap(fn):
        listed = sets[False] + [c for c in sets[True] if c not in sets[False]]
        prune = {"early_config_prune": pick_set, "perf_model": None, "top_k": None} if channel_tile_configs else None
        tuned = triton.autotune(configs=listed, key=key, prune_configs_by=prune, cache_results=True)(fn)
        tuned.all_configs = list(configs) + [c for c in tile_configs if c not in configs]
        tuned.configs_for = lambda block_c: list(tile_configs if block_c > 1 else configs)
        tuned.fixed_config_for = lambda block_c: next(c for c in tuned.configs_for(block_c)
                                                      if c.kwargs["TILE"] == FIXED_TILE)
        AUTOTUNED_KERNELS.append(tuned)
        return tuned
    return wrap


# Plane passes (one program per (b, block of BLOCK_C channels), tiles of BLOCK_C x rows x
# BLOCK_W): TILE is the element count of one tile. 7x7 planes fit one 8x8 tile; 56x56 planes take 64-wide rows;
# 160x160 planes 256-wide rows. Tiles stop at 2048 elements: 4096 spilled in the
# backward passes (AOT test). The smallest tile comes first (see ``autotune``).
PLANE_CONFIGS = [
    triton.Config({"TILE": 256}, num_warps=1),
    triton.Config({"TILE": 1024}, num_warps=4),
    triton.Config({"TILE": 2048}, num_warps=4),
]
PLANE_KEY = ["H", "W"]
# The means and apply passes hold one full-size tile (the backward passes several) and also compile
# spill-free at 4096 elements over 8 warps: a 56x56 plane in one step, more of x in flight per program
# (the autotuner keeps it only where it is faster). Not the means pass with channel tiles: it spilled
# 24-32 bytes there (triton 3.8), so it keeps PLANE_CONFIGS for those, and BLOCK_C in its key.
FORWARD_PLANE_CONFIGS = PLANE_CONFIGS + [triton.Config({"TILE": 4096}, num_warps=8)]
# The pool pass caps its rows per step at the window height, so tiles past 1024 add nothing. Its
# third config software-pipelines the row steps (NUM_STAGES, pooling.py: the next step's tile in flight
# by cp.async while one is reduced), the autotuner keeping it only where it is faster. All compile
# without spills on triton 3.8; tried and spilling there (8-60 bytes): 1024 over 2 warps with 8-element
# vectors along 56-wide rows (sm_90), 1024 over 4 warps pipelined (fp16 rows of 256, 2 stages; 3 stages
# spilled in a dozen variants), 1024 or 2048 over 8 warps with channel tiles or grouped 7x7 planes.
POOL_CONFIGS = [
    triton.Config({"TILE": 256, "NUM_STAGES": 1}, num_warps=1),
    triton.Config({"TILE": 1024, "NUM_STAGES": 1}, num_warps=4),
    triton.Config({"TILE": 1024, "NUM_STAGES": 2}, num_warps=8),
]
# With several channels per program (BLOCK_C > 1: channels_last tiles, grouped small NCHW planes).
POOL_CHANNEL_TILE_CONFIGS = [
    triton.Config({"TILE": 256, "NUM_STAGES": 1}, num_warps=1),
    triton.Config({"TILE": 1024, "NUM_STAGES": 1}, num_warps=4),
    triton.Config({"TILE": 2048, "NUM_STAGES": 1}, num_warps=4),
]


@triton.jit
def sigmoid(x):
    return 1.0 / (1.0 + tl.exp(-x))


@triton.jit
def aligned(value, VEC: tl.constexpr):
    """value, a multiple of VEC (the host checked: ops/triton.py ``_row_vector``), written so that the
    compiler's alignment analysis knows it. With a plane pass's strides and column limits aligned, a
    row of a contiguous plane loads and stores VEC elements (up to 16 bytes) per instruction instead
    of one: the JIT proves divisibility only for arguments that are multiples of 16 (a 56-wide row
    is not)."""
    if VEC > 1:
        return value // VEC * VEC
    else:
        return value


@triton.jit
def plane_bases(ptr, b, cs, s_b, s_c, VEC: tl.constexpr):
    """Pointers (BLOCK_C,) to the planes of channels cs of sample b of a full-size tensor (batch and
    channel strides s_b, s_c, multiples of VEC: ``aligned``)."""
    return ptr + b * aligned(s_b, VEC) + cs * aligned(s_c, VEC)


@triton.jit
def plane_index(C):
    """(b, c) of this plane program as int64 (so that b * stride never overflows)."""
    pid = tl.program_id(0).to(tl.int64)
    return pid // C, pid % C


@triton.jit
def channel_block(C, BLOCK_C: tl.constexpr):
    """Sample b (int64), channels cs (BLOCK_C,) int64 and their mask cs < C of this program of a
    plane pass (grid B * cdiv(C, BLOCK_C)). BLOCK_C = 1 for NCHW-like layouts (one plane per
    program); channels_last takes BLOCK_C neighbouring channels, the unit-stride axis, so that
    the tiles' loads coalesce along C."""
    pid = tl.program_id(0).to(tl.int64)
    blocks = tl.cdiv(C, BLOCK_C)
    cs = (pid % blocks) * BLOCK_C + tl.arange(0, BLOCK_C).to(tl.int64)
    return pid // blocks, cs, cs < C


@triton.jit
def channel_tile(bases, offsets):
    """Pointers (BLOCK_C, rows, cols): per-channel plane bases (BLOCK_C,) + in-plane offsets (rows, cols)."""
    return bases[:, None, None] + offsets[None, :, :]


# not @triton.jit: triton 3.4-3.6 do not fold a jit helper's result into a constexpr (3.8 does);
# triton < 3.5 has no constexpr_function (ops/triton.py reports the backend unavailable there)
@triton.constexpr_function
def rows_per_tile(TILE, ROW, MAX_ROWS):
    """Rows per tile of a plane pass (a constexpr): as many rows of ROW elements (BLOCK_C x
    BLOCK_W) as fill TILE elements, at most MAX_ROWS (a power of two: the plane's height, or one
    window's), at least 1."""
    return 1 if TILE <= ROW else (TILE // ROW if TILE // ROW < MAX_ROWS else MAX_ROWS)


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
