"""Per-call HOST cost of the Triton backend path, measured on the CPU, up to the CUDA driver call.

    python benchmarks/triton_host_overhead.py [--reps 2000] [--profile fwdbwd] [--threads 1]
                                              [--no-direct-launch] [--via-op]

Runs module -> functional.scsa -> backends -> ops.triton on CPU tensors with the kernels compiled
as on a GPU (``@triton.jit`` JITFunctions compiled for sm_90, not the interpreter: TRITON_INTERPRET
must be unset) and Triton's active driver replaced by host_only_triton.HostOnlyDriver, whose
launcher records nothing and runs nothing: outputs are garbage (the autotuner runs, its benchmark
tied: the first config wins). What is left is what a GPU call pays on the host before the driver:
Python, torch dispatch, autograd, allocations, weight packing, argument preparation, the path each
launch takes to Triton (``launch``, ops/triton_launch.py; ``wrap_triton`` where tracing), Triton's own launch
(``JITFunction.run``: binding, specialization, cache key) or ops.triton's direct launch of the
compiled kernel, and Triton's launch metadata. Not included: Triton's C launcher and the CUDA
driver (``kernel_profile.py`` gives the whole host time on a GPU).
Prints median microseconds per call for forward under no_grad, forward with autograd (weights
requiring grad, nothing backpropagated) and forward+backward, with launches per call (and how many
went through wrap_triton's tracing HOP: none in eager calls; a test holds it).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout first
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: this measures the GPU path's kernels (JITFunction), not the interpreter's")

import torch  # noqa: E402
from torch._higher_order_ops.triton_kernel_wrap import triton_kernel_wrapper_mutation  # noqa: E402

import host_only_triton  # noqa: E402
from scsa_kernels.module import SCSA  # noqa: E402

HOP_LAUNCHES = []  # launches that went to Triton through wrap_triton's HOP (eager calls should not)


def _count_hop_launches():
    hop = type(triton_kernel_wrapper_mutation)
    call = hop.__call__

    def counted(self, *args, **kwargs):
        HOP_LAUNCHES.append(kwargs.get("kernel_idx"))
        return call(self, *args, **kwargs)

    hop.__call__ = counted


def triton_ops_without_gpu():
    """ops.triton on the host-only Triton driver (host_only_triton.triton_ops), with the launches
    through wrap_triton's HOP counted."""
    _count_hop_launches()
    return host_only_triton.triton_ops()


def cases(shape, dtype):
    module = SCSA(shape[1], window_size=7, backend="triton").to(dtype)
    x = torch.randn(*shape, dtype=dtype)
    xg = x.clone().requires_grad_()

    def fwd_nograd():
        with torch.no_grad():
            module(x)

    def fwd_grad():
        module(xg)

    leaves = [xg, *module.parameters()]

    def fwd_bwd():  # as a training step does: gradients set to None first, so none is accumulated
        for t in leaves:
            t.grad = None
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
    HOP_LAUNCHES.clear()
    launches = host_only_triton.recorded_launches(fn)
    return len(launches), len(HOP_LAUNCHES)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--shape", type=int, nargs=4, default=[2, 64, 14, 14])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    parser.add_argument("--via-op", action="store_true",
                        help="eager calls through the triton_op and its registered autograd (the path "
                             "before the dispatcher bypass; torch.compile's path)")
    parser.add_argument("--no-direct-launch", action="store_true",
                        help="every launch through Triton's JITFunction.run (ops.triton_launch.DIRECT_LAUNCH off)")
    parser.add_argument("--profile", choices=["fwd_nograd", "fwd_grad", "fwdbwd"], default=None,
                        help="also print the cProfile top entries of one case (first dtype)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ops = triton_ops_without_gpu()
    assert ops.unavailable_reason() is None, ops.unavailable_reason()
    ops.EAGER_BYPASS = not args.via_op  # the GPU default
    from scsa_kernels.ops import triton_launch
    triton_launch.DIRECT_LAUNCH = not args.no_direct_launch
    import triton
    print(f"torch {torch.__version__}, triton {triton.__version__}, shape {tuple(args.shape)}, "
          f"{args.threads} thread(s), median of {args.reps} calls, up to the CUDA driver (host-only driver), "
          f"direct launches {'on' if triton_launch.DIRECT_LAUNCH else 'off'}")
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
