"""Triton's GPU launch path on a machine without a GPU: a driver that compiles for a CUDA target and
launches nothing.

``install()`` makes Triton's active driver a ``HostOnlyDriver``: ``@triton.jit`` kernels called on CPU
tensors go through Triton's whole launch (``JITFunction.run``: argument binding, specialization, cache
key, a real ahead-of-time compile for sm_90 on first use, launch metadata and hooks) up to the
launcher, which records its arguments instead of calling the CUDA driver. Used by
triton_host_overhead.py (host cost per call up to the driver call) and tests/triton_launch_check.py
(ops.triton's direct launches hand the launcher what Triton's own launch does). TRITON_INTERPRET
must be unset (with it, kernels are interpreted functions, not JITFunctions).
"""
from __future__ import annotations

import itertools

TARGET_ARCH = 90  # the H100/H200 the GPU runs use
LAUNCHES = []      # (kernel name, the launcher's positional arguments), when recording
_handles = itertools.count(1)


class RecordingLauncher:
    """Stands in for Triton's CUDA launcher (``driver.launcher_cls(src, metadata)``)."""

    record = False

    def __init__(self, src, metadata):
        self.name = src.fn.__name__

    def __call__(self, *args):
        # (grid x, y, z, stream, function, kernel metadata, launch metadata, enter hook, exit hook, *kernel
        # arguments): as Triton's launcher, the hooks that are not None run around the launch
        launch_metadata, enter_hook, exit_hook = args[6:9]
        if enter_hook is not None:
            enter_hook(launch_metadata)
        if RecordingLauncher.record:
            LAUNCHES.append((self.name, args))
        if exit_hook is not None:
            exit_hook(launch_metadata)


class HostOnlyUtils:
    def load_binary(self, name, kernel, shared, device):
        """(module, function, registers, spills, max threads): a distinct handle per loaded kernel."""
        return next(_handles), next(_handles), 0, 0, 1024

    def get_device_properties(self, device):
        return {"max_shared_mem": 232448}  # an H100's (CompiledKernel checks its kernel fits)

    def unload_module(self, module):
        pass


class HostOnlyDriver:
    """The driver calls Triton's launch path makes, for device 0 on stream 0."""

    utils = HostOnlyUtils()
    launcher_cls = RecordingLauncher

    def get_current_device(self):
        return 0

    def get_current_stream(self, device=None):
        return 0

    def get_current_target(self):
        from triton.backends.compiler import GPUTarget
        return GPUTarget("cuda", TARGET_ARCH, 32)


def install():
    """Makes HostOnlyDriver Triton's active driver and ties the autotuner's benchmark (all configs
    equal: the first wins; nothing can run), keeping those ties out of Triton's on-disk autotune cache:
    its key (Triton, the sm_90 target's compiler, the kernel, the tuning key) is a real H100/H200's, whose
    processes would take the tie for a timing (the kernels keep their picks there: triton/_common.py)."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.driver import driver

    driver.set_active(HostOnlyDriver())
    Autotuner._bench = lambda self, *args, config, **kwargs: [1.0, 1.0, 1.0]
    Autotuner.check_disk_cache = lambda self, tuning_key, configs, bench_fn: (bench_fn(), False)[1]


def triton_ops():
    """``install()``, then scsa_kernels.ops.triton as on a GPU machine (its triton_op registered,
    availability is decided at import), accepting CPU tensors."""
    import importlib
    from unittest import mock

    import torch

    install()
    with mock.patch.object(torch.cuda, "is_available", lambda: True):
        ops = importlib.import_module("scsa_kernels.ops.triton")
    ops.unsupported_reason = lambda x, config, training: None
    return ops


def recorded_launches(fn):
    """The (kernel name, launcher arguments) of every launch ``fn()`` makes."""
    LAUNCHES.clear()
    RecordingLauncher.record = True
    try:
        fn()
    finally:
        RecordingLauncher.record = False
    return list(LAUNCHES)
