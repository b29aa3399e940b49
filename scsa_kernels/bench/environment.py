"""The machine a benchmark ran on: written into every CSV row, and the results folder name."""
from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import importlib.metadata
import platform
import re
import shutil
import subprocess
from typing import Dict

import torch


def cpu_model_name() -> str:
    """The CPU's marketing name from /proc/cpuinfo (platform.processor() elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def nvidia_driver_version() -> str:
    if shutil.which("nvidia-smi") is None:
        return ""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)
        return out.stdout.strip().splitlines()[0] if out.returncode == 0 and out.stdout.strip() else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def package_version(name: str) -> str:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return ""


def device_name(device: torch.device) -> str:
    return torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model_name()


# glibc mallopt parameters
_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4


def steady_cpu_heap() -> str:
    """Keeps glibc's malloc from handing freed memory back to the kernel, for the rest of the process:
    no mmap for large blocks, no trimming of the heap top. Otherwise a large tensor's pages are
    faulted in afresh (and zeroed by the kernel) whenever the heap shrank since the last call, and
    how often that happens depends on what the *other* providers freed: on a 2-core VM the eager
    reference (many full-size temporaries) swung 2-3x between runs with its page faults, and each
    provider's time with the order of the interleaving. With this, every provider runs in the
    steady state a training loop reaches (no page faults), the conservative setting for ratios
    against eager. Returns the ``heap`` column: "steady", or "default" where this is not glibc."""
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return "default"
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    steady = mallopt(_M_MMAP_MAX, 0) == 1 and mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    return "steady" if steady else "default"


def environment(device: torch.device, heap: str = "default") -> Dict[str, str]:
    """Columns that identify the run: date, machine, device, versions, thread count, and ``heap``
    (``steady_cpu_heap``'s answer for CPU runs)."""
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": platform.node(),
        "device": device.type,
        "device_name": device_name(device),
        "driver": nvidia_driver_version() if device.type == "cuda" else "",
        "cuda": torch.version.cuda or "",
        "torch": torch.__version__,
        "triton": package_version("triton"),
        "threads": str(torch.get_num_threads()),
        "heap": heap,
    }


def results_folder_name(device: torch.device) -> str:
    """e.g. "nvidia-h100-80gb-hbm3", or "cpu-intel-xeon-platinum-8481c-2threads" on a CPU."""
    name = device_name(device)
    if device.type != "cuda":
        name = f"cpu {name} {torch.get_num_threads()}threads"
    return re.sub(r"[^a-z0-9]+", "-", name.lower().replace("(r)", "").replace("(tm)", "")).strip("-")
