"""Quick side-by-side CPU timing: eager reference vs torch.compile(reference) vs backend="cpu".

    python benchmarks/cpu_quick.py [--batches 8 1] [--threads N] [--modes fwd fwdbwd]

All providers run in one process with the same thread count, fp32, eval mode,
ResNet-50 bottleneck mid-channel shapes (DESIGN.md). Times are medians of
repeated runs after warm-up. GB/s is for the fused backend against the bytes its
passes must move: forward 3 reads + 1 write of x (4|x|), backward 2 reads of x,
2 of grad_out, 1 write of dx (5|x|), so forward+backward 9|x|.

Providers alternate call by call, so each call starts with the caches the previous
provider left (colder than scsa-bench's rounds of a few calls each): expect lower
ratios than scsa-bench gives, most at 64x56x56. glibc's heap is kept steady, as in
scsa-bench.

On a shared machine, prefer --threads 1: an OpenMP team of 2 threads on 2 cores that
other processes also use stalls for whole scheduler slices (~10 ms), which swamps
every provider's timings.
"""
from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

from scsa_kernels import SCSAConfig, scsa
from scsa_kernels.bench.environment import steady_cpu_heap
from scsa_kernels.reference import scsa_reference
from scsa_kernels.testing import random_weights

SHAPES = [(64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)]


def interleaved_medians(runners, min_time=1.0, warmup=3, min_rounds=15, max_rounds=2000):
    """Median seconds per call of each runner, timed in interleaved rounds (one call of
    each per round), so that load from other processes hits every provider alike."""
    for run in runners:
        for _ in range(warmup):
            run()
    times = [[] for _ in runners]
    start = time.perf_counter()
    while len(times[0]) < min_rounds or (time.perf_counter() - start < min_time and len(times[0]) < max_rounds):
        for run, bucket in zip(runners, times):
            t0 = time.perf_counter()
            run()
            bucket.append(time.perf_counter() - t0)
    return [statistics.median(t) for t in times]


def make_runner(fn, x, weights, mode):
    if mode == "fwd":
        def run():
            with torch.no_grad():
                fn(x, weights)
        return run
    xg = x.clone().requires_grad_()
    wg = weights.map(lambda t: t.clone().requires_grad_())
    leaves = [xg, *wg.tensors()]
    grad_out = torch.randn_like(x)

    def run():
        out = fn(xg, wg)
        torch.autograd.grad(out, leaves, grad_out)
    return run


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 1])
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--modes", nargs="+", default=["fwd", "fwdbwd"], choices=["fwd", "fwdbwd"])
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    heap = steady_cpu_heap()  # no page faults from one provider's frees in another's time (see its doc)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"cpu capability {torch.backends.cpu.get_cpu_capability()}, heap {heap}")
    header = (f"{'mode':7} {'B':>2} {'shape':>11} | {'eager ms':>9} {'compiled ms':>11} {'cpu ms':>8} | "
              f"{'x eager':>7} {'x compiled':>10} | {'cpu GB/s':>8}")
    print(header)
    print("-" * len(header))
    for mode in args.modes:
        for batch in args.batches:
            for c, h, w in SHAPES:
                config = SCSAConfig(dim=c)
                weights = random_weights(config)
                x = torch.randn(batch, c, h, w)
                ref = lambda xx, ww: scsa_reference(xx, ww, config)
                fused = lambda xx, ww: scsa(xx, ww, config, backend="cpu")
                runners = [make_runner(ref, x, weights, mode), make_runner(fused, x, weights, mode)]
                if not args.no_compile:
                    torch._dynamo.reset()
                    runners.append(make_runner(torch.compile(ref, dynamic=False), x, weights, mode))
                t_eager, t_cpu, *rest = interleaved_medians(runners)
                t_comp = rest[0] if rest else float("nan")
                passes = 4 if mode == "fwd" else 9
                gbps = passes * x.numel() * x.element_size() / t_cpu / 1e9
                print(f"{mode:7} {batch:>2} {f'{c}x{h}x{w}':>11} | {t_eager * 1e3:9.3f} {t_comp * 1e3:11.3f} "
                      f"{t_cpu * 1e3:8.3f} | {t_eager / t_cpu:7.1f} {t_comp / t_cpu:10.1f} | {gbps:8.1f}", flush=True)


if __name__ == "__main__":
    main()
