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


def report() -> str:
    """A human-readable report, one fact per line."""
    lines = [
        f"scsa_kernels {__version__}",
        f"python       {platform.python_version()} ({sys.executable})",
        f"torch        {torch.__version__} (CUDA build: {torch.version.cuda or 'no'})",
        f"triton       {_triton_version()}",
        f"cpu          {platform.machine()}, {torch.get_num_threads()} threads",
    ]
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            lines.append(f"cuda:{i}       {p.name}, sm_{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
    else:
        lines.append("cuda         no CUDA device visible")
    lines.append("backends:")
    for name in backends.BACKENDS:
        reason = backends.unavailable_reason(name)
        lines.append(f"  {name:<10} {'available' if reason is None else 'unavailable: ' + reason}")
    auto = {dev: next((n for n in order if backends.unavailable_reason(n) is None), "reference")
            for dev, order in backends.AUTO_ORDER.items()}
    lines.append("auto picks:   " + ", ".join(f"{dev} tensors -> {name}" for dev, name in auto.items())
                 + " (per input it falls back further when a backend does not support it)")
    return "\n".join(lines)


if __name__ == "__main__":
    print(report())
