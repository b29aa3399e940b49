"""Memory traffic and launch budget of the Triton backend, counted under the interpreter.

Every load and store of an interpreted kernel goes through
``InterpreterBuilder.create_masked_load/create_masked_store``; wrapping them and summing the
active lanes times the element size counts the bytes each kernel moves, exactly (caches
aside: on a GPU the small tensors are re-read from L1/L2). Bytes are attributed to the
full-size tensors (x, out, grad_out, dx) by address (out and dx from their allocation in ops.triton,
``_empty_like``); everything else is "small".

Budgets held here (the design of scsa_kernels/ops/triton.py):
- forward: x read <= 3 |x|, out written once (|x| bytes) and never read; 5 Triton launches (6 with the
  softmax gate);
- backward: x read <= 2 |x|, grad_out read <= 2 |x|, dx written once and never read; 6 Triton launches: its 5
  passes and a rerun of the spatial gate kernel, as the forward keeps at most the row/column means
  and the channel attention's statistics (``_kept_for_backward``: within 10% of x's bytes, the
  means first). Without the statistics (at the ResNet-50 shapes: 7x7 planes) it reruns the
  channel attention forward too (tiny): one more launch, two with the softmax gate. Without the means (every plane
  of 28x28 or less in bfloat16, of 14x14 or less in float32) it first recomputes them: one more
  read of x (<= 3 |x|) and one more launch;
- recombination adds its space-to-depth cells (B, C*ws*ws, N) fp32 (at most 4/itemsize |x|; the
  1x1 projection and its backward are torch matmuls inside the op): the forward writes them once
  (3 reads of x + 2 |x|-sized writes), the backward writes them once and reads their gradient
  twice, in one more launch (``pooled_grad``, dp for the projection's backward);
- small tensors, both directions: <= (6K + 30) * 4 bytes * B*C*(H+W)
  + SMALL_PER_POOLED * 4 bytes * B*C*N*(1 + D/32) (N pooled positions, D channels per head).
  The spatial gate kernels recompute the K-tap conv of the (B, C, H+W) means in each of their
  passes instead of keeping scratch copies, hence the K-sized factor.
"""
import contextlib
from unittest import mock

import numpy as np
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import HAS_CUDA
from scsa_kernels import backends
from scsa_kernels.config import SCSAConfig
from scsa_kernels.functional import scsa
from scsa_kernels.ops.triton import saves_attention_stats, saves_means
from scsa_kernels.testing import random_weights

pytestmark = [
    pytest.mark.skipif(HAS_CUDA, reason="counts bytes in the Triton interpreter (CPU only)"),
    pytest.mark.skipif(backends.unavailable_reason("triton") is not None, reason="triton backend unavailable"),
]

FORWARD_LAUNCHES = {"sigmoid": 5, "softmax": 6}
BACKWARD_LAUNCHES = 6
RECOMPUTED_STATS_LAUNCHES = {"sigmoid": 1, "softmax": 2}
RECOMPUTED_MEANS_LAUNCHES = 1
RECOMBINATION_BACKWARD_LAUNCHES = 1
# Outside the Triton kernels: pack_weights (pads, cats, stack, and casts of half parameters to
# float32: 24 ops for bfloat16 parameters, 8 for float32), the op itself, and in the backward the
# two gradient sums plus pack_weights' backward (casts back, pad slices).
TORCH_OPS = {"forward": 25, "backward": 21}
SMALL_PER_POOLED = 24


class Traffic:
    """Bytes loaded/stored per named region, and launches, while active."""

    def __init__(self, **regions):
        self.regions = {n: (t.data_ptr(), t.data_ptr() + t.untyped_storage().nbytes()) for n, t in regions.items()}
        self.loads, self.stores, self.launches = {}, {}, 0
        self.kernel, self.kernel_stores = None, {}  # the running kernel's name; bytes stored per kernel

    def register(self, name, t):
        """Counts the bytes at t's storage as region ``name`` from now on."""
        self.regions[name] = (t.data_ptr(), t.data_ptr() + t.untyped_storage().nbytes())

    def _add(self, table, ptrs, mask):
        addrs = ptrs.data[mask.data.astype(bool)] if mask is not None else ptrs.data.ravel()
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        rest = np.ones(addrs.shape, dtype=bool)
        for name, (lo, hi) in self.regions.items():
            inside = (addrs >= lo) & (addrs < hi)
            table[name] = table.get(name, 0) + int(inside.sum()) * size
            rest &= ~inside
        table["small"] = table.get("small", 0) + int(rest.sum()) * size
        return addrs.size * size

    def __enter__(self):
        from triton.runtime import interpreter
        self._patch = interpreter
        self._load = interpreter.InterpreterBuilder.create_masked_load
        self._store = interpreter.InterpreterBuilder.create_masked_store
        self._run = interpreter.InterpretedFunction.run
        traffic = self

        def load(builder, ptrs, mask, *args):
            traffic._add(traffic.loads, ptrs, mask)
            return traffic._load(builder, ptrs, mask, *args)

        def store(builder, ptrs, value, mask, *args):
            stored = traffic._add(traffic.stores, ptrs, mask)
            traffic.kernel_stores[traffic.kernel] = traffic.kernel_stores.get(traffic.kernel, 0) + stored
            return traffic._store(builder, ptrs, value, mask, *args)

        def run(fn, *args, **kwargs):
            traffic.launches += 1
            traffic.kernel = fn.fn.__name__
            return traffic._run(fn, *args, **kwargs)

        interpreter.InterpreterBuilder.create_masked_load = load
        interpreter.InterpreterBuilder.create_masked_store = store
        interpreter.InterpretedFunction.run = run
        return self

    def __exit__(self, *exc):
        self._patch.InterpreterBuilder.create_masked_load = self._load
        self._patch.InterpreterBuilder.create_masked_store = self._store
        self._patch.InterpretedFunction.run = self._run


class TorchOps(TorchDispatchMode):
    """Counts aten ops that launch work (allocations and views excluded)."""
    FREE = ("empty", "view", "_unsafe_view", "as_strided", "detach", "alias", "t", "transpose", "select",
            "slice", "unsqueeze", "squeeze", "permute", "expand", "split", "lift_fresh", "_to_copy_noop")

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if not any(name == f or name.startswith(f + "_") and f == "empty" for f in self.FREE):
            self.ops.append(name)
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def full_size_output(traffic, name):
    """While active, the tensor ops.triton allocates with ``_empty_like`` (out in the forward, dx in the
    backward: its only full-size allocations) is ``traffic``'s region ``name``."""
    from scsa_kernels.ops import triton as ops
    allocate = ops._empty_like

    def allocate_and_register(*args, **kwargs):
        t = allocate(*args, **kwargs)
        traffic.register(name, t)
        return t

    with mock.patch.object(ops, "_empty_like", allocate_and_register):
        yield


def measure(shape, config, dtype=torch.bfloat16, channels_last=False):
    x = torch.randn(shape, dtype=dtype)
    if channels_last:  # the plane passes take channel tiles: the same bytes, in other programs
        x = x.contiguous(memory_format=torch.channels_last)
    weights = random_weights(config, dtype=dtype).map(lambda t: t.requires_grad_())
    x.requires_grad_()
    out_holder = {}
    with TorchOps() as fwd_ops:
        with Traffic(x=x) as fwd, full_size_output(fwd, "out"):
            out = scsa(x, weights, config, backend="triton")
    grad_out = torch.randn_like(out)
    with Traffic(x=x, grad_out=grad_out) as bwd, full_size_output(bwd, "dx"):
        with TorchOps() as bwd_ops:
            torch.autograd.grad(out, [x, *weights.tensors()], grad_out)
    out_holder["out"] = out
    return x, fwd, bwd, fwd_ops, bwd_ops


def small_bound(shape, config):
    B, C, H, W = shape
    hp, wp = config.pooled_size(H, W)
    n = hp * wp
    per_line = 6 * config.max_kernel_size + 30
    return 4 * (per_line * B * C * (H + W) + SMALL_PER_POOLED * B * C * n * (1 + config.head_dim / 32))


def cells_bytes(shape, config):
    """Bytes of recombination's fp32 space-to-depth cells (0 for the pooling modes)."""
    if not config.uses_conv_d:
        return 0
    B, C, H, W = shape
    hp, wp = config.pooled_size(H, W)
    return 4 * B * C * hp * wp * config.window_size ** 2


def report(label, shape, config, x, fwd, bwd, fwd_ops, bwd_ops):
    nx = x.numel() * x.element_size()
    f = lambda d, k: d.get(k, 0) / nx
    print(f"\n{label} {tuple(shape)} {x.dtype}: |x| = {nx} bytes, small-tensor bound {small_bound(shape, config):.0f}"
          f" B, recombination cells {cells_bytes(shape, config)} B, means saved: {saves_means(x.shape, x.dtype)},"
          f" attention statistics saved: {saves_attention_stats(x.shape, x.dtype)}")
    print(f"  forward : x read {f(fwd.loads, 'x'):.3f}|x|, out write {f(fwd.stores, 'out'):.3f}|x|,"
          f" small read {fwd.loads.get('small', 0)} B, small write {fwd.stores.get('small', 0)} B,"
          f" {fwd.launches} Triton launches, torch ops {len(fwd_ops.ops)}: {fwd_ops.ops}")
    print(f"  backward: x read {f(bwd.loads, 'x'):.3f}|x|, grad_out read {f(bwd.loads, 'grad_out'):.3f}|x|,"
          f" dx write {f(bwd.stores, 'dx'):.3f}|x|,"
          f" small read {bwd.loads.get('small', 0)} B, small write {bwd.stores.get('small', 0)} B,"
          f" {bwd.launches} Triton launches, torch ops {len(bwd_ops.ops)}: {bwd_ops.ops}")


CASES = {
    "resnet50_layer1_batch1": ((1, 64, 56, 56), SCSAConfig(64)),
    "softmax_maxpool_heads": ((2, 32, 15, 17), SCSAConfig(32, head_num=2, window_size=3, down_sample_mode="max_pool",
                                                          gate_layer="softmax", qkv_bias=True)),
    "global_pool": ((1, 16, 20, 24), SCSAConfig(16, window_size=-1)),
    "recombination": ((2, 16, 9, 10), SCSAConfig(16, head_num=2, window_size=3, down_sample_mode="recombination")),
    "channels_last_partial_tile": ((2, 24, 11, 9), SCSAConfig(24, window_size=3, down_sample_mode="max_pool")),
    # planes too small to keep the means or the attention statistics (bfloat16): both recomputed
    "small_plane_softmax": ((2, 32, 5, 6), SCSAConfig(32, window_size=2, gate_layer="softmax")),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_traffic_and_launches(name):
    shape, config = CASES[name]
    x, fwd, bwd, fwd_ops, bwd_ops = measure(shape, config, channels_last=name.startswith("channels_last"))
    report(name, shape, config, x, fwd, bwd, fwd_ops, bwd_ops)
    nx = x.numel() * x.element_size()
    assert fwd.loads["x"] > 0 and bwd.loads["x"] > 0, "address attribution failed"
    assert fwd.loads["x"] <= 3 * nx
    assert fwd.stores.get("x", 0) == 0
    assert fwd.stores["out"] == nx and fwd.loads.get("out", 0) == 0  # every element of out written once
    means_saved = saves_means(x.shape, x.dtype)
    assert bwd.loads["x"] <= (2 if means_saved else 3) * nx
    assert bwd.loads["grad_out"] <= 2 * nx
    assert bwd.stores.get("x", 0) == 0 and bwd.stores.get("grad_out", 0) == 0
    assert bwd.stores["dx"] == nx and bwd.loads.get("dx", 0) == 0  # every element of dx written once
    assert fwd.launches == FORWARD_LAUNCHES[config.gate_layer]
    stats_saved = saves_attention_stats(x.shape, x.dtype)
    assert bwd.launches == (BACKWARD_LAUNCHES + (0 if means_saved else RECOMPUTED_MEANS_LAUNCHES)
                            + (0 if stats_saved else RECOMPUTED_STATS_LAUNCHES[config.gate_layer])
                            + (RECOMBINATION_BACKWARD_LAUNCHES if config.uses_conv_d else 0))
    assert len(fwd_ops.ops) <= TORCH_OPS["forward"] and len(bwd_ops.ops) <= TORCH_OPS["backward"]
    bound, cells = small_bound(shape, config), cells_bytes(shape, config)
    assert fwd.stores["small"] <= bound + cells and fwd.loads["small"] <= bound
    assert bwd.stores["small"] <= bound + cells and bwd.loads["small"] <= bound + 2 * cells


def test_attention_backward_stores_its_rows_once_when_one_step_covers_the_positions():
    """With N <= BLOCK_P pooled positions (planes up to 28x28 at window 7) the attention backward keeps
    its dq/dk rows in registers over the column blocks. Its stores: dq, dk, dy (C*N floats each),
    8 per-channel parameter partials and 2 sums per program, not dq and dk once per column block
    (16 of them at D = 512: more bytes than x itself at 7x7 in bfloat16)."""
    from scsa_kernels.ops.triton import ATTENTION_BLOCK_D
    B, C, N = 2, 512, 1
    _, _, bwd, _, _ = measure((B, C, 7, 7), SCSAConfig(C))
    programs = B * C // ATTENTION_BLOCK_D["backward"]
    stored = bwd.kernel_stores["channel_attention_bwd_kernel"]
    print(f"\nchannel_attention_bwd_kernel at {(B, C, 7, 7)}: {stored} bytes stored")
    assert stored <= 4 * (B * (3 * C * N + 8 * C) + 2 * programs)
