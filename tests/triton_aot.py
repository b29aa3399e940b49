"""Ahead-of-time compile of every SCSA Triton kernel, every autotune config, for sm_80 and sm_90.

Run as a script (``python tests/triton_aot.py [--archs 75,89,gfx942] [KERNEL ...]``: only those kernels, e.g.
while tuning configs; ``--archs``: other targets than ARCHS, CUDA compute capabilities or AMD gfx names) with
TRITON_INTERPRET unset: under the
interpreter ``@triton.jit`` returns interpreted functions that cannot be compiled. The
launches are recorded from the real op bodies (forward and backward) on meta tensors, so
the compiled signatures and constexprs are exactly the ones the ops use. Prints one row per
(kernel, variant, config, arch) and a JSON summary on the last line.
"""
import json
import os
import re
import subprocess
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

assert os.environ.get("TRITON_INTERPRET", "0") in ("", "0"), "unset TRITON_INTERPRET to compile"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402
from triton.runtime.autotuner import Autotuner  # noqa: E402

from scsa_kernels.config import SCSAConfig  # noqa: E402
from scsa_kernels.ops import triton as ops  # noqa: E402
from scsa_kernels.testing import random_weights  # noqa: E402

# (shape, dtype, options): together every constexpr branch (HAS_GRAD, GATE_SOFTMAX, IS_MAX, RECOMBINE, ONE_COL_BLOCK,
# DROPOUT: attn_drop_ratio > 0 is recorded as a training call),
# every dtype, 7x7, 56x56, 160x160 planes (row tiles 8, 64, 256 wide), rows wider than a tile,
# planes spanning 2**31 elements and channels_last (meta tensors: nothing is allocated).
SCENARIOS = [
    ((2, 64, 56, 56), torch.bfloat16, dict()),
    ((2, 512, 7, 7), torch.float32, dict(head_num=2, down_sample_mode="max_pool", gate_layer="softmax")),
    ((2, 256, 14, 14), torch.bfloat16, dict()),  # 4 and 8 pooled positions: rank-1 products (DOT=False)
    ((2, 256, 14, 28), torch.bfloat16, dict(head_num=2)),
    ((2, 8, 14, 14), torch.float32, dict(head_num=8, attn_drop_ratio=0.1)),  # heads of 1 channel
    ((1, 128, 160, 160), torch.float16, dict(head_num=4, window_size=-1, qkv_bias=True)),
    ((1, 16, 12, 600), torch.float32, dict(down_sample_mode="max_pool")),  # rows wider than one tile
    ((1, 16, 8, 2000), torch.float32, dict(gate_layer="softmax")),  # gate rows of 2048: 16 warps
    ((1, 256, 4096, 4096), "channels_last", dict()),  # 64-bit in-plane offsets (WIDE), longest gate rows
    # channels_last: channel tiles (BLOCK_C > 1) in every plane pass, max pooling and recombination
    ((2, 64, 56, 56), "channels_last", dict(down_sample_mode="max_pool")),
    ((2, 64, 56, 56), "channels_last", dict(head_num=2, down_sample_mode="recombination")),
    ((2, 64, 56, 56), torch.bfloat16, dict(head_num=2, down_sample_mode="recombination")),
    ((1, 16, 12, 600), torch.float32, dict(down_sample_mode="recombination", gate_layer="softmax")),
    ((2, 64, 56, 56), torch.bfloat16, dict(head_num=2, attn_drop_ratio=0.1)),
    ((2, 512, 7, 7), torch.float32, dict(window_size=-1, attn_drop_ratio=0.1, gate_layer="softmax")),
]
ARCHS = (80, 90)
PTR = {torch.float64: "*fp64", torch.float32: "*fp32", torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.int32: "*i32",
       torch.int64: "*i64"}


def record_launches():
    launches = []
    ops.launch = lambda kernel, grid, *args, tuned=None, **kwargs: launches.append((kernel, args, kwargs))
    for shape, dtype, options in SCENARIOS:
        config = SCSAConfig(shape[1], **options)
        B, C, H, W = shape
        K = config.max_kernel_size
        meta = lambda *s, dt=torch.float32: torch.empty(*s, device="meta", dtype=dt)
        if dtype == "channels_last":
            x = meta(*shape, dt=torch.bfloat16).to(memory_format=torch.channels_last)
        else:
            x = meta(*shape, dt=dtype)
        params = [meta(C, K), meta(C)] + [meta(C) for _ in range(6)] + [meta(3, C), meta(3, C)]
        flags = (config.head_num, config.window_size,
                 config.down_sample_mode == "max_pool" and not config.global_pool, config.gate_layer == "softmax")
        ws = config.window_size
        conv_d = meta(C, C * ws * ws) if config.uses_conv_d else None
        dropout = (config.attn_drop_ratio, meta(1, dt=torch.int64)) if config.attn_drop_ratio else ()
        out, saved = ops._forward_impl(x, *params, conv_d, *flags, *dropout)
        ops._backward_impl(out, x, saved, *params, conv_d, *flags, *dropout)
        # the eager training step's own launches: its weight packing and parameter gradients
        weights = random_weights(config, dtype=x.dtype, device="meta")
        ops._eager_pack(x, weights, config)
        parts = ops.ParameterPartials.of(meta(2 * B * (C * K + C)), meta(B * 12 * C), B, C, K)
        ops._parameter_grads(parts, weights, config, x.device)
    return launches


def variants(launches):
    """Unique (fn, signature, constexprs, compile options) to compile."""
    seen, jobs = set(), []
    for kernel, args, kwargs in launches:
        fn = kernel.fn if isinstance(kernel, Autotuner) else kernel
        if hasattr(kernel, "configs_for"):  # autotuned: the config set of this launch (channel tiles or not)
            configs = kernel.configs_for(kwargs.get("BLOCK_C", 1))
        else:
            configs = [triton.Config({}, num_warps=kwargs.get("num_warps", 4))]
        launch_constexprs = {k: v for k, v in kwargs.items() if k not in ("num_warps", "num_stages")}
        runtime = [(i, n) for i, n in enumerate(fn.arg_names) if not fn.params[i].is_constexpr]
        # Specialized as the JIT does on a launch (unless do_not_specialize): integers equal to 1
        # become constexprs (a unit stride: what tells the compiler which axis is contiguous),
        # pointers and multiples of 16 get tt.divisibility 16 (every buffer the ops pass is 16-byte
        # aligned; a misaligned user view compiles another variant at run time).
        signature, specialized, attrs = {}, {}, {}
        for (index, name), value in zip(runtime, args):
            if fn.params[index].do_not_specialize and not isinstance(value, torch.Tensor):
                signature[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
            elif isinstance(value, torch.Tensor):
                signature[name] = PTR[value.dtype]
                attrs[(index,)] = [["tt.divisibility", 16]]
            elif isinstance(value, float):
                signature[name] = "fp64"  # as torch.compile passes Python floats (eager: fp32)
            elif value == 1:
                signature[name], specialized[name] = "constexpr", 1
            else:
                signature[name] = "i32" if -2 ** 31 <= value < 2 ** 31 else "i64"
                if value % 16 == 0:
                    attrs[(index,)] = [["tt.divisibility", 16]]
        for config in configs:
            constexprs = {**launch_constexprs, **config.kwargs, **specialized}
            for name in constexprs:
                signature[name] = "constexpr"
            key = (fn.__name__, tuple(sorted(signature.items())), tuple(sorted(constexprs.items())),
                   tuple(sorted(attrs)), config.num_warps)
            if key not in seen:
                seen.add(key)
                jobs.append((fn.__name__, fn.__module__, dict(signature), constexprs, dict(attrs), config.num_warps,
                             config.num_stages or 3))
    return jobs


def compile_one(job, archs=ARCHS):
    name, module, signature, constexprs, attrs, num_warps, num_stages = job
    fn = getattr(__import__(module, fromlist=[name]), name)
    fn = fn.fn if isinstance(fn, Autotuner) else fn
    variant = ",".join(f"{k}={v}" for k, v in sorted(constexprs.items()))
    dtype = next((t for t in signature.values() if t in ("*fp16", "*bf16")), "*fp32")[1:]
    rows = []
    for arch in archs:
        target = gpu_target(arch)
        src = ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs)
        compiled = triton.compile(src, target=target, options={"num_warps": num_warps, "num_stages": num_stages})
        stats = cuda_stats(compiled, name, arch, dtype) if target.backend == "cuda" else hip_stats(compiled)
        rows.append(dict(kernel=name, variant=variant, dtype=dtype, num_warps=num_warps, shared=compiled.metadata.shared,
                         **stats))
    return rows


def gpu_target(arch):
    """The GPUTarget of an ``--archs`` entry: a CUDA compute capability (90), or an AMD GPU's gfx name (gfx942:
    wave64 on CDNA, wave32 on RDNA, gfx10xx and later)."""
    if str(arch).startswith("gfx"):
        return GPUTarget("hip", arch, 32 if arch.startswith("gfx1") else 64)
    return GPUTarget("cuda", int(arch), 32)


def cuda_stats(compiled, name, arch, dtype):
    """A CUDA compile's row fields: ptxas -v's registers and spill bytes, and what the PTX and TTGIR say."""
    ptx = compiled.asm["ptx"]
    with tempfile.NamedTemporaryFile("w", suffix=".ptx", delete=False) as f:
        f.write(ptx)
    gpu = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)  # sm_90a on Hopper, sm_100a ...
    res = subprocess.run([ptxas(arch), "-v", f"--gpu-name={gpu}", f.name, "-o", os.devnull],
                         capture_output=True, text=True)
    os.unlink(f.name)
    if res.returncode:
        raise RuntimeError(f"ptxas failed for {name} sm_{arch}: {res.stderr}")
    return dict(arch=f"sm_{arch}", registers=int(re.search(r"Used (\d+) registers", res.stderr).group(1)),
                spill_bytes=sum(int(v) for v in re.findall(r"(\d+) bytes spill (?:stores|loads)", res.stderr)),
                tile_load_orders=tile_load_orders(compiled.asm["ttgir"], dtype),
                half_element_accesses=half_element_accesses(ptx),
                async_copies=len(re.findall(r"\bcp\.async\.c[ag]\b", ptx)),
                float64_ops=len(FLOAT64_ARITHMETIC.findall(ptx)),
                float32_exps=len(re.findall(r"\bex2\.approx(?:\.ftz)?\.f32\b", ptx)),
                tf32_products=len(TF32_PRODUCTS.findall(ptx)))


def hip_stats(compiled):
    """An AMD compile's row fields from its AMDGCN assembly: registers are vector registers (VGPRs and AGPRs),
    spill bytes its scratch memory per thread (where VGPR spills go; SGPRs spill into VGPR lanes, not
    memory). The CUDA rows' PTX and TTGIR checks do not apply (empty)."""
    asm = compiled.asm["amdgcn"]

    def field(key, absent=None):  # from the code object's metadata (RDNA's has no AGPR count)
        found = re.search(r"\s\." + key + r":\s+(\d+)", asm)
        if found is None and absent is None:
            raise RuntimeError(f"no .{key} in the AMDGCN metadata of {compiled.name}")
        return int(found.group(1)) if found else absent

    return dict(arch=compiled.metadata.target.arch, registers=field("vgpr_count") + field("agpr_count", absent=0),
                spill_bytes=field("private_segment_fixed_size"), tile_load_orders=[], half_element_accesses=0,
                async_copies=0, float64_ops=len(AMDGCN_FLOAT64_ARITHMETIC.findall(asm)), float32_exps=0,
                tf32_products=0)


# PTX float64 arithmetic (conversions, selects and compares aside): on Turing, Ampere and Ada consumer and inference
# cards it runs at 1/32 to 1/64 of float32's rate
FLOAT64_ARITHMETIC = re.compile(r"\b(?:add|sub|mul|fma|div|sqrt|rsqrt|rcp|ex2|lg2|max|min|neg|abs)(?:\.\w+)*\.f64\b")
# Tensor-core products with TF32 inputs (10-bit mantissas): ``mma.sync...tf32`` (Ampere on) and ``wgmma...tf32``
# (Hopper). A tl.dot without input_precision="ieee", or Triton's rewrite of a broadcast product summed over
# its middle axis into such a dot (triton 3.5 and 3.6, not 3.8), would compute float32 products so
TF32_PRODUCTS = re.compile(r"\b(?:mma\.sync|wgmma\.mma_async)\S*\.tf32\b")
AMDGCN_FLOAT64_ARITHMETIC = re.compile(r"\bv_(?:add|mul|fma|rcp|rsq|sqrt|max|min|div_\w+|ldexp)_f64\b")


def half_element_accesses(ptx):
    """Global loads and stores of one 16-bit element (``ld.global.b16``, not ``.v2.b16`` or ``.b32``) in
    the PTX: in a half-precision plane pass, accesses of x / grad_out / out / dx one element at a time."""
    return sum(1 for op in re.findall(r"\b(?:ld|st)\.global\S*", ptx) if op.endswith(".b16") and ".v" not in op)


def tile_load_orders(ttgir, dtype):
    """The dimension orders (fastest first) of the layouts of every 3-D load of ``dtype`` (the full-size
    tiles (BLOCK_C, rows, cols) of x / grad_out in the plane passes): [2, ...] reads along W,
    [0, ...] along C."""
    element = {"fp32": "f32", "fp16": "f16", "bf16": "bf16"}[dtype]
    layouts = dict(re.findall(r"^(#\w+) = #ttg\.blocked<\{.*order = \[([\d, ]+)\]", ttgir, re.M))
    used = re.findall(r"tt\.load .*: tensor<\d+x\d+x\d+x!tt\.ptr<" + element + r">, (#\w+)>", ttgir)
    return sorted({layouts[name] for name in used if name in layouts})


def ptxas(arch):
    """Triton's bundled ptxas for ``arch``: its Blackwell build from sm_100 on (Triton emits a PTX version the
    other one does not read there), where the release ships one."""
    folder = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
    for name in (["ptxas-blackwell"] if arch >= 100 else []) + ["ptxas"]:
        if os.path.exists(os.path.join(folder, name)):
            return os.path.join(folder, name)
    return "ptxas"


def main():
    args = sys.argv[1:]
    archs = ARCHS
    if args[:1] == ["--archs"]:
        archs, args = tuple(a if a.startswith("gfx") else int(a) for a in args[1].split(",")), args[2:]
    only = set(args)
    jobs = [job for job in variants(record_launches()) if not only or job[0] in only]
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        rows = [r for rs in pool.map(compile_one, jobs, [archs] * len(jobs)) for r in rs]
    print(f"{'kernel':34} {'arch':7} {'dtype':5} {'warps':5} {'regs':>4} {'spill':>5} {'smem':>6} {'fp64':>5}  constexprs")
    for r in rows:
        print(f"{r['kernel']:34} {r['arch']:7} {r['dtype']:5} {r['num_warps']:5} {r['registers']:4} "
              f"{r['spill_bytes']:5} {r['shared']:6} {r['float64_ops']:5}  {r['variant']}")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
