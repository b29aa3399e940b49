"""Per-call HOST cost of the Triton backend path, measured on the CPU with kernel launches stubbed.

    python benchmarks/triton_host_overhead.py [--reps 2000] [--profile fwdbwd] [--threads 1]

Runs module -> functional.scsa -> backends -> ops.triton on CPU tensors (TRITON_INTERPRET=1 is set
before triton is imported: ops.triton only accepts CPU tensors under the interpreter) with
``ops.triton._launch`` replaced by a no-op, so no kernel (interpreted or not) runs and outputs are
garbage. What is left is what a GPU call pays on the host: Python, torch dispatch, autograd,
allocations, weight packing, argument preparation (minus wrap_triton/the launcher itself).
Prints median microseconds per call for forward under no_grad, forward with autograd (weights
requiring grad, nothing backpropagated) and forward+backward.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout first
os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

from scsa_kernels.module import SCSA  # noqa: E402
from scsa_kernels.ops import triton as ops  # noqa: E402


def _stub(*args, **kwargs):
    return None


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
    assert ops.unavailable_reason() is None, ops.unavailable_reason()
    ops._launch = _stub
    ops.EAGER_BYPASS = not args.via_op  # the GPU default (the interpreter's default is the op path)
    print(f"torch {torch.__version__}, shape {tuple(args.shape)}, {args.threads} thread(s), "
          f"median of {args.reps} calls, Triton launches stubbed")
    for name in args.dtypes:
        dtype = getattr(torch, name)
        row = {k: median_us(fn, args.reps) for k, fn in cases(args.shape, dtype).items()}
        print(f"{name:9s} " + "  ".join(f"{k} {v:8.1f} us" for k, v in row.items()))
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
