"""The C++ CPU backend: fused kernels in ``scsa_kernels._C`` (csrc/cpu), exposed as
``torch.ops.scsa_kernels.scsa_forward`` / ``scsa_backward``.

This module adds what the C++ side does not: fake (meta) implementations, so the
ops trace under ``torch.compile`` and ``opcheck``, and the autograd formula
(forward saves x and small tensors only; ``scsa_backward`` computes every
gradient). Every option of SPEC.md runs in the kernels (``unsupported_reason``
only refuses non-CPU tensors). Attention dropout in training draws the masks the
Triton kernels draw from the same seed (ops/dropout.py); the seed is saved for the
backward. ``recombination`` writes its space-to-depth cells in the pool pass (one
|x|-sized fp32 buffer, again in the backward's first pass, not saved) and projects
them with ATen's matmul, one GEMM for the batch between two runs of the stages
(csrc/cpu/schedule.h), so conv_d is read once per call.

Numerics: float16/bfloat16/float32 inputs are computed in float32, float64 in
float64, except the SMSA small stage (depthwise convs, GroupNorm(4), gates; B*C*(H+W)
values), which computes in float64 for every dtype: GroupNorm over a group of a few
near-equal values (4 channels, planes of 1-2 rows) amplifies rounding by rstd, up to
1/sqrt(eps) = 316, and in float32 that put some gradients beyond the tolerance rule
(csrc/cpu/small_stages.h). Every reduction runs inside one task in a fixed order (per-plane sums,
per-sample parameter gradients summed over the batch in order), so results are
bitwise identical for any thread count (recombination's GEMMs: as long as the BLAS
library keeps its summation order across thread counts, as MKL does in the tests).

Threads (csrc/cpu/schedule.h): when the batch keeps every thread busy, threads take
whole samples and run every pass on a sample while its planes are in cache (one
parallel region per call); otherwise each pass is its own parallel loop over planes,
GroupNorm groups or attention rows (batch 1 on many cores).

Eager training calls go through one autograd node (ops/eager.py) instead of the
registered op's Python autograd plus the packing ops; inference calls go straight to
the kernel (below the autograd layer, with cached packed weights); torch.compile and
opcheck use the registered ops.
"""
from __future__ import annotations

from typing import Optional

import torch

from ..reference import compute_dtype
from ..weights import cached_packed_weights, conv_d_matrix, unpack_gradients
from . import dropout
from .eager import FusedKernels, fused_scsa_with_grad, needs_autograd

NAME = "cpu"

try:
    from .. import _C  # noqa: F401  (loading the library registers torch.ops.scsa_kernels)
    _IMPORT_ERROR: Optional[str] = None
except Exception as exc:  # missing or broken build: report it, never crash at import
    _IMPORT_ERROR = (f"the C++ extension scsa_kernels._C could not be imported ({type(exc).__name__}: {exc}); "
                     "build it with `pip install --no-build-isolation -e .` after installing torch")


def unavailable_reason() -> Optional[str]:
    return _IMPORT_ERROR


def unsupported_reason(x, config, training) -> Optional[str]:
    if x.device.type != "cpu":
        return f"the cpu backend runs on CPU tensors, got a tensor on {x.device}"
    return None


def _forward(x, packed, weights, config, training):
    """-> (out, the op's small tensors, the dropout seed or None)."""
    dropout_p, dropout_seed = dropout.attention_dropout_args(config, training, x.device)
    return (*torch.ops.scsa_kernels.scsa_forward(x, *packed, *config.kernel_options, dropout_p, dropout_seed,
                                                 conv_d_matrix(weights, config)),
            dropout_seed)


def _backward(grad_out, x, packed, saved, weights, config):
    *small, dropout_seed = saved
    conv_d = conv_d_matrix(weights, config)
    grad_x, *packed_grads, grad_conv_d = torch.ops.scsa_kernels.scsa_backward(
        grad_out, x, *packed, *small, *config.kernel_options, dropout.saved_dropout_p(config, dropout_seed),
        dropout_seed, conv_d)
    return (grad_x, unpack_gradients(packed_grads, weights, config),
            [] if conv_d is None else [grad_conv_d.view_as(weights.conv_d_weight)])


KERNELS = FusedKernels(_forward, _backward)


def scsa(x, weights, config, training):
    packed = lambda: cached_packed_weights(weights, config, compute_dtype(x.dtype))
    if torch.compiler.is_compiling():  # the registered op, with its autograd formula
        return _forward(x, packed(), weights, config, training)[0]
    if needs_autograd(x, weights):
        return fused_scsa_with_grad(KERNELS, x, weights, config, training)  # eager training: one node
    # Inference (packed weights cached): nothing to record, so the call goes straight
    # to the kernel, as the registered autograd itself would redispatch it (the
    # Python autograd layer cost ~10 us per call, ~7% of a batch-1 ResNet-shape forward here).
    with torch._C._AutoDispatchBelowAutograd():
        return _forward(x, packed(), weights, config, training)[0]


if _IMPORT_ERROR is None:
    _lib_forward = "scsa_kernels::scsa_forward"
    _lib_backward = "scsa_kernels::scsa_backward"

    @torch.library.register_fake(_lib_forward)
    def _forward_fake(x, conv_weight, conv_bias, norm_h_weight, norm_h_bias, norm_w_weight, norm_w_bias,
                      norm_weight, norm_bias, qkv_weight, qkv_bias, head_num, window_size, max_pool, softmax_gate,
                      dropout_p=0.0, dropout_seed=None, conv_d=None):
        batch, channels, height, width = x.shape
        positions = 1 if window_size == -1 else (height // window_size) * (width // window_size)
        small = lambda *shape: x.new_empty(shape, dtype=conv_weight.dtype)
        argmax = x.new_empty((batch if max_pool and window_size != -1 else 0, channels, positions),
                             dtype=torch.long)
        return (torch.empty_like(x), small(batch, channels, height), small(batch, channels, width),
                small(batch, channels, height), small(batch, channels, width), small(batch, channels, positions),
                argmax, small(batch, channels), small(batch, channels))

    @torch.library.register_fake(_lib_backward)
    def _backward_fake(grad_out, x, conv_weight, conv_bias, norm_h_weight, norm_h_bias, norm_w_weight,
                       norm_w_bias, norm_weight, norm_bias, qkv_weight, qkv_bias, x_h, x_w, a_h, a_w, pooled, argmax,
                       attn_lse, ca, head_num, window_size, max_pool, softmax_gate, dropout_p=0.0,
                       dropout_seed=None, conv_d=None):
        weights = (conv_weight, conv_bias, norm_h_weight, norm_h_bias, norm_w_weight, norm_w_bias, norm_weight,
                   norm_bias, qkv_weight, qkv_bias)
        grad_conv_d = conv_weight.new_empty(0) if conv_d is None else torch.empty_like(conv_d)
        return (torch.empty_like(x), *(torch.empty_like(w, memory_format=torch.contiguous_format)
                                      for w in weights), grad_conv_d)

    def _setup_context(ctx, inputs, output):
        x, *weights = inputs[:11]
        ctx.options = inputs[11:16]  # head_num, window_size, max_pool, softmax_gate, dropout_p
        ctx.save_for_backward(x, *weights, *output[1:], *inputs[16:18])  # and the dropout seed, conv_d
        ctx.mark_non_differentiable(*output[1:])

    def _backward(ctx, grad_out, *unused_small_grads):
        x, *rest, dropout_seed, conv_d = ctx.saved_tensors
        weights, saved = rest[:10], rest[10:]
        *grads, grad_conv_d = torch.ops.scsa_kernels.scsa_backward(grad_out, x, *weights, *saved, *ctx.options,
                                                                   dropout_seed, conv_d)
        return (*grads, *[None] * 6, None if conv_d is None else grad_conv_d)

    torch.library.register_autograd(_lib_forward, _backward, setup_context=_setup_context)
