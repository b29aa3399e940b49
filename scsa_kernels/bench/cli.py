"""``scsa-bench``: the SCSA microbenchmark suite (and ``--e2e``, the ResNet-50 benchmark).

With no arguments: the default suite of the present device (CUDA if available, else CPU),
every available provider, CSV + PNG under benchmarks/results/<device>/.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import List, Optional, Sequence

import torch

from .. import backends
from ..config import SCSAConfig
from .environment import environment, results_folder_name, steady_cpu_heap
from .plots import plot_all
from .providers import COMPILE_MODES, make_providers
from .report import MICRO_COLUMNS, CsvWriter, micro_table, read_csv
from .runner import Settings, log, run_suite
from .shapes import parse_dtype, parse_shape
from .suites import LAYOUTS, Case, custom_suite, default_suite
from .targets import targets_report
from .traffic import MODES, copy_bandwidth

COMPILE_CHOICES = {"none": (), "default": ("compile",), "max-autotune": ("compile-max-autotune",),
                   "all": tuple(COMPILE_MODES)}
# (warm-up ms, measured ms) per provider and measurement
TIME_PER_MEASUREMENT = {("cuda", False): (10.0, 50.0), ("cuda", True): (5.0, 20.0),
                        ("cpu", False): (50.0, 300.0), ("cpu", True): (10.0, 60.0)}


def fused_backend_names():
    """Every fused backend the registry knows, available or not."""
    return tuple(b for b in backends.BACKENDS if b != "reference")


def fused_backends_for(device: torch.device, names: Sequence[str]) -> List[str]:
    """The backends of ``names`` that run on this machine and take a float32 input on ``device``
    (the CPU backend on a GPU machine is left out of a CUDA run, with one log line)."""
    probe = torch.randn(1, 16, 14, 14, device=device)
    usable = []
    for name in names:
        reason = backends.why_not(name, probe, SCSAConfig(16), False)
        if reason is None:
            usable.append(name)
        else:
            log(f"backend {name!r} left out: {reason}")
    return usable


def graphed_providers(device: torch.device, fused: Sequence[str], compile_modes: Sequence[str]) -> List[str]:
    """The fused backends to time under CUDA graphs too: on a CUDA run that times
    compile-max-autotune (whose compiled graphs replay as CUDA graphs), every fused one."""
    return list(fused) if device.type == "cuda" and "compile-max-autotune" in compile_modes else []


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="scsa-bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shape", action="append", type=parse_shape, metavar="B,C,H,W",
                   help="benchmark this input shape (repeatable); replaces the default suite's shapes")
    p.add_argument("--dtype", action="append", type=parse_dtype,
                   help="float32 / float16 / bfloat16 / float64 (repeatable); default: the suite's")
    p.add_argument("--mode", action="append", choices=MODES, help="repeatable; default: every mode")
    p.add_argument("--layout", action="append", choices=LAYOUTS,
                   help="memory format of x and grad_out (repeatable); default: the suite's (nchw with --shape)")
    p.add_argument("--backend", action="append", choices=fused_backend_names(),
                   help="fused backend to include (repeatable); default: every available one")
    p.add_argument("--compile", choices=tuple(COMPILE_CHOICES),
                   help="torch.compile(reference) providers; default: all on CUDA, default on CPU, none with --quick")
    p.add_argument("--compile-budget", type=float, default=None, metavar="S",
                   help="seconds each compile provider may spend compiling before it skips new cases "
                        "(each; default 60 on CUDA, 150 on CPU)")
    p.add_argument("--autotune-all", action="store_true",
                   help="compile-max-autotune on every case (within --compile-budget); default: its first "
                        "measurement only (the first case's first mode: 64x64x56x56 bfloat16 forward in the "
                        "CUDA suite), as each case costs a long autotuning compile")
    p.add_argument("--quick", action="store_true", help="a tiny run: two small shapes, short timings")
    p.add_argument("--e2e", action="store_true", help="run the end-to-end ResNet-50 benchmark instead")
    p.add_argument("--targets", metavar="CSV", default=None,
                   help="measure nothing: judge the Triton backend's targets (issue 3) from this microbench.csv")
    p.add_argument("--e2e-batch", type=int, default=None, help="e2e batch size (default 32 on CUDA, 4 on CPU, 1 with --quick)")
    p.add_argument("--e2e-image-size", type=int, default=None, help="e2e image size (default 224); --dtype applies to --e2e too")
    p.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda when available")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for every provider (default: torch's)")
    p.add_argument("--warmup-ms", type=float, default=None, help="warm-up time per provider and measurement")
    p.add_argument("--rep-ms", type=float, default=None, help="measured time per provider and measurement")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="stop starting new cases (e2e: phases) after S seconds (results so far are kept)")
    p.add_argument("--out", default=None, help="results folder (default benchmarks/results/<device>, "
                                               "benchmarks/results/tmp-quick/<device> with --quick)")
    return p


def select_cases(args, device: torch.device) -> List[Case]:
    """The default suite, or --shape; narrowed by --dtype, --mode and --layout."""
    modes = tuple(args.mode) if args.mode else MODES
    if args.shape:
        return custom_suite(args.shape, args.dtype or [torch.float32], modes, args.layout or ["nchw"])
    cases = []
    for case in default_suite(device, args.quick):
        kept = tuple(m for m in case.modes if m in modes)
        for dtype in (args.dtype or [case.dtype]):
            for layout in (args.layout or [case.layout]):
                if kept and Case(case.shape, dtype, kept, layout) not in cases:
                    cases.append(Case(case.shape, dtype, kept, layout))
    return cases


def last_level_cache_bytes(device: torch.device) -> int:
    """L2 of the GPU; L3 (else the largest cache sysfs reports, else 32 MiB) of the CPU."""
    if device.type == "cuda":
        return getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 0) or 64 << 20
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        text = open(path).read().strip()
        sizes.append(int(text[:-1]) * {"K": 1 << 10, "M": 1 << 20}[text[-1]] if text[-1] in "KM" else int(text))
    return max(sizes, default=32 << 20)


def resolve_device(args) -> torch.device:
    name = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SystemExit("scsa-bench: --device cuda asked for, but torch sees no CUDA device")
    return torch.device(name, torch.cuda.current_device()) if name == "cuda" else torch.device("cpu")


def output_folder(args, device: torch.device) -> str:
    if args.out:
        return args.out
    base = os.path.join("benchmarks", "results")
    return os.path.join(base, "tmp-quick", results_folder_name(device)) if args.quick else os.path.join(
        base, results_folder_name(device))


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.targets:
        if not os.path.isfile(args.targets):
            parser.error(f"--targets must name a microbench.csv, and {args.targets!r} is no file")
        print(targets_report(read_csv(args.targets)))
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args)
    out = output_folder(args, device)
    env = environment(device, steady_cpu_heap() if device.type == "cpu" else "default")
    fused = fused_backends_for(device, args.backend or fused_backend_names())
    log(f"{env['device_name']} ({device}), {env['threads']} threads, torch {env['torch']}, "
        f"triton {env['triton'] or '-'}, heap {env['heap']}; fused backends available: {', '.join(fused) or 'none'}")
    if args.e2e:
        from .e2e import run_e2e

        return run_e2e(args, device, env, fused, out)
    return run_micro(args, device, env, fused, out)


def run_micro(args, device: torch.device, env, fused: Sequence[str], out: str) -> int:
    cases = select_cases(args, device)
    compile_choice = args.compile or ("none" if args.quick else "all" if device.type == "cuda" else "default")
    budget = args.compile_budget if args.compile_budget is not None else (60.0 if device.type == "cuda" else 150.0)
    compile_modes = COMPILE_CHOICES[compile_choice]
    providers = make_providers(fused, compile_modes, budget, None if args.autotune_all else 1,
                               graphed_providers(device, fused, compile_modes))
    warmup_ms, rep_ms = TIME_PER_MEASUREMENT[(device.type, args.quick)]
    cache = last_level_cache_bytes(device)
    copy_gbps = copy_bandwidth(device, max(4 * cache, 128 << 20))
    settings = Settings(device, args.warmup_ms or warmup_ms, args.rep_ms or rep_ms, cache, copy_gbps,
                        args.time_budget)
    log(f"copy bandwidth {copy_gbps:.1f} GB/s; {len(cases)} cases; providers: "
        f"{', '.join(p.name for p in providers)}; results -> {out}")
    writer = CsvWriter(os.path.join(out, "microbench.csv"), MICRO_COLUMNS)
    rows = run_suite(cases, providers, settings, env, writer)
    print(micro_table(rows))
    for path in [writer.path] + plot_all(rows, out, "microbench"):
        log(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
