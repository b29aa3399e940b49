"""Every Triton kernel, every autotune config, compiles ahead of time for sm_80 and sm_90 with 0 spills.

The compile runs in a subprocess (tests/triton_aot.py) without TRITON_INTERPRET: under the
interpreter @triton.jit returns interpreted functions. No GPU is needed. The table of
registers and shared memory per kernel variant is printed (pytest -s shows it).
"""
import importlib
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("triton")
KERNEL_MODULES = ("apply", "channel_attention", "input_grad", "plane_stats", "pooling", "spatial_gates")


@pytest.fixture(scope="module")
def compiled():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    script = os.path.join(os.path.dirname(__file__), "triton_aot.py")
    res = subprocess.run([sys.executable, script], capture_output=True, text=True, env=env, timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    lines = res.stdout.strip().splitlines()
    print("\n" + "\n".join(lines[:-1]))
    return json.loads(lines[-1])


def all_kernel_names():
    names = set()
    for module in KERNEL_MODULES:
        mod = importlib.import_module(f"scsa_kernels.triton.{module}")
        names |= {n for n in dir(mod) if n.endswith("_kernel")}
    return names


def test_every_kernel_compiles_for_sm80_and_sm90(compiled):
    for arch in ("sm_80", "sm_90"):
        assert {r["kernel"] for r in compiled if r["arch"] == arch} == all_kernel_names()


def test_every_autotune_config_is_compiled(compiled):
    from scsa_kernels.triton._common import PLANE_CONFIGS, POOL_CONFIGS
    for kernel, configs in (("plane_means_kernel", PLANE_CONFIGS), ("pool_kernel", POOL_CONFIGS),
                            ("apply_gates_kernel", PLANE_CONFIGS), ("pool_grad_sums_kernel", PLANE_CONFIGS),
                            ("input_grad_kernel", PLANE_CONFIGS)):
        seen = {(int(v.split("=")[1]), r["num_warps"]) for r in compiled if r["kernel"] == kernel
                for v in r["variant"].split(",") if v.startswith("TILE=")}
        assert seen == {(c.kwargs["TILE"], c.num_warps) for c in configs}, kernel


def test_no_register_spills(compiled):
    spilled = [f"{r['kernel']} {r['arch']} {r['variant']}: {r['spill_bytes']} B" for r in compiled if r["spill_bytes"]]
    assert not spilled, "\n".join(spilled)
