"""The Triton backend: fused SCSA forward and backward (kernels in ``scsa_kernels/triton``).

Forward, 5 launches (6 with the softmax channel gate); x read 3 times, out written once:
  1. ``plane_means`` (reads x)            -> x_h, x_w                  (B, C, H+W)
  2. ``spatial_gates_fwd``                -> a_h, a_w + GroupNorm(4) stats
  3. ``pool`` (reads x)                   -> pooled (B, C, N) (+ argmax for max pooling); for
     recombination the space-to-depth cells (B, C*ws*ws, N) fp32 instead (one more |x|-sized
     write, fp32), projected to pooled by a torch matmul with conv_d's weight (C, C*ws*ws)
  4. ``channel_attention_fwd``            -> ca (B, C), softmax row stats, GroupNorm(1) stats
     (+ ``channel_softmax_gate`` when gate_layer="softmax")
  5. ``apply_gates`` (reads x, writes out)
Saved for backward: x itself (no copy), the packed weights, and in one fp32 allocation what fits
the memory target (<= MAX_SAVED_FRACTION, 10%, of |x| saved beyond x; ``_kept_for_backward``): the
means x_h, x_w (planes from 40x40 in bf16, from 20x20 in fp32), then the channel attention's
statistics (its softmax row statistics, ca (B, C) and gn (B, 2): 24 bytes per plane, every ResNet-50
stage shape but 7x7). Everything else is recomputed: on small planes even a (B, C, H+W) tensor
exceeds the target (2/7 of x's elements at 7x7).
Backward, 6 Triton launches (+1, or +2 with the softmax gate, to rerun the channel attention forward
where its statistics were not kept; +1 for recombination) + 2 tiny torch sums (parameter gradients
over the batch); x read twice, grad_out twice, dx written once:
  (0) ``plane_means`` (reads x), only when the means were not saved: one more launch and read of x
      ``spatial_gates_fwd``              -> a_h, a_w again, from the means
  (a) ``pool`` with grad (reads x and grad_out) -> pooled again, sum_w g x a_w, sum_h g x a_h, d(ca)
      ``channel_attention_fwd``          -> ca and the attention statistics again, where not saved
      ``channel_attention_bwd``          -> dy (B, C, N), parameter partials
      recombination: ``pooled_grad`` -> dp (B, C, N); torch matmuls: the cells' gradient
      conv_d^T dp (B, C*ws*ws, N) and conv_d's gradient sum_b dp cells^T, the cells rewritten by (a)
  (b) ``pool_grad_sums`` (reads x)       -> pooling-path sums for d(a_h), d(a_w) (recombination:
                                            reads the cells' gradient too, and (c) as well)
      ``spatial_gates_bwd``              -> d(x_h)/W, d(x_w)/H, parameter partials
  (c) ``input_grad`` (reads grad_out, writes dx)
No atomics: every reduction belongs to one program, partials are summed by torch.sum (eager
training: by ``parameter_grads``, below) in a fixed order, so results are bitwise reproducible for a
given config of the autotuned plane passes: in a process always (a plan keeps its pick), between a
machine's processes once Triton's on-disk cache holds the picks (triton/_common.py), anywhere under
``torch.use_deterministic_algorithms(True)`` or SCSA_TRITON_AUTOTUNE=0, where no timing picks the
config (``launch``, ops/triton_launch.py).

Host cost per call (benchmarks/triton_host_overhead.py, CPU with a host-only Triton driver): eager
calls skip the dispatcher (training: one autograd node, ops/eager.py; inference: a direct
``_forward_impl`` call; torch.compile still sees the triton_op and its registered autograd). Eager
inference and an eager training step pack the weights with one launch (``pack_parameters``,
triton/parameters.py; in inference every call too, its launch kept and repeated:
``_inference_pack``), and a training step turns the backward's parameter partials into the
parameters' gradients with one more (``parameter_grads``: the sums over the batch, the packing's
adjoint gather and the cast), where torch took 7 ops (cat, gather, cast; two sums, gather, cast),
each a CUDA launch with its host cost: 6 launches forward, 7 backward (at 64x64x56x56). Eager calls
launch their kernels themselves (``launch``, ops/triton_launch.py), launch geometry and the autotuned
kernels' configs are resolved once per (shape, strides, dtype, options) in
``_FORWARD_PLANS``/``_BACKWARD_PLANS``, the backward's scratch buffers are views of one
allocation, and a launch whose specialization Triton compiled before goes straight to the compiled
kernel (``launch_compiled``), skipping Triton's per-launch binding and cache key (a quarter of a
forward's host cost up to the driver with triton 3.6; ``SCSA_TRITON_DIRECT_LAUNCH=0`` switches it off;
off on ROCm builds of torch: ``triton_launch.direct_launch_default``).

AMD GPUs (ROCm builds of torch, whose GPU tensors are "cuda" tensors too): the kernels compile for
gfx90a, gfx942 and gfx1100 (tests/test_triton_aot.py) but have not run on one, so ``auto`` passes
this backend over there (``auto_skip_reason``); asked for by name it runs.

Attention dropout in training runs in the channel attention kernels (Philox masks keyed by
sample, row channel and column: ops/dropout.py); one (1,) int64 seed per call comes from torch's
generator and is saved for the backward, which draws the same masks again.

Not supported (``unsupported_reason`` says so, and ``auto`` falls back to the reference):
float64 (kernels compute in float32), window or plane sides > 4096, and where an int32 product in the
kernels would pass 2**31: planes of 2**31 elements or more, B * C or C * pooled positions of 2**31 or
more, batches of more than 2**27; more than 65535 channel attention programs per sample (e.g. 65536
heads of one channel; with sides of at most 4096, this also keeps C/4 x side below 2**31).

Layout: the plane passes (means, pool, apply, pool_grad_sums, input_grad) take strided tiles of
(BLOCK_C channels x rows x columns) with 64-bit plane bases (in-plane offsets go 64-bit only when
a plane spans 2**31 elements), so NCHW, channels_last and sliced inputs run without a copy. NCHW
takes one plane per program (BLOCK_C = 1, loads contiguous along W). channels_last takes
CHANNEL_TILE neighbouring channels per program, the unit-stride axis, so a warp's loads cover
whole 32-byte sectors along C; one plane per program would read one element per sector. The
compiled layouts are coalesced along C (AOT: order [0, ...] with the stride-1 specialization);
the speed of either layout on a GPU is measured by the CUDA suite's channels_last cases
(``scsa-bench --layout channels_last``), not yet run.
"""
from __future__ import annotations

import contextlib
import functools
import math
import os
import types
import weakref
from typing import NamedTuple, Optional, Tuple

import torch

from ..config import GROUP_NORM_EPS
from ..weights import (PackedWeights, capturing_cuda_graph, conv_d_matrix, gradient_index, gradients_like,
                       pack_weights, packed_parameters, packing_needs_graph, shared_dtype, split_packed)
from . import dropout
from .eager import FusedKernels, fused_scsa_with_grad, needs_autograd
from .triton_launch import INTERPRET, interpreting, is_tracing, launch, on_x_device, relaunch

NAME = "triton"
MAX_SIDE = 4096        # spatial gate rows (BLOCK_L) and pool windows must fit one tile
MAX_GRID_Y = 65535     # CUDA's limit on a grid's second side (the channel attention kernels' programs per sample)
SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
MAX_SAVED_FRACTION = 0.1  # saved for backward beyond x itself, as a fraction of x's bytes (see _kept_for_backward)
STATS_SHARE = 0.8  # of that budget, what the means and the attention statistics may take together
POOL_WINDOWS_PER_BLOCK = 8  # windows per column block of pool_kernel (its window map is BLOCK_J x BLOCK_W)
# Plane passes on channels_last x (channels are the unit-stride axis): a program takes up to
# CHANNEL_TILE neighbouring channels, so its loads coalesce along C (one plane per program
# would read one element per 32-byte sector); BLOCK_C x BLOCK_W stays within MIN_TILE, the
# smallest TILE of the plane and pool configs (scsa_kernels/triton/_common.py).
CHANNEL_TILE = 16
MIN_TILE = 256
# Without channel tiles, small planes go CHANNEL_TILE at most to a program, as many as fit PLANE_GROUP
# elements (the plane padded to powers of two): 16 of 7x7, 4 of 14x14, one from 32x32 up. One 7x7 plane
# per program made 32768 programs of 49 elements each at 64x512x7x7 (every plane pass ~21 us, 0.15 TB/s,
# on the H200 on 2026-11-27).
PLANE_GROUP = 1024
MAX_BLOCK_W = 256  # widest row tile of the plane passes
# Elements of one (channels x length) tile of the spatial gate kernels: 1024 holds a whole GroupNorm
# group (C/4 channels x BLOCK_L) at every ResNet-50 stage shape (64x56x56 ... 512x7x7), so each conv
# is computed once (ONE_BLOCK in triton/spatial_gates.py; 3 times in the forward, 2 in the backward, otherwise)
SPATIAL_TILE = 1024
# Their tiles are float64 (triton/spatial_gates.py): 2 elements per thread, within 8 to 16 warps
# (AOT test): the longest rows (4096) took all 255 registers at 8 warps and spilled ~200 bytes on
# triton 3.6 at 32 (64 registers per thread); at 16 warps (8 elements per thread), none. At 4 per
# thread the backward's one-block tiles (16 x 64, tn and du live throughout) spilled 16 bytes (3.8).
SPATIAL_ELEMENTS_PER_THREAD = 2
SPATIAL_MAX_WARPS = 16
# Channels per program (= score tile side) of the channel attention kernels; the backward
# holds two dS tiles through its position loop, so it takes smaller ones (no spills, see AOT test).
# At least 16 (the smallest side of a tl.dot): heads of fewer channels mask the rest. So too without
# dots: tiles of 1 or 2 rows spilled registers (AOT test's heads of one channel).
ATTENTION_BLOCK_D = {"forward": 64, "backward": 32}
MIN_DOT_SIDE = 16
ATTENTION_BLOCK_P = 16  # pooled positions per step of their dot loops (the K side of the score products)
PACK_BLOCK = 1024      # packed elements per program of pack_parameters_kernel
GRADS_BLOCK_E = 128    # gradient elements per program of parameter_grads_kernel,
GRADS_BLOCK_R = 16     # and partial rows per step (a tree sum within the step, the steps in order)

Tensor = torch.Tensor
F32, F64 = torch.float32, torch.float64  # workspace buffer dtypes


def _find_unavailable_reason():
    try:
        import triton
    except ImportError as exc:
        return f"triton is not installed ({exc})"
    if not hasattr(triton, "constexpr_function"):  # the kernels' tile rules (triton/_common.py)
        return f"triton {triton.__version__} is too old: the kernels need triton >= 3.5 (torch >= 2.9 installs one)"
    if not hasattr(torch.library, "triton_op"):
        return f"torch {torch.__version__} has no torch.library.triton_op (needs torch >= 2.6)"
    if not torch.cuda.is_available() and not interpreting():
        return "no CUDA device (set TRITON_INTERPRET=1 to run the kernels on CPU tensors, slowly)"
    return None


_UNAVAILABLE = _find_unavailable_reason()
# Eager calls skip the dispatcher (see scsa()). Not under the interpreter by default: there the op
# boundary keeps the interpreter's own tensor copies out of the traffic test's torch-op count;
# tests and benchmarks/triton_host_overhead.py switch it on explicitly.
EAGER_BYPASS = not INTERPRET


def unavailable_reason():
    return _UNAVAILABLE


def _find_auto_skip_reason():
    if torch.version.hip is not None and not INTERPRET:
        return ("on ROCm, auto passes the Triton kernels over: they compile for AMD GPUs (gfx90a, gfx942, gfx1100 "
                "in CI) but have not run on one yet; backend='triton' runs them, and `scsa-check --backend "
                "triton` compares them with the reference on this machine")
    return None


_AUTO_SKIP = _find_auto_skip_reason()


def auto_skip_reason():
    """Why ``auto`` passes this backend over on this machine although it can run here, or None."""
    return _AUTO_SKIP


def unsupported_reason(x, config, training):
    if x.device.type == "cpu" and not INTERPRET:
        return "CPU tensors need TRITON_INTERPRET=1 (the Triton interpreter)"
    if x.device.type == "cuda" and INTERPRET:
        return "TRITON_INTERPRET=1 is set: the interpreter runs CPU tensors only"
    if x.device.type not in ("cpu", "cuda"):
        return f"device {x.device.type} is not supported (CUDA tensors only)"
    if x.dtype not in SUPPORTED_DTYPES:
        return f"dtype {x.dtype} is not supported (float32/float16/bfloat16; kernels compute in float32)"
    height, width = x.shape[2], x.shape[3]
    if max(height, width) > MAX_SIDE:
        return f"H and W must be <= {MAX_SIDE} for the Triton kernels, got {height}x{width}"
    if height * width >= 2 ** 31:
        return "planes of 2**31 elements or more are not supported (int32 in-plane argmax)"
    batch, channels = x.shape[0], x.shape[1]
    if batch * channels >= 2 ** 31:
        return "B * C of 2**31 or more is not supported (int32 plane indices in the spatial gate kernels)"
    if batch > 2 ** 27:  # offsets up to 16 B - 1; their GroupNorm(4) counts (C/4 x side) fit by the rules here
        return "a batch of more than 2**27 is not supported (int32 statistics offsets in the spatial gate kernels)"
    pooled_h, pooled_w = _windows(height, width, config.window_size)[:2]
    if channels * pooled_h * pooled_w >= 2 ** 31:
        return ("C * pooled positions of 2**31 or more is not supported (int32 offsets and GroupNorm(1) counts in "
                "the channel attention kernels)")
    programs = _attention_programs_per_sample(config.dim, config.head_num)
    if programs > MAX_GRID_Y:
        return (f"the channel attention kernels would need {programs} programs per sample (head_num={config.head_num}"
                f" heads of {config.head_dim} channels), more than a CUDA grid's {MAX_GRID_Y} on that axis")
    return None


@functools.lru_cache(maxsize=None)
def _attention_programs_per_sample(dim: int, heads: int) -> int:
    """The second side of the channel attention kernels' grid (B, heads * NBLK): the backward's, whose
    channel blocks are the smaller (the number of pooled positions does not change it)."""
    return heads * _attention_blocks(dim, heads, 1, "backward").NBLK


def scsa(x, weights, config, training):
    compiling, autograd = torch.compiler.is_compiling(), needs_autograd(x, weights)
    if EAGER_BYPASS and not compiling and autograd:
        # Eager training: one autograd node without the dispatcher (the registered autograd of the
        # op costs ~60 us of Python per call) and without autograd nodes for the packing.
        return fused_scsa_with_grad(KERNELS, x, weights, config, training)
    if compiling or (autograd and packing_needs_graph(weights)):
        p = pack_weights(weights, config)  # traced, or differentiable in the weights
    elif autograd:  # the op's registered autograd saves the pack: a buffer of its own
        p = _eager_pack(x, weights, config)
    else:
        p = _inference_pack(x, weights, config)
    args = (x, *p, conv_d_matrix(weights, config), *config.kernel_options,
            *dropout.attention_dropout_args(config, training, x.device))
    if not EAGER_BYPASS or compiling:
        return torch.ops.scsa_kernels.triton_scsa_forward(*args)[0]
    return _forward_impl(*args, keep_for_backward=False)[0]


# ----------------------------------------------------------------------------------------
# Launch geometry


def _windows(height: int, width: int, window_size: int):
    """(HP, WP, WH, WW): pooled grid and window sides; window_size=-1 is one whole-plane window."""
    if window_size == -1:
        return 1, 1, height, width
    return height // window_size, width // window_size, window_size, window_size


def _pow2(n: int) -> int:
    """Next power of two >= n (plain Python: triton.next_power_of_2 costs microseconds per call)."""
    return 1 << (max(int(n), 1) - 1).bit_length()


class AttentionBlocks(NamedTuple):
    """Geometry of the channel attention kernels (triton/channel_attention.py) for heads of D channels
    and N pooled positions: BLOCK_D x BLOCK_D score tiles, NBLK of them per head side, BLOCK_P
    positions per step as tl.dot products (DOT), or, below tl.dot's smallest side, rank-1 updates one
    position at a time (BLOCK_P >= N: the backward's dq/dk rows hold every position); BLOCK_D x
    BLOCK_N tiles in the backward's final loop."""
    D: int
    BLOCK_D: int
    BLOCK_P: int
    DOT: bool
    BLOCK_N: int
    NBLK: int


def _attention_blocks(dim: int, heads: int, n: int, direction: str, dot: Optional[bool] = None) -> AttentionBlocks:
    """dot: None picks the route by n (dots from 9 positions on); True or False forces one
    (benchmarks/attention_routes.py times both)."""
    d = dim // heads
    if dot is None:
        dot = _pow2(n) >= MIN_DOT_SIDE
    block_d = max(MIN_DOT_SIDE, min(ATTENTION_BLOCK_D[direction], _pow2(d)))
    return AttentionBlocks(d, block_d, ATTENTION_BLOCK_P if dot else _pow2(n), dot, min(32, _pow2(n)),
                           -(-d // block_d))


def _attention_warps(blocks: AttentionBlocks, direction: str) -> int:
    """Warps of the channel attention kernels: enough to hold the tl.dot operand slices of their
    score tiles without spills on triton 3.8 (a few bytes on 3.5/3.6, within the AOT test's allowance):
    the forward's 64-row tiles spilled at 8 warps, the backward's 16-row ones at 8 but not at 4.
    Without dots, 8 for 32 channels or more: the rank-1 steps ran so (63 and 289 us per forward and
    backward call at 64x512x7x7 on an H200); the forward at 16 warps spilled 12 bytes on sm_90 with
    one position per step."""
    if direction == "forward" and blocks.DOT:
        return max(4, blocks.BLOCK_D // 4)
    return 8 if blocks.BLOCK_D >= 32 else 4


# Every buffer a kernel writes is allocated here (tests swap in NaN-filled allocators).
_empty = torch.empty
_empty_like = torch.empty_like


class WorkspaceLayout(NamedTuple):
    """The scratch buffers of one op call: buffer i is flat, ``lengths[i]`` elements of ``dtypes[i]``
    (float32, or float64 at ``float64_at``), and takes ``slots[i]`` float32 slots of one allocation:
    its elements padded to 64 bytes, so that every buffer starts 16-byte aligned, which the kernels
    specialize on."""
    lengths: Tuple[int, ...]
    dtypes: Tuple[torch.dtype, ...]
    slots: Tuple[int, ...]
    float64_at: Tuple[int, ...]


def _workspace_layout(buffers) -> WorkspaceLayout:
    """buffers: [(shape, dtype)], dtype float32 or float64."""
    dtypes = tuple(dtype for _, dtype in buffers)
    slots = tuple(-(-math.prod(shape) * (d.itemsize // 4) // 16) * 16 for (shape, _), d in zip(buffers, dtypes))
    return WorkspaceLayout(tuple(n * 4 // d.itemsize for n, d in zip(slots, dtypes)), dtypes, slots,
                           tuple(i for i, d in enumerate(dtypes) if d == torch.float64))


def _workspace(layout: WorkspaceLayout, x: Tensor):
    """The layout's buffers on x's device. Real tensors: views of one float32 allocation (one split_with_sizes is
    one C++ call, where an allocation per buffer costs a few microseconds of host time each); the
    kernels only see pointers, and the few buffers torch reads are shaped where they are used.
    Tracing tensors (torch.compile): an allocation each, of the same length. Inductor functionalizes
    the kernels' writes, and for a float64 view of a slice of one float32 allocation (torch 2.11) it
    generated a copy reading the whole allocation's length in float64 from the slice's start, past
    its end: an illegal memory access under CUDA graphs on an H200 (benchmarks/results/nvidia-h200)."""
    if is_tracing(x):
        return [_empty(n, device=x.device, dtype=d) for n, d in zip(layout.lengths, layout.dtypes)]
    buffers = list(_empty(sum(layout.slots), device=x.device, dtype=torch.float32).split_with_sizes(layout.slots))
    for i in layout.float64_at:
        buffers[i] = buffers[i].view(torch.float64)
    return buffers


# ----------------------------------------------------------------------------------------
# The ops


@functools.lru_cache(maxsize=None)
def _kernels():
    """The kernel modules by name: ``_kernels().pooling.pool_kernel`` (scsa_kernels.triton.KERNEL_MODULES;
    imported lazily: importing this file must not need triton)."""
    from ..triton import KERNEL_MODULES, kernel_modules
    return types.SimpleNamespace(**dict(zip(KERNEL_MODULES, kernel_modules())))


def plane_block_w(width: int, channel_tiles: bool = False) -> int:
    """Row-tile width of the plane passes: MAX_BLOCK_W at most (wider planes loop over column
    blocks), MIN_TILE // CHANNEL_TILE with channel tiles."""
    return min(_pow2(width), MIN_TILE // CHANNEL_TILE if channel_tiles else MAX_BLOCK_W)


def _channel_tiles(x_stride) -> bool:
    """Whether the plane passes take channel tiles: channels are x's unit-stride axis (channels_last)."""
    return x_stride[1] == 1 and x_stride[3] != 1


def _channels_per_program(C: int, block_w: int, channel_tiles: bool, H: int, W: int) -> int:
    """BLOCK_C of a plane pass with row tiles block_w wide over H x W planes: as many channels as fit
    BLOCK_C x block_w in MIN_TILE (a whole window wider than the usual row tile leaves fewer), CHANNEL_TILE
    at most, and without channel tiles only as many whole planes as fit PLANE_GROUP."""
    block_c = min(CHANNEL_TILE, _pow2(C), MIN_TILE // block_w)
    if not channel_tiles:
        block_c = min(block_c, PLANE_GROUP // (_pow2(H) * _pow2(W)))
    return max(1, block_c)


def _cached(plans, key, build):
    """plans[key], built on first use; built every time when the key holds symbolic sizes (tracing)."""
    try:
        plan = plans.get(key)
    except TypeError:  # SymInt shapes/strides are unhashable
        return build(*key)
    if plan is None:
        plan = plans[key] = build(*key)
    return plan


def _wide_strides(shape, *strides) -> bool:
    return any((shape[2] - 1) * abs(s[2]) + (shape[3] - 1) * abs(s[3]) >= 2 ** 31 for s in strides)


# Kill switch of the row vectors (every plane pass at VEC=1), for comparing (benchmarks/kernel_profile.py)
# or bisecting; plans made before a change keep their VEC (any VEC _row_vector gives is correct).
ROW_VECTORS = os.environ.get("SCSA_TRITON_ROW_VECTORS", "1") != "0"


def _row_vector(itemsize: int, sizes, *strides) -> int:
    """VEC of a plane pass (the ``aligned`` helper in triton/_common.py): elements per load or store
    along a row, a power of two of at most 16 bytes that divides every column limit in ``sizes`` and
    every batch, channel and row stride of the full-size tensors the pass walks. 1 unless all of them
    have unit column stride (channels_last tiles vectorise along C by themselves), or ROW_VECTORS is off."""
    if not ROW_VECTORS or any(s[3] != 1 for s in strides):
        return 1
    values = [*sizes, *(v for s in strides for v in s[:3])]
    vec = 16 // itemsize
    while vec > 1 and any(v % vec for v in values):
        vec //= 2
    return vec


def _pool_blocks(windows: int, WW: int, H: int, W: int, C: int, channel_tiles: bool):
    """(cols_per_block, grid blocks per sample, constexprs) of pool_kernel walking ``windows`` window
    columns: whole windows per column block, at most POOL_WINDOWS_PER_BLOCK (the window map is
    BLOCK_J x BLOCK_W); one window when it is wider than a row tile."""
    row_tile = plane_block_w(windows * WW, channel_tiles)
    per_block = WW * max(1, min(windows, POOL_WINDOWS_PER_BLOCK, row_tile // WW))
    block_w = _pow2(per_block)
    block_c = _channels_per_program(C, block_w, channel_tiles, H, W)
    return per_block, -(-C // block_c), dict(BLOCK_C=block_c, BLOCK_W=block_w, BLOCK_J=_pow2(per_block // WW),
                                              ONE_COL_BLOCK=W <= per_block)


def _forward_plan(shape, x_stride, dtype, K, head_num, window_size, max_pool, recombine, gate_softmax, spatial_tile,
                  saved_fraction=None):
    """Everything _forward_impl derives from shapes and options: grids, scalars, constexprs, what it
    keeps for the backward (``kept``, ``saved_lengths``: see _kept_for_backward), and ``tuned``, where
    launch records the autotuned kernels' picks for this plan. saved_fraction: MAX_SAVED_FRACTION
    (None: its value now; the plan caches key it, as tests change it)."""
    B, C, H, W = shape
    kept = _kept_for_backward(shape, dtype, saved_fraction)
    HP, WP, WH, WW = _windows(H, W, window_size)
    N = HP * WP
    channel_tiles = _channel_tiles(x_stride)
    block_w = plane_block_w(W, channel_tiles)
    block_c = _channels_per_program(C, block_w, channel_tiles, H, W)
    block_l = _pow2(max(H, W))
    block_g = min(_pow2(C // 4), max(1, spatial_tile // block_l))
    wide = _wide_strides(shape, x_stride)
    vec = _row_vector(dtype.itemsize, (W,), x_stride)
    per_block, pool_blocks_per_sample, pool_blocks = _pool_blocks(WP, WW, H, W, C, channel_tiles)
    blocks = _attention_blocks(C, head_num, N, "forward")
    return dict(
        tuned={}, N=N, cells=(B, C * WH * WW, N), planes=(B * C,), gates_grid=(B * 4, 2), attention_grid=(B, head_num * blocks.NBLK),
        channel_tiles=channel_tiles, plane_grid=(B * -(-C // block_c),), pool_grid=(B * pool_blocks_per_sample,),
        # gates, sp_stats, pooled (recombination: the cells), then the means and statistics not kept
        workspace=_workspace_layout([((B, C, H + W), F32), ((B, 2, 4, 2), F64),
                                     ((B, C * WH * WW, N) if recombine else (B, C, N), F32)]
                                    + _scratch_means_and_stats(shape, kept)),
        kept=kept, saved_lengths=_saved_lengths(shape, kept),
        plane_scalars=(C, H, W, *x_stride),
        plane_meta=dict(BLOCK_C=block_c, BLOCK_W=block_w, H_POW2=_pow2(H), ONE_COL_BLOCK=W <= block_w, WIDE=wide,
                        VEC=vec),
        gates_scalars=(C, H, W, GROUP_NORM_EPS),
        gates_meta=dict(GATE_SOFTMAX=gate_softmax, K=K, BLOCK_G=block_g, BLOCK_L=block_l, ONE_BLOCK=block_g >= C // 4,
                        num_warps=min(SPATIAL_MAX_WARPS,
                                      max(8, block_g * block_l // (32 * SPATIAL_ELEMENTS_PER_THREAD)))),
        pool_scalars=(C, H, W, *x_stride, *x_stride, HP, WP, WH, WW, per_block),
        pool_meta=dict(IS_MAX=max_pool, RECOMBINE=recombine, WH_POW2=_pow2(WH), WIDE=wide,
                       VEC=_row_vector(dtype.itemsize, (WP * WW, per_block), x_stride), **pool_blocks),
        attention_scalars=(C, N, blocks.D, blocks.NBLK, GROUP_NORM_EPS, blocks.D ** -0.5),
        attention_meta=dict(GATE_SOFTMAX=gate_softmax, BLOCK_D=blocks.BLOCK_D, BLOCK_P=blocks.BLOCK_P, DOT=blocks.DOT,
                            BLOCK_F=1024, num_warps=_attention_warps(blocks, "forward")),
        softmax_grid=(B,), softmax_meta=dict(BLOCK_C=min(1024, _pow2(C)), num_warps=4),
        # out = empty_like(x): x's strides where x is dense (else _io_meta redoes WIDE and VEC)
        apply_meta=dict(BLOCK_C=block_c, BLOCK_W=block_w, H_POW2=_pow2(H), WIDE=wide,
                        VEC=vec),
    )


_FORWARD_PLANS = {}
_BACKWARD_PLANS = {}


def _means(plan, x, means):
    """Launches the means pass (reads x): fills means (B, C, H+W) fp32 = x_h | x_w."""
    launch(_kernels().plane_stats.plane_means_kernel, plan["plane_grid"], x, means, *plan["plane_scalars"],
           tuned=plan["tuned"], **plan["plane_meta"])


def _spatial_gates(plan, means, gates, sp_stats, conv_w, conv_b, nh_w, nh_b, nw_w, nw_b):
    """Launches the spatial gate kernel: from means (B, C, H+W) fp32 fills gates (B, C, H+W) fp32 =
    a_h | a_w and sp_stats (B, 2, 4, 2) fp64 = GroupNorm(4) (mean, rstd)."""
    launch(_kernels().spatial_gates.spatial_gates_fwd_kernel, plan["gates_grid"],
           means, conv_w, conv_b, nh_w, nh_b, nw_w, nw_b, gates, sp_stats, *plan["gates_scalars"],
           **plan["gates_meta"])


def _channel_gate(plan, pooled, n_w, n_b, qkv_w, qkv_b, gn, row_stats, ca, gate_softmax, dropout_p, dropout_seed):
    """Launches the channel attention forward (and the softmax gate): from pooled (B, C, N) fills
    gn (B, 2), row_stats (ROW_STATS, B, C) and ca (B, C), all fp32, with attention dropout when
    dropout_p > 0."""
    channel_attention = _kernels().channel_attention
    launch(channel_attention.channel_attention_fwd_kernel, plan["attention_grid"],
           pooled, n_w, n_b, qkv_w, qkv_b, _seed_pointer(dropout_seed, gn), gn, row_stats, ca,
           *plan["attention_scalars"], dropout_p, DROPOUT=dropout_p > 0, **plan["attention_meta"])
    if gate_softmax:
        launch(channel_attention.channel_softmax_gate_kernel, plan["softmax_grid"], row_stats, ca,
               plan["gates_scalars"][0], **plan["softmax_meta"])


def _io_meta(meta, x, in_stride, out_stride):
    """The constexprs of a plane pass that reads a tensor of strides in_stride and writes one made by
    empty_like(x) (strides out_stride): meta, the plan's, whose WIDE and VEC hold for an output of x's
    strides (x dense: ~3 us per call not spent on them), else meta with WIDE and VEC for these strides."""
    if out_stride == x.stride():
        return meta
    return dict(meta, WIDE=_wide_strides(x.shape, in_stride, out_stride),
                VEC=_row_vector(x.dtype.itemsize, (x.shape[3],), in_stride, out_stride))


def _argmax_buffer(plan, x, max_pool, any_buffer):
    """The pool pass's argmax (B, C, N) int32 for max pooling; with avg pooling no kernel reads or writes
    it, and any buffer stands in (an allocation fewer per call)."""
    if not max_pool:
        return any_buffer
    B, C = x.shape[:2]
    return _empty((B, C, plan["N"]), device=x.device, dtype=torch.int32)


def _seed_pointer(dropout_seed, any_buffer):
    """The seed tensor the attention kernels read when DROPOUT, or any buffer (unread) without dropout."""
    return any_buffer if dropout_seed is None else dropout_seed


def _shaped(buffer, shape):
    """The first prod(shape) elements of a flat workspace buffer, viewed as ``shape`` (for torch ops)."""
    return buffer[: math.prod(shape)].view(shape)


def _float32_matmuls(t):
    """Context for recombination's torch matmuls: float32 also inside an autocast region (autocast
    would run them in half precision, and the kernels read their results as float32 buffers).
    Devices without autocast (meta, in the ahead-of-time compile test) need nothing."""
    if not torch.amp.is_autocast_available(t.device.type):
        return contextlib.nullcontext()
    return torch.autocast(t.device.type, enabled=False)


def _project(conv_d, cells):
    """Recombination's 1x1 conv (torch): conv_d (C, C*WH*WW) in the parameter's dtype, cells
    (B, C*WH*WW, N) fp32 -> pooled (B, C, N) fp32."""
    with _float32_matmuls(cells):
        return torch.matmul(conv_d.to(torch.float32), cells)


@on_x_device
def _forward_impl(
        x: Tensor, conv_w: Tensor, conv_b: Tensor, nh_w: Tensor, nh_b: Tensor, nw_w: Tensor, nw_b: Tensor,
        n_w: Tensor, n_b: Tensor, qkv_w: Tensor, qkv_b: Tensor, conv_d: Optional[Tensor],
        head_num: int, window_size: int, max_pool: bool, gate_softmax: bool,
        dropout_p: float = 0.0, dropout_seed: Optional[Tensor] = None, keep_for_backward: bool = True,
) -> Tuple[Tensor, Tensor]:
    """-> (out, saved): saved (n,) fp32 holds what the backward gets from this forward besides x
    (_kept_for_backward: the means (B, C, H+W) = x_h | x_w and the channel attention's statistics
    where they fit the memory target; empty when neither does), the rest it recomputes from x.
    conv_d: recombination's projection (C, C*ws*ws), or None for the pooling modes. dropout_p > 0:
    attention dropout with the Philox stream of dropout_seed ((1,) int64, see ops/dropout.py).
    keep_for_backward=False (eager inference): nothing is kept, saved is empty."""
    C, H, W = x.shape[1:]
    kernels = _kernels()
    x_stride = x.stride()
    recombine = conv_d is not None
    plan = _cached(_FORWARD_PLANS, (x.shape, x_stride, x.dtype, conv_w.shape[1], head_num, window_size, max_pool, recombine,
                                    gate_softmax, SPATIAL_TILE, MAX_SAVED_FRACTION if keep_for_backward else 0.0),
                   _forward_plan)
    saved, kept = _kept_buffers(plan, x)
    gates, sp_stats, pooled, *scratch = _workspace(plan["workspace"], x)  # pooled: the cells with recombination
    means, row_stats, ca, gn = _means_and_stats(plan, kept, scratch)
    argmax = _argmax_buffer(plan, x, max_pool, gates)
    out = _empty_like(x)
    _means(plan, x, means)
    _spatial_gates(plan, means, gates, sp_stats, conv_w, conv_b, nh_w, nh_b, nw_w, nw_b)
    # g, sums, total: unused without HAS_GRAD
    launch(kernels.pooling.pool_kernel, plan["pool_grid"], x, x, gates, pooled, argmax, pooled, pooled,
           *plan["pool_scalars"], HAS_GRAD=False, tuned=plan["tuned"], **plan["pool_meta"])
    if recombine:
        pooled = _project(conv_d, _shaped(pooled, plan["cells"]))
    _channel_gate(plan, pooled, n_w, n_b, qkv_w, qkv_b, gn, row_stats, ca, gate_softmax, dropout_p, dropout_seed)
    out_stride = out.stride()
    launch(kernels.apply.apply_gates_kernel, plan["plane_grid"], x, out, gates, ca, C, H, W, *x_stride, *out_stride,
           tuned=plan["tuned"], **_io_meta(plan["apply_meta"], x, x_stride, out_stride))
    return out, torch.cat(kept) if saved is None else saved


def _kept_for_backward(shape, dtype, saved_fraction=None):
    """(means, statistics): whether the forward keeps the row and column means (B, C, H+W) and the
    channel attention's statistics (``_means_and_stats_shapes``, all fp32) for the backward,
    within saved_fraction (MAX_SAVED_FRACTION) of x's bytes: the means first (without them the
    backward reads x once more: the means pass), then the statistics (without them it reruns the
    channel attention forward, and the softmax gate: one or two launches, no pass over x).
    The spatial gates need the means before any pass over x that uses the gates, and a (B, C, H+W)
    tensor is (H+W)/(H*W) of x's elements (2/7 at 7x7): no backward that reads x only twice can meet
    the memory target on small planes. Per sample: x has C*H*W*itemsize bytes, the means 4*C*(H+W),
    the statistics 4*((ROW_STATS + 1)*C + 2). The statistics leave a fifth of the budget (STATS_SHARE)
    to what is saved besides the per-sample tensors: the packed weights, and on the op's path the
    tensors the traced packing saves (2% of x at 64x512x7x7 in float32)."""
    B, C, H, W = shape
    budget = (MAX_SAVED_FRACTION if saved_fraction is None else saved_fraction) * C * H * W * dtype.itemsize
    means_bytes, *stats_bytes = (4 * math.prod(s) for s, _ in _means_and_stats_shapes((1, C, H, W), (True, True)))
    means = bool(means_bytes <= budget)  # bool: a guard on symbolic sizes, as their tile rules take
    return means, bool(sum(stats_bytes) + (means_bytes if means else 0) <= STATS_SHARE * budget)


def saves_means(shape, dtype) -> bool:
    """Whether the forward keeps the means for the backward (``_kept_for_backward``)."""
    return _kept_for_backward(shape, dtype)[0]


def saves_attention_stats(shape, dtype) -> bool:
    """Whether the forward keeps the channel attention's statistics for the backward (``_kept_for_backward``)."""
    return _kept_for_backward(shape, dtype)[1]


def _means_and_stats_shapes(shape, kept):
    """[(buffer shape, kept)] of the fp32 means (B, C, H+W) and the channel attention's statistics: the
    softmax row statistics (ROW_STATS, B, C) (anchor, offset, vbar, row max, row sum:
    triton/channel_attention.py), ca (B, C) and gn (B, 2), in that order; kept: _kept_for_backward's
    (means, statistics)."""
    B, C, H, W = shape
    row_stats = _kernels().channel_attention.ROW_STATS.value
    return [((B, C, H + W), kept[0]), ((row_stats, B, C), kept[1]), ((B, C), kept[1]), ((B, 2), kept[1])]


def _saved_lengths(shape, kept):
    """Lengths of the fp32 buffers in the forward's ``saved`` allocation: the kept means and statistics,
    in order. C is a multiple of 4, so every buffer starts 16-byte aligned (the kernels specialize on
    it) with no padding: the op returns ``saved``, and opcheck compares every element of it."""
    return tuple(math.prod(s) for s, is_kept in _means_and_stats_shapes(shape, kept) if is_kept)


def _scratch_means_and_stats(shape, kept):
    """Workspace buffers [(shape, dtype)] for the means and statistics not kept, in order."""
    return [(s, F32) for s, is_kept in _means_and_stats_shapes(shape, kept) if not is_kept]


def _kept_buffers(plan, x):
    """(saved, buffers): the forward's ``saved`` allocation (fp32) and the kept buffers, views of it in
    _saved_lengths' order. Tracing tensors (torch.compile), when something is kept: each buffer its own
    allocation and saved None, for the op body to concatenate them after the launches (as in
    ``_workspace``, the kernels' writes stay off views of a shared allocation there)."""
    lengths = plan["saved_lengths"]
    if is_tracing(x) and lengths:
        return None, [_empty(n, device=x.device, dtype=torch.float32) for n in lengths]
    saved = _empty(sum(lengths), device=x.device, dtype=torch.float32)
    return saved, _split_saved(plan, saved)


def _split_saved(plan, saved):
    """The kept buffers of the forward's ``saved`` (read only by the backward), in _saved_lengths' order."""
    lengths = plan["saved_lengths"]
    return saved.split_with_sizes(lengths) if lengths else ()


def _means_and_stats(plan, kept, scratch):
    """(means, row_stats, ca, gn): the next of ``kept`` (the forward's kept buffers, in _saved_lengths'
    order) where plan["kept"] says, else the next of ``scratch`` (workspace buffers)."""
    kept_buffers = iter(kept)
    scratch = iter(scratch)
    means = next(kept_buffers if plan["kept"][0] else scratch)
    stats = kept_buffers if plan["kept"][1] else scratch
    return (means, *(next(stats) for _ in range(3)))


def _backward_plan(shape, x_stride, g_stride, dtype, K, head_num, window_size, max_pool, recombine, gate_softmax,
                   spatial_tile, saved_fraction=None):
    """Everything _backward_impl derives from shapes and options (the forward plan's entries for the
    stages it recomputes, the plane and pooling passes with grad_out), and the lengths of its float32
    scratch buffers in their one workspace."""
    B, C, H, W = shape
    plan = _forward_plan(shape, x_stride, dtype, K, head_num, window_size, max_pool, recombine, gate_softmax, spatial_tile,
                         saved_fraction)
    HP, WP, WH, WW = _windows(H, W, window_size)
    N = HP * WP
    plane_meta = plan["plane_meta"]  # the backward's plane passes tile x as the forward's do
    blocks = _attention_blocks(C, head_num, N, "backward")
    nblk = blocks.NBLK
    # rsum, dca, dy, dq, dk, small_part, gnsum, psum, dt, dmeans, conv_part, pooled, gates, sp_stats (the names
    # in _backward_passes; sp_stats float64), then the means and statistics the forward did not keep
    workspace = _workspace_layout([(shape, F32) for shape in (
        (B, C, H + W), (B, C), (B, C, N), (B, C, N), (B, C, N), (B, 12 * C),
        (B, head_num * nblk, 2), (B, C, H + W), (B, C, H + W), (B, C, H + W), (B, 2, C * K + C),
        (B, C, N), (B, C, H + W))] + [((B, 2, 4, 2), F64)] + _scratch_means_and_stats(shape, plan["kept"]))
    # pass (a) also walks the columns right of the window grid
    grad_per_block, grad_pool_blocks_per_sample, grad_pool_blocks = _pool_blocks(-(-W // WW), WW, H, W, C, plan["channel_tiles"])
    pool_scalars = list(plan["pool_scalars"])
    grad_meta = dict(IS_MAX=max_pool, RECOMBINE=recombine, BLOCK_C=plane_meta["BLOCK_C"], BLOCK_W=plane_meta["BLOCK_W"],
                     WH_POW2=_pow2(WH), BLOCK_P=_pow2(head_num * nblk))
    pool_scalars[7:11] = g_stride
    pool_scalars[-1] = grad_per_block
    plan.update(
        workspace=workspace,
        bwd_attention_grid=(B, head_num * nblk), grad_pool_grid=(B * grad_pool_blocks_per_sample,),
        grad_grid=plan["plane_grid"],
        grad_pool_scalars=tuple(pool_scalars),
        grad_pool_meta=dict(plan["pool_meta"], WIDE=_wide_strides(shape, x_stride, g_stride),
                            VEC=_row_vector(dtype.itemsize, (W, grad_per_block), x_stride, g_stride), **grad_pool_blocks),
        bwd_attention_scalars=(C, N, blocks.D, nblk, blocks.D ** -0.5),
        bwd_attention_meta=dict(GATE_SOFTMAX=gate_softmax, BLOCK_D=blocks.BLOCK_D, BLOCK_P=blocks.BLOCK_P, DOT=blocks.DOT,
                                BLOCK_N=blocks.BLOCK_N, BLOCK_C=min(1024, _pow2(C)), ONE_STEP=N <= blocks.BLOCK_P,
                                num_warps=_attention_warps(blocks, "backward")),
        pool_geom=(HP, WP, WH, WW, head_num * nblk),
        pooled_grad_scalars=(C, N, head_num * nblk),
        pooled_grad_meta=dict(BLOCK_N=min(1024, _pow2(N)), BLOCK_P=_pow2(head_num * nblk)),
        grad_meta=grad_meta,
        # dx = empty_like(x): x's strides where x is dense (else _io_meta redoes WIDE and VEC)
        input_grad_meta=dict(grad_meta, WIDE=_wide_strides(shape, g_stride, x_stride),
                             VEC=_row_vector(dtype.itemsize, (W,), g_stride, x_stride)),
        pool_sums_scalars=(C, H, W, *x_stride, HP, WP, WH, WW, head_num * nblk),
        one_col_block=plane_meta["ONE_COL_BLOCK"], wide_x=plane_meta["WIDE"],
        pool_sums_vec=_row_vector(dtype.itemsize, (WP * WW,), x_stride),
    )
    return plan


class ParameterPartials(NamedTuple):
    """The backward's per-sample parameter gradients, fp32, flat workspace buffers: conv (rows 2*B,
    conv_size = C*K + C: the packed conv table and bias), small (rows B, 12*C: the other packed fields,
    in PackedWeights order). Their sums over the rows are the packed weights' gradients."""
    conv: Tensor
    small: Tensor
    conv_rows: int
    conv_size: int
    small_rows: int
    small_size: int

    @classmethod
    def of(cls, conv, small, B, C, K):
        """The partials of a batch of B, dim C, conv table width K."""
        return cls(conv, small, 2 * B, C * K + C, B, 12 * C)


@on_x_device
def _backward_impl(
        grad_out: Tensor, x: Tensor, saved: Tensor,
        conv_w: Tensor, conv_b: Tensor, nh_w: Tensor, nh_b: Tensor, nw_w: Tensor, nw_b: Tensor,
        n_w: Tensor, n_b: Tensor, qkv_w: Tensor, qkv_b: Tensor, conv_d: Optional[Tensor],
        head_num: int, window_size: int, max_pool: bool, gate_softmax: bool,
        dropout_p: float = 0.0, dropout_seed: Optional[Tensor] = None,
) -> Tuple[Tensor, Tensor, Tensor]:
    """-> (dx, packed_grads (C*K + 13*C,) fp32 = the gradients of the ten packed weights back to back
    in PackedWeights order (conv weight (C, K), conv bias, norm_h w, b, norm_w w, b, norm w, b, qkv
    weight (3, C), qkv bias (3, C)), conv_d's gradient (C, C*ws*ws) in its dtype (empty without conv_d)).
    The passes are ``_backward_passes``'s; the partials' sums over the batch are two torch sums."""
    dx, parts, d_conv_d = _backward_passes(grad_out, x, saved, conv_w, conv_b, nh_w, nh_b, nw_w, nw_b, n_w, n_b,
                                           qkv_w, qkv_b, conv_d, head_num, window_size, max_pool, gate_softmax,
                                           dropout_p, dropout_seed)
    packed_grads = _empty(parts.conv_size + parts.small_size, device=x.device, dtype=torch.float32)  # no cat
    torch.sum(_shaped(parts.conv, (parts.conv_rows, parts.conv_size)), dim=0, out=packed_grads[:parts.conv_size])
    torch.sum(_shaped(parts.small, (parts.small_rows, parts.small_size)), dim=0, out=packed_grads[parts.conv_size:])
    return dx, packed_grads, d_conv_d


def _backward_passes(grad_out, x, saved, conv_w, conv_b, nh_w, nh_b, nw_w, nw_b, n_w, n_b, qkv_w, qkv_b, conv_d,
                     head_num, window_size, max_pool, gate_softmax, dropout_p, dropout_seed):
    """The backward's launches, on x's device: -> (dx, ParameterPartials, conv_d's gradient (C, C*ws*ws)
    in its dtype (empty without conv_d)). Arguments as ``_backward_impl``'s.

    saved: the forward's (what _kept_for_backward says it kept: the means, then the attention statistics;
    what it did not keep is recomputed here, the means from x). dropout_p, dropout_seed: the forward's
    (its dropout masks are regenerated)."""
    B, C, H, W = x.shape
    kernels = _kernels()
    channel_attention, input_grad = kernels.channel_attention, kernels.input_grad
    x_stride, g_stride = x.stride(), grad_out.stride()
    recombine = conv_d is not None
    plan = _cached(_BACKWARD_PLANS, (x.shape, x_stride, g_stride, x.dtype, conv_w.shape[1], head_num, window_size, max_pool,
                                     recombine, gate_softmax, SPATIAL_TILE, MAX_SAVED_FRACTION), _backward_plan)
    # the kernels write all of each scratch buffer before reading it
    (rsum, dca, dy, dq, dk, small_part, gnsum, psum, dt, dmeans, conv_part, pooled, gates, sp_stats,
     *scratch) = _workspace(plan["workspace"], x)
    means, row_stats, ca, gn = _means_and_stats(plan, _split_saved(plan, saved), scratch)
    means_kept, stats_kept = plan["kept"]
    if not means_kept:
        _means(plan, x, means)
    _spatial_gates(plan, means, gates, sp_stats, conv_w, conv_b, nh_w, nh_b, nw_w, nw_b)
    argmax = _argmax_buffer(plan, x, max_pool, gates)
    cells = _empty(plan["cells"], device=x.device, dtype=torch.float32) if recombine else pooled
    launch(kernels.pooling.pool_kernel, plan["grad_pool_grid"], x, grad_out, gates, cells, argmax, rsum, dca,
           *plan["grad_pool_scalars"], HAS_GRAD=True, tuned=plan["tuned"], **plan["grad_pool_meta"])
    if recombine:
        pooled = _project(conv_d, cells)
    if not stats_kept:
        _channel_gate(plan, pooled, n_w, n_b, qkv_w, qkv_b, gn, row_stats, ca, gate_softmax, dropout_p, dropout_seed)
    launch(channel_attention.channel_attention_bwd_kernel, plan["bwd_attention_grid"],
           pooled, n_w, n_b, qkv_w, qkv_b, _seed_pointer(dropout_seed, gn), gn, row_stats, ca, dca, dq, dk, dy,
           small_part, gnsum, *plan["bwd_attention_scalars"], dropout_p, DROPOUT=dropout_p > 0,
           **plan["bwd_attention_meta"])
    if recombine:
        dp = _empty(pooled.shape, device=x.device, dtype=torch.float32)
        launch(input_grad.pooled_grad_kernel, plan["planes"], dy, pooled, gn, gnsum, n_w, dp,
               *plan["pooled_grad_scalars"], **plan["pooled_grad_meta"])
        with _float32_matmuls(dp):
            d_cells = torch.matmul(conv_d.to(torch.float32).t(), dp)
            d_conv_d = torch.einsum("bcn,bkn->ck", dp, cells).to(conv_d.dtype)
    else:
        d_cells, d_conv_d = dy, dy.new_empty(0)  # d_cells unused
    grad_meta = plan["grad_meta"]
    launch(input_grad.pool_grad_sums_kernel, plan["grad_grid"],
           x, gates, dy, pooled, argmax, gn, gnsum, n_w, d_cells, psum, *plan["pool_sums_scalars"],
           ONE_COL_BLOCK=plan["one_col_block"], WIDE=plan["wide_x"], VEC=plan["pool_sums_vec"], tuned=plan["tuned"],
           **grad_meta)
    launch(kernels.spatial_gates.spatial_gates_bwd_kernel, plan["gates_grid"],
           means, gates, sp_stats, rsum, psum, ca, conv_w, conv_b, nh_w, nw_w,
           dt, dmeans, conv_part, small_part, C, H, W, **plan["gates_meta"])
    dx = _empty_like(x)
    dx_stride = dx.stride()
    launch(input_grad.input_grad_kernel, plan["grad_grid"],
           grad_out, dx, gates, ca, dmeans, dy, pooled, argmax, gn, gnsum, n_w, d_cells,
           C, H, W, *g_stride, *dx_stride, *plan["pool_geom"],
           tuned=plan["tuned"], **_io_meta(plan["input_grad_meta"], x, g_stride, dx_stride))
    return dx, ParameterPartials.of(conv_part, small_part, B, C, conv_w.shape[1]), d_conv_d


# ----------------------------------------------------------------------------------------
# The eager training path (ops/eager.py's autograd node): packing, forward, backward, parameter gradients


def _eager_forward(x, packed, weights, config, training):
    conv_d = conv_d_matrix(weights, config)
    dropout_p, dropout_seed = dropout.attention_dropout_args(config, training, x.device)
    out, saved = _forward_impl(x, *packed, conv_d, *config.kernel_options, dropout_p, dropout_seed)
    return out, saved, conv_d, dropout_seed


@on_x_device
def _eager_pack(x, weights, config):
    """PackedWeights (float32) of the weights, for an eager call that records no packing (training, by
    the autograd node; inference without a kept launch, ``_inference_pack``): one launch of
    pack_parameters_kernel (``weights.pack_weights`` takes a cat, a gather and a cast)."""
    params = [p if p.is_contiguous() else p.contiguous() for p in packed_parameters(weights, config)]  # read flat
    return _pack_into(x, params, config)[0]


def _pack_into(x, params, config):
    """(PackedWeights in a new buffer on x's device, ``launch``'s record of the pack launch or None).
    params: ``packed_parameters``, contiguous."""
    n, grid, meta = _pack_launch(config)
    packed = _empty(n, device=x.device, dtype=torch.float32)
    biases = params[17:] if config.qkv_bias else [packed] * 3  # unread without QKV_BIAS
    record = launch(_kernels().parameters.pack_parameters_kernel, grid, *params[:17], *biases, packed,
                    config.group_channels, **meta)
    return split_packed(packed, config.dim, config.max_kernel_size), record


class _KeptPack(NamedTuple):
    """An inference call's pack launch, kept to be made again: (weak reference, address, dtype) of each
    parameter then, ``launch_compiled``'s record, and the packed views of its buffer."""
    params: tuple
    launch: tuple
    packed: PackedWeights


# (ids of the parameters, config, device) -> _KeptPack; an entry goes when one of its parameters dies
_KEPT_PACKS = {}


@on_x_device
def _inference_pack(x, weights, config):
    """PackedWeights of an eager call that records no autograd graph: the pack kernel runs on every
    call, since a cached pack would miss an in-place write through ``.data`` (no version counter
    moves; mmengine's EMA hook swaps weights so), and only comparing the values could see it, which
    would wait for the device. Its host cost is kept low instead: while the parameters are the same
    tensors at the same addresses in the same dtypes (the same specialization: ``module.half()`` then
    ``.bfloat16()`` assigns ``.data`` twice, and the allocator may hand the second cast the first's
    freed address), the launch is made again as it was (``relaunch``), into the same buffer, without preparing its
    21 arguments (~25 us of host time on a 2-core VM). Reusing the buffer is safe where nothing
    outlives the call's kernels: no autograd graph saves the pack (``scsa`` comes here only without
    one), and no CUDA graph capture records it (a capture packs into its own buffer: a kept one could
    be dropped while the graph still writes it)."""
    if capturing_cuda_graph(x):
        return _eager_pack(x, weights, config)
    params = packed_parameters(weights, config)
    key = (tuple(map(id, params)), config, x.device)
    kept = _KEPT_PACKS.get(key)
    if kept is not None and all(r() is p and p.data_ptr() == address and p.dtype == dtype
                                for (r, address, dtype), p in zip(kept.params, params)):
        relaunch(kept.launch)
        return kept.packed
    if not all(p.is_contiguous() for p in params):
        return _eager_pack(x, weights, config)  # nothing kept: a copy made contiguous dies with the call
    packed, record = _pack_into(x, params, config)
    if record is not None:  # a direct launch (the first of a specialization goes through Triton)
        drop = lambda dead, key=key: _KEPT_PACKS.pop(key, None)
        kept_params = tuple((weakref.ref(p, drop), p.data_ptr(), p.dtype) for p in params)
        _KEPT_PACKS[key] = _KeptPack(kept_params, record, packed)
    return packed


@functools.lru_cache(maxsize=None)
def _pack_launch(config):
    """(packed length C*K + 13*C, grid, constexprs) of pack_parameters_kernel for config."""
    n = config.dim * (config.max_kernel_size + 13)
    k0, k1, k2, k3 = config.group_kernel_sizes
    return n, (-(-n // PACK_BLOCK),), dict(K=config.max_kernel_size, K0=k0, K1=k1, K2=k2, K3=k3,
                                           QKV_BIAS=config.qkv_bias, BLOCK=PACK_BLOCK)


@on_x_device
def _eager_backward(grad_out, x, packed, saved, weights, config):
    kept, conv_d, dropout_seed = saved
    dx, parts, dconv_d = _backward_passes(grad_out, x, kept, *packed, conv_d, *config.kernel_options,
                                          dropout.saved_dropout_p(config, dropout_seed), dropout_seed)
    extra = [] if conv_d is None else [dconv_d.view_as(weights.conv_d_weight)]
    return dx, _parameter_grads(parts, weights, config, x.device), extra


def _parameter_grads(parts, weights, config, device):
    """The gradients of ``packed_parameters(weights, config)`` in their shapes and dtypes (views of one
    allocation where the parameters share a dtype) from the backward's ParameterPartials: one launch
    of parameter_grads_kernel (the sums over the batch, ``unpack_gradients``'s gather and the cast)."""
    params = packed_parameters(weights, config)
    index = gradient_index(config, device)
    n = index.shape[0]
    grads = _empty(n, device=device, dtype=shared_dtype(params) or torch.float32)  # mixed: cast each below
    launch(_kernels().parameters.parameter_grads_kernel, (-(-n // GRADS_BLOCK_E),),
           parts.conv, parts.small, index, grads, n, parts.conv_rows, parts.conv_size, parts.small_rows,
           parts.small_size, BLOCK_E=GRADS_BLOCK_E, BLOCK_R=GRADS_BLOCK_R)
    return gradients_like(grads, params)


KERNELS = FusedKernels(_eager_forward, _eager_backward, _eager_pack)


# ----------------------------------------------------------------------------------------
# Registration (torch.library): the path of torch.compile, export and opcheck


def _split_grads(ctx, grad_out, backward_fn):
    """Gradients of (x, the 10 packed weights, conv_d, the 5 options, the dropout seed, keep_for_backward)
    from the backward op's 3 outputs. Saved: x, the forward's ``saved`` buffer, the 10 packed weights,
    conv_d, the seed."""
    *saved, dropout_seed = ctx.saved_tensors
    if grad_out is None:
        grad_out = torch.zeros_like(saved[0])
    C, K = saved[2].shape  # conv_w (after x and the forward's saved buffer)
    dx, packed_grads, dconv_d = backward_fn(grad_out, *saved, *ctx.options, dropout_seed)
    conv_d = saved[12]
    return (dx, *split_packed(packed_grads, C, K), None if conv_d is None else dconv_d, *[None] * 7)


def _define_op(name, fn):
    """``triton_op``: torch.compile decomposes it into its kernel launches (``launch`` records them
    through ``wrap_triton``). Under the interpreter, whose kernels cannot be traced (``launch``
    skips them on tracing tensors), a ``custom_op`` instead, opaque to torch.compile, with its own
    body as the fake kernel (it then only allocates the outputs): decomposed, a compiled graph
    would launch nothing and return uninitialized memory."""
    from torch.library import custom_op, triton_op
    if not INTERPRET:
        return triton_op(name, mutates_args=())(fn)
    op = custom_op(name, mutates_args=())(fn)
    op.register_fake(fn)
    return op


def _define_ops():
    def setup_context(ctx, inputs, output):
        x = inputs[0]
        ctx.options = inputs[12:17]  # head_num, window_size, max_pool, gate_softmax, dropout_p
        ctx.set_materialize_grads(False)  # the saved buffer gets no gradient: no zeros launch
        ctx.save_for_backward(x, output[1], *inputs[1:12], inputs[17])

    def backward(ctx, grad_out, *unused):
        return _split_grads(ctx, grad_out, backward_op)

    forward_op = _define_op("scsa_kernels::triton_scsa_forward", _forward_impl)
    backward_op = _define_op("scsa_kernels::triton_scsa_backward", _backward_impl)
    forward_op.register_autograd(backward, setup_context=setup_context)
    return forward_op, backward_op


if unavailable_reason() is None:
    triton_scsa_forward, triton_scsa_backward = _define_ops()
