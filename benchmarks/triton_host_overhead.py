"""Per-call HOST cost of the Triton backend path, measured on the CPU with Triton's launcher stubbed.

    python benchmarks/triton_host_overhead.py [--reps 2000] [--profile fwdbwd] [--threads 1]

Runs module -> functional.scsa -> backends -> ops.triton on CPU tensors with the kernels compiled
as on a GPU (``@triton.jit`` JITFunctions, not the interpreter: TRITON_INTERPRET must be unset)
and Triton's launch entry point (``JITFunction.run``) replaced by a no-op, so no kernel runs and
outputs are garbage (the autotuner runs, its benchmark stubbed: the first config wins). What is
left is what a GPU call pays on the host up to Triton's launcher: Python, torch dispatch,
autograd, allocations, weight packing, argument preparation, the path each launch takes to Triton
(``_launch``; ``wrap_triton`` where tracing) and the autotuner's per-call key lookup.
Not included: Triton's own launcher (argument binding, its kernel cache lookup, the driver call);
``kernel_profile.py`` gives the whole host time on a GPU. Stubbing ``ops.triton._launch`` instead
(this script before 2026-11-26) hid that every eager launch went through ``wrap_triton``'s tracing
HOP, milliseconds per call. Prints median microseconds per call for forward under no_grad, forward
with autograd (weights requiring grad, nothing backpropagated) and forward+backward.
"""
from __future__ import annotations

import argparse
import importlib
import os
import statistics
import sys
import time
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout first
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: this measures the GPU path's kernels (JITFunction), not the interpreter's")

import torch  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402
from triton.runtime.jit import JITFunction  # noqa: E402
from torch._higher_order_ops.triton_kernel_wrap import triton_kernel_wrapper_mutation  # noqa: E402

from scsa_kernels.module import SCSA  # noqa: E402

LAUNCHES = []      # kernels that reached Triton's launcher
HOP_LAUNCHES = []  # launches that went there through wrap_triton's HOP (eager calls should not)


def _record_launch(kernel, *args, **kwargs):
    """Stand-in for Triton's launcher: counts the launch, runs nothing."""
    LAUNCHES.append(kernel)


def _count_hop_launches():
    hop = type(triton_kernel_wrapper_mutation)
    call = hop.__call__

    def counted(self, *args, **kwargs):
        HOP_LAUNCHES.append(kwargs.get("kernel_idx"))
        return call(self, *args, **kwargs)

    hop.__call__ = counted


def _equal_timings(self, *args, config, **kwargs):
    """Stand-in for the autotuner's benchmark of one config: all tie, the first config wins."""
    return [1.0, 1.0, 1.0]


def triton_ops_without_gpu():
    """ops.triton as on a GPU machine (its triton_op registered), accepting CPU tensors, with
    Triton's launch entry point and autotune benchmark stubbed and the launches through
    wrap_triton's HOP counted."""
    JITFunction.run = _record_launch
    Autotuner._bench = _equal_timings
    _count_hop_launches()
    with mock.patch.object(torch.cuda, "is_available", lambda: True):  # availability is decided at import
        ops = importlib.import_module("scsa_kernels.ops.triton")
    ops.unsupported_reason = lambda x, config, training: None
    return ops


def cases(shape, dtype):
    module = SCSA(shape[1], window_size=7, backend="triton").to(dtype)
    x = torch.randn(*shape, dtype=dtype)
    xg = x.clone().requires_grad_()

    def fwd_nograd():
        with torch.no_grad():
            module(x)

    def fwd_grad():
        module(xg)

    def fwd_bwd():
        module(xg).sum().backward()

    return {"fwd_nograd": fwd_nograd, "fwd_grad": fwd_grad, "fwdbwd": fwd_bwd}


def median_us(fn, reps, warmup=50):
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - t0)
    return statistics.median(times) / 1e3


def launches_per_call(fn):
    """(launches, of which through wrap_triton's HOP) of one call."""
    LAUNCHES.clear()
    HOP_LAUNCHES.clear()
    fn()
    return len(LAUNCHES), len(HOP_LAUNCHES)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", type=int, nargs=4, default=[2, 64, 14, 14])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--via-op", action="store_true",
                        help="eager calls through the triton_op and its registered autograd (the path "
                             "before the dispatcher bypass; torch.compile's path)")
    parser.add_argument("--profile", choices=["fwd_nograd", "fwd_grad", "fwdbwd"], default=None,
                        help="also print the cProfile top entries of one case (first dtype)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ops = triton_ops_without_gpu()
    assert ops.unavailable_reason() is None, ops.unavailable_reason()
    ops.EAGER_BYPASS = not args.via_op  # the GPU default
    print(f"torch {torch.__version__}, shape {tuple(args.shape)}, {args.threads} thread(s), "
          f"median of {args.reps} calls, Triton's launcher stubbed")
    for name in args.dtypes:
        dtype = getattr(torch, name)
        row = {k: (median_us(fn, args.reps), launches_per_call(fn)) for k, fn in cases(args.shape, dtype).items()}
        print(f"{name:9s} " + "  ".join(f"{k} {us:8.1f} us ({n} launches, {hop} via HOP)"
                                        for k, (us, (n, hop)) in row.items()))
    if args.profile:
        import cProfile
        import pstats
        fn = cases(args.shape, getattr(torch, args.dtypes[0]))[args.profile]
        median_us(fn, 10)
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(500):
            fn()
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    main()
