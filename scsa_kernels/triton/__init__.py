"""Triton kernels of the fused SCSA forward and backward (see scsa_kernels/ops/triton.py for the wiring).

One file per stage family:

- ``plane_stats``: per-plane row/column (weighted) sums: the forward stats pass and backward pass (a).
- ``spatial_gates``: depthwise convs + GroupNorm(4) + gate of both directions, forward and backward.
- ``pooling``: the forward pool pass (x * a_h * a_w pooled into windows, avg or max with argmax).
- ``channel_attention``: GroupNorm(1) + q/k/v + flash-style channel attention + gate, forward and backward.
- ``apply``: the forward apply pass (out = x * a_h * a_w * ca).
- ``input_grad``: backward pass (b) (pool-gradient row/column sums, reads x) and pass (c) (dx, reads grad_out).
- ``parameters``: the eager training path's weight packing and parameter gradients.
"""


KERNEL_MODULES = ("apply", "channel_attention", "input_grad", "parameters", "plane_stats", "pooling", "spatial_gates")


def kernel_modules():
    """Every kernel module, imported. Imports triton: call it only where the kernels are used."""
    import importlib
    return tuple(importlib.import_module(f"{__name__}.{name}") for name in KERNEL_MODULES)


def autotuned_kernels():
    """Every autotuned kernel (triton.autotune Autotuners with ``all_configs`` and ``configs_for``),
    after importing every kernel module."""
    kernel_modules()
    from ._common import AUTOTUNED_KERNELS
    return tuple(AUTOTUNED_KERNELS)
