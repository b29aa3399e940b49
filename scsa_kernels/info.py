"""``python -m scsa_kernels.info``: versions, devices, and which backends can run here (and why not)."""
from __future__ import annotations

import platform
import sys

import torch

from . import __version__, backends


def _triton_version() -> str:
    try:
        import triton
    except Exception as exc:  # report, never fail: this command is for diagnosing broken installs
        return f"not importable ({type(exc).__name__}: {exc})"
    return triton.__version__


def _torch_build() -> str:
    """Which GPU platform torch was built for: CUDA (its version), ROCm (HIP's version), or none."""
    if torch.version.cuda:
        return f"CUDA build: {torch.version.cuda}"
    if torch.version.hip:
        return f"ROCm build: HIP {torch.version.hip}"
    return "CPU-only build"


def report() -> str:
    """A human-readable report, one fact per line."""
    lines = [
        f"scsa_kernels {__version__}",
        f"python       {platform.python_version()} ({sys.executable})",
        f"torch        {torch.__version__} ({_torch_build()})",
        f"triton       {_triton_version()}",
        f"cpu          {platform.machine()}, {torch.get_num_threads()} threads",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            arch = p.gcnArchName if torch.version.hip else f"sm_{p.major}{p.minor}"
            lines.append(f"cuda:{i}       {p.name}, {arch}, {p.total_memory / 2**30:.0f} GiB")
    else:
        lines.append("cuda         no CUDA device visible")
    lines.append("backends:")
    auto_may_pick = set()
    for name in backends.BACKENDS:
        reason = backends.unavailable_reason(name)
        skip = backends.auto_skip_reason(name) if reason is None else None
        if reason is None and skip is None:
            auto_may_pick.add(name)
        status = "available" if reason is None else "unavailable: " + reason
        lines.append(f"  {name:<10} {status}" + ("" if skip is None else f" ({skip})"))
    auto = {dev: next((n for n in order if n in auto_may_pick), "reference") for dev, order in backends.AUTO_ORDER.items()}
    lines.append("auto picks:   " + ", ".join(f"{dev} tensors -> {name}" for dev, name in auto.items())
                 + " (per input it falls back further when a backend does not support it)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
