"""Fake backends for tests of the tools that iterate over the registry (scsa-bench, scsa-check).

``install_backend(monkeypatch, name, scsa_fn)`` registers ``scsa_kernels.ops.<name>`` as an
available backend for the duration of one test.
"""
import sys
import types

from scsa_kernels import backends
from scsa_kernels.reference import scsa_reference


def install_backend(monkeypatch, name, scsa_fn=scsa_reference):
    """Register an always-available backend ``name`` whose forward is ``scsa_fn(x, weights, config, training)``."""
    module = types.ModuleType(f"scsa_kernels.ops.{name}")
    module.NAME = name
    module.unavailable_reason = lambda: None
    module.unsupported_reason = lambda x, config, training: None
    module.scsa = scsa_fn
    monkeypatch.setitem(sys.modules, module.__name__, module)
    if hasattr(backends, "_LOADED"):  # the registry's module cache, where it has one
        monkeypatch.setitem(backends._LOADED, name, module)
    monkeypatch.setattr(backends, "BACKENDS", backends.BACKENDS + (name,))
    monkeypatch.setattr(backends, "BACKEND_CHOICES", backends.BACKEND_CHOICES + (name,))
    return module
