"""Triton kernels of the fused SCSA forward and backward (see scsa_kernels/ops/triton.py for the wiring).

One file per stage family:

- ``plane_stats``: per-plane row/column (weighted) sums: the forward stats pass and backward pass (a).
- ``spatial_gates``: depthwise convs + GroupNorm(4) + gate of both directions, forward and backward.
- ``pooling``: the forward pool pass (x * a_h * a_w pooled into windows, avg or max with argmax).
- ``channel_attention``: GroupNorm(1) + q/k/v + flash-style channel attention + gate, forward and backward.
- ``apply``: the forward apply pass (out = x * a_h * a_w * ca).
- ``input_grad``: backward pass (b) (pool-gradient row/column sums, reads x) and pass (c) (dx, reads grad_out).
"""
