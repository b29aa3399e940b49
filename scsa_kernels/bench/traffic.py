"""The bytes each benchmark mode must move, and the device's measured copy bandwidth.

Bandwidth model: the physical floor of SCSA's full-size traffic (DESIGN.md, "Kernel plan").
Only x-sized tensors count; the parameters and the (B,C,H), (B,C,W), (B,C,N) side
tensors are under 1% of |x| at every benchmark shape and are left out.

- forward: read x, write out                                  = 2 |x|
- backward: read x and grad_out, write dx                     = 3 |x|
  (grad_out alone cannot give dx: d(a_h), d(a_w), d(ca) need x)
- forward+backward: the sum                                   = 5 |x|

|x| = numel * itemsize of x's dtype. A kernel that reaches the floor achieves 100% of
the copy bandwidth; the fused forward plan (3 reads + 1 write) tops out at 50%.
"""
from __future__ import annotations

import torch

from .timing import time_workloads

MODES = ("forward", "backward", "forward+backward")
X_PASSES = {"forward": 2, "backward": 3, "forward+backward": 5}  # full-size reads + writes per mode
# The fused plan's full-size transfers (DESIGN.md "Kernel plan": forward 3 reads of x + 1 write, backward
# 2 reads of x, 2 of grad_out, 1 write of dx): the bytes the kernels must move, which the Triton targets'
# bandwidth is judged by (X_PASSES is the physical floor); tests/test_triton_traffic.py holds the kernels to them
PLAN_PASSES = {"forward": 4, "backward": 5, "forward+backward": 9}


def floor_bytes(mode: str, numel: int, dtype: torch.dtype) -> int:
    """Bytes the bandwidth model says ``mode`` must move for an x of ``numel`` elements of ``dtype``."""
    if mode not in X_PASSES:
        raise ValueError(f"--mode must be one of {MODES}, got {mode!r}")
    return X_PASSES[mode] * numel * dtype.itemsize


def gigabytes_per_second(num_bytes: int, milliseconds: float) -> float:
    return num_bytes / (milliseconds * 1e-3) / 1e9


def copy_bandwidth(device: torch.device, num_bytes: int, rep_ms: float = 200.0) -> float:
    """Measured copy bandwidth of ``device`` in GB/s: dst.copy_(src) of ``num_bytes`` (choose it
    several times the last-level cache), counted as one read plus one write, median time."""
    src = torch.empty(num_bytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    copy = lambda: dst.copy_(src)
    timing = time_workloads(device, {"copy": (lambda: None, lambda _: copy())}, warmup_ms=rep_ms / 4,
                            rep_ms=rep_ms)["copy"]
    return gigabytes_per_second(2 * src.numel() * src.element_size(), timing.median_ms)
