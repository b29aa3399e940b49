"""Every Triton kernel, every autotune config, compiles ahead of time for sm_80 and sm_90 with 0 spills
(and, spills allowed, for sm_70, sm_75, sm_89, sm_100 and sm_120, and for AMD's gfx90a, gfx942 and gfx1100).

The compile runs in a subprocess (tests/triton_aot.py) without TRITON_INTERPRET: under the
interpreter @triton.jit returns interpreted functions. No GPU is needed. The table of
registers and shared memory per kernel variant is printed (pytest -s shows it).

Also with other Triton releases: SCSA_AOT_EXTRA_TRITON lists folders (os.pathsep-separated), each
holding one Triton release installed with ``pip install --no-deps --target DIR triton==X``
(conftest.EXTRA_TRITONS); the compile runs once more per folder, that folder first on PYTHONPATH. CI passes triton 3.5 (the oldest
the backend supports) and 3.6 (what torch 2.10/2.11 install, the lent GPU machines): kernels that
compiled on 3.8 once failed on both. On those releases every kernel must compile; ptxas may spill up
to EXTRA_RELEASE_SPILL_BYTES per variant (3.5 and 3.6 spill 8-56 bytes in some plane-pass variants,
pool passes mostly, some at 32-96 registers, which 3.8 compiles without spills); on the installed
release, none.
"""
import json
import os
import subprocess
import sys
from typing import NamedTuple

import pytest

from conftest import EXTRA_TRITONS, compiled_triton_env, triton_release_id

pytest.importorskip("triton")
pytestmark = pytest.mark.host_only
from scsa_kernels.triton import autotuned_kernels, kernel_modules  # noqa: E402

EXTRA_RELEASE_SPILL_BYTES = 64


class Compiled(NamedTuple):
    rows: list            # one dict per (kernel, variant, config, arch), see tests/triton_aot.py
    spill_bytes_allowed: int


def compile_all(folder=None, *args):
    """Rows of tests/triton_aot.py (run with ``args``, the Triton release of ``folder``); its table is printed."""
    script = os.path.join(os.path.dirname(__file__), "triton_aot.py")
    res = subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                         env=compiled_triton_env(folder), timeout=1800)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    lines = res.stdout.strip().splitlines()
    print("\n" + "\n".join(lines[:-1]))
    return json.loads(lines[-1])


@pytest.fixture(scope="module", params=[None] + EXTRA_TRITONS, ids=triton_release_id)
def compiled(request):
    folder = request.param
    return Compiled(compile_all(folder), 0 if folder is None else EXTRA_RELEASE_SPILL_BYTES)


def all_kernel_names():
    return {n for mod in kernel_modules() for n in dir(mod) if n.endswith("_kernel")}


def test_every_kernel_compiles_for_sm80_and_sm90(compiled):
    for arch in ("sm_80", "sm_90"):
        assert {r["kernel"] for r in compiled.rows if r["arch"] == arch} == all_kernel_names()


# GPUs the targets do not name but users run: Volta (V100), Turing (T4), Ada (L4, L40S, RTX 40xx; Ampere's sm_86,
# RTX 30xx and A10, compiles alike) and Blackwell (B200, RTX 50xx). Compiled with the installed Triton only; spills
# are printed, not held (the spill rule is for the cards of the targets).
OTHER_ARCHS = (70, 75, 89, 100, 120)


def test_every_kernel_compiles_for_volta_turing_ada_and_blackwell():
    rows = compile_all(None, "--archs", ",".join(map(str, OTHER_ARCHS)))
    for arch in OTHER_ARCHS:
        assert {r["kernel"] for r in rows if r["arch"] == f"sm_{arch}"} == all_kernel_names()


# AMD GPUs, for ROCm builds of torch: CDNA2 (MI210, MI250X), CDNA3 (MI300X, MI325X) and RDNA3 (RX 7900, W7900).
# Compiled with the installed Triton; no run on one yet, so auto passes the Triton backend over on ROCm
# (ops.triton.auto_skip_reason). Registers are vector registers, spill bytes scratch memory: printed, not held.
AMD_ARCHS = ("gfx90a", "gfx942", "gfx1100")


def test_every_kernel_compiles_for_amd_gpus():
    rows = compile_all(None, "--archs", ",".join(AMD_ARCHS))
    for arch in AMD_ARCHS:
        assert {r["kernel"] for r in rows if r["arch"] == arch} == all_kernel_names()


def test_every_autotune_config_is_compiled(compiled):
    """Every config of each autotuned kernel, for one plane per program (BLOCK_C=1) and for
    channel tiles (the pool pass has its own set for those)."""
    kernels = autotuned_kernels()
    assert {k.fn.__name__ for k in kernels} == {"plane_means_kernel", "pool_kernel", "apply_gates_kernel",
                                                "pool_grad_sums_kernel", "input_grad_kernel"}
    for kernel in kernels:
        name = kernel.fn.__name__
        for block_c, tiled in ((1, lambda c: c == 1), (16, lambda c: c > 1)):
            seen = {(int(v["TILE"]), int(v.get("NUM_STAGES", 1)), r["num_warps"]) for r in compiled.rows
                    if r["kernel"] == name
                    for v in [dict(kv.split("=") for kv in r["variant"].split(","))] if tiled(int(v["BLOCK_C"]))}
            assert seen == {(c.kwargs["TILE"], c.kwargs.get("NUM_STAGES", 1), c.num_warps)
                            for c in kernel.configs_for(block_c)}, (name, block_c)


def test_no_register_spills(compiled):
    spilled = [f"{r['kernel']} {r['arch']} {r['variant']}: {r['spill_bytes']} B" for r in compiled.rows
               if r["spill_bytes"] > compiled.spill_bytes_allowed]
    assert not spilled, "\n".join(spilled)


def test_full_size_tiles_load_along_the_unit_stride_axis(compiled):
    """With the JIT's stride-1 specialization, the compiler lays the 3-D tiles of x / grad_out out
    along W for NCHW (a unit W stride, a constexpr ``s*_w=1`` in the variant; order [2, ...], also with
    several small planes per program) and along C for channels_last channel tiles (order [0, ...]), so
    a warp's loads cover whole sectors either way. Checked on the half-precision scenarios, where no
    other 3-D tensor shares x's element type."""
    checked = 0
    for r in compiled.rows:
        v = dict(kv.split("=") for kv in r["variant"].split(","))
        if "BLOCK_C" not in v or r["dtype"] == "fp32" or int(v.get("NUM_STAGES", 1)) > 1:  # pipelined: no tt.load
            continue
        axis = "2" if any(k.startswith("s") and k.endswith("_w") and n == "1" for k, n in v.items()) else "0"
        assert r["tile_load_orders"] and all(o.split(",")[0] == axis for o in r["tile_load_orders"]), (
            r["kernel"], r["variant"], r["tile_load_orders"])
        checked += 1
    assert checked


def test_contiguous_half_rows_move_as_vectors(compiled):
    """With VEC > 1 (ops/triton.py ``_row_vector``: the strides and column limits of 56-, 28- and 14-wide
    contiguous half-precision rows are multiples of 8, 4 and 2 elements) the plane passes load and store
    x, grad_out, out and dx at least two halves per instruction: no single-element access is left in
    their PTX (before ``aligned``, every one was ``ld.global.b16``: the JIT proves no divisibility for
    a row stride of 56). Every half-precision NCHW scenario of tests/triton_aot.py but the 7x7 ones,
    where a tile holds at least two elements per thread (a 16x16 tile over 8 warps has one)."""
    checked = set()
    for r in compiled.rows:
        v = dict(kv.split("=") for kv in r["variant"].split(","))
        if r["dtype"] != "fp32" and int(v.get("VEC", 1)) > 1 and tile_elements(v) >= 64 * r["num_warps"]:
            assert r["half_element_accesses"] == 0, (r["kernel"], r["arch"], r["variant"], r["num_warps"])
            checked.add(r["kernel"])
    assert checked == {k.fn.__name__ for k in autotuned_kernels()}


def test_pipelined_pool_passes_copy_asynchronously(compiled):
    """The pool pass's configs with NUM_STAGES > 1 are software-pipelined: their tiles arrive by cp.async
    (the next row steps in flight while one is reduced), where plain ``range`` loops issue no copy ahead.
    Every such variant whose x rows hold 4-byte pieces (fp32, or halves with VEC > 1; cp.async moves 4, 8
    or 16 bytes); the unpipelined ones have none."""
    checked = 0
    for r in compiled.rows:
        v = dict(kv.split("=") for kv in r["variant"].split(","))
        if r["kernel"] != "pool_kernel":
            continue
        if int(v["NUM_STAGES"]) == 1:
            assert r["async_copies"] == 0, r["variant"]
        elif r["dtype"] == "fp32" or int(v.get("VEC", 1)) > 1:
            assert r["async_copies"] > 0, (r["arch"], r["num_warps"], r["variant"])
            checked += 1
    assert checked


def tile_elements(variant):
    """Elements of one full-size tile of a plane pass variant (its constexprs, as strings): BLOCK_C x rows x
    BLOCK_W, rows as ``rows_per_tile`` gives them (TILE's worth, at most the plane's or window's height)."""
    row = int(variant["BLOCK_C"]) * int(variant["BLOCK_W"])
    max_rows = int(variant.get("WH_POW2", variant.get("H_POW2")))
    return row * max(1, min(int(variant["TILE"]) // row, max_rows))


def test_host_tile_constants_match_the_configs():
    """ops/triton.py sizes channel tiles by MIN_TILE (it imports no triton): the smallest TILE of
    every plane and pool config."""
    from scsa_kernels.ops import triton as ops
    assert {min(c.kwargs["TILE"] for c in k.configs_for(b)) for k in autotuned_kernels() for b in (1, 16)} == {
        ops.MIN_TILE}


def test_dropout_variants_are_compiled(compiled):
    """The attention kernels with in-kernel dropout (DROPOUT=True) are among the compiled, spill-checked ones."""
    for kernel in ("channel_attention_fwd_kernel", "channel_attention_bwd_kernel"):
        variants = {r["variant"] for r in compiled.rows if r["kernel"] == kernel}
        assert any("DROPOUT=True" in v for v in variants) and any("DROPOUT=False" in v for v in variants), variants


def test_no_float32_product_runs_on_tf32_tensor_cores(compiled):
    """No kernel multiplies float32 values on TF32 tensor cores (10-bit mantissas): the channel attention's
    tl.dots ask for IEEE float32, and no broadcast product summed over its middle axis is left for
    Triton to rewrite into a dot of its own. Such a rewrite, on triton 3.5 and 3.6 only (3.8 keeps the
    sum), ran the attention's products of 2 and 4 pooled positions as TF32 mma with padded operands:
    the wrong results on the H200 of 2026-11-27 (benchmarks/results/nvidia-h200/NOTES.md)."""
    cuda = [r for r in compiled.rows if r["arch"].startswith("sm_")]
    assert cuda
    assert not [(r["kernel"], r["arch"], r["variant"]) for r in cuda if r["tf32_products"]]


def test_float64_math_stays_in_the_spatial_gates_statistics(compiled):
    """Only the spatial gate kernels compute in float64 (the conv and GroupNorm of groups of near-equal
    values, triton/spatial_gates.py); no other kernel has float64 arithmetic in its PTX (a Python float
    argument arrives as float64 under torch.compile: those kernels cast it to float32 first). The
    forward's gate itself (sigmoid or softmax) runs in float32: its exp is the float32 ``ex2.approx``, where
    a float64 exp and division took ~25 % of that kernel's float64 instructions (sm_89 SASS at 56x56:
    220 -> 162)."""
    spatial_gates = {"spatial_gates_fwd_kernel", "spatial_gates_bwd_kernel"}
    promoted = {(r["kernel"], r["variant"]) for r in compiled.rows
                if r["kernel"] not in spatial_gates and r["float64_ops"]}
    assert not promoted, promoted
    forward = [r for r in compiled.rows if r["kernel"] == "spatial_gates_fwd_kernel"]
    assert forward and all(r["float64_ops"] and r["float32_exps"] for r in forward), [
        (r["variant"], r["float64_ops"], r["float32_exps"]) for r in forward]
