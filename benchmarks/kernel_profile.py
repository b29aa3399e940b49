"""Where one SCSA call spends its time: wall time, host time, and device time per kernel.

    python benchmarks/kernel_profile.py [--device cuda] [--dtype bfloat16] [--reps 20]
                                        [--shape 64 64 56 56 ...] [--backend auto]

For each shape, the fused backend (``--backend``, "auto" picks the device's fastest) and the
eager reference, in forward (no autograd) and forward+backward:
- wall: synchronized time per call over ``--reps`` back-to-back calls;
- host: the same calls' CPU time until the last one is enqueued (on a GPU, when host > device
  the call is host-bound and the kernels wait for Python, dispatch and launches);
- device: the kernels' own time per call, from torch.profiler (on a CPU run: the ops' self time),
  then the heaviest kernels with their launches and microseconds per call; on a GPU also the
  heaviest host-side events of the same profile (torch ops, CUDA runtime and driver calls, by self
  time, the profiler's overhead included): which torch op or driver call the host time goes to;
- where the host time goes: forward and backward separately (on CUDA the backward's CPU work
  runs on autograd's device thread; ``.backward()`` returns when it is done), the time in each
  Python layer of the fused path (the autograd node, packing, op bodies, workspace, launches;
  what the backward spends outside its node is autograd's engine) and, for the
  Triton backend, the time in Triton's launcher (the compiled kernel's C launcher and the CUDA
  driver call, whichever route led there), which benchmarks/triton_host_overhead.py leaves out; and the wall and
  host time with the direct launches off (every launch through ``JITFunction.run``), and the device
  time per kernel of each plan variant of ``--variants`` (PLAN_VARIANTS; default: no-row-vectors, the row vectors off:
  every plane pass one element per load or store: what ``aligned`` saves).
  ``--fused-only`` leaves the reference out (e.g. ``--fused-only --variants`` and every variant's name
  over the four ResNet-50 maps: run_gpu.sh's ``variants`` step).
This is the diagnosis that scsa-bench's ratios cannot give: which kernel to fix, or whether the
host is the bottleneck. ``bash benchmarks/run_gpu.sh`` runs it (profile.log).
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import functools
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # this checkout first

import torch  # noqa: E402
from torch.profiler import ProfilerActivity, profile  # noqa: E402

from scsa_kernels import backends  # noqa: E402
from scsa_kernels.bench.timing import device_self_us  # noqa: E402
from scsa_kernels.module import SCSA  # noqa: E402

DEFAULT_SHAPES = [(64, 64, 56, 56), (64, 512, 7, 7), (1, 64, 56, 56)]
TOP_KERNELS = 8


def one_call(module, x, grad_out, mode):
    """The timed unit: a forward without autograd, or forward + backward from scratch (no gradient
    left from the last call: accumulating into x.grad would add a kernel of 3|x| traffic to every call).
    Returns out."""
    if mode == "forward":
        with torch.no_grad():
            return module(x)
    module.zero_grad(set_to_none=True)
    x.grad = None
    out = module(x)
    out.backward(grad_out)
    return out


def results(module, x, grad_out, mode):
    """What one call computes: (out,) in forward, (out, dx) in forward+backward."""
    out = one_call(module, x, grad_out, mode)
    return (out,) if mode == "forward" else (out.detach(), x.grad)


def max_relative_difference(results, expected):
    """Largest |a - b| / max|b| over paired tensors (in float32); NaN if either holds one."""
    return max(((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-30)).item()
               for a, b in zip(results, expected))


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def wall_and_host_us(module, x, grad_out, mode, reps):
    synchronize(x.device)
    start = time.perf_counter()
    for _ in range(reps):
        one_call(module, x, grad_out, mode)
    enqueued = time.perf_counter()
    synchronize(x.device)
    done = time.perf_counter()
    return (done - start) / reps * 1e6, (enqueued - start) / reps * 1e6


@contextlib.contextmanager
def timed_triton_launches():
    """Times every call of a compiled Triton kernel's launcher (``CompiledKernel.run``: the C launcher
    and the CUDA driver), on any thread, whichever route led there: Triton's own launch
    (``JITFunction.run``), ``CompiledKernel[grid]`` or ops.triton's direct launches; yields a dict
    kernel name -> [launches, seconds] (stays empty without triton)."""
    launched = collections.defaultdict(lambda: [0, 0.0])
    try:
        from triton.compiler.compiler import CompiledKernel
    except ImportError:
        yield launched
        return

    def timed(launcher, name, *args):
        start = time.perf_counter()
        try:
            return launcher(*args)
        finally:
            entry = launched[name]
            entry[0] += 1
            entry[1] += time.perf_counter() - start

    run = CompiledKernel.__dict__["run"]  # a property: the launcher, loaded on first use
    CompiledKernel.run = property(lambda self: functools.partial(timed, run.fget(self), self.name))
    try:
        yield launched
    finally:
        CompiledKernel.run = run


def _python_layers():
    """(owner, attribute, label) of the fused path's Python layers, outermost first: the eager autograd
    node (ops/eager.py) with the C++ backend's weight packing and gradient unpacking (torch ops) and,
    for the Triton backend, its packing kernel, op bodies, parameter gradient kernel, workspace and
    launches."""
    from scsa_kernels.ops import cpu, eager
    layers = [(eager._FusedSCSAFunction, "forward", "node.forward"), (eager, "pack_weights", "pack_weights"),
              (eager._FusedSCSAFunction, "backward", "node.backward"), (cpu, "unpack_gradients", "unpack_gradients")]
    try:
        from scsa_kernels.ops import triton as ops
    except ImportError:
        return layers
    return layers + [(ops.KERNELS, "pack", "pack (kernel)"), (ops, "_forward_impl", "_forward_impl"),
                     (ops, "_backward_passes", "_backward_passes"), (ops, "_parameter_grads", "_parameter_grads"),
                     (ops, "_workspace", "_workspace"), (ops, "launch", "launch")]


@contextlib.contextmanager
def timed_python_layers():
    """Times the fused path's Python layers (``_python_layers``), on any thread (on CUDA the backward
    runs on autograd's device thread, which cProfile on the caller's would not see); yields a dict
    label -> [calls, seconds], inclusive of the layers inside. What the backward phase spends outside
    node.backward is autograd's engine (the hand-over to its device thread, AccumulateGrad)."""
    timed = collections.defaultdict(lambda: [0, 0.0])
    originals = []
    for owner, attribute, label in _python_layers():
        original = owner.__dict__[attribute]
        function = original.__func__ if isinstance(original, staticmethod) else original

        def wrapper(*args, _function=function, _label=label, **kwargs):
            start = time.perf_counter()
            try:
                return _function(*args, **kwargs)
            finally:
                entry = timed[_label]
                entry[0] += 1
                entry[1] += time.perf_counter() - start

        setattr(owner, attribute, staticmethod(wrapper) if isinstance(original, staticmethod) else wrapper)
        originals.append((owner, attribute, original))
    try:
        yield timed
    finally:
        for owner, attribute, original in originals:
            setattr(owner, attribute, original)


class Phase:
    """Host time of one phase (forward or backward) over the calls, and the launches inside it."""

    def __init__(self):
        self.seconds, self.launches, self.launcher_seconds = 0.0, 0, 0.0

    def add(self, seconds, launched_before, launched_after):
        self.seconds += seconds
        self.launches += launched_after[0] - launched_before[0]
        self.launcher_seconds += launched_after[1] - launched_before[1]

    def describe(self, name, reps):
        text = f"{name} {self.seconds / reps * 1e6:.1f} us"
        if self.launches:
            text += (f" (Triton's launcher {self.launcher_seconds / reps * 1e6:.1f} us in "
                     f"{self.launches / reps:.0f} launches)")
        return text


def host_split(module, x, grad_out, mode, reps):
    """(forward Phase, backward Phase, {kernel: [launches, seconds]}) over reps calls: host time only
    (enqueueing), the GPU synchronized before and after."""
    forward, backward = Phase(), Phase()
    synchronize(x.device)
    with timed_triton_launches() as launched, timed_python_layers() as layers:
        def totals():
            return [sum(n for n, _ in launched.values()), sum(t for _, t in launched.values())]

        for _ in range(reps):
            module.zero_grad(set_to_none=True)
            x.grad = None
            before, start = totals(), time.perf_counter()
            with torch.set_grad_enabled(mode != "forward"):
                out = module(x)
            middle = time.perf_counter()
            forward.add(middle - start, before, totals())
            if mode != "forward":
                before, middle = totals(), time.perf_counter()
                out.backward(grad_out)
                backward.add(time.perf_counter() - middle, before, totals())
    synchronize(x.device)
    return forward, backward, dict(launched), dict(layers)


def print_host_split(module, x, grad_out, mode, reps):
    forward, backward, launched, layers = host_split(module, x, grad_out, mode, reps)
    phases = [forward.describe("forward", reps)] + ([backward.describe("backward", reps)] if mode != "forward" else [])
    print("    host: " + " + ".join(phases))
    if launched:
        print("    launcher per launch: " + ", ".join(
            f"{name} {seconds / count * 1e6:.1f} us" for name, (count, seconds) in sorted(launched.items())))
    if layers:
        print("    python layers per call (inclusive): " + ", ".join(
            f"{label} {layers[label][1] / reps * 1e6:.1f} us x{layers[label][0] / reps:.0f}"
            for _, _, label in _python_layers() if label in layers))


def _self_time_us(event, device):
    return device_self_us(event) if device.type == "cuda" else event.self_cpu_time_total


def profiled_tables(module, x, grad_out, mode, reps):
    """One torch.profiler run of reps calls -> (kernels, host ops): [(name, launches per call, device
    us per call)] and, on a GPU, [(name, calls per call, host us per call)] of the CPU-side events
    (torch ops, CUDA runtime and driver calls; the profiler's own overhead included) by self time,
    heaviest first. On a CPU the kernels are the ops (self time) and the second list is empty."""
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if x.device.type == "cuda" else [])
    with profile(activities=activities) as prof:
        for _ in range(reps):
            one_call(module, x, grad_out, mode)
        synchronize(x.device)
    kernels, host_ops = [], []
    for event in prof.key_averages():
        us = _self_time_us(event, x.device)
        kernel = getattr(event, "device_type", None) == torch.autograd.DeviceType.CUDA or x.device.type == "cpu"
        if us > 0 and kernel:
            kernels.append((event.key, event.count / reps, us / reps))
        elif not kernel and event.self_cpu_time_total > 0:
            host_ops.append((event.key, event.count / reps, event.self_cpu_time_total / reps))
    return sorted(kernels, key=lambda r: -r[2]), sorted(host_ops, key=lambda r: -r[2])


def bound(host_us, device_us, device):
    """On a GPU: which side the call waits for (on a CPU both are the same thread)."""
    if device.type != "cuda":
        return ""
    return "  (host-bound)" if host_us > device_us else "  (device-bound)"


def report(shape, backend, dtype, device, mode, reps, variants=("no-row-vectors",)):
    module = SCSA(shape[1], window_size=7, backend=backend).to(device=device, dtype=dtype)
    x = torch.randn(shape, device=device, dtype=dtype).requires_grad_(mode != "forward")
    grad_out = torch.randn_like(x)
    name = backends.auto_choice(x, module.config, mode != "forward") if backend == "auto" else backend
    for _ in range(3):  # compile, autotune, warm caches
        one_call(module, x, grad_out, mode)
    wall, host = wall_and_host_us(module, x, grad_out, mode, reps)
    table, host_ops = profiled_tables(module, x, grad_out, mode, reps)
    device_us = sum(us for _, _, us in table)
    launches = sum(n for _, n, _ in table)
    print(f"{'x'.join(map(str, shape))} {str(dtype).replace('torch.', '')} {mode:<16} {name:<10} "
          f"wall {wall:9.1f} us  host {host:9.1f} us  device {device_us:9.1f} us in {launches:.0f} "
          f"{'kernels' if device.type == 'cuda' else 'ops'}{bound(host, device_us, device)}")
    for key, count, us in table[:TOP_KERNELS]:
        print(f"    {us:9.1f} us  x{count:<4.0f} {key[:110]}")
    if host_ops:
        print(f"    host, self time under the profiler ({sum(us for _, _, us in host_ops):.1f} us per call):")
        for key, count, us in host_ops[:TOP_KERNELS]:
            print(f"    {us:9.1f} us  x{count:<4.0f} {key[:110]}")
    print_host_split(module, x, grad_out, mode, reps)
    if name == "triton":
        print_without_direct_launches(module, x, grad_out, mode, reps)
        for label in variants:
            print_plan_variant(module, x, grad_out, mode, reps, label)


def print_without_direct_launches(module, x, grad_out, mode, reps):
    """Wall and host time per call with ops.triton_launch.DIRECT_LAUNCH off: what the direct launches save."""
    from scsa_kernels.ops import triton_launch

    direct, triton_launch.DIRECT_LAUNCH = triton_launch.DIRECT_LAUNCH, False
    try:
        wall, host = wall_and_host_us(module, x, grad_out, mode, reps)
    finally:
        triton_launch.DIRECT_LAUNCH = direct
    print(f"    direct launches off: wall {wall:.1f} us  host {host:.1f} us")


# Device-time A/B of plan choices of scsa_kernels/ops/triton.py, each a set of its globals run on fresh
# plans. Rollbacks of choices not yet timed on a GPU against what they replaced (results/nvidia-h200/NOTES.md):
# the row vectors (off: every plane pass one element per load or store, what ``aligned`` saves), the
# grouping of small planes (off: one 7x7 or 14x14 plane per program), the one-block spatial gates
# (SPATIAL_TILE 512: the 56x56 and 28x28 groups no longer fit one tile, their convs are recomputed).
# Candidates for the latency-bound small stages (H200, 64x64x56x56: 15 and 16 us per forward): spatial gate
# programs of 8 warps (4 elements per thread: at 16 warps and 40 registers, 3 of the 512 programs fit an
# SM, 2 waves on 132 SMs; the backward's tiles spilled 16 bytes so on triton 3.8) and channel attention
# programs of 32 channels (twice the programs: 64 of 16 warps at head_num 1 leave half the SMs idle), and
# its backward's of 16 (128 programs of 8 warps at 64x64x56x56, one per SM: 56 us; at 64x512x7x7 on
# 2026-11-27, with the tl.dot route since replaced there, 850 us against 1008).
PLAN_VARIANTS = {
    "no-row-vectors": {"ROW_VECTORS": False},
    "one-plane-per-program": {"PLANE_GROUP": 1},
    "spatial-tile-512": {"SPATIAL_TILE": 512},
    "spatial-4-per-thread": {"SPATIAL_ELEMENTS_PER_THREAD": 4},
    "attention-forward-block-32": {"ATTENTION_BLOCK_D": {"forward": 32, "backward": 32}},
    "attention-backward-block-16": {"ATTENTION_BLOCK_D": {"forward": 64, "backward": 16}},
}


def print_plan_variant(module, x, grad_out, mode, reps, label):
    """Device time per kernel with PLAN_VARIANTS[label] set in ops.triton, on fresh plans (3 calls first:
    new variants compile and autotune), and how far its results (out, and dx with a backward; relative
    to their largest magnitude) are from the default's; the globals and the plans made before are put back."""
    from scsa_kernels.ops import triton as ops

    overrides = PLAN_VARIANTS[label]
    expected = results(module, x, grad_out, mode)
    kept = {name: getattr(ops, name) for name in overrides}, dict(ops._FORWARD_PLANS), dict(ops._BACKWARD_PLANS)
    for name, value in overrides.items():
        setattr(ops, name, value)
    ops._FORWARD_PLANS.clear()
    ops._BACKWARD_PLANS.clear()
    try:
        difference = max_relative_difference(results(module, x, grad_out, mode), expected)
        for _ in range(2):
            one_call(module, x, grad_out, mode)
        table, _ = profiled_tables(module, x, grad_out, mode, reps)
    finally:
        for name, value in kept[0].items():
            setattr(ops, name, value)
        for plans, before in ((ops._FORWARD_PLANS, kept[1]), (ops._BACKWARD_PLANS, kept[2])):
            plans.clear()
            plans.update(before)
    print(f"    {label}: device {sum(us for _, _, us in table):.1f} us (results {difference:.1e} off the default's): "
          + ", ".join(f"{key[:40]} {us:.1f} us" for key, _, us in table[:TOP_KERNELS]))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", default=None, help="default: bfloat16 on cuda, float32 on cpu")
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--reps", type=int, default=20)
    parser.add_argument("--shape", type=int, nargs=4, action="append", help="B C H W; repeatable")
    parser.add_argument("--modes", nargs="+", default=["forward", "forward+backward"],
                        choices=["forward", "forward+backward"])
    parser.add_argument("--variants", nargs="*", default=["no-row-vectors"], choices=sorted(PLAN_VARIANTS),
                        help="the Triton backend's plan variants to time beside its default (default: no-row-vectors)")
    parser.add_argument("--fused-only", action="store_true", help="leave the reference's rows out")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    dtype = getattr(torch, args.dtype or ("bfloat16" if device.type == "cuda" else "float32"))
    torch.manual_seed(0)
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"{args.reps} calls per measurement, window_size=7")
    for shape in [tuple(s) for s in args.shape] if args.shape else DEFAULT_SHAPES:
        for mode in args.modes:
            for backend in (args.backend,) if args.fused_only else (args.backend, "reference"):
                report(shape, backend, dtype, device, mode, args.reps, args.variants)


if __name__ == "__main__":
    main()
