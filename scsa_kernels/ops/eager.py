"""One autograd node per eager training call of a fused backend.

The registered ops (torch.library) are what torch.compile traces and opcheck checks.
In eager mode, their Python autograd wrapper plus the separate differentiable
packing of the weights cost more host time than the fused CPU kernels themselves
at small shapes. This node packs the weights without autograd (the backend's ``pack``:
torch ops, or one kernel), runs the backend's forward, and in backward runs its backward,
which returns the parameters' gradients (the packed ones mapped back by the adjoint of the
packing, ``weights.unpack_gradients``, or by a kernel).

The fused backward computes numbers, not a graph. A backward with ``create_graph=True`` (gradient
penalties, double backward) gets the reference's differentiable gradients instead, from the same
x and parameters, with the masks the forward's kernels drew when attention dropout ran.
"""
from __future__ import annotations

import torch

from ..reference import compute_dtype, scsa_reference
from ..weights import pack_weights, packed_parameters, unpacked_parameters
from .dropout import kernel_masks_dropout


def pack_with_torch(x, weights, config):
    """``weights.pack_weights`` in x's compute dtype: the default ``FusedKernels.pack``."""
    return pack_weights(weights, config, compute_dtype(x.dtype))


class FusedKernels:
    """A fused backend's entry points as this node calls them.

    pack(x, weights, config) -> PackedWeights: ``weights.pack_weights``'s values in x's compute dtype
        (called with grad mode off).
    forward(x, packed, weights, config, training) -> (out, *saved): out has x's shape and dtype; saved
        are what its backward needs besides x and the packed weights (tensors or None), the last
        one the attention dropout seed ((1,) int64) or None when no dropout ran.
    backward(grad_out, x, packed, saved, weights, config) -> (grad_x, parameter_grads, unpacked_grads):
        gradients of x, of ``weights.packed_parameters(weights, config)`` (in their shapes, e.g. by
        ``weights.unpack_gradients`` of the packed tensors' gradients) and of
        ``weights.unpacked_parameters(weights, config)`` (conv_d).
    """

    def __init__(self, forward, backward, pack=pack_with_torch):
        self.forward = forward
        self.backward = backward
        self.pack = pack


def needs_autograd(x, weights) -> bool:
    """Whether this call must record a backward (grad mode on and some input requires grad)."""
    return torch.is_grad_enabled() and (x.requires_grad or any(t.requires_grad for t in weights.tensors()))


def fused_scsa_with_grad(kernels: FusedKernels, x, weights, config, training: bool):
    """``out`` of the fused SCSA, differentiable in x and every parameter the backend reads, as one node."""
    params = packed_parameters(weights, config) + unpacked_parameters(weights, config)
    return _FusedSCSAFunction.apply(kernels, config, training, weights, x, *params)


class _FusedSCSAFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, kernels, config, training, weights, x, *params):
        packed = kernels.pack(x, weights, config)  # grad mode is off in here
        out, *saved = kernels.forward(x, packed, weights, config, training)
        ctx.kernels, ctx.config, ctx.weights, ctx.training = kernels, config, weights, training
        # the parameters too, unread: autograd's version check then refuses a backward after an in-place
        # write to one (the backward reads conv_d, and the reference's, from the parameters), as the
        # reference's autograd does
        ctx.save_for_backward(x, *packed, *saved, *params)
        ctx.n_saved = len(saved)
        return out

    @staticmethod
    def backward(ctx, grad_out):
        x, *packed_and_saved = ctx.saved_tensors
        packed, saved = packed_and_saved[:10], packed_and_saved[10:10 + ctx.n_saved]
        if torch.is_grad_enabled():  # backward(create_graph=True)
            return (None, None, None, None, *_differentiable_grads(ctx, x, saved[-1], grad_out))
        grad_x, parameter_grads, unpacked_grads = ctx.kernels.backward(grad_out, x, packed, saved, ctx.weights,
                                                                       ctx.config)
        return (None, None, None, None, grad_x, *parameter_grads, *unpacked_grads)


def _differentiable_grads(ctx, x, dropout_seed, grad_out):
    """Gradients of x and of the node's parameters, as the reference's autograd gives them, with a
    graph of their own (None for inputs that need none). dropout_seed: the forward's, or None."""
    weights, config = ctx.weights, ctx.config
    inputs = [x, *packed_parameters(weights, config), *unpacked_parameters(weights, config)]
    dropout = kernel_masks_dropout(dropout_seed, config, x.shape[0], compute_dtype(x.dtype))
    out = scsa_reference(x, weights, config, ctx.training, attention_dropout=dropout)
    wanted = [t for t in inputs if t.requires_grad]
    grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    return [next(grads) if t.requires_grad else None for t in inputs]
