"""The Triton backend's direct launches (ops/triton_launch.py) hand Triton's launcher exactly what
Triton's own launch does.

    python tests/triton_launch_check.py     (TRITON_INTERPRET unset; run by test_triton_ops.py)

Without a GPU: Triton's driver is benchmarks/host_only_triton.HostOnlyDriver (kernels compiled for
sm_90, a launcher that records its arguments and runs nothing), on CPU tensors. Every launch that
reaches ``triton_launch.launch_compiled`` is made twice: once through Triton's ``JITFunction.run`` (the
reference) and once as ``launch_compiled`` makes it (the first time of a specialization through Triton as
well, after that straight to its CompiledKernel). The two launcher calls must agree argument by
argument: grid, stream, the loaded kernel (a distinct handle per compiled specialization), its
metadata, the launch metadata and hooks (a direct launch passes None for an empty hook chain and for
the launch metadata while no hook is registered), and every kernel argument (each tensor as the very
same object, or in a direct launch as its address, in the same positions). Each case runs a forward+backward three times: a plan's first call goes
through the autotuners, its second launches their picks (first time through Triton), and the third
must take only direct launches. Cases: every pooling mode and gate, heads, q/k/v bias, attention
dropout, fp32 and bf16, channels_last, x misaligned by one element (another specialization,
never the aligned one's kernel), each set of buffers the forward keeps for the backward, and a
registered launch hook (which every launch must run, by either route). And inference calls, whose
pack launch is kept and repeated (``_inference_pack``): the repeats hand the launcher what the
kept direct launch did.
Prints one line per case (and its mismatches); exits non-zero when any case failed.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "benchmarks")]
if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    sys.exit("unset TRITON_INTERPRET: the direct launches exist only for compiled kernels")

import torch  # noqa: E402
from triton import knobs  # noqa: E402

import host_only_triton  # noqa: E402
from scsa_kernels.config import SCSAConfig  # noqa: E402
from scsa_kernels.functional import scsa  # noqa: E402
from scsa_kernels.ops import triton_launch  # noqa: E402
from scsa_kernels.testing import random_weights  # noqa: E402

CASES = {
    "avg_pool_fp32": ((2, 16, 7, 7), torch.float32, "nchw", dict(window_size=3)),
    "max_pool_softmax_heads_bias_bf16": ((2, 16, 9, 8), torch.bfloat16, "nchw",
                                         dict(window_size=3, down_sample_mode="max_pool", gate_layer="softmax",
                                              head_num=2, qkv_bias=True)),
    "recombination_fp32": ((1, 8, 6, 6), torch.float32, "nchw", dict(window_size=3, down_sample_mode="recombination")),
    "global_pool_dropout_bf16": ((2, 16, 8, 8), torch.bfloat16, "nchw", dict(window_size=-1, attn_drop_ratio=0.5)),
    "channels_last_fp32": ((2, 16, 7, 7), torch.float32, "channels_last", dict(window_size=3)),
    "misaligned_x_fp32": ((2, 16, 7, 7), torch.float32, "misaligned", dict(window_size=3)),
    # planes large enough for the forward to keep the attention statistics, and the means too
    "stats_kept_fp32": ((2, 16, 14, 14), torch.float32, "nchw", dict(window_size=7)),
    "means_and_stats_kept_softmax_fp32": ((1, 8, 32, 32), torch.float32, "nchw", dict(window_size=8, gate_layer="softmax")),
}


def make_input(shape, dtype, layout):
    """x (requires grad) and grad_out in ``layout``; "misaligned": x starts one element past a 16-byte boundary."""
    if layout == "misaligned":
        x = torch.randn(torch.Size(shape).numel() + 1, dtype=dtype)[1:].view(shape)
    else:
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(shape, dtype=dtype).contiguous(memory_format=memory_format)
    return x.requires_grad_(), torch.randn_like(x)


def describe(argument):
    """A launcher argument for a mismatch message (a tensor by dtype, shape and address)."""
    if isinstance(argument, torch.Tensor):
        return f"{argument.dtype} tensor {tuple(argument.shape)} at {argument.data_ptr():#x}"
    return f"{argument:#x}" if type(argument) is int and argument > 2 ** 32 else repr(argument)


def same_launch(reference, direct):
    """Why two recorded launcher calls differ, or None."""
    (ref_name, ref_args), (name, args) = reference, direct
    if ref_name != name or len(ref_args) != len(args):
        return f"{ref_name} with {len(ref_args)} arguments vs {name} with {len(args)}"
    for i, (a, b) in enumerate(zip(ref_args, args)):
        if isinstance(a, torch.Tensor):  # the same tensor, or (a direct launch) its address
            equal = b is a or (type(b) is int and b == a.data_ptr())
        elif isinstance(b, torch.Tensor):
            equal = False
        elif type(a).__name__ == "LazyDict":  # launch metadata: a new one per launch; none without hooks
            equal = (type(b) is type(a) and a.data == b.data and len(a.extras) == len(b.extras)) or (
                b is None and not hooks_registered())
        elif type(a).__name__ == "HookChain":  # a launch hook chain: the same, or None for an empty one
            equal = b is a or (b is None and not a.calls)
        else:
            equal = a is b or a == b
        if not equal:
            return f"{name}: launcher argument {i} differs: {describe(a)} vs {describe(b)}"
    return None


def hooks_registered() -> bool:
    return bool(knobs.runtime.launch_enter_hook.calls or knobs.runtime.launch_exit_hook.calls)


class LaunchHooks:
    """A registered launch enter and exit hook (as a profiler registers them), counting their calls."""

    def __init__(self):
        self.calls = 0

    def __call__(self, metadata):
        self.calls += 1

    def __enter__(self):
        knobs.runtime.launch_enter_hook.add(self)
        knobs.runtime.launch_exit_hook.add(self)
        return self

    def __exit__(self, *exc):
        knobs.runtime.launch_enter_hook.remove(self)
        knobs.runtime.launch_exit_hook.remove(self)


class DoubleLaunch:
    """Wraps ops.triton_launch.launch_compiled: Triton's own launch first, then ours, compared."""

    def __init__(self, ops):
        self.ops, self.original = ops, triton_launch.launch_compiled
        self.direct = self.total = 0
        self.mismatches = []
        self.last = {}  # kernel name -> the launcher arguments of its latest launch by launch_compiled

    def __call__(self, fn, grid, args, kwargs):
        launches_before = len(triton_launch.COMPILED_LAUNCHES)
        reference = host_only_triton.recorded_launches(lambda: fn[grid](*args, **kwargs))
        record = []  # what launch_compiled returns: a direct launch's record, to be repeated
        ours = host_only_triton.recorded_launches(lambda: record.append(self.original(fn, grid, args, kwargs)))
        self.total += 1
        self.direct += len(triton_launch.COMPILED_LAUNCHES) == launches_before  # an existing entry: a direct launch
        if len(reference) != 1 or len(ours) != 1:
            self.mismatches.append(f"{fn.__name__}: {len(reference)} and {len(ours)} launcher calls")
        elif (why := same_launch(reference[0], ours[0])) is not None:
            self.mismatches.append(why)
        self.last[fn.__name__] = ours[-1] if ours else None
        return record[0]


def run_case(double, name, shape, dtype, layout, options):
    """Three forward+backward calls of one case; prints its line; -> (whether it passed, launches made)."""
    config = SCSAConfig(shape[1], **options)
    weights = random_weights(config, dtype=dtype)
    x, grad_out = make_input(shape, dtype, layout)
    per_call = []
    for _ in range(3):
        double.direct = double.total = 0
        scsa(x, weights, config, training=True, backend="triton").backward(grad_out)
        per_call.append((double.direct, double.total))
    ok = not double.mismatches and per_call[-1][0] == per_call[-1][1] > 0
    print(f"{name:34s} {'ok' if ok else 'FAILED'}: (direct, launches) per call {per_call}")
    for why in double.mismatches:
        print(f"    {why}")
    double.mismatches.clear()
    return ok, sum(total for _, total in per_call)


def check_repeated_pack(double, name, shape, dtype, layout, options):
    """Three inference calls of one case: the first makes the pack launch directly (compared with
    Triton's by DoubleLaunch) and keeps it; the second and third repeat it (``relaunch``), which
    must hand the launcher the same arguments. Prints its line; -> whether it passed."""
    config = SCSAConfig(shape[1], **options)
    weights = random_weights(config, dtype=dtype)
    x = make_input(shape, dtype, layout)[0].detach()
    ops, repeats = double.ops, []
    run = ops.relaunch
    ops.relaunch = lambda record: repeats.extend(host_only_triton.recorded_launches(lambda: run(record)))
    try:
        for _ in range(3):
            with torch.no_grad():
                scsa(x, weights, config, training=False, backend="triton")
            if not repeats:  # the first call's, checked against Triton's
                direct = double.last.get("pack_parameters_kernel")
    finally:
        ops.relaunch = run
    why = [] if len(repeats) == 2 else [f"{len(repeats)} repeated launches in calls 2 and 3, not 2"]
    why += [w for launch in repeats if (w := same_launch(direct, launch)) is not None]
    print(f"{name + ' inference':34s} {'FAILED' if why else 'ok'}: the pack launch repeated in calls 2 and 3")
    for w in why:
        print(f"    {w}")
    return not why


def main():
    ops = host_only_triton.triton_ops()
    ops.EAGER_BYPASS = triton_launch.DIRECT_LAUNCH = True  # the GPU defaults
    double = DoubleLaunch(ops)
    triton_launch.launch_compiled = double
    results = [run_case(double, name, *case)[0] for name, case in CASES.items()]
    results += [check_repeated_pack(double, name, *CASES[name])
                for name in ("avg_pool_fp32", "max_pool_softmax_heads_bias_bf16")]
    # with a launch hook registered (a profiler), both routes hand the launcher the hooks and the
    # launch metadata, and each launch runs them (enter and exit, once per route)
    with LaunchHooks() as hooks:
        ok, launches = run_case(double, "avg_pool_fp32_with_launch_hooks", *CASES["avg_pool_fp32"])
    results.append(ok)
    expected = 2 * 2 * launches
    if hooks.calls != expected:
        print(f"    the launch hooks ran {hooks.calls} times, not {expected}")
        results.append(False)
    sys.exit(0 if all(results) else 1)


if __name__ == "__main__":
    main()
