"""Backend registry and selection.

Each backend lives in ``scsa_kernels/ops/<name>.py`` and exposes three functions:

- ``unavailable_reason() -> str | None``: why it cannot run on this machine at all
  (extension not built, triton missing, no GPU), or None.
- ``unsupported_reason(x, config, training) -> str | None``: why it cannot run this
  particular input/config (wrong device, option not implemented), or None.
- ``scsa(x, weights, config, training) -> Tensor``: the differentiable forward.
  Inputs are already validated by ``config.check_input``.

and may expose ``auto_skip_reason() -> str | None``: why ``auto`` passes it over on this machine
although it can run here (asked for by name, it runs), e.g. a platform it has not been run on.

Modules are imported when this module is (those this machine can use: ``_preload``) or
else on first use, each on its own, so that a broken optional dependency only disables its
own backend. ``auto`` tries ``AUTO_ORDER[device type]`` in order and always ends with the
reference, which runs everywhere, and passes over a backend whose ``auto_skip_reason`` says so.

Under torch.func transforms and forward-mode AD, and while ``torch.onnx.export`` or ``torch.jit.trace``
runs, only the reference can (``context_reason``): ``auto`` then runs it, the same function with the same weights.
"""
from __future__ import annotations

import importlib
import os
from typing import Optional

import torch
import torch.onnx  # imported here: torch.compile must not meet its lazy import in why_not

BACKENDS = ("reference", "triton", "cuda", "cpu")
BACKEND_CHOICES = ("auto",) + BACKENDS
# Fastest first; decided by measurement (benchmarks/results), reference last as the catch-all.
AUTO_ORDER = {"cuda": ("triton", "cuda", "reference"), "cpu": ("cpu", "reference")}


class BackendUnavailableError(RuntimeError):
    """A backend asked for by name cannot run this input; the message says why."""


def check_backend_name(backend: str) -> str:
    if backend not in BACKEND_CHOICES:
        raise ValueError(f"SCSA: backend must be one of {BACKEND_CHOICES}, got {backend!r}")
    return backend


_LOADED = {}  # name -> module; a dict lookup (not an import) is what torch.compile traces


def load(name: str):
    """The ops module of backend ``name``."""
    module = _LOADED.get(name)
    if module is None:
        module = _LOADED[name] = importlib.import_module(f"scsa_kernels.ops.{name}")
    return module


def unavailable_reason(name: str) -> Optional[str]:
    """Why backend ``name`` cannot run on this machine, or None when it can."""
    try:
        return load(name).unavailable_reason()
    except Exception as exc:  # an import error of an optional dependency disables that backend only
        return f"importing scsa_kernels.ops.{name} failed: {type(exc).__name__}: {exc}"


def context_reason() -> Optional[str]:
    """Why no fused backend can run in the current context, or None: the fused ops have no functorch
    rules (their eager autograd node has no vmap rule or setup_context), no jvp and no ONNX translation,
    and a TorchScript trace of them would run only where this package's Python (Triton) or extension
    (C++) is loaded, where a trace of the reference is plain aten ops."""
    if torch._C._are_functorch_transforms_active():  # what autograd.Function itself checks; 30 ns
        return ("torch.func transforms (grad, vmap, ...) are active and the fused kernels do not support "
                "them (backend='auto' or 'reference' runs the reference: the same function)")
    if torch.autograd.forward_ad._current_level >= 0:  # inside forward_ad.dual_level()
        return ("forward-mode AD (torch.autograd.forward_ad) is active and the fused kernels have no jvp "
                "(backend='auto' or 'reference' runs the reference: the same function)")
    tracing = torch.jit.is_tracing()
    # the ONNX exporters run under torch.jit.trace or torch.export: the cheap flags first (a call's host time)
    if (tracing or torch.compiler.is_exporting()) and torch.onnx.is_in_onnx_export():
        return ("torch.onnx.export is running and the fused kernels have no ONNX translation "
                "(backend='auto' or 'reference' exports the reference: the same function)")
    if tracing:
        return ("torch.jit.trace is running and a trace of the fused kernels would need this package "
                "to run (backend='auto' or 'reference' traces the reference: the same function, plain aten ops)")
    return None


def why_not(name: str, x, config, training: bool) -> Optional[str]:
    """Why backend ``name`` cannot run this call, or None when it can."""
    reason = unavailable_reason(name)
    if reason is None and name != "reference":
        reason = context_reason()
    return reason if reason is not None else load(name).unsupported_reason(x, config, training)


def auto_skip_reason(name: str) -> Optional[str]:
    """Why ``auto`` passes backend ``name`` over on this machine although it can run here, or None.
    Only for a backend that is available here (``unavailable_reason`` is None)."""
    skip = getattr(load(name), "auto_skip_reason", None)
    return None if skip is None else skip()


def select(backend: str, x, config, training: bool):
    """The ops module that will run this call (``backend`` may be "auto")."""
    if backend != "auto":
        reason = why_not(backend, x, config, training)
        if reason is not None:
            raise BackendUnavailableError(f"SCSA backend {backend!r} cannot run this input: {reason}")
        return load(backend)
    for name in AUTO_ORDER.get(x.device.type, ("reference",)):
        if why_not(name, x, config, training) is None and auto_skip_reason(name) is None:
            return load(name)
    return load("reference")  # unreachable in practice: the reference supports every valid input


def auto_choice(x, config, training: bool = False) -> str:
    """Name of the backend ``auto`` picks for this input."""
    return select("auto", x, config, training).NAME


def _preload() -> None:
    """Import now every backend ``auto`` may pick on this machine: torch.compile cannot trace an
    import, so a model compiled before its first eager call would break the graph on it. The
    CUDA backends only where there is a GPU (or the Triton interpreter), so CPU-only users do
    not pay for importing triton."""
    names = list(AUTO_ORDER["cpu"])
    if torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        names += AUTO_ORDER["cuda"]
    for name in dict.fromkeys(names):
        unavailable_reason(name)


_preload()
