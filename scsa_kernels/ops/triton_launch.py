"""How the Triton backend's kernels launch (ops/triton.py composes the launches; the kernels are in
scsa_kernels/triton): eager calls through Triton, or straight to a kernel Triton compiled before
(``launch_compiled``: a quarter of a forward's host cost up to the driver with triton 3.6), with the
autotuned kernels' picks kept per plan; traced calls (torch.compile, export) through ``wrap_triton``;
every op body on its input's CUDA device (``on_x_device``). Importing this file does not import triton."""
from __future__ import annotations

import contextlib
import functools
import inspect
import os

import torch

Tensor = torch.Tensor


def interpreting() -> bool:
    """Whether TRITON_INTERPRET asks for Triton's interpreter (kernels run on CPU tensors)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


# Decided once at import (TRITON_INTERPRET must be set before triton is imported anyway): the per-call
# checks stay plain attribute reads that torch.compile traces without a break.
INTERPRET = interpreting()
# SCSA_TRITON_AUTOTUNE=0: every autotuned kernel runs its fixed config, as under deterministic algorithms
# (``launch``): no compiling and timing of every config at each new shape (seconds per shape; a model
# fed many input sizes pays them at each), at the fixed tile's speed. The GPU tests run so (conftest.py).
AUTOTUNE = os.environ.get("SCSA_TRITON_AUTOTUNE", "1") != "0"


def launch(kernel, grid, *args, tuned=None, **kwargs):
    """Every kernel launch goes through here (tests record them). Real tensors: Triton's own launch,
    or the compiled kernel directly (``launch_compiled``). Tracing tensors (torch.compile or export
    decomposing the triton_op): ``wrap_triton`` records the launch in the graph. Eager calls must not
    go through ``wrap_triton``: it is only switched off inside the op's eager dispatch, so from the
    dispatcher bypass (``scsa``, ops/eager.py) every launch would run through its tracing HOP
    (milliseconds of host time per call: host benchmark).

    tuned: the launching plan's ``tuned`` dict, for autotuned kernels. The first launch of a plan
    goes through the autotuner and records its pick there; later launches of the plan pass that
    config to the kernel itself, skipping the autotuner's per-call key (dicts over every argument:
    ~20 us per launch on a 2-core VM). A plan fixes what the key depends on (shapes, constexprs,
    x's dtype). Every config computes the same function, but its tile sets the rows each step sums,
    and so the float32 summation order: a pick by timing can differ between processes, and with it
    the last bits of the results. Under ``torch.use_deterministic_algorithms(True)`` (or with
    ``AUTOTUNE`` off) every call, eager or traced, takes each kernel's fixed config instead
    (``_fixed_launch_options``: tiles of 1024 elements), the same in every process; otherwise traced
    calls leave the pick to torch.compile, which autotunes them itself.

    Returns ``launch_compiled``'s record of a direct launch (for ``relaunch`` to make it again),
    else None."""
    fixed = tuned is not None and (not AUTOTUNE or torch.are_deterministic_algorithms_enabled())
    if is_tracing(args[0]):
        if not INTERPRET:  # the interpreter would dereference the fake pointers: only shapes matter there
            from torch.library import wrap_triton
            if fixed:
                kernel, kwargs = kernel.fn, {**kwargs, **_fixed_launch_options(kernel, kwargs)}
            wrap_triton(kernel)[grid](*args, **kwargs)
        return
    if tuned is not None:
        config = tuned.get((kernel, fixed))
        if config is None:
            if not fixed:
                kernel[grid](*args, **kwargs)
                tuned[kernel, False] = kernel.best_config.all_kwargs()
                return
            config = tuned[kernel, True] = _fixed_launch_options(kernel, kwargs)
        kernel, kwargs = kernel.fn, {**kwargs, **config}
    if DIRECT_LAUNCH:
        return launch_compiled(kernel, grid, args, kwargs)
    kernel[grid](*args, **kwargs)


def _fixed_launch_options(kernel, kwargs) -> dict:
    """The launch options of autotuned ``kernel``'s fixed config (``fixed_config_for``) for a launch with
    ``kwargs``: its constexprs, warps and pipeline stages. Not its ``num_ctas`` (1 in every config), which
    ``wrap_triton`` refuses as a launch argument."""
    config = kernel.fixed_config_for(kwargs.get("BLOCK_C", 1))
    return {**config.kwargs, "num_warps": config.num_warps, "num_stages": config.num_stages}


def direct_launch_default() -> bool:
    """Whether launches go straight to the compiled kernels (``launch_compiled``): on CUDA builds of torch
    (not under the interpreter, which has no compiled kernels), unless SCSA_TRITON_DIRECT_LAUNCH=0 (a kill
    switch, for comparing or bisecting). Not on ROCm: Triton's AMD backend also specializes a kernel on
    whether each tensor's storage fits in 2 GB (its 32-bit buffer loads and stores), which
    ``launch_compiled``'s key does not hold: a kernel compiled for a small tensor would be launched on a
    larger one. There every launch takes Triton's own path, which computes the specialization."""
    return not INTERPRET and torch.version.hip is None and os.environ.get("SCSA_TRITON_DIRECT_LAUNCH", "1") != "0"


DIRECT_LAUNCH = direct_launch_default()
# (id of the JITFunction, current device, keyword arguments, the positional arguments after the
# tensors, then each tensor's dtype and whether it is 16-byte aligned) -> (its CompiledKernel, the
# values of the parameters after the positional arguments). Kernels are module globals: ids are not reused.
COMPILED_LAUNCHES = {}
# id of a JITFunction -> how many tensors lead its positional arguments: every launch passes its
# tensors first, then the scalars (checked on the first launch of each specialization)
_LEADING_TENSORS = {}


def launch_compiled(fn, grid, args, kwargs):
    """Launches JITFunction ``fn``; the first launch of each specialization through Triton
    (``fn[grid]``: binds every argument, computes the specialization and the cache key, checks the
    kernel's globals, then launches), every later one through the CompiledKernel that returned,
    with every parameter in signature order (as Triton's launch passes them; the launcher skips the
    constexprs). What a compiled kernel depends on is all in the key: the options and constexprs
    (kwargs), each tensor's dtype and 16-byte alignment, each integer's value (Triton specializes
    integers equal to 1 and divisible by 16) and the device; floats are keyed by value too (the
    plan's constants and the validated dropout_p: never NaN). The launch calls the CompiledKernel's
    launcher as ``CompiledKernel[grid]`` does (the same arguments on triton 3.5 to 3.8), with no launch
    metadata and no hooks while no launch hook is registered; with one (profilers), through
    ``CompiledKernel[grid]`` itself, which runs it. Not checked: the kernels' globals
    (module constants, never reassigned). Tensors reach the launcher as their addresses (ints): from a
    tensor, Triton's launcher calls its data_ptr() and asks the CUDA driver whether the address is
    device memory (cuPointerGetAttribute), once per tensor argument per launch; an int it passes as
    is. The op bodies run on x's device (``on_x_device``) and validation keeps CPU tensors out, which
    is what that check would catch. The saving up to the launcher is measured by
    benchmarks/triton_host_overhead.py; tests/triton_launch_check.py checks that both routes hand
    Triton's launcher the same arguments (a tensor's address for the tensor).

    Returns the direct launch's record (CompiledKernel, grid, the launcher's arguments), which
    ``relaunch`` makes again as it is, for a caller that knows its tensors are still the ones at
    those addresses (ops/triton.py's ``_inference_pack``); None after a launch through Triton (a first one)."""
    driver = _triton_driver().active
    device = driver.get_current_device()
    tensors = _LEADING_TENSORS.get(id(fn))
    if tensors is None:
        tensors = _LEADING_TENSORS[id(fn)] = next(
            (i for i, a in enumerate(args) if not isinstance(a, Tensor)), len(args))
    scalars = args[tensors:]
    # inline, not a function per argument: this key is most of a direct launch's host time
    key = [id(fn), device, *kwargs.items(), *scalars]
    addresses = []
    for a in args[:tensors]:
        address = a.data_ptr()
        key.append(a.dtype)
        key.append(address % 16 == 0)
        addresses.append(address)
    key = tuple(key)
    launch = COMPILED_LAUNCHES.get(key)
    if launch is None:
        if any(isinstance(a, Tensor) for a in scalars):
            raise TypeError(f"{fn.__name__}: a launch passes its tensors before every other argument")
        compiled = fn[grid](*args, **kwargs)
        if compiled is not None:  # None: a jit cache hook took the compile over
            COMPILED_LAUNCHES[key] = compiled, tuple(
                kwargs[p.name] if p.name in kwargs else p.default for p in fn.params[len(args):])
        return None
    compiled, trailing = launch
    record = (compiled, (*grid, 1, 1)[:3], (*addresses, *scalars, *trailing))
    run_compiled(driver, device, *record)
    return record


def run_compiled(driver, device, compiled, grid, arguments):
    """Launches CompiledKernel ``compiled`` on ``grid`` (3 sides) with the launcher's ``arguments`` (every
    parameter in signature order, tensors as addresses) on the current stream of ``device``."""
    stream = driver.get_current_stream(device)
    runtime = _triton_knobs().runtime
    if _no_hook(runtime.launch_enter_hook) and _no_hook(runtime.launch_exit_hook):
        # CompiledKernel[grid]'s runner builds launch metadata and hands the launcher both hook
        # chains, which it calls around the launch even when empty; with None it calls none
        compiled.run(grid[0], grid[1], grid[2], stream, compiled.function, compiled.packed_metadata, None, None,
                     None, *arguments)
    else:  # a hook to run (a profiler's): Triton's runner, which gives it the launch metadata
        compiled[grid](*arguments, stream=stream)


def relaunch(record):
    """Makes a launch again as ``launch_compiled`` recorded it (same kernel, grid and arguments), on the
    current device's current stream: for a caller that knows the record's tensors are still the ones
    at its addresses."""
    driver = _triton_driver().active
    run_compiled(driver, driver.get_current_device(), *record)


def _no_hook(hook) -> bool:
    """Whether a Triton launch hook calls nothing: None, or an empty HookChain (triton 3.5 to 3.8 register
    hooks in one; a plain function, as older releases took, calls something)."""
    return hook is None or getattr(hook, "calls", None) == []


@functools.lru_cache(maxsize=None)
def _triton_knobs():
    """triton.knobs (imported lazily), whose ``runtime`` holds the launch hooks."""
    from triton import knobs
    return knobs


@functools.lru_cache(maxsize=None)
def _triton_driver():
    """triton.runtime.driver.driver (imported lazily; its active driver can change: a test's host-only one)."""
    from triton.runtime.driver import driver
    return driver


_REAL_TENSOR_TYPES = (torch.Tensor, torch.nn.Parameter)


def is_tracing(t: Tensor) -> bool:
    """Whether t is a tracing tensor (fake, functional, proxy): a traced op body sees only those, so
    its first tensor tells (every launch passes a tensor first)."""
    return type(t) not in _REAL_TENSOR_TYPES


def device_guard(device: torch.device):
    """Makes ``device`` the current CUDA device while the launches run, where it is not already:
    Triton launches on the current device (its context, its current stream), and x may live on
    another one (``model.to("cuda:1")`` without ``torch.cuda.set_device``). Otherwise, and for
    any other device, nothing."""
    if device.type != "cuda" or device.index == torch.cuda.current_device():
        return contextlib.nullcontext()
    return torch.cuda.device(device)


def on_x_device(op_body):
    """``op_body(x, ...)`` (an op's implementation, its first argument a tensor on the device of
    every other) run under ``device_guard(x.device)``. Tracing tensors are left alone: the traced
    launches run where the compiled code runs them (Inductor's generated code sets the device)."""
    @functools.wraps(op_body)
    def on_x_device(x, *args, **kwargs):
        if is_tracing(x):
            return op_body(x, *args, **kwargs)
        with device_guard(x.device):
            return op_body(x, *args, **kwargs)
    # the signature the op's schema is inferred from, its annotations resolved where op_body was
    # defined (torch.library would evaluate the strings in this module's globals)
    on_x_device.__signature__ = inspect.signature(op_body, eval_str=True)
    return on_x_device
