"""``scsa-check``: every available backend against the reference, by the DESIGN.md tolerance rule.

For each backend, device, SPEC.md option set, dtype and memory layout it runs forward and
backward (eval mode; the attention dropout case in training mode, the reference applying the masks
the fused kernels draw) and compares the output, dx and every parameter gradient with
``testing.compare_backend``. One line per case with the worst tensor (largest error/bound);
exit status 1 when any case fails. Without a CUDA GPU, ``--triton-interpret`` checks the
Triton kernels on CPU tensors under TRITON_INTERPRET=1 (slow: minutes for the full set).
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import torch

LAYOUTS = ("contiguous", "channels_last", "permuted")
DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)
QUICK_DTYPES = (torch.float32, torch.bfloat16)
QUICK_LAYOUTS = ("contiguous", "channels_last")


@dataclass(frozen=True)
class CheckCase:
    """One option set of SPEC.md on an input of shape ``dims`` = (B, C, H, W)."""

    label: str
    options: dict
    dims: Tuple[int, int, int, int]
    quick: bool = False
    training: bool = False


CASES = (
    CheckCase("defaults, H,W not multiples of 7", dict(dim=16), (2, 16, 15, 17), quick=True),
    CheckCase("softmax gates", dict(dim=16, gate_layer="softmax"), (2, 16, 15, 17)),
    CheckCase("2 heads, qkv bias", dict(dim=16, head_num=2, qkv_bias=True), (2, 16, 15, 17), quick=True),
    CheckCase("max_pool, window 3", dict(dim=16, window_size=3, down_sample_mode="max_pool"), (2, 16, 10, 11),
              quick=True),
    CheckCase("recombination, window 2", dict(dim=16, window_size=2, down_sample_mode="recombination"),
              (2, 16, 9, 8), quick=True),
    CheckCase("global pool (window -1)", dict(dim=16, window_size=-1), (2, 16, 6, 5), quick=True),
    CheckCase("kernels (1,3,5,7), window 4", dict(dim=16, window_size=4, group_kernel_sizes=(1, 3, 5, 7)),
              (2, 16, 13, 12)),
    CheckCase("4 heads, softmax, max_pool 2", dict(dim=32, head_num=4, gate_layer="softmax",
                                                   down_sample_mode="max_pool", window_size=2), (1, 32, 8, 9)),
    CheckCase("attn dropout 0.1 (eval)", dict(dim=16, attn_drop_ratio=0.1), (2, 16, 14, 14)),
    CheckCase("attn dropout 0.3 (training), 2 heads", dict(dim=16, head_num=2, attn_drop_ratio=0.3), (2, 16, 14, 14),
              training=True),
    CheckCase("64 channels, 14x14", dict(dim=64), (3, 64, 14, 14)),
)


@dataclass
class CheckResult:
    """The verdict of one (backend, device, case, dtype, layout)."""

    backend: str
    device: str
    case: str
    dtype: str
    layout: str
    status: str  # PASS / FAIL / SKIP
    worst: str = ""
    error: Optional[float] = None
    bound: Optional[float] = None
    detail: str = ""


def make_input(dims, dtype: torch.dtype, device: str, layout: str) -> torch.Tensor:
    """x of shape ``dims`` in ``layout``: contiguous, channels_last, or permuted ((B, H, C, W) in memory)."""
    if layout == "permuted":
        b, c, h, w = dims
        return torch.randn(b, h, c, w, dtype=dtype, device=device).permute(0, 2, 1, 3)
    x = torch.randn(dims, dtype=dtype, device=device)
    return x.contiguous(memory_format=torch.channels_last) if layout == "channels_last" else x


def check_one(backend: str, case: CheckCase, dtype: torch.dtype, layout: str, device: str) -> CheckResult:
    from . import backends
    from .config import SCSAConfig
    from .testing import compare_backend, random_weights

    config = SCSAConfig(**case.options)
    x = make_input(case.dims, dtype, device, layout)
    result = CheckResult(backend, device, case.label, str(dtype).removeprefix("torch."), layout, "SKIP")
    reason = backends.why_not(backend, x, config, case.training)
    if reason is None and case.training and backend == "reference":
        reason = "the reference's dropout masks are torch's own: nothing to compare in training"
    if reason is not None:
        result.detail = reason
        return result
    try:
        comparisons = compare_backend(backend, x, random_weights(config, dtype, device), config,
                                      training=case.training)
    except Exception as exc:  # a crashing backend is a failing backend
        result.status, result.detail = "FAIL", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        return result
    worst = max(comparisons, key=lambda c: c.error / c.bound if c.bound > 0 else (0.0 if c.error == 0 else float("inf")))
    result.status = "PASS" if all(c.ok for c in comparisons) else "FAIL"
    result.worst, result.error, result.bound = worst.name, worst.error, worst.bound
    result.detail = ", ".join(c.name for c in comparisons if not c.ok)
    return result


def device_reason(backend: str, device: str) -> Optional[str]:
    """Why ``backend`` takes no input at all on ``device`` (probed with the default options), or None."""
    from . import backends
    from .config import SCSAConfig

    return backends.why_not(backend, torch.randn(1, 16, 14, 14, device=device), SCSAConfig(16), False)


def backends_to_check(requested: Sequence[str]) -> List[str]:
    """--backend as given, else every available fused backend (the reference when there is none)."""
    from . import backends

    if requested:
        return list(requested)
    fused = [b for b in backends.BACKENDS if b != "reference" and backends.unavailable_reason(b) is None]
    return fused or ["reference"]


ROW = "{:<10} {:<5} {:<32} {:<9} {:<13} {:<5} {:<26} {:>10} {:>10}  {}"


def format_result(r: CheckResult) -> str:
    number = lambda v: "" if v is None else f"{v:.3g}"
    return ROW.format(r.backend, r.device, r.case, r.dtype, r.layout, r.status, r.worst, number(r.error),
                      number(r.bound), r.detail)


def run_checks(names: Sequence[str], devices: Sequence[str], quick: bool, stream=None) -> List[CheckResult]:
    """Every combination, one line each printed to ``stream`` (stdout) as it finishes."""
    from . import backends

    stream = stream or sys.stdout
    cases = [c for c in CASES if c.quick or not quick]
    dtypes, layouts = (QUICK_DTYPES, QUICK_LAYOUTS) if quick else (DTYPES, LAYOUTS)
    print(ROW.format("backend", "dev", "case", "dtype", "layout", "", "worst tensor", "error", "bound", "detail"),
          file=stream)
    results = []
    for name in names:
        reason = backends.unavailable_reason(name)
        if reason is not None:
            results.append(CheckResult(name, "-", "(all)", "-", "-", "SKIP", detail=reason))
            print(format_result(results[-1]), file=stream, flush=True)
            continue
        for device in devices:
            reason = device_reason(name, device)
            if reason is not None:  # e.g. the CPU backend and CUDA tensors: one line, not one per case
                results.append(CheckResult(name, device, "(all)", "-", "-", "SKIP", detail=reason))
                print(format_result(results[-1]), file=stream, flush=True)
                continue
            for case in cases:
                for dtype in dtypes:
                    for layout in layouts:
                        results.append(check_one(name, case, dtype, layout, device))
                        print(format_result(results[-1]), file=stream, flush=True)
    return results


def summary(results: Sequence[CheckResult]) -> str:
    counts = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    return f"scsa-check: {counts['PASS']} passed, {counts['FAIL']} failed, {counts['SKIP']} skipped"


def main(argv: Optional[Sequence[str]] = None) -> int:
    from . import backends  # already imported by the package's __init__: no triton import here

    parser = argparse.ArgumentParser(prog="scsa-check", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", action="append", choices=backends.BACKENDS,  # not "auto": one backend each
                        help="backend to check (repeatable; 'reference' too); default: every available fused backend")
    parser.add_argument("--device", action="append", choices=("cpu", "cuda"),
                        help="repeatable; default: cpu, and cuda when available")
    parser.add_argument("--quick", action="store_true", help="5 option sets x float32/bfloat16 x 2 layouts")
    parser.add_argument("--triton-interpret", action="store_true",
                        help="run Triton kernels on CPU tensors under TRITON_INTERPRET=1 (no GPU needed; slow)")
    args = parser.parse_args(argv)
    if args.triton_interpret:
        if "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1":
            # on a machine with a GPU, importing scsa_kernels imports triton (backends._preload)
            raise SystemExit("scsa-check: --triton-interpret comes too late, triton is imported already (as on a "
                             "machine with a GPU): run with TRITON_INTERPRET=1 in the environment instead")
        os.environ["TRITON_INTERPRET"] = "1"
    devices = args.device or (["cpu", "cuda"] if torch.cuda.is_available() else ["cpu"])
    results = run_checks(backends_to_check(args.backend or ()), devices, args.quick)
    print(summary(results))
    ran = [r for r in results if r.status != "SKIP"]
    return 1 if not ran or any(r.status == "FAIL" for r in ran) else 0


if __name__ == "__main__":
    sys.exit(main())
