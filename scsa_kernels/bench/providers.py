"""What gets benchmarked: providers (implementations of SCSA) and their per-mode workloads.

Providers: ``eager`` (the reference through ``scsa(backend="reference")``),
``compile`` / ``compile-max-autotune`` (``torch.compile`` of the reference, static shapes),
every fused backend of ``backends.BACKENDS`` that is available on this machine, and
``<backend>+cudagraphs`` for the fused CUDA backends the caller names
(``torch.compile(mode="reduce-overhead")`` of the fused call: CUDA graph replays, as
``compile-max-autotune`` replays its graphs; the like-for-like comparison for it).
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence

import torch

from .. import backends
from ..config import SCSAConfig
from ..functional import scsa
from ..reference import scsa_reference
from ..weights import SCSAWeights
from .timing import Workload

Tensor = torch.Tensor
ScsaFn = Callable[[Tensor, SCSAWeights, SCSAConfig, bool], Tensor]
COMPILE_MODES = {"compile": "default", "compile-max-autotune": "max-autotune"}
GRAPHED_SUFFIX = "+cudagraphs"
MAX_ROTATED_BYTES = 1 << 30
# Where Inductor logs why it compiled a graph without CUDA graphs (cudagraph_utils' artifact loggers:
# "cudagraphs" in recent torch, "perf_hints" in older releases); unseen unless TORCH_LOGS names them
CUDAGRAPH_SKIP_LOGGERS = ("torch._inductor.cudagraph_utils.__cudagraphs", "torch._inductor.cudagraph_utils.__perf_hints")


def allow_many_recompiles() -> None:
    """Every benchmark shape is a static-shape recompile of the same function: lift dynamo's limit
    (and fail loudly rather than fall back to eager if it is ever hit)."""
    import torch._dynamo.config as dynamo_config

    for name in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                 "accumulated_cache_size_limit"):
        if hasattr(dynamo_config, name):
            setattr(dynamo_config, name, 4096)
    if hasattr(dynamo_config, "fail_on_recompile_limit_hit"):
        dynamo_config.fail_on_recompile_limit_hit = True


class _Messages(logging.Handler):
    """Keeps the messages of the records it is handed."""

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: List[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@contextlib.contextmanager
def cudagraph_skips():
    """Yields a list that holds, on exit, why Inductor compiled graphs of this block without CUDA
    graphs (mode "reduce-overhead" or "max-autotune"): one entry per skip it counted, its log message
    ("skipping cudagraphs due to ...") or "no reason logged" (graphs on the CPU, which it counts only)."""
    from torch._dynamo.utils import counters

    skips: List[str] = []
    handler = _Messages()
    loggers = [logging.getLogger(name) for name in CUDAGRAPH_SKIP_LOGGERS]
    for logger in loggers:
        logger.addHandler(handler)
    before = counters["inductor"]["cudagraph_skips"]
    try:
        yield skips
    finally:
        for logger in loggers:
            logger.removeHandler(handler)
        count = counters["inductor"]["cudagraph_skips"] - before
        reasons = [m for m in handler.messages if "cudagraph" in m.lower()][:count]
        skips += reasons + ["no reason logged"] * (count - len(reasons))


@dataclass
class Provider:
    """One implementation under test. ``compile_budget_s``: compile providers stop taking new
    cases once their first calls (compilations) have used this many seconds."""

    name: str
    fn: ScsaFn
    backend: Optional[str] = None  # the fused backend's registry name
    compile_budget_s: Optional[float] = None
    compile_s: float = 0.0  # seconds spent in first calls so far
    max_compiles: Optional[int] = None  # compile providers: at most this many (case, mode) compilations
    compiles: int = 0  # (case, mode) compilations so far

    @property
    def is_compiled(self) -> bool:
        return self.compile_budget_s is not None

    def why_not(self, x: Tensor, config: SCSAConfig, training: bool) -> Optional[str]:
        """Why this provider skips this input, or None."""
        if self.backend is not None and (reason := backends.why_not(self.backend, x, config, training)):
            return reason
        if self.is_compiled and self.compile_s > self.compile_budget_s:
            return f"compile budget spent ({self.compile_s:.0f} s > {self.compile_budget_s:.0f} s)"
        if self.is_compiled and self.max_compiles is not None and self.compiles >= self.max_compiles:
            return (f"{self.name} measures its first {self.max_compiles} case/mode only "
                    "(--autotune-all for every one)")
        return None


def reference_call(x: Tensor, weights: SCSAWeights, config: SCSAConfig, training: bool) -> Tensor:
    return scsa_reference(x, weights, config, training)


def make_providers(fused: Sequence[str], compile_modes: Sequence[str], compile_budget_s: float,
                   autotune_compiles: Optional[int] = None, graphed: Sequence[str] = ()) -> List[Provider]:
    """eager first (the baseline), then the compile providers in ``compile_modes`` (keys of
    COMPILE_MODES), then the fused backends in ``fused`` that are available on this machine, then
    ``<name>+cudagraphs`` for each available backend in ``graphed`` (compile providers: the compile
    budget applies). ``autotune_compiles``: compile-max-autotune measures only its first this many
    (case, mode) pairs (each one is a long autotuning compile); None: every one, within the compile
    budget."""
    providers = [Provider("eager", lambda x, w, c, t: scsa(x, w, c, t, backend="reference"))]
    if compile_modes:
        allow_many_recompiles()
    for name in compile_modes:
        compiled = torch.compile(reference_call, dynamic=False, mode=COMPILE_MODES[name])
        limit = autotune_compiles if COMPILE_MODES[name] == "max-autotune" else None
        providers.append(Provider(name, compiled, compile_budget_s=compile_budget_s, max_compiles=limit))
    for name in fused:
        if backends.unavailable_reason(name) is None:
            providers.append(Provider(name, lambda x, w, c, t, b=name: scsa(x, w, c, t, backend=b), backend=name))
    if graphed:
        allow_many_recompiles()
    for name in graphed:
        if backends.unavailable_reason(name) is None:
            replayed = torch.compile(lambda x, w, c, t, b=name: scsa(x, w, c, t, backend=b), dynamic=False,
                                     mode="reduce-overhead")
            providers.append(Provider(name + GRAPHED_SUFFIX, replayed, backend=name, compile_budget_s=compile_budget_s))
    return providers


class RotatingInputs:
    """``count`` independent (x, grad_out) buffer pairs used in turn, so that together they exceed
    the last-level cache. x: (B, C, H, W) leaf of ``dtype`` on ``device``, requires grad; x and
    grad_out in ``layout`` ("nchw" or "channels_last", as a channels_last model hands them over)."""

    def __init__(self, dims, dtype: torch.dtype, device: torch.device, cache_bytes: int, layout: str = "nchw"):
        x_bytes = math.prod(dims) * dtype.itemsize
        count = max(1, min(math.ceil(2 * cache_bytes / max(x_bytes, 1)), MAX_ROTATED_BYTES // max(x_bytes, 1), 64))
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        make = lambda: torch.randn(dims, dtype=dtype, device=device).contiguous(memory_format=memory_format)
        self.xs = [make().requires_grad_() for _ in range(count)]
        self.grads = [make() for _ in range(count)]
        self.position = 0

    def next(self):
        """The next (x, grad_out) pair, with x.grad cleared."""
        self.position = (self.position + 1) % len(self.xs)
        x = self.xs[self.position]
        x.grad = None
        return x, self.grads[self.position]


def clear_grads(weights: SCSAWeights) -> None:
    for t in weights.tensors():
        t.grad = None


def workload(fn: ScsaFn, mode: str, inputs: RotatingInputs, weights: SCSAWeights, config: SCSAConfig) -> Workload:
    """(prepare, run) of one provider in ``mode``: "forward" (inference, no autograd graph),
    "backward" (the forward is untimed, in prepare) or "forward+backward"."""
    training = mode != "forward"

    def prepare_inputs():
        clear_grads(weights)
        return inputs.next()

    def forward(state):
        with torch.no_grad():
            return fn(state[0], weights, config, False)

    def prepare_backward():
        x, grad_out = prepare_inputs()
        return fn(x, weights, config, training), grad_out

    def backward(state):
        out, grad_out = state
        out.backward(grad_out)

    def forward_backward(state):
        x, grad_out = state
        fn(x, weights, config, training).backward(grad_out)

    return {"forward": (prepare_inputs, forward), "backward": (prepare_backward, backward),
            "forward+backward": (prepare_inputs, forward_backward)}[mode]


def first_call_seconds(work: Workload, device: torch.device) -> float:
    """Wall time of one complete iteration: for a compile provider, its compilation for this case."""
    prepare, run = work
    start = time.perf_counter()
    run(prepare())
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def saved_tensor_bytes(fn: ScsaFn, x: Tensor, weights: SCSAWeights, config: SCSAConfig) -> int:
    """Bytes of the distinct storages autograd saves for backward in one training forward (x and
    the parameters included when saved): the memory a forward+backward holds between the passes."""
    storages: Dict[int, int] = {}

    def pack(t: Tensor) -> Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn(x, weights, config, True)
    del out
    return sum(storages.values())


def cuda_peak_bytes(fn: ScsaFn, x: Tensor, grad_out: Tensor, weights: SCSAWeights, config: SCSAConfig) -> int:
    """torch.cuda.max_memory_allocated during one forward+backward, minus what was allocated before
    (inputs, parameters and their existing gradients)."""
    clear_grads(weights)
    x.grad = None
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    fn(x, weights, config, True).backward(grad_out)
    torch.cuda.synchronize()
    return torch.cuda.max_memory_allocated() - before
