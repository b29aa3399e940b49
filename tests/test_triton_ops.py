"""Triton backend vs the reference: forward, dx and every parameter gradient (tolerance rule).

Without a GPU the kernels run under TRITON_INTERPRET=1 on CPU tensors (conftest.py sets it),
so shapes stay small. Every buffer the kernels write is allocated NaN-filled here (poison):
an element a kernel forgets to write shows up as a NaN mismatch.
"""
import contextlib
import copy
import os
import re
import subprocess
import sys
import time
import types

import pytest
import torch
from hypothesis import given, settings

triton = pytest.importorskip("triton")

from conftest import (AUTOCAST_MODES, DOMINATED_SOFTMAX_CASES, EXTRA_TRITONS, HAS_CUDA,  # noqa: E402
                      autocast_differences, compiled_triton_env, dominated_softmax_errors, requires_cuda,
                      triton_release_id, single_channel_group_bias_grads)
from scsa_kernels import backends  # noqa: E402
from scsa_kernels.config import SCSAConfig  # noqa: E402
from scsa_kernels.functional import scsa  # noqa: E402
from scsa_kernels.module import SCSA  # noqa: E402
from scsa_kernels.testing import compare_backend, random_weights  # noqa: E402
from scsa_kernels.triton import autotuned_kernels  # noqa: E402
from dropout_masks import kernel_dropout_masks  # noqa: E402
from strategies import random_cases  # noqa: E402

REASON = backends.unavailable_reason("triton")
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"triton backend unavailable: {REASON}")
DEVICE = "cuda" if HAS_CUDA else "cpu"


def _poisoned(alloc):
    def wrapped(*args, **kwargs):
        t = alloc(*args, **kwargs)
        return t.fill_(float("nan") if t.is_floating_point() else -7)
    return wrapped


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    from scsa_kernels.ops import triton as ops
    monkeypatch.setattr(ops, "_empty", _poisoned(torch.empty))
    monkeypatch.setattr(ops, "_empty_like", _poisoned(torch.empty_like))


def assert_matches(x, config, weights=None, grad_out=None):
    weights = random_weights(config, device=x.device) if weights is None else weights
    results = compare_backend("triton", x, weights, config, grad_out=grad_out)
    bad = [f"{r.name}: error {r.error:.3g} > bound {r.bound:.3g}" for r in results if not r.ok]
    assert not bad, "\n".join(bad)


OPTIONS = {
    "default": dict(),
    "softmax_gates_maxpool_heads_bias": dict(head_num=2, qkv_bias=True, down_sample_mode="max_pool",
                                             gate_layer="softmax"),
    "global_pool_softmax": dict(window_size=-1, gate_layer="softmax"),
    "global_pool_maxpool_mode": dict(window_size=-1, down_sample_mode="max_pool", head_num=4),
    "odd_kernels": dict(group_kernel_sizes=(1, 3, 11, 5), qkv_bias=True),
    "many_heads_tiny_d": dict(head_num=8),
    "recombination_heads": dict(down_sample_mode="recombination", head_num=2),
}


def _option_cases():
    """{"name-products": (OPTIONS name, window_size)}: every option with 4 pooled positions (window 3
    over 7x8: the attention kernels' rank-1 products) and with 12 (window 2: tl.dot products);
    the global pooling options have their one position."""
    cases = {}
    for name, options in OPTIONS.items():
        windows = {"global": None} if "window_size" in options else {"rank1": 3, "dot": 2}
        cases.update({f"{name}-{products}": (name, window) for products, window in windows.items()})
    return cases


OPTION_CASES = _option_cases()


@pytest.mark.parametrize("case", sorted(OPTION_CASES))
def test_options(case):
    name, window_size = OPTION_CASES[case]
    config = SCSAConfig(32, **{"window_size": window_size, **OPTIONS[name]})
    assert_matches(torch.randn(2, 32, 7, 8, device=DEVICE), config)


def test_backward_from_saved_means(monkeypatch):
    """The forward keeps the row and column means only on planes large enough (saves_means); the
    small planes of the other tests take the recompute path unless the memory cap is lifted."""
    from scsa_kernels.ops import triton as ops
    monkeypatch.setattr(ops, "MAX_SAVED_FRACTION", 1.0)
    config = SCSAConfig(16, **{"window_size": 3, **OPTIONS["softmax_gates_maxpool_heads_bias"]})
    x = torch.randn(2, 16, 7, 8, device=DEVICE)
    assert ops.saves_means(x.shape, x.dtype) and ops.saves_attention_stats(x.shape, x.dtype)
    assert_matches(x, config)


@pytest.mark.parametrize("bypass", [False, True], ids=["op", "eager_node"])
@pytest.mark.parametrize("kept", [(False, False), (False, True), (True, False), (True, True)],
                         ids=["recompute_both", "stats_kept", "means_kept", "both_kept"])
def test_backward_with_each_saved_set(monkeypatch, kept, bypass):
    """Each set the forward may keep for the backward (the means, the attention statistics: both,
    either, neither), forced whatever the shape; the softmax gate (its statistics too), attention
    dropout (the kept statistics are the forward's, drawn with its masks) and recombination."""
    from scsa_kernels.ops import triton as ops
    monkeypatch.setattr(ops, "_kept_for_backward", lambda shape, dtype, fraction=None: kept)
    monkeypatch.setattr(ops, "_FORWARD_PLANS", {})
    monkeypatch.setattr(ops, "_BACKWARD_PLANS", {})
    monkeypatch.setattr(ops, "EAGER_BYPASS", bypass)
    config = SCSAConfig(16, window_size=3, head_num=2, gate_layer="softmax", attn_drop_ratio=0.2,
                        down_sample_mode="recombination")
    x = torch.randn(2, 16, 7, 8, device=DEVICE)
    results = compare_backend("triton", x, random_weights(config, device=DEVICE), config, training=True)
    bad = [f"{r.name}: error {r.error:.3g} > bound {r.bound:.3g}" for r in results if not r.ok]
    assert not bad, "\n".join(bad)


def test_kept_for_backward_at_the_resnet_shapes():
    """Means first (within 10% of x's bytes per sample), then the statistics (both within 8%) (bf16 / fp32)."""
    from scsa_kernels.ops import triton as ops
    kept = {(c, h, dtype): ops._kept_for_backward((64, c, h, h), dtype)
            for c, h in [(64, 56), (128, 28), (256, 14), (512, 7)] for dtype in (torch.bfloat16, torch.float32)}
    assert kept == {(64, 56, torch.bfloat16): (True, True), (64, 56, torch.float32): (True, True),
                    (128, 28, torch.bfloat16): (False, True), (128, 28, torch.float32): (True, True),
                    (256, 14, torch.bfloat16): (False, True), (256, 14, torch.float32): (False, True),
                    (512, 7, torch.bfloat16): (False, False), (512, 7, torch.float32): (False, False)}


RECOMBINATION_CASES = {
    "softmax_gates_bias_bf16": ((1, 16, 8, 7), torch.bfloat16, dict(window_size=2, head_num=4, qkv_bias=True,
                                                                    gate_layer="softmax")),
    "h_eq_w_eq_window": ((1, 8, 3, 3), torch.float32, dict(window_size=3)),
    "channels_last_bf16_eager": ((2, 8, 7, 5), torch.bfloat16, dict(window_size=2, gate_layer="softmax")),
}


@pytest.mark.parametrize("name", sorted(RECOMBINATION_CASES))
def test_recombination(monkeypatch, name):
    """Space-to-depth + conv_d (a torch matmul) instead of pooling; every gradient, conv_d's included
    (odd sides not divisible by the window and several heads: test_options), through the op or
    through the eager autograd.Function."""
    from scsa_kernels.ops import triton as ops
    monkeypatch.setattr(ops, "EAGER_BYPASS", name.endswith("_eager"))
    shape, dtype, options = RECOMBINATION_CASES[name]
    config = SCSAConfig(shape[1], down_sample_mode="recombination", **options)
    x = torch.randn(*shape, device=DEVICE, dtype=dtype)
    if name.startswith("channels_last"):
        x = x.to(memory_format=torch.channels_last)
    assert backends.why_not("triton", x, config, True) is None
    assert_matches(x, config, weights=random_weights(config, dtype=dtype, device=DEVICE))


@pytest.mark.parametrize("shape,window", [((1, 8, 5, 5), 5), ((2, 8, 11, 7), 3), ((1, 8, 3, 300), 3),
                                          ((1, 8, 9, 4), 4)])
def test_shapes(shape, window):
    """H = W = window, odd sides not divisible by the window, rows wider than one tile (300)."""
    assert_matches(torch.randn(*shape, device=DEVICE), SCSAConfig(shape[1], window_size=window))


@pytest.mark.parametrize("case", sorted(DOMINATED_SOFTMAX_CASES))
@pytest.mark.parametrize("stats_kept", [True, False], ids=["stats_kept", "stats_recomputed"])
def test_dominated_softmax_rows_keep_the_q_k_gradients_accurate(monkeypatch, stats_kept, case):
    """Where one attention weight dominates a row (conftest.DOMINATED_SOFTMAX_CASES: 100 pooled
    positions, and one), the q and k weight gradients stay within twice the float32 reference's own
    error (the tolerance rule without its floor), from the forward's attention statistics and from the
    backward's rerun of the attention forward."""
    from scsa_kernels.ops import triton as ops
    monkeypatch.setattr(ops, "_kept_for_backward", lambda shape, dtype, fraction=None: (False, stats_kept))
    monkeypatch.setattr(ops, "_FORWARD_PLANS", {})
    monkeypatch.setattr(ops, "_BACKWARD_PLANS", {})
    for name, (fused, reference) in dominated_softmax_errors("triton", DEVICE, case).items():
        assert fused <= 2 * reference, (name, fused, reference)


# (shape, window, heads) -> pooled positions N, whether the attention products are tl.dots
ATTENTION_PRODUCT_CASES = {
    "one_position_heads_of_8": (((2, 32, 7, 7), 7, 4), 1, False),
    "four_positions": (((1, 16, 14, 15), 7, 1), 4, False),
    "eight_positions_softmax": (((1, 16, 8, 19), 4, 2), 8, False),
    "nine_positions_padded_dot": (((1, 16, 9, 9), 3, 1), 9, True),
    "sixteen_positions_heads_of_8": (((1, 32, 8, 8), 2, 4), 16, True),
}


@pytest.mark.parametrize("name", sorted(ATTENTION_PRODUCT_CASES))
def test_attention_products_dot_or_rank1(name):
    """The channel attention kernels take tl.dot products from 9 pooled positions on (BLOCK_P = 16,
    BLOCK_D >= 16) and rank-1 updates below (BLOCK_P = next power of two): both routes,
    forward and backward, match the reference, heads of fewer than 16 channels included."""
    from scsa_kernels.ops import triton as ops
    (shape, window, heads), n, dot = ATTENTION_PRODUCT_CASES[name]
    C = shape[1]
    for direction in ("forward", "backward"):
        blocks = ops._attention_blocks(C, heads, n, direction)
        assert blocks.DOT == dot and blocks.BLOCK_P == (16 if dot else ops._pow2(n)), blocks
        assert blocks.BLOCK_D == max(16, ops._pow2(C // heads)), blocks
    options = dict(gate_layer="softmax") if "softmax" in name else {}
    assert_matches(torch.randn(*shape, device=DEVICE), SCSAConfig(C, window_size=window, head_num=heads, **options))


@pytest.mark.parametrize("dot", [True, False], ids=["dot_at_1_position", "rank1_at_12_positions"])
def test_attention_product_routes_can_be_forced(monkeypatch, dot):
    """Either route is valid at any N (benchmarks/attention_routes.py forces each to time them):
    dots at 1 pooled position, rank-1 updates at 12 (BLOCK_P 16), forward and gradients."""
    import functools
    from scsa_kernels.ops import triton as ops
    monkeypatch.setattr(ops, "_attention_blocks", functools.partial(ops._attention_blocks, dot=dot))
    monkeypatch.setattr(ops, "_FORWARD_PLANS", {})
    monkeypatch.setattr(ops, "_BACKWARD_PLANS", {})
    shape, window, positions = ((2, 32, 7, 7), 7, 1) if dot else ((1, 16, 8, 6), 2, 12)
    assert all(ops._attention_blocks(shape[1], 2, positions, d).DOT is dot for d in ("forward", "backward"))
    assert_matches(torch.randn(*shape, device=DEVICE), SCSAConfig(shape[1], window_size=window, head_num=2))


def test_triton_older_than_3_5_is_reported_unavailable(monkeypatch):
    """The kernels need triton.constexpr_function (3.5+): an older Triton makes the backend unavailable,
    with the reason, so "auto" takes the reference instead of failing in the first compile."""
    from scsa_kernels.ops import triton as ops
    monkeypatch.delattr(triton, "constexpr_function")
    monkeypatch.setattr(triton, "__version__", "3.4.0")
    assert ops._find_unavailable_reason() == (
        "triton 3.4.0 is too old: the kernels need triton >= 3.5 (torch >= 2.9 installs one)")


@pytest.mark.parametrize("hip", [None, "6.4.43482"], ids=["cuda_build", "rocm_build"])
def test_rocm_builds_take_triton_only_by_name_and_launch_through_triton(monkeypatch, hip):
    """On ROCm builds of torch (torch.version.hip set) auto passes the Triton kernels over (compiled for AMD
    GPUs by test_triton_aot.py, never run on one), saying how to run and check them, and every launch goes
    through Triton's own path: the AMD backend specializes kernels on each tensor's storage fitting in 2 GB,
    which the direct launches' key does not hold. On CUDA builds neither. (Outside the interpreter: under
    it, launches are interpreted and auto picks the reference on CUDA tensors anyway.)"""
    from scsa_kernels.ops import triton as ops
    from scsa_kernels.ops import triton_launch
    monkeypatch.setattr(torch.version, "hip", hip)
    monkeypatch.setattr(ops, "INTERPRET", False)
    monkeypatch.setattr(triton_launch, "INTERPRET", False)
    monkeypatch.delenv("SCSA_TRITON_DIRECT_LAUNCH", raising=False)
    skip = ops._find_auto_skip_reason()
    if hip is None:
        assert skip is None and triton_launch.direct_launch_default()
    else:
        assert "ROCm" in skip and "backend='triton'" in skip and "scsa-check --backend triton" in skip
        assert not triton_launch.direct_launch_default()


def _larger_tiles():
    """The TILE sizes of the autotune configs past the smallest (which the interpreter always runs)."""
    tiles = {c.kwargs["TILE"] for k in autotuned_kernels() for c in k.all_configs}
    return sorted(tiles - {min(tiles)})


TILE_CASES = {
    "tall_plane_avg": ((2, 8, 40, 36), False, dict(window_size=7)),
    "channel_tiles_max_pool": ((2, 32, 20, 20), True, dict(window_size=3, down_sample_mode="max_pool", head_num=2)),
    # Window 7 (N = 42): with window 3 (N = 400) the 4-channel softmax saturated on some draws (scores
    # sum over N), its gradients cancelled, and any float32 evaluation's error was random at the
    # values' own scale: the rule's 2x the reference's error failed ~1 draw in 8, at every TILE.
    "wide_rows_recombination": ((1, 4, 12, 300), False, dict(window_size=7, down_sample_mode="recombination")),
}


@pytest.mark.skipif(HAS_CUDA, reason="on a GPU test_gpu_every_autotune_config runs every config")
@pytest.mark.parametrize("tile", _larger_tiles())
@pytest.mark.parametrize("case", sorted(TILE_CASES))
def test_larger_autotune_tiles(monkeypatch, tile, case):
    """The interpreter runs only the first (smallest) autotune config; a GPU's autotuner may pick any.
    Every larger TILE, forced on every autotuned kernel: more rows per tile (past the window height in
    the pool pass), fewer row blocks, channel tiles of more rows."""
    from scsa_kernels.ops import triton as ops
    for kernel in autotuned_kernels():  # TILE replaced, any other parameter (NUM_STAGES) as in the first config
        monkeypatch.setattr(kernel, "configs", [triton.Config({**kernel.configs[0].kwargs, "TILE": tile}, num_warps=4)])
        monkeypatch.setattr(kernel, "best_config", None, raising=False)
    monkeypatch.setattr(ops, "_FORWARD_PLANS", {})
    monkeypatch.setattr(ops, "_BACKWARD_PLANS", {})
    shape, channels_last, options = TILE_CASES[case]
    x = torch.randn(*shape, device=DEVICE)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    assert_matches(x, SCSAConfig(shape[1], **options))
    assert [k.best_config.kwargs["TILE"] for k in autotuned_kernels()] == [tile] * len(autotuned_kernels())


GPU_CONFIG_CASES = {  # (shape, channels_last, options, channels per program of the plane passes)
    "nchw_56x56_max_pool": ((2, 16, 56, 56), False, dict(window_size=7, down_sample_mode="max_pool"), 1),
    "channels_last_20x20": ((2, 32, 20, 20), True, dict(window_size=3, head_num=2), 16),
}


@pytest.mark.autotune
@requires_cuda
@pytest.mark.parametrize("index", range(max(len(k.all_configs) for k in autotuned_kernels())))
@pytest.mark.parametrize("case", sorted(GPU_CONFIG_CASES))
def test_gpu_every_autotune_config(monkeypatch, index, case):
    """On a GPU the autotuner keeps whichever config times fastest, so every config must compute the
    same function: each kernel forced to the index-th config of its set for the case's launches (the
    last where its set is shorter), warps and pipeline stages included (the pool pass's cp.async
    config), which the interpreter never runs and the autotuner's pick alone would leave unchecked."""
    from scsa_kernels.ops import triton as ops
    shape, channels_last, options, block_c = GPU_CONFIG_CASES[case]
    for kernel in autotuned_kernels():
        configs = kernel.configs_for(block_c)
        monkeypatch.setattr(kernel, "configs", [configs[min(index, len(configs) - 1)]])
        monkeypatch.setattr(kernel, "best_config", None, raising=False)
    monkeypatch.setattr(ops, "_FORWARD_PLANS", {})
    monkeypatch.setattr(ops, "_BACKWARD_PLANS", {})
    x = torch.randn(*shape, device=DEVICE)
    assert_matches(x.to(memory_format=torch.channels_last) if channels_last else x, SCSAConfig(shape[1], **options))


def test_large_head_and_many_positions():
    """D = 80 > BLOCK_D (column blocks of the online softmax) and N = 81 > BLOCK_N (chunks)."""
    config = SCSAConfig(80, window_size=3, gate_layer="softmax", qkv_bias=True)
    assert_matches(torch.randn(1, 80, 27, 27, device=DEVICE), config)


def test_spatial_gates_loop_over_channel_blocks(monkeypatch):
    """Force several channel blocks per GroupNorm group in the spatial gate kernels (ONE_BLOCK off: the
    conv recomputed in each loop); every other test's groups fit one block."""
    from scsa_kernels.ops import triton as ops
    monkeypatch.setattr(ops, "SPATIAL_TILE", 16)
    config = SCSAConfig(32, window_size=2, gate_layer="softmax")
    x = torch.randn(2, 32, 6, 5, device=DEVICE)
    assert not ops._forward_plan(x.shape, x.stride(), x.dtype, 9, 1, 2, False, False, True, 16)["gates_meta"]["ONE_BLOCK"]
    assert_matches(x, config)


@pytest.mark.parametrize("shape", [(64, 64, 56, 56), (64, 128, 28, 28), (64, 256, 14, 14), (64, 512, 7, 7)])
def test_spatial_gate_groups_fit_one_block_at_the_resnet_shapes(shape):
    """At every ResNet-50 stage shape a GroupNorm group (C/4 channels x the gate row) fits one tile of
    SPATIAL_TILE: the spatial gate kernels compute each conv once (ONE_BLOCK)."""
    from scsa_kernels.ops import triton as ops
    B, C, H, W = shape
    plan = ops._forward_plan(shape, (C * H * W, H * W, W, 1), torch.bfloat16, 9, 1, 7, False, False, False,
                             ops.SPATIAL_TILE)
    assert plan["gates_meta"]["ONE_BLOCK"] and plan["gates_meta"]["BLOCK_G"] >= C // 4


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "permuted"])
def test_memory_layouts(layout):
    config = SCSAConfig(16, head_num=2, window_size=3, down_sample_mode="max_pool")
    x = torch.randn(2, 16, 9, 10, device=DEVICE)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "sliced":
        x = torch.randn(3, 20, 12, 21, device=DEVICE)[1:, 2:18, 1:-2, ::2]
    else:
        x = torch.randn(9, 10, 2, 16, device=DEVICE).permute(2, 3, 0, 1)
    grad_out = torch.randn(x.shape, dtype=torch.float64, device=DEVICE).transpose(2, 3).contiguous().transpose(2, 3)
    assert_matches(x, config, grad_out=grad_out)


CHANNEL_TILE_CASES = {
    # 24 channels: a full tile of 16 and a masked one of 8; odd sides; max pooling and heads
    "24ch_odd_max_pool": ((2, 24, 11, 9), dict(window_size=3, head_num=2, down_sample_mode="max_pool")),
    # one window as wide as the plane (40): the pool pass takes 64-wide rows, so 4 channels per program
    "global_pool_wide": ((1, 16, 5, 40), dict(window_size=-1, gate_layer="softmax")),
    "recombination": ((1, 32, 6, 7), dict(window_size=2, down_sample_mode="recombination", qkv_bias=True)),
}


@pytest.mark.parametrize("name", sorted(CHANNEL_TILE_CASES))
def test_channels_last_channel_tiles(name):
    """channels_last x: the plane passes take BLOCK_C neighbouring channels per program (coalesced
    along C); partial channel tiles, wide windows and recombination."""
    from scsa_kernels.ops import triton as ops
    shape, options = CHANNEL_TILE_CASES[name]
    x = torch.randn(*shape, device=DEVICE).to(memory_format=torch.channels_last)
    plan = ops._forward_plan(x.shape, x.stride(), x.dtype, 9, options.get("head_num", 1), options["window_size"],
                             options.get("down_sample_mode") == "max_pool", name == "recombination", False, 512)
    assert plan["plane_meta"]["BLOCK_C"] > 1 and plan["pool_meta"]["BLOCK_C"] > 1
    assert_matches(x, SCSAConfig(shape[1], **options))


ROW_VECTOR_CASES = {
    # (shape, dtype, how x is made from a contiguous tensor, column limits) -> VEC
    "56_wide_bf16": ((2, 64, 56, 56), torch.bfloat16, None, (56,), 8),  # 16 bytes: 8 halves
    "56_wide_fp32": ((2, 64, 56, 56), torch.float32, None, (56,), 4),
    "28_wide_bf16": ((2, 128, 28, 28), torch.bfloat16, None, (28,), 4),
    "14_wide_bf16": ((2, 256, 14, 14), torch.bfloat16, None, (14,), 2),
    "7_wide_bf16": ((2, 512, 7, 7), torch.bfloat16, None, (7,), 1),
    "window_grid_55_wide": ((2, 64, 56, 56), torch.bfloat16, None, (55, 55), 1),  # window 5: 11 windows of 5
    "row_stride_64": ((2, 8, 16, 64), torch.bfloat16, lambda t: t[..., 4:28], (24,), 8),  # the offset is Triton's
    "row_stride_57": ((2, 8, 16, 57), torch.bfloat16, lambda t: t[..., :56], (56,), 1),
    "every_other_column": ((2, 8, 16, 64), torch.bfloat16, lambda t: t[..., ::2], (32,), 1),
    "channels_last": ((2, 64, 56, 56), torch.bfloat16, lambda t: t.to(memory_format=torch.channels_last), (56,), 1),
}


@pytest.mark.parametrize("name", sorted(ROW_VECTOR_CASES))
def test_row_vector_divides_every_limit_and_stride(name):
    """VEC of the plane passes (what triton/_common.py's ``aligned`` lets the compiler assume): at most
    16 bytes, dividing the column limits and x's batch, channel and row strides; 1 off unit-stride rows."""
    from scsa_kernels.ops import triton as ops
    shape, dtype, view, sizes, vec = ROW_VECTOR_CASES[name]
    x = torch.empty(shape, dtype=dtype, device="meta")
    x = view(x) if view else x
    assert ops._row_vector(x.dtype.itemsize, sizes, x.stride()) == vec
    assert ops._row_vector(x.dtype.itemsize, sizes, x.stride(), torch.empty_like(x).stride()) == vec


def test_output_passes_take_the_plans_vec_only_for_an_output_with_x_strides():
    """apply and input_grad write an empty_like(x): the plan's WIDE and VEC (made for x's strides)
    where that output has x's strides, else both redone for the strides read and written. A row
    slice of x (rows of 24 elements in a row stride of 32) allows 8 elements per bf16 load; its
    dense output (row stride 24) too, but an output row stride of 20 only 4."""
    from scsa_kernels.ops import triton as ops
    x = torch.empty(2, 4, 6, 32, dtype=torch.bfloat16, device="meta")[..., :24]
    planned = dict(BLOCK_W=32, WIDE=False, VEC=ops._row_vector(2, (24,), x.stride()))
    assert planned["VEC"] == 8
    assert ops._io_meta(planned, x, x.stride(), x.stride()) is planned
    assert ops._io_meta(planned, x, x.stride(), torch.empty_like(x).stride()) == planned
    out_stride = (480, 120, 20, 1)
    assert ops._io_meta(planned, x, x.stride(), out_stride) == dict(planned, VEC=4)


def test_row_vectors_switch_off(monkeypatch):
    from scsa_kernels.ops import triton as ops
    monkeypatch.setattr(ops, "ROW_VECTORS", False)
    assert ops._row_vector(2, (56,), (200704, 3136, 56, 1)) == 1


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("layout", ["contiguous", "row_sliced"])
def test_plane_passes_with_row_vectors(monkeypatch, dtype, layout):
    """Every plane pass launched with VEC > 1 (24-wide rows, window 4: 6 whole windows, every stride a
    multiple of 8) matches the reference; the interpreter computes ``aligned`` literally, so a VEC that
    did not divide a stride or limit would move the loads. row_sliced: rows of 40 of which 24 are used,
    from column 4 on (the data pointer is off 16 bytes' alignment: Triton's specialization, not VEC)."""
    from scsa_kernels.ops import triton as ops
    vecs = {}
    launch = ops.launch
    monkeypatch.setattr(ops, "launch", lambda kernel, grid, *args, **kwargs: vecs.setdefault(
        getattr(kernel, "fn", kernel).__name__, set()).add(kwargs.get("VEC")) or launch(kernel, grid, *args, **kwargs))
    x = torch.randn(2, 8, 16, 40 if layout == "row_sliced" else 24, device=DEVICE, dtype=dtype)
    x = x[..., 4:28] if layout == "row_sliced" else x
    config = SCSAConfig(8, window_size=4, down_sample_mode="max_pool", head_num=2)
    assert_matches(x, config, weights=random_weights(config, dtype=dtype, device=DEVICE))
    expected = 16 // x.dtype.itemsize
    assert {name: vecs[name] for name in PLANE_PASSES} == {name: {expected} for name in PLANE_PASSES}


PLANE_PASSES = ("plane_means_kernel", "pool_kernel", "apply_gates_kernel", "pool_grad_sums_kernel", "input_grad_kernel")


@pytest.mark.parametrize("shape,planes", [((64, 64, 56, 56), 1), ((64, 128, 28, 28), 1), ((64, 256, 14, 14), 4),
                                          ((64, 512, 7, 7), 16), ((2, 8, 7, 8), 8), ((1, 16, 1, 64), 4)])
def test_small_nchw_planes_share_a_program(shape, planes):
    """NCHW plane passes take as many whole small planes per program as fit PLANE_GROUP (16 of 7x7), with
    BLOCK_C x BLOCK_W within MIN_TILE (1x64 planes: 4); the grids shrink by that factor."""
    from scsa_kernels.ops import triton as ops
    B, C, H, W = shape
    plan = ops._forward_plan(shape, (C * H * W, H * W, W, 1), torch.bfloat16, 9, 1, min(7, H), False, False, False,
                             512)
    assert plan["plane_meta"]["BLOCK_C"] == planes and plan["plane_grid"] == (B * C // planes,)
    assert plan["pool_meta"]["BLOCK_C"] * plan["pool_meta"]["BLOCK_W"] <= ops.MIN_TILE


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_types(dtype):
    config = SCSAConfig(16, head_num=2, window_size=3, qkv_bias=True, gate_layer="softmax")
    x = torch.randn(2, 16, 8, 7, device=DEVICE, dtype=dtype)
    assert_matches(x, config, weights=random_weights(config, dtype=dtype, device=DEVICE))


def test_max_pool_ties_go_to_the_first_element():
    """ReLU-like input: whole windows of zeros tie; PyTorch sends the gradient to the first one."""
    config = SCSAConfig(8, window_size=3, down_sample_mode="max_pool")
    x = torch.randn(2, 8, 7, 7, device=DEVICE).clamp_min(0.8) - 0.8
    assert (x == 0).float().mean() > 0.5
    assert_matches(x, config)


@settings(max_examples=6 if DEVICE == "cpu" else 15, deadline=None, database=None)
@given(case=random_cases(dtypes=(torch.float32, torch.float16, torch.bfloat16), device=DEVICE))
def test_random_configs_match_reference(case):
    """Property: for any valid config, shape, dtype and layout, forward and every gradient match the
    reference (a random search beside the hand-picked cases). Few examples: the interpreter is slow, and
    on a GPU each new shape compiles and autotunes its kernels (the GPU run caps the whole suite)."""
    config, x, weights, grad_out = case
    assert_matches(x, config, weights=weights, grad_out=grad_out)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_channel_groups_cancel_the_conv_bias(dtype):
    """The conv bias gradients that are exactly 0 stay at rounding level: the spatial gate kernels
    compute in float64 (in float32 they reached 1.5x the tolerance rule's bound here)."""
    largest = single_channel_group_bias_grads("triton", dtype, draws=3, device=DEVICE)
    assert max(largest.values()) < 1e-9, largest


@pytest.mark.parametrize("mode", ["avg_pool", "max_pool", "recombination"])
def test_nonfinite_inputs_match_the_reference(mode):
    """A NaN in one sample and an Inf in another reach exactly the outputs and gradients they reach
    in the reference (every value of those samples), and nothing of the finite sample."""
    config = SCSAConfig(8, window_size=3, down_sample_mode=mode)
    x = torch.randn(3, 8, 9, 9, device=DEVICE)
    x[1, 2, 4, 5] = float("nan")
    x[2, 0, 0, 0] = float("inf")
    assert_matches(x, config)


@pytest.mark.parametrize("mode", AUTOCAST_MODES)
@pytest.mark.parametrize("bypass", [False, True])
def test_autocast_changes_nothing(monkeypatch, mode, bypass):
    """Both eager paths (the op's dispatch, the bypass); x float32, whose autocast dtype differs."""
    from scsa_kernels.ops import triton as ops
    monkeypatch.setattr(ops, "EAGER_BYPASS", bypass)
    assert autocast_differences("triton", mode, torch.float32, DEVICE) == []


@pytest.mark.parametrize("name", ["default", "softmax_gates_maxpool_heads_bias"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_eager_path_without_the_dispatcher(monkeypatch, name, dtype):
    """The eager path that skips the triton_op (ops/eager.py's node, direct _forward_impl; the default on
    GPUs, off under the interpreter) against the reference, weights requiring grad or not."""
    from scsa_kernels.ops import triton as ops
    monkeypatch.setattr(ops, "EAGER_BYPASS", True)
    calls = []
    monkeypatch.setattr(ops, "fused_scsa_with_grad",
                        lambda *a, _run=ops.fused_scsa_with_grad: calls.append(1) or _run(*a))
    config = SCSAConfig(16, **{"window_size": 3, **OPTIONS[name]})
    x = torch.randn(2, 16, 7, 8, device=DEVICE, dtype=dtype)
    assert_matches(x, config, weights=random_weights(config, dtype=dtype, device=DEVICE))
    assert calls, "the eager autograd node did not run"
    module = SCSA(16, head_num=2, window_size=3, backend="triton").to(DEVICE)
    with torch.no_grad():
        expected = scsa(x.float(), module.weights(), module.config, backend="reference")
        torch.testing.assert_close(module(x.float()), expected, rtol=1e-4, atol=1e-4)


def test_inference_repeats_the_pack_launch_while_the_parameters_stay_put(monkeypatch):
    """Eager inference runs the pack kernel on every call (a cached pack missed writes through .data);
    while the parameters are the same tensors at the same addresses in the same dtypes the call repeats
    its kept launch (``relaunch``: the same arguments, the same buffer) instead of preparing it anew.
    A write in place through .data keeps the launch (the kernel reads the new values); a new tensor
    (.data =), another dtype at the same address (``module.half()`` then ``.bfloat16()`` can land so:
    the launch was compiled for the old one), a non-contiguous parameter or a CUDA graph capture
    packs afresh, the last two keeping nothing; a parameter's death drops its entry. The launch layer
    is stubbed: under the interpreter there are no direct launches (the GPU tests run the real ones)."""
    import gc

    from scsa_kernels.ops import triton as ops
    packs, repeats = [], []
    monkeypatch.setattr(ops, "_KEPT_PACKS", {})
    monkeypatch.setattr(ops, "_pack_into", lambda x, params, config, _pack=ops._pack_into: (
        packs.append([p.data_ptr() for p in params]), (_pack(x, params, config)[0], ("record", len(packs))))[1])
    monkeypatch.setattr(ops, "relaunch", repeats.append)
    module = SCSA(16, window_size=3, backend="triton").to(DEVICE, torch.float16).eval()
    x = torch.randn(2, 16, 7, 7, device=DEVICE, dtype=torch.float16)

    def call():
        with torch.no_grad():
            ops.scsa(x, module.weights(), module.config, training=False)
        return len(packs), len(repeats)

    assert [call(), call(), call()] == [(1, 0), (1, 1), (1, 2)]
    with torch.no_grad():
        module.q.weight.data.mul_(2)  # same tensor, same address: the repeated launch reads the new values
    assert call() == (1, 3)
    module.q.weight.data = module.q.weight.data.clone()  # a new tensor: packed afresh, kept again
    assert call() == (2, 3) and call() == (2, 4)
    with monkeypatch.context() as capture:  # with a kept launch for these very parameters
        capture.setattr(ops, "capturing_cuda_graph", lambda t: True)
        assert call() == (3, 4) and call() == (4, 4)  # packed in a buffer of the capture's, nothing kept
    assert call() == (4, 5)  # the kept launch again
    module.k.weight.data = module.k.weight.data.clone()
    assert call() == (5, 5) and call() == (5, 6)
    v = module.v.weight
    v.data = v.data.view(torch.bfloat16)  # the same address, another dtype
    assert call() == (6, 6) and call() == (6, 7)
    conv = module.local_dwc.weight
    conv.data = conv.data.permute(2, 1, 0).contiguous().permute(2, 1, 0)  # the same values, not contiguous
    assert not conv.is_contiguous()
    assert call() == (7, 7) and call() == (8, 7)  # packed from a contiguous copy each call: nothing kept
    assert len(ops._KEPT_PACKS) == 1
    del module, conv, v
    gc.collect()
    assert not ops._KEPT_PACKS, "a dead module's pack is still kept"


@pytest.mark.host_only
@pytest.mark.parametrize("flags,training_launches", [([], (6, 15)), (["--via-op"], (5, 13))],
                         ids=["eager-bypass", "via-op"])
def test_eager_launches_reach_triton_without_the_tracing_hop(flags, training_launches):
    """On the GPU path (JIT kernels, not the interpreter, whose kernels wrap_triton passes through)
    an eager call launches each kernel itself: through wrap_triton's tracing HOP every launch costs
    hundreds of microseconds of host time (the dispatcher bypass did so until 2026-11-26). Runs
    benchmarks/triton_host_overhead.py (a host-only Triton driver, HOP launches counted) without
    TRITON_INTERPRET; launch counts at 7x7: forward 5, backward 8 (the means are recomputed), and one
    more each where no autograd records the packing (inference, and the bypass's training step): the
    weights' packing, and the parameter gradients (through the op: torch ops, cat, gather, cast; two
    sums, gather, cast). The host-only driver's tied autotuner timings stay out of Triton's on-disk
    autotune cache, whose key is a real sm_90 GPU's (host_only_triton.install)."""
    import pathlib

    from triton import knobs
    script = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "benchmarks", "triton_host_overhead.py")
    args = [sys.executable, script, "--reps", "2", "--dtypes", "float32", "--shape", "1", "8", "7", "7"]
    start = time.time()
    res = subprocess.run(args + flags, capture_output=True, text=True, env=compiled_triton_env(), timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-3000:]
    counts = {case: (int(n), int(hop)) for case, n, hop in
              re.findall(r"(\w+)\s+[\d.]+ us \((\d+) launches, (\d+) via HOP\)", res.stdout)}
    forward, step = training_launches
    assert counts == {"fwd_nograd": (6, 0), "fwd_grad": (forward, 0), "fwdbwd": (step, 0)}, res.stdout
    tuned = [p for p in pathlib.Path(knobs.cache.dir).rglob("*.autotune.json") if p.stat().st_mtime >= start]
    assert not tuned, tuned


def _launch_check_cases():
    """The case names of tests/triton_launch_check.py (shared by triton_compile_check.py)."""
    import ast
    source = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_launch_check.py")).read()
    cases = next(node.value for node in ast.parse(source).body
                 if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", None) == "CASES")
    return [key.value for key in cases.keys]


LAUNCH_CHECK_CASES = _launch_check_cases()


@pytest.mark.host_only
@pytest.mark.parametrize("folder", [None] + EXTRA_TRITONS, ids=triton_release_id)
def test_direct_launches_pass_what_tritons_launch_passes(folder):
    """ops.triton launches a compiled kernel directly once Triton's own launch compiled that
    specialization. tests/triton_launch_check.py makes every launch both ways on a host-only Triton
    driver (kernels compiled for sm_90, a launcher that records its arguments) and compares them
    argument by argument: every pooling mode and gate, dropout, fp32/bf16, channels_last, and x
    misaligned by one element (its own specialization), each set of buffers the forward keeps for the
    backward, and the first case again with a launch hook registered (both routes must hand the
    launcher the hook and the launch metadata); the third call of each is all direct. And two cases'
    inference calls, whose kept pack launch is repeated: the repeats hand the launcher what it did. With
    the installed Triton and each release of SCSA_AOT_EXTRA_TRITON (CI: 3.5 and 3.6)."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_launch_check.py")
    res = subprocess.run([sys.executable, script], capture_output=True, text=True, env=compiled_triton_env(folder),
                         timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count(" ok: ") == len(LAUNCH_CHECK_CASES) + 3, res.stdout  # + hooked, + 2 inference


def test_direct_launch_refuses_a_tensor_after_a_scalar(monkeypatch):
    """The direct launches key a kernel's leading tensors by dtype and alignment and the rest by value:
    a launch with a tensor after a scalar (a call site breaking that order) is refused, not keyed by
    the tensor's identity."""
    from scsa_kernels.ops import triton_launch
    driver = types.SimpleNamespace(active=types.SimpleNamespace(get_current_device=lambda: 0))
    monkeypatch.setattr(triton_launch, "_triton_driver", lambda: driver)
    monkeypatch.setattr(triton_launch, "_LEADING_TENSORS", {})
    kernel = types.SimpleNamespace(__name__="pool_kernel")
    t = torch.zeros(4)
    with pytest.raises(TypeError, match="pool_kernel: a launch passes its tensors before every other argument"):
        triton_launch.launch_compiled(kernel, (1,), (t, 3, t), {})


@pytest.mark.host_only
def test_compiled_launches_are_the_eager_ones():
    """On a GPU torch.compile decomposes the triton_op into its launches (with a symbolic batch under
    dynamic shapes); the interpreter never takes that path. tests/triton_compile_check.py records
    every launch on a host-only Triton driver: a compiled training step (aot_eager, dynamic=True)
    makes the eager step's launches (kernels, grids, every argument, warps and stages), at two batch
    sizes with one compilation, for the cases of the direct-launch check; and again under
    torch.use_deterministic_algorithms(True), where both give every autotuned kernel its fixed config."""
    script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "triton_compile_check.py")
    res = subprocess.run([sys.executable, script], capture_output=True, text=True, env=compiled_triton_env(None),
                         timeout=900)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count(" ok: ") == 2 * len(LAUNCH_CHECK_CASES), res.stdout  # as is, and deterministic


@requires_cuda
def test_gpu_direct_launches_match_tritons_launches_bitwise(monkeypatch):
    """The same calls with triton_launch.DIRECT_LAUNCH off (every launch through JITFunction.run) and
    on (the third call onwards launches the compiled kernels directly, none through
    JITFunction.run): bitwise the same results."""
    from triton.runtime.jit import JITFunction

    from scsa_kernels.ops import triton_launch
    module = SCSA(64, head_num=2, window_size=7, down_sample_mode="max_pool", backend="triton").cuda()
    x = torch.randn(4, 64, 28, 28, device="cuda", requires_grad=True)
    grad_out = torch.randn_like(x)

    def results():
        module.zero_grad(set_to_none=True)
        x.grad = None
        out = module(x)
        out.backward(grad_out)
        return [out.detach(), x.grad] + [p.grad for p in module.parameters()]

    monkeypatch.setattr(triton_launch, "DIRECT_LAUNCH", False)
    expected = results()
    monkeypatch.setattr(triton_launch, "DIRECT_LAUNCH", True)
    for _ in range(2):
        results()
    through_triton = []
    run = JITFunction.run
    monkeypatch.setattr(JITFunction, "run", lambda self, *a, **k: through_triton.append(self) or run(self, *a, **k))
    got = results()
    assert not through_triton, "the third call still launched through JITFunction.run"
    assert all(torch.equal(a, b) for a, b in zip(got, expected))


def test_traced_workspace_buffers_are_separate_allocations():
    """Eager calls split one float32 allocation into the workspace buffers (a float64 one as a view);
    traced calls (torch.compile's fake tensors) allocate each buffer in its own dtype. Inductor
    functionalizes the kernels' writes into these buffers, and for the float64 view of a slice it
    generated a copy reading the whole allocation's length in float64 from the slice's start (torch
    2.11): past the end, an illegal memory access under CUDA graphs on an H200 (the benchmark's
    triton+cudagraphs provider, 2026-11-27; test_gpu_torch_compile_reduce_overhead holds that case).
    On a CPU those reads land in the allocator's memory and every value comes out right, so this
    holds the layout itself."""
    from torch._subclasses.fake_tensor import FakeTensorMode
    from scsa_kernels.ops import triton as ops
    layout = ops._workspace_layout([((2, 24), torch.float32), ((2, 4, 2), torch.float64), ((40,), torch.float32)])
    assert layout.float64_at == (1,) and layout.slots == (48, 32, 48) and layout.lengths == (48, 16, 48)
    eager = ops._workspace(layout, torch.empty(1))
    with FakeTensorMode() as mode:
        traced = ops._workspace(layout, mode.from_tensor(torch.empty(1)))
    assert len({b.untyped_storage().data_ptr() for b in eager}) == 1
    assert [(b.shape, b.dtype) for b in eager] == [(b.shape, b.dtype) for b in traced] == \
        [((n,), d) for n, d in zip(layout.lengths, layout.dtypes)]
    assert all(b.storage_offset() == 0 and b.untyped_storage().nbytes() == b.nbytes for b in traced)


def _fresh_plans_counting_tuner_runs(monkeypatch):
    """(ops.triton with empty plan caches and eager calls bypassing the dispatcher, a list that records
    every autotuner run)."""
    from triton.runtime.autotuner import Autotuner

    from scsa_kernels.ops import triton as ops
    monkeypatch.setattr(ops, "EAGER_BYPASS", True)
    monkeypatch.setattr(ops, "_FORWARD_PLANS", {})
    monkeypatch.setattr(ops, "_BACKWARD_PLANS", {})
    tuner_runs = []
    run = Autotuner.run
    monkeypatch.setattr(Autotuner, "run", lambda self, *a, **k: tuner_runs.append(self) or run(self, *a, **k))
    return ops, tuner_runs


def _plan_picks(ops):
    """{(kernel, deterministic): config} of every plan's autotuned kernels."""
    return {key: pick for plans in (ops._FORWARD_PLANS, ops._BACKWARD_PLANS) for plan in plans.values()
            for key, pick in plan["tuned"].items()}


@pytest.mark.autotune
def test_plans_reuse_the_autotuners_pick(monkeypatch):
    """The first call of a launch plan goes through each autotuned kernel's autotuner and records its
    pick in the plan; later calls of the plan launch the kernel with it directly (ops.triton_launch.launch),
    with bitwise the same results."""
    ops, tuner_runs = _fresh_plans_counting_tuner_runs(monkeypatch)
    module = SCSA(16, head_num=2, window_size=3, backend="triton").to(DEVICE)
    x = torch.randn(2, 16, 7, 7, device=DEVICE, requires_grad=True)
    grad_out = torch.randn(2, 16, 7, 7, device=DEVICE)
    results, runs_per_call = [], []
    for _ in range(2):
        module.zero_grad()
        x.grad = None
        out = module(x)
        out.backward(grad_out)
        results.append([out.detach(), x.grad] + [p.grad for p in module.parameters()])
        runs_per_call.append(len(tuner_runs) - sum(runs_per_call))
    assert {kernel.fn.__name__ for kernel, _ in _plan_picks(ops)} == set(PLANE_PASSES)
    assert runs_per_call == [7, 0], "autotuner calls per forward+backward: 7 on a plan's first call, then none"
    for a, b in zip(*results):
        assert torch.equal(a, b)


@pytest.mark.autotune
def test_deterministic_algorithms_fix_every_autotuned_config(monkeypatch):
    """Under torch.use_deterministic_algorithms(True) no timing picks a config (the tile sets the float32
    summation order, and a pick by timing can differ between processes): every autotuned kernel runs
    its fixed config, tiles of 1024 elements (a 40x36 plane: several row steps), the autotuner never
    runs, and forward and gradients match the reference."""
    ops, tuner_runs = _fresh_plans_counting_tuner_runs(monkeypatch)
    config = SCSAConfig(8, window_size=7, down_sample_mode="max_pool")
    torch.use_deterministic_algorithms(True)
    try:
        assert_matches(torch.randn(2, 8, 40, 36, device=DEVICE), config)
    finally:
        torch.use_deterministic_algorithms(False)
    assert not tuner_runs
    picks = {(kernel.fn.__name__, deterministic, pick["TILE"]) for (kernel, deterministic), pick in _plan_picks(ops).items()}
    assert picks == {(name, True, 1024) for name in PLANE_PASSES}


def test_autotuners_keep_their_picks_on_disk():
    """Every autotuned kernel keeps its picks in Triton's on-disk cache (cache_results): each shape is
    tuned once per machine, not at every process start, and every process of a machine makes the same
    pick (the same float32 summation order). Checked outside the interpreter (whose single config is
    never timed; triton 3.6 and 3.8 turn the cache off there)."""
    script = "from scsa_kernels.triton import autotuned_kernels as k; print([t.cache_results for t in k()])"
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=compiled_triton_env(None),
                         timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert res.stdout.strip() == str([True] * len(autotuned_kernels())), res.stdout


def test_autotune_off_runs_every_kernels_fixed_config(monkeypatch):
    """SCSA_TRITON_AUTOTUNE=0 (triton_launch.AUTOTUNE): as under deterministic algorithms, each autotuned
    kernel runs its fixed config and the autotuner never runs (the GPU tests run so: conftest.py)."""
    from scsa_kernels.ops import triton_launch
    ops, tuner_runs = _fresh_plans_counting_tuner_runs(monkeypatch)
    monkeypatch.setattr(triton_launch, "AUTOTUNE", False)
    assert_matches(torch.randn(2, 8, 40, 36, device=DEVICE), SCSAConfig(8, window_size=7))
    assert not tuner_runs
    picks = {(kernel.fn.__name__, fixed, pick["TILE"]) for (kernel, fixed), pick in _plan_picks(ops).items()}
    assert picks == {(name, True, 1024) for name in PLANE_PASSES}


def test_module_and_determinism():
    module = SCSA(16, head_num=2, window_size=3, backend="triton").to(DEVICE)
    x = torch.randn(2, 16, 7, 7, device=DEVICE, requires_grad=True)
    grads = []
    for _ in range(2):
        module.zero_grad()
        x.grad = None
        (module(x) * torch.arange(7.0, device=DEVICE)).sum().backward()
        grads.append([x.grad.clone()] + [p.grad.clone() for p in module.parameters()])
    for a, b in zip(*grads):
        assert torch.equal(a, b), "two identical backward runs differ (non-deterministic reduction?)"


def test_unsupported_inputs_have_reasons():
    config = SCSAConfig(8, window_size=2)
    x = torch.randn(1, 8, 2, 4098, device=DEVICE)
    reason = backends.why_not("triton", x, config, True)
    assert reason is not None and "4096" in reason
    with pytest.raises(backends.BackendUnavailableError, match="4096"):
        scsa(x, random_weights(config, device=DEVICE), config, training=True, backend="triton")
    assert backends.auto_choice(x, config, True) != "triton"


def test_attention_grids_past_cudas_limit_are_unsupported():
    """The channel attention kernels' grid is (B, heads * channel blocks), and CUDA allows 65535
    programs on a grid's second side: 65536 heads of one channel are refused with the reason (auto
    takes the reference), 65532 run."""
    x = torch.randn(1, 65536, 1, 1, device=DEVICE)
    reason = backends.why_not("triton", x, SCSAConfig(65536, head_num=65536, window_size=-1), False)
    assert reason is not None and "65536 programs per sample" in reason and "65535" in reason
    assert backends.why_not("triton", x[:, :65532], SCSAConfig(65532, head_num=65532, window_size=-1), False) is None


def test_batch_times_channels_past_int32_is_unsupported():
    """The spatial gate kernels index planes with int32 b * C + c: B * C >= 2**31 is refused with the
    reason (a stride-0 view: no memory), one less runs."""
    config = SCSAConfig(2 ** 11, window_size=-1)
    x = torch.zeros(1, 1, 1, 1, device=DEVICE).expand(2 ** 20, 2 ** 11, 1, 1)
    assert "B * C of 2**31" in backends.why_not("triton", x, config, False)
    assert backends.why_not("triton", x[1:], config, False) is None


@pytest.mark.parametrize("rule,refused,runs,options", [
    ("a batch of more than 2**27", (2 ** 27 + 1, 4, 1, 1), (2 ** 27, 4, 1, 1), dict(window_size=-1)),
    ("C * pooled positions of 2**31", (1, 2 ** 15, 256, 256), (1, 2 ** 15, 256, 255), dict(window_size=1)),
    ("more than a CUDA grid's 65535", (1, 2 ** 21, 1, 4096), (1, 2 ** 21 - 64, 1, 4096), dict(window_size=-1)),
], ids=["batch", "channels_by_positions", "channels_by_side"])
def test_int32_counts_past_their_range_are_unsupported(rule, refused, runs, options):
    """The kernels' other int32 products: the spatial gates' statistics offsets (16 per sample, up to
    16 B - 1), the channel attention's offsets and GroupNorm(1) count (C x pooled positions). Past 2**31
    they would wrap (a zero count: a finite, wrong GroupNorm) and are refused with the reason, at the
    boundary (stride-0 views: no memory). The spatial gates' GroupNorm(4) count, C/4 x a side, stays
    below 2**31 by the attention grid's limit (C/32 programs per sample) and the 4096 side limit."""
    config = SCSAConfig(refused[1], **options)
    x = torch.zeros(1, 1, 1, 1, device=DEVICE)
    assert rule in backends.why_not("triton", x.expand(*refused), config, False)
    assert backends.why_not("triton", x.expand(*runs), SCSAConfig(runs[1], **options), False) is None


def test_float64_is_unsupported_not_downcast():
    config = SCSAConfig(8, window_size=2)
    reason = backends.why_not("triton", torch.randn(1, 8, 4, 4, dtype=torch.float64, device=DEVICE), config, False)
    assert reason is not None and "float64" in reason


def test_device_guard_makes_the_device_of_x_current(monkeypatch):
    """Triton launches on the current CUDA device: device_guard switches to x's device where another
    one is current (x on cuda:1, cuda:0 current) and does nothing otherwise. torch.cuda is mocked
    here; test_gpu_second_device runs it on two GPUs."""
    from scsa_kernels.ops import triton_launch
    entered = []
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device", lambda device: entered.append(device) or contextlib.nullcontext())
    for device in ("cpu", "meta", "cuda:0"):
        with triton_launch.device_guard(torch.device(device)):
            pass
    assert entered == []
    with triton_launch.device_guard(torch.device("cuda", 1)):
        pass
    assert entered == [torch.device("cuda", 1)]


@pytest.mark.parametrize("bypass", [False, True], ids=["op", "eager_node"])
def test_forward_and_backward_launch_under_the_device_guard(monkeypatch, bypass):
    """Both op bodies (forward, backward) run inside device_guard(x.device), through the registered
    op and through the eager node (which also packs the weights in a guarded launch of its own);
    every launch happens inside one."""
    from scsa_kernels.ops import triton as ops
    from scsa_kernels.ops import triton_launch
    monkeypatch.setattr(ops, "EAGER_BYPASS", bypass)
    events = []

    @contextlib.contextmanager
    def recording_guard(device):
        events.append(("enter", device))
        yield
        events.append(("exit", device))

    monkeypatch.setattr(triton_launch, "device_guard", recording_guard)
    monkeypatch.setattr(ops, "launch", lambda kernel, *args, _run=ops.launch, **kwargs:
                        events.append(("launch", kernel)) or _run(kernel, *args, **kwargs))
    module = SCSA(8, window_size=2, backend="triton").to(DEVICE)
    x = torch.randn(1, 8, 4, 4, device=DEVICE, requires_grad=True)
    module(x).sum().backward()
    guards = [e for e in events if e[0] != "launch"]
    assert guards == [("enter", x.device), ("exit", x.device)] * (3 if bypass else 2)
    depth, launches_per_guard = 0, []
    for kind, _ in events:
        assert kind != "launch" or depth == 1, "a launch outside the device guard"
        depth += {"enter": 1, "exit": -1}.get(kind, 0)
        launches_per_guard += [0] if kind == "enter" else []
        launches_per_guard[-1] += kind == "launch"
    assert all(launches_per_guard), launches_per_guard


@pytest.mark.parametrize("bypass", [False, True], ids=["op", "eager_node"])
@pytest.mark.parametrize("options", [dict(head_num=2, gate_layer="softmax"),
                                     dict(head_num=1, window_size=-1, qkv_bias=True),
                                     dict(head_num=4, down_sample_mode="max_pool"),
                                     dict(head_num=2, window_size=2)],  # 12 pooled positions: tl.dot products
                         ids=["softmax_heads", "global", "four_heads", "dot_products"])
def test_attention_dropout_matches_the_reference_with_the_same_masks(monkeypatch, bypass, options):
    """Training with attn_drop_ratio > 0: forward and every gradient against the reference when both
    apply the masks the kernels draw (the backward regenerates them from the saved seed)."""
    from scsa_kernels.ops import triton as ops
    monkeypatch.setattr(ops, "EAGER_BYPASS", bypass)
    config = SCSAConfig(32, **{"window_size": 3, "attn_drop_ratio": 0.3, **options})
    x = torch.randn(2, 32, 7, 8, device=DEVICE)
    results = compare_backend("triton", x, random_weights(config, device=DEVICE), config, training=True)
    bad = [f"{r.name}: error {r.error:.3g} > bound {r.bound:.3g}" for r in results if not r.ok]
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("seed", [0, 1, 2 ** 32 + 5, 2 ** 62 - 3, None], ids=["0", "1", "2^32+5", "2^62-3", "drawn"])
def test_attention_dropout_masks_are_the_kernels(seed):
    """ops.dropout.attention_dropout_masks (plain PyTorch, what the reference applies in
    compare_backend) gives the kernels' masks bit for bit, seeds of either 32-bit half included."""
    from scsa_kernels.ops.dropout import attention_dropout_masks
    seed = torch.randint(2 ** 62, (1,)) if seed is None else torch.tensor([seed])
    for p, shape in ((0.3, (2, 3, 5)), (0.05, (1, 2, 16))):
        assert torch.equal(attention_dropout_masks(seed, p, *shape), kernel_dropout_masks(seed, p, *shape))


def test_attention_dropout_rate_and_seeding():
    """Masks keep 1-p of the weights, scaled by 1/(1-p); torch.manual_seed reproduces a training call,
    another seed changes it, eval mode has no dropout."""
    seed = torch.randint(2 ** 62, (1,), device=DEVICE)
    masks = kernel_dropout_masks(seed, 0.3, 2, 2, 32)
    torch.testing.assert_close(masks.unique(), torch.tensor([0.0, 1 / 0.7], device=DEVICE))
    assert abs((masks > 0).float().mean().item() - 0.7) < 0.03  # 4096 draws: std 0.007
    assert not torch.equal(masks, kernel_dropout_masks(seed + 1, 0.3, 2, 2, 32))
    module = SCSA(16, head_num=2, window_size=3, attn_drop_ratio=0.3, backend="triton").to(DEVICE)
    x = torch.randn(2, 16, 6, 6, device=DEVICE)
    outputs = []
    for manual_seed in (0, 0, 1):
        torch.manual_seed(manual_seed)
        with torch.no_grad():
            outputs.append(module(x))
    assert torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[0], outputs[2])
    module.eval()
    with torch.no_grad():
        expected = scsa(x, module.weights(), module.config, backend="reference")
        torch.testing.assert_close(module(x), expected, rtol=1e-4, atol=1e-5)


def test_dropout_in_eval_is_supported():
    config = SCSAConfig(8, window_size=2, attn_drop_ratio=0.5)
    assert backends.why_not("triton", torch.randn(1, 8, 4, 4, device=DEVICE), config, False) is None
    assert_matches(torch.randn(1, 8, 4, 4, device=DEVICE), config)


def test_opcheck():
    """Every torch.library.opcheck check: schema, autograd registration, the fake kernel (the op's
    own body on tracing tensors: ``launch`` skips the launches) against real calls, AOT dispatch with
    dynamic shapes. Under the interpreter the op is a custom_op (ops.triton._define_op), on a GPU a
    triton_op with the same body and autograd (test_gpu_opcheck)."""
    from scsa_kernels.ops import triton as ops
    from scsa_kernels.weights import pack_weights
    config = SCSAConfig(8, window_size=2)
    p = [t.detach().requires_grad_() for t in pack_weights(random_weights(config, device=DEVICE), config)]
    x = torch.randn(1, 8, 4, 5, device=DEVICE, requires_grad=True)
    seed = torch.randint(2 ** 62, (1,), device=DEVICE)
    for conv_d in (None, torch.randn(8, 8 * 4, device=DEVICE, requires_grad=True)):  # pooling, recombination
        for dropout in ((), (0.2, seed)):
            torch.library.opcheck(ops.triton_scsa_forward, (x, *p, conv_d, 1, 2, False, False, *dropout))


@pytest.mark.parametrize("attn_drop_ratio", [0.0, 0.2])
def test_dynamo_traces_the_dispatch_path_without_graph_breaks(attn_drop_ratio):
    """module -> functional -> backend selection -> pack_weights (-> the dropout seed) -> triton_op:
    one graph, no break.

    backend="eager" runs the captured graph eagerly (the interpreter cannot run under
    AOTAutograd's functional tracing; Inductor lowering is test_gpu_torch_compile_fullgraph).
    """
    import torch._dynamo
    module = SCSA(8, window_size=2, attn_drop_ratio=attn_drop_ratio, backend="triton").to(DEVICE)
    x = torch.randn(1, 8, 4, 5, device=DEVICE, requires_grad=True)
    explained = torch._dynamo.explain(module)(x)
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
    torch._dynamo.reset()
    torch.manual_seed(0)  # the same dropout seed for the compiled and the eager call
    out = torch.compile(module, backend="eager", fullgraph=True)(x)
    out.square().sum().backward()
    torch.manual_seed(0)
    expected = module(x.detach())
    assert torch.allclose(out, expected, rtol=1e-6, atol=1e-6) and torch.isfinite(x.grad).all()


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_torch_compile_through_aot_autograd(dynamic):
    """torch.compile with AOTAutograd (aot_eager): forward and every gradient as the eager call's, for
    two shapes. Under the interpreter the op stays opaque there (a decomposed triton_op would
    launch nothing: the interpreter cannot trace its kernels, and the compiled graph returned
    uninitialized memory); on a GPU it decomposes into its launches (test_gpu_torch_compile_fullgraph)."""
    import torch._dynamo
    torch._dynamo.reset()
    module = SCSA(8, window_size=2, down_sample_mode="recombination", head_num=2, backend="triton").to(DEVICE)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    for shape in [(2, 8, 5, 4), (3, 8, 6, 7)]:
        x = torch.randn(*shape, device=DEVICE, requires_grad=True)
        grad_out = torch.randn(shape, device=DEVICE)
        leaves = [x, *module.parameters()]
        got = [compiled(x), *torch.autograd.grad(compiled(x), leaves, grad_out)]
        expected = [module(x), *torch.autograd.grad(module(x), leaves, grad_out)]
        for g, e in zip(got, expected):
            torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------- GPU only


@requires_cuda
@pytest.mark.parametrize("shape", [(8, 64, 56, 56), (8, 512, 7, 7), (2, 128, 160, 160)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_large_shapes(shape, dtype):
    config = SCSAConfig(shape[1], head_num=2 if shape[1] > 64 else 1)
    x = torch.randn(*shape, device="cuda", dtype=dtype).to(memory_format=torch.channels_last)
    assert_matches(x, config, weights=random_weights(config, dtype=dtype, device="cuda"))


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA GPUs")
@pytest.mark.parametrize("options", ["default", "recombination_heads"])
def test_gpu_second_device(options):
    """x and the weights on cuda:1 with cuda:0 current (the module moved with .to("cuda:1"), no
    torch.cuda.set_device): the kernels launch on cuda:1 and match the reference there."""
    torch.cuda.set_device(0)
    config = SCSAConfig(16, **{"window_size": 3, **OPTIONS[options]})
    assert_matches(torch.randn(2, 16, 9, 8, device="cuda:1"), config)
    assert torch.cuda.current_device() == 0


@requires_cuda
def test_gpu_auto_picks_triton():
    config = SCSAConfig(16)
    assert backends.auto_choice(torch.randn(1, 16, 14, 14, device="cuda"), config) == "triton"


@requires_cuda
@pytest.mark.parametrize("attn_drop_ratio", [0.0, 0.1])
def test_gpu_torch_compile_fullgraph(attn_drop_ratio):
    module = SCSA(64, head_num=2, attn_drop_ratio=attn_drop_ratio, backend="triton").cuda()
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(4, 64, 28, 28, device="cuda", requires_grad=True)
    out = compiled(x)
    out.square().sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()
    if attn_drop_ratio:  # Inductor draws the seed from its own RNG stream: other masks than eager
        module.eval()
        out = compiled(x)
    ref = module(x.detach())
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def _warm_up_for_capture(fn, *args):
    """Three calls on a side stream (autotuning, launch plans, cached index tensors), as
    torch.cuda.graphs asks before a capture."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            fn(*args)
    torch.cuda.current_stream().wait_stream(side)


def _perturb_weights_in_place(module):
    """New weights through load_state_dict, which copies into the existing parameters."""
    module.load_state_dict({k: v + 0.1 * torch.randn_like(v) for k, v in module.state_dict().items()})


@requires_cuda
def test_gpu_cuda_graph_inference_follows_in_place_weight_updates():
    """A CUDA graph captured around an inference call replays what an eager call computes, for new
    inputs and after load_state_dict (in place) changed the weights: the pack launch is in the graph,
    so replays read the current weights."""
    module = SCSA(64, head_num=4, window_size=7, backend="triton").cuda().eval()
    static_x = torch.randn(4, 64, 28, 28, device="cuda")
    with torch.no_grad():
        _warm_up_for_capture(module, static_x)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            static_out = module(static_x)
        for step in range(3):
            static_x.copy_(torch.randn_like(static_x))
            if step == 2:
                _perturb_weights_in_place(module)
            graph.replay()
            assert torch.equal(static_out, module(static_x)), f"replay {step} differs from the eager call"


@requires_cuda
@pytest.mark.parametrize("attn_drop_ratio", [0.0, 0.1])
def test_gpu_cuda_graph_training_step(attn_drop_ratio):
    """torch.cuda.make_graphed_callables over the module (forward and backward captured): without
    dropout, replays give bitwise the eager output and every gradient; with attention dropout
    every replay draws new masks (the seed comes from torch's generator inside the graph)."""
    torch.manual_seed(0)
    module = SCSA(64, head_num=4, window_size=7, attn_drop_ratio=attn_drop_ratio, backend="triton").cuda()
    eager = copy.deepcopy(module)  # make_graphed_callables replaces module.forward with the graphs
    sample = torch.randn(4, 64, 28, 28, device="cuda", requires_grad=True)
    graphed = torch.cuda.make_graphed_callables(module, (sample,))
    x = torch.randn_like(sample).requires_grad_()
    grad_out = torch.randn_like(sample)
    if attn_drop_ratio:
        first, second = graphed(x).detach().clone(), graphed(x).detach().clone()
        assert torch.isfinite(first).all() and not torch.equal(first, second)
        return
    out = graphed(x)
    out.backward(grad_out)
    got = [out.detach().clone(), x.grad.clone()] + [p.grad.clone() for p in module.parameters()]
    x_eager = x.detach().clone().requires_grad_()
    out = eager(x_eager)
    out.backward(grad_out)
    want = [out.detach(), x_eager.grad] + [p.grad for p in eager.parameters()]
    for a, b in zip(got, want):
        assert torch.equal(a, b)


@requires_cuda
@pytest.mark.parametrize("shape,dtype,head_num", [((4, 64, 28, 28), torch.float32, 4), ((64, 64, 56, 56), torch.bfloat16, 1)],
                         ids=["small", "resnet50_stage1_bf16"])
def test_gpu_torch_compile_reduce_overhead(shape, dtype, head_num):
    """torch.compile's CUDA graphs (mode="reduce-overhead") over the module: inference replays match
    eager calls, on new inputs and after an in-place weight update. The benchmark's case (64x64x56x56
    bf16) met an illegal memory access in an Inductor copy of the workspace's float64 view before the
    traced workspace took an allocation per buffer (test_traced_workspace_buffers_are_separate_allocations)."""
    module = SCSA(shape[1], head_num=head_num, window_size=7, backend="triton").cuda().to(dtype).eval()
    compiled = torch.compile(module, mode="reduce-overhead", fullgraph=True)
    tolerance = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else {}
    with torch.no_grad():
        for step in range(4):  # the first calls compile and record, later ones replay
            x = torch.randn(shape, device="cuda", dtype=dtype)
            if step == 3:
                _perturb_weights_in_place(module)
            torch.compiler.cudagraph_mark_step_begin()
            out = compiled(x).clone()
            torch.cuda.synchronize()  # an illegal memory access surfaces here, not at a later test
            torch.testing.assert_close(out, module(x), **tolerance)


@requires_cuda
def test_gpu_opcheck():
    from scsa_kernels.ops import triton as ops
    from scsa_kernels.weights import pack_weights
    config = SCSAConfig(16, window_size=3)
    p = pack_weights(random_weights(config, device="cuda"), config)
    p = [t.detach().requires_grad_() for t in p]
    x = torch.randn(2, 16, 9, 9, device="cuda", requires_grad=True)
    torch.library.opcheck(ops.triton_scsa_forward, (x, *p, None, 1, 3, False, False))
    conv_d = torch.randn(16, 16 * 9, device="cuda", requires_grad=True)  # recombination
    torch.library.opcheck(ops.triton_scsa_forward, (x, *p, conv_d, 1, 3, False, False))
    seed = torch.randint(2 ** 62, (1,), device="cuda")  # attention dropout: deterministic given the seed
    torch.library.opcheck(ops.triton_scsa_forward, (x, *p, None, 2, 3, False, True, 0.2, seed))


@requires_cuda
@pytest.mark.slow
def test_gpu_more_than_2_31_elements():
    """9 x 64 x 2048 x 2048 bf16 = 2.4e9 elements (4.8 GB): 64-bit offsets, multi-block rows."""
    free, _ = torch.cuda.mem_get_info()
    if free < 48 * 2 ** 30:
        pytest.skip("needs about 48 GiB of free GPU memory (the float32 reference dominates)")
    config = SCSAConfig(64)
    x = torch.randn(9, 64, 2048, 2048, device="cuda", dtype=torch.bfloat16)
    assert x.numel() > 2 ** 31
    w = random_weights(config, dtype=torch.bfloat16, device="cuda")
    with torch.no_grad():
        out = scsa(x, w, config, backend="triton")
        ref = scsa(x, w, config, backend="reference")
        worst = (out.float() - ref.float()).abs().max().item()
    assert worst <= 2 * 2 ** -8 * max(1.0, ref.float().abs().max().item()), worst
