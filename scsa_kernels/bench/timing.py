"""Timing done right (DESIGN.md, "Measuring speed").

Every provider of one case is timed in the same call, interleaved: R rounds, and in
each round every provider (in a rotated order) runs a few timed iterations, so that
slow drifts of clock, temperature or background load hit all providers alike.
A workload is a pair ``(prepare, run)``: ``prepare()`` builds the untimed state of one
iteration (picks the next rotated input buffer, runs the forward of a backward-only
measurement), ``run(state)`` is the timed part.

- CPU: ``time.perf_counter`` around ``run`` (CPU ops are synchronous); the caller fixes
  the thread count for every provider (``torch.set_num_threads``).
- CUDA: one pair of ``torch.cuda.Event`` per iteration, and before each iteration the L2
  cache is flushed by writing a buffer larger than it (as ``triton.testing.do_bench``
  does), outside the events, and waited for: each timed span starts on an idle GPU, so the
  host's launch work of a host-bound call counts in full. (Until 2026-11-28 the flush ran on
  while the host launched the timed call's kernels: up to its ~65 us at 256 MiB on an H200 of
  their host time went uncounted, flattering host-bound calls.)

Results are the median and the 20%/80% quantiles of the per-iteration times, in ms.

On CUDA, ``kernel_profile`` also gives what the kernels alone take per iteration (their summed device
time under torch.profiler: apart from the host time a host-bound call waits for) and how the host
started them: kernel launches and CUDA graph launches per iteration (a provider meant to replay CUDA
graphs that launches none did not).
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np
import torch

Workload = Tuple[Callable[[], Any], Callable[[Any], Any]]  # (prepare, run)
ROUNDS = 10
# Iterations per provider and round: enough samples (>= 30) for the 20%/80% quantiles of a slow provider
MIN_ITERATIONS_PER_ROUND = 3
MAX_ITERATIONS_PER_ROUND = 200


@dataclass(frozen=True)
class Timing:
    """Per-iteration times of one workload, in milliseconds."""

    median_ms: float
    p20_ms: float
    p80_ms: float
    samples: int

    @classmethod
    def from_samples(cls, samples_ms: List[float]) -> "Timing":
        p20, median, p80 = np.percentile(np.asarray(samples_ms), [20, 50, 80])
        return cls(float(median), float(p20), float(p80), len(samples_ms))


class CPUClock:
    """Wall-clock timestamps; CPU work is done when ``run`` returns."""

    def before(self) -> None:
        pass

    def stamp(self) -> float:
        return time.perf_counter()

    def elapsed_ms(self, start: float, end: float) -> float:
        return (end - start) * 1e3

    def synchronize(self) -> None:
        pass


class CUDAClock:
    """CUDA events on the current stream; ``before`` flushes L2 and waits for it (outside the timed span)."""

    def __init__(self, device: torch.device):
        l2_bytes = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 << 20
        self.flush_buffer = torch.empty(max(2 * l2_bytes, 256 << 20), dtype=torch.int8, device=device)

    def before(self) -> None:
        self.flush_buffer.zero_()
        torch.cuda.synchronize()  # the timed span starts on an idle GPU: no host time hides behind the flush

    def stamp(self) -> torch.cuda.Event:
        event = torch.cuda.Event(enable_timing=True)
        event.record()
        return event

    def elapsed_ms(self, start: torch.cuda.Event, end: torch.cuda.Event) -> float:
        return start.elapsed_time(end)

    def synchronize(self) -> None:
        torch.cuda.synchronize()


def estimate_ms(workload: Workload, clock, warmup_ms: float) -> float:
    """Warm up ``workload`` for about ``warmup_ms`` (at least 2 iterations); returns the mean wall
    time per iteration, prepare and flush included (an upper bound used to size the rounds)."""
    prepare, run = workload
    iterations, start = 0, time.perf_counter()
    while iterations < 2 or (time.perf_counter() - start) * 1e3 < warmup_ms:
        state = prepare()
        clock.before()
        run(state)
        clock.synchronize()
        iterations += 1
    return (time.perf_counter() - start) * 1e3 / iterations


def measure(workloads: Dict[str, Workload], clock, warmup_ms: float, rep_ms: float,
            rounds: int = ROUNDS) -> Dict[str, Timing]:
    """Interleaved timing of every workload: about ``rep_ms`` of iterations each, in ``rounds`` rounds."""
    names = list(workloads)
    per_round = {}
    for name in names:
        estimate = estimate_ms(workloads[name], clock, warmup_ms)
        per_round[name] = int(min(MAX_ITERATIONS_PER_ROUND, max(MIN_ITERATIONS_PER_ROUND,
                                                                round(rep_ms / rounds / estimate))))
    samples: Dict[str, List[float]] = {name: [] for name in names}
    for r in range(rounds):
        for name in names[r % len(names):] + names[: r % len(names)]:
            prepare, run = workloads[name]
            stamps = []
            for _ in range(per_round[name]):
                state = prepare()
                clock.before()
                start = clock.stamp()
                run(state)
                stamps.append((start, clock.stamp()))
            clock.synchronize()
            samples[name] += [clock.elapsed_ms(start, end) for start, end in stamps]
    return {name: Timing.from_samples(samples[name]) for name in names}


def time_workloads(device: torch.device, workloads: Dict[str, Workload], warmup_ms: float, rep_ms: float,
                   rounds: int = ROUNDS) -> Dict[str, Timing]:
    """``measure`` with the clock of ``device`` (CUDA events and L2 flushes on CUDA, perf_counter on CPU)."""
    clock = CUDAClock(device) if device.type == "cuda" else CPUClock()
    return measure(workloads, clock, warmup_ms, rep_ms, rounds)


def device_self_us(event) -> float:
    """Device time (us) of a torch.profiler key_averages() entry: its kernels' (or copies') summed
    durations; 0 for host-side events."""
    if getattr(event, "device_type", None) != torch.autograd.DeviceType.CUDA:
        return 0.0
    return getattr(event, "self_device_time_total", None) or getattr(event, "self_cuda_time_total", 0.0)


# Name prefixes of the CUDA runtime and driver calls that start one kernel (Triton launches through the
# driver, ATen through the runtime: cudaLaunchKernel, cuLaunchKernelEx, ...) and of those that replay a
# captured CUDA graph (its kernels in one call); prefixes, so that versioned names (..._v7000) count too.
KERNEL_LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchCooperativeKernel", "cuLaunchKernel", "cuLaunchCooperativeKernel")
GRAPH_LAUNCH_CALLS = ("cudaGraphLaunch", "cuGraphLaunch")


@dataclass(frozen=True)
class KernelProfile:
    """Per iteration: the kernels' summed device time (ms; None when the profiler saw no kernel: not a
    zero), and the host's kernel launch and CUDA graph launch calls."""

    kernel_ms: Optional[float]
    launches: float
    graph_launches: float


def kernel_profile_from_events(events: Iterable, iterations: int) -> KernelProfile:
    """KernelProfile of torch.profiler key_averages() entries over ``iterations`` iterations."""
    events = list(events)
    total_us = sum(device_self_us(event) for event in events)
    calls = lambda prefixes: sum(event.count for event in events if event.key.startswith(prefixes)) / iterations
    return KernelProfile(total_us / iterations / 1e3 if total_us > 0 else None, calls(KERNEL_LAUNCH_CALLS),
                         calls(GRAPH_LAUNCH_CALLS))


def kernel_profile(workload: Workload, device: torch.device, iterations: int = 5) -> Optional[KernelProfile]:
    """What the CUDA kernels of ``run`` take per iteration, their device times summed (idle gaps
    between them, where a host-bound call waits for the host, left out), and the launches that
    started them; None on a CPU. For workloads whose ``prepare`` launches nothing (the forward and
    forward+backward modes): every kernel and launch under the profiler counts."""
    if device.type != "cuda":
        return None
    from torch.profiler import ProfilerActivity, profile

    prepare, run = workload
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(iterations):
            run(prepare())
        torch.cuda.synchronize()
    return kernel_profile_from_events(prof.key_averages(), iterations)
