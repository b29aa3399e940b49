"""torch.compile's path of the Triton op makes the launches the eager path makes, without a GPU.

    python tests/triton_compile_check.py     (TRITON_INTERPRET unset; run by test_triton_ops.py)

On a GPU, torch.compile decomposes the triton_op into its kernel launches (``wrap_triton``), with
symbolic sizes under dynamic shapes, and replays them from the compiled graph: a path the
interpreter never takes (there the op stays whole). Here Triton's driver is
benchmarks/host_only_triton.HostOnlyDriver (kernels compiled for sm_90, nothing runs), on CPU
tensors, and every ``JITFunction.run`` is recorded: kernel, grid, and every argument by name
(a tensor by dtype, shape and strides, anything else by value). A training step of
``torch.compile(module, backend="aot_eager", dynamic=True, fullgraph=True)`` must make the same
launches, in the same order, as the eager step (its direct launches off, so that each goes
through ``JITFunction.run``; tests/triton_launch_check.py holds the direct ones to Triton's), for
the cases of triton_launch_check.py and for a second batch size without a recompile (the batch
stays symbolic: each grid and scalar is computed from it in the compiled graph). Except the eager
step's weight packing and parameter gradients (EAGER_ONLY_KERNELS): the compiled step packs and
unpacks with the torch ops it traced, which Inductor fuses. Each case runs twice: as is, and under
``torch.use_deterministic_algorithms(True)``, where both steps give every autotuned kernel its fixed
config (ops/triton_launch.py ``launch``): the recorded constexprs, warps and stages must match there too.
Prints one line per case and mode; exits non-zero when any failed.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from triton_launch_check import CASES, host_only_triton, make_input  # noqa: E402  (sets up the paths)

import torch  # noqa: E402
import torch._dynamo  # noqa: E402

from scsa_kernels.module import SCSA  # noqa: E402
from scsa_kernels.ops import triton_launch  # noqa: E402

LAUNCHES = []  # (kernel name, grid, {argument or launch option: description}) of every JITFunction.run
# recorded beside the arguments (a config sets them), with Triton's defaults for CUDA where a launch omits them
LAUNCH_OPTIONS = {"num_warps": 4, "num_stages": 3}
EAGER_ONLY_KERNELS = ("pack_parameters_kernel", "parameter_grads_kernel")  # one launch each per eager step


def describe(value):
    return ("tensor", value.dtype, tuple(value.shape), value.stride()) if isinstance(value, torch.Tensor) else value


def record_runs():
    """Wraps JITFunction.run: each launch is recorded (arguments bound by name, grid resolved, the launch
    options a config sets), then made."""
    from triton.runtime.jit import JITFunction

    run = JITFunction.run

    def recorded(self, *args, grid, warmup, **kwargs):
        if not warmup:
            bound = self.signature.bind_partial(*args, **{k: v for k, v in kwargs.items() if k in self.arg_names})
            resolved = grid(dict(bound.arguments, **kwargs)) if callable(grid) else grid
            options = {name: kwargs.get(name, default) for name, default in LAUNCH_OPTIONS.items()}
            LAUNCHES.append((self.__name__, (*resolved, 1, 1)[:3],  # as launched: 3 dimensions
                             {**{name: describe(value) for name, value in bound.arguments.items()}, **options}))
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    JITFunction.run = recorded


def launches_of(step):
    LAUNCHES.clear()
    step()
    return list(LAUNCHES)


def differences(eager, compiled):
    """Why two launch records differ, or an empty list."""
    if [name for name, _, _ in eager] != [name for name, _, _ in compiled]:
        return [f"kernels {[n for n, _, _ in eager]} vs {[n for n, _, _ in compiled]}"]
    found = []
    for (name, grid, args), (_, compiled_grid, compiled_args) in zip(eager, compiled):
        if grid != compiled_grid:
            found.append(f"{name}: grid {grid} vs {compiled_grid}")
        found += [f"{name}: {arg} {value!r} vs {compiled_args.get(arg)!r}" for arg, value in args.items()
                  if compiled_args.get(arg) != value]
    return found


def check_case(shape, dtype, layout, options):
    """(why the compiled step's launches differ from the eager step's, launches per eager step)."""
    torch._dynamo.reset()
    module = SCSA(shape[1], backend="triton", **options).to(dtype)
    compiled = torch.compile(module, backend="aot_eager", dynamic=True, fullgraph=True)
    leaves = list(module.parameters())
    report, frames_before = [], torch._dynamo.utils.counters["stats"]["unique_graphs"]
    for batch in (shape[0] + 1, shape[0] + 3):  # not 1: torch.compile specializes sizes 0 and 1
        x, grad_out = make_input((batch, *shape[1:]), dtype, layout)
        for fn in (module, compiled):  # the compiled step first compiles (and autotunes), then is recorded
            torch.autograd.grad(fn(x), [x, *leaves], grad_out)
        torch.manual_seed(0)  # the same attention dropout seed for both
        eager = launches_of(lambda: torch.autograd.grad(module(x), [x, *leaves], grad_out))
        eager_only = [name for name, _, _ in eager if name in EAGER_ONLY_KERNELS]
        report += [] if eager_only == list(EAGER_ONLY_KERNELS) else [f"batch {batch}: eager-only launches {eager_only}"]
        eager = [launch for launch in eager if launch[0] not in EAGER_ONLY_KERNELS]
        torch.manual_seed(0)
        steps = launches_of(lambda: torch.autograd.grad(compiled(x), [x, *leaves], grad_out))
        report += [f"batch {batch}: {why}" for why in differences(eager, steps)]
        report += [] if eager else [f"batch {batch}: no launches recorded"]
    compiles = torch._dynamo.utils.counters["stats"]["unique_graphs"] - frames_before
    report += [] if compiles == 1 else [f"{compiles} compilations for two batch sizes"]
    return report, len(eager)


def main():
    ops = host_only_triton.triton_ops()
    ops.EAGER_BYPASS = True  # eager as on a GPU
    triton_launch.DIRECT_LAUNCH = False  # every launch through JITFunction.run
    record_runs()
    torch._dynamo.config.recompile_limit = 64
    failed = False
    for deterministic in (False, True):
        torch.use_deterministic_algorithms(deterministic)
        for name, case in CASES.items():
            report, launches = check_case(*case)
            failed |= bool(report)
            print(f"{name + (' deterministic' if deterministic else ''):48s} {'FAILED' if report else 'ok'}: "
                  f"{launches} launches per step")
            for why in report[:20]:
                print(f"    {why}")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
