"""Device time of the channel attention kernels with each product route, on a GPU.

    python benchmarks/attention_routes.py [--reps 20] [--dtype bfloat16] [--shape B C H W ...]

The attention kernels (scsa_kernels/triton/channel_attention.py) take their score and dq/dk
products as tl.dots over 16 pooled positions per step, or as rank-1 updates, one position per
step; ops.triton picks dots from 9 positions on (``_attention_blocks``). For each shape
(window 7, the module's defaults otherwise), one forward+backward per call under torch.profiler:
microseconds per call of channel_attention_fwd_kernel (it runs in the forward and again in the
backward) and channel_attention_bwd_kernel, with the route the rule picks and with each route
forced (rank-1 only up to 16 positions: its (BLOCK_D, BLOCK_P) dq/dk rows live in registers).
Every route's output and gradients are checked against the reference by the tolerance rule
(scsa_kernels.testing): a row that fails says FAIL with its worst tensor, and the script exits 1.
"""
from __future__ import annotations

import argparse
import functools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout first
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402

from kernel_profile import one_call, profiled_tables  # noqa: E402
from scsa_kernels.module import SCSA  # noqa: E402
from scsa_kernels.ops import triton as ops  # noqa: E402
from scsa_kernels.testing import compare_backend, random_weights  # noqa: E402

DEFAULT_SHAPES = [(64, 512, 7, 7), (64, 256, 14, 14), (64, 128, 28, 28), (64, 64, 56, 56)]
KERNELS = ("channel_attention_fwd_kernel", "channel_attention_bwd_kernel")
ROUTES = {"rule": None, "dot": True, "rank1": False}
MAX_RANK1_POSITIONS = 16


ORIGINAL_BLOCKS = ops._attention_blocks


def routed(route):
    """ops.triton with the attention product route forced ("rule": ops.triton's own); plans rebuilt."""
    dot = ROUTES[route]
    ops._attention_blocks = ORIGINAL_BLOCKS if dot is None else functools.partial(ORIGINAL_BLOCKS, dot=dot)
    ops._FORWARD_PLANS.clear()
    ops._BACKWARD_PLANS.clear()


def verdict(config, x):
    """'ok' or 'FAIL <worst tensor> <error> > <bound>': the triton backend's output and every gradient
    against the reference by the tolerance rule, with fresh random parameters (non-trivial gates)."""
    weights = random_weights(config, dtype=x.dtype, device=x.device)
    results = compare_backend("triton", x.detach(), weights, config)
    worst = max(results, key=lambda r: r.error / r.bound if r.bound else float("inf"))
    return "ok" if all(r.ok for r in results) else f"FAIL {worst.name} {worst.error:.3g} > {worst.bound:.3g}"


def report(shape, dtype, reps):
    module = SCSA(shape[1], window_size=7, backend="triton").to(device="cuda", dtype=dtype)
    x = torch.randn(shape, device="cuda", dtype=dtype).requires_grad_()
    grad_out = torch.randn_like(x)
    positions = (shape[2] // 7) * (shape[3] // 7)
    failed = 0
    for route in ROUTES:
        if route == "rank1" and positions > MAX_RANK1_POSITIONS:
            continue
        routed(route)
        for _ in range(3):  # compile, autotune
            one_call(module, x, grad_out, "forward+backward")
        kernels, _ = profiled_tables(module, x, grad_out, "forward+backward", reps)
        times = {name: us for name, _, us in kernels}
        print(f"{'x'.join(map(str, shape))} N={positions:<3} {route:<9} "
              + "  ".join(f"{name} {times.get(name, float('nan')):8.1f} us" for name in KERNELS)
              + f"  {(result := verdict(module.config, x))}", flush=True)
        failed += result != "ok"
    routed("rule")
    return failed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--shape", type=int, nargs=4, action="append", help="B C H W; repeatable")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (device time of the Triton kernels)")
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}, {args.reps} forward+backward calls per row")
    failed = sum(report(shape, getattr(torch, args.dtype), args.reps)
                 for shape in ([tuple(s) for s in args.shape] if args.shape else DEFAULT_SHAPES))
    if failed:
        sys.exit(f"{failed} route(s) did not match the reference")


if __name__ == "__main__":
    main()
