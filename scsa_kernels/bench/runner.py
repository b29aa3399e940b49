"""The microbenchmark loop: every case, every mode, every provider side by side."""
from __future__ import annotations

import datetime
import time
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import torch

from ..config import SCSAConfig
from ..testing import random_weights
from .providers import (Provider, RotatingInputs, cuda_peak_bytes, cudagraph_skips, first_call_seconds,
                        saved_tensor_bytes, workload)
from .report import CsvWriter
from .shapes import dtype_name
from .suites import Case
from .timing import KernelProfile, Timing, kernel_profile, time_workloads
from .traffic import floor_bytes, gigabytes_per_second


@dataclass
class Settings:
    """How to measure: per-provider warm-up and measured time (ms), the last-level cache size to
    exceed with rotated inputs, the measured copy bandwidth, and a wall-clock budget for the suite."""

    device: torch.device
    warmup_ms: float
    rep_ms: float
    cache_bytes: int
    copy_gbps: float
    time_budget_s: Optional[float] = None


def log(message: str) -> None:
    """A timestamped progress line that does not break the progress bar."""
    from tqdm import tqdm

    tqdm.write(f"[{datetime.datetime.now().strftime('%H:%M:%S')}] {message}")


def error_status(exc: BaseException) -> str:
    """The status column of a provider that raised: type and first line of the message."""
    message = str(exc).splitlines()[0] if str(exc) else ""
    return f"error: {type(exc).__name__}: {message}"


def run_suite(cases: Sequence[Case], providers: Sequence[Provider], settings: Settings, env: Dict[str, str],
              writer: CsvWriter) -> List[Dict]:
    """Measure every case; rows go to ``writer`` as each mode finishes. Stops starting new cases
    once ``settings.time_budget_s`` has passed (the cut is logged)."""
    from tqdm import tqdm

    rows: List[Dict] = []
    start = time.perf_counter()
    with tqdm(total=sum(len(c.modes) for c in cases), unit="measurement", mininterval=2.0) as bar:
        for index, case in enumerate(cases):
            elapsed = time.perf_counter() - start
            if settings.time_budget_s is not None and elapsed > settings.time_budget_s:
                log(f"time budget of {settings.time_budget_s:.0f} s spent: skipped the last {len(cases) - index} cases")
                break
            for mode in case.modes:
                bar.set_description(f"{case} {mode}")
                try:
                    mode_rows = run_mode(case, mode, providers, settings, env)
                except Exception as exc:  # e.g. the inputs themselves do not fit: log it, go on
                    log(f"{case} {mode} not measured: {error_status(exc)}")
                    mode_rows = []
                writer.write(mode_rows)
                rows += mode_rows
                bar.update()
            log(f"{case} done ({time.perf_counter() - start:.0f} s)")
    return rows


def run_mode(case: Case, mode: str, providers: Sequence[Provider], settings: Settings,
             env: Dict[str, str]) -> List[Dict]:
    """One row per provider for ``case`` in ``mode``."""
    device = settings.device
    config = SCSAConfig(case.shape.channels)
    weights = random_weights(config, case.dtype, device).map(lambda t: t.requires_grad_())
    inputs = RotatingInputs(case.shape.dims, case.dtype, device, settings.cache_bytes, case.layout)
    training = mode != "forward"
    works, first_calls, skipped = {}, {}, {}
    for provider in providers:
        reason = provider.why_not(inputs.xs[0], config, training)
        if reason is None:
            work = workload(provider.fn, mode, inputs, weights, config)
            try:
                with cudagraph_skips() as skips:  # the first call compiles (forward and backward graphs)
                    first_calls[provider.name] = first_call_seconds(work, device)
                works[provider.name] = work
            except Exception as exc:  # one broken provider must not end the suite: its row says why
                reason = error_status(exc)
            if skips and device.type == "cuda":  # the CPU has no CUDA graphs to skip
                log(f"{case} {mode} {provider.name}: Inductor compiled {len(skips)} graph(s) without CUDA graphs: "
                    + "; ".join(sorted(set(skips))))
            if provider.is_compiled:
                provider.compile_s += first_calls.get(provider.name, 0.0)
                provider.compiles += 1
        if reason is not None:
            skipped[provider.name] = reason
    try:
        timings = time_workloads(device, works, settings.warmup_ms, settings.rep_ms) if works else {}
    except Exception as exc:  # e.g. out of memory after the first calls: keep the suite going
        log(f"{case} {mode}: timing failed: {error_status(exc)}")
        timings, skipped = {}, dict(skipped, **{name: error_status(exc) for name in works})
    memory, kernels = {}, {}
    if mode == "forward+backward":
        memory = {p.name: measure_memory(p, inputs, weights, config, device) for p in providers if p.name in works}
    if mode in KERNEL_TIMED_MODES:  # the fused providers only: a profiled reference run costs seconds
        kernels = {p.name: measure_kernels(p.name, works[p.name], device) for p in providers
                   if p.backend is not None and p.name in timings}
    model_bytes = floor_bytes(mode, case.shape.numel, case.dtype)
    rows = []
    for provider in providers:
        row = dict(env, shape=str(case.shape), source=case.shape.source, batch=case.shape.batch,
                   channels=case.shape.channels, height=case.shape.height, width=case.shape.width,
                   dtype=dtype_name(case.dtype), layout=case.layout, mode=mode, provider=provider.name, model_bytes=model_bytes,
                   copy_gbps=settings.copy_gbps, status=skipped.get(provider.name, "ok"))
        if provider.name in timings:
            row.update(timing_columns(timings[provider.name], timings, model_bytes, settings.copy_gbps,
                                      kernels.get(provider.name)))
            row.update(memory.get(provider.name, {}), first_call_s=first_calls[provider.name])
        rows.append(row)
    return rows


def timing_columns(timing: Timing, all_timings: Dict[str, Timing], model_bytes: int, copy_gbps: float,
                   kernels: Optional[KernelProfile] = None) -> Dict:
    achieved = gigabytes_per_second(model_bytes, timing.median_ms)
    speedup = lambda base: all_timings[base].median_ms / timing.median_ms if base in all_timings else None
    columns = {"median_ms": timing.median_ms, "p20_ms": timing.p20_ms, "p80_ms": timing.p80_ms,
               "samples": timing.samples, "speedup_vs_eager": speedup("eager"), "speedup_vs_compile": speedup("compile"),
               "achieved_gbps": achieved, "pct_of_copy_bw": 100.0 * achieved / copy_gbps}
    if kernels is not None:
        columns.update(launches_per_iter=kernels.launches, graph_launches_per_iter=kernels.graph_launches)
        if kernels.kernel_ms is not None:
            columns.update(kernel_ms=kernels.kernel_ms, kernel_pct_of_copy_bw=100.0 * gigabytes_per_second(
                model_bytes, kernels.kernel_ms) / copy_gbps)
    return columns


# Modes whose kernels alone are timed (CUDA, fused providers): those whose workload prepares without
# launching anything
KERNEL_TIMED_MODES = ("forward", "forward+backward")


def measure_kernels(name: str, work, device: torch.device) -> Optional[KernelProfile]:
    """kernel_profile of one provider's workload; None (and a log line) where the profiler fails; a
    log line where it sees no kernel."""
    try:
        kernels = kernel_profile(work, device)
    except Exception as exc:  # the timing stands; only the kernel columns stay empty
        log(f"{name}: kernel time not measured: {error_status(exc)}")
        return None
    if kernels is not None and kernels.kernel_ms is None:
        log(f"{name}: kernel time not measured: the profiler saw no kernel")
    return kernels


def measure_memory(provider: Provider, inputs: RotatingInputs, weights, config: SCSAConfig,
                   device: torch.device) -> Dict:
    """saved_bytes on every device; peak_mem_bytes (max_memory_allocated above the inputs) on CUDA."""
    x, grad_out = inputs.next()
    try:
        columns = {"saved_bytes": saved_tensor_bytes(provider.fn, x, weights, config)}
        if device.type == "cuda":
            columns["peak_mem_bytes"] = cuda_peak_bytes(provider.fn, x, grad_out, weights, config)
    except Exception as exc:  # the timing stands; only the memory columns stay empty
        log(f"{provider.name}: memory not measured: {type(exc).__name__}: {exc}")
        return {}
    return columns
