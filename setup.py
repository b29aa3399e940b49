"""Build script: compiles ``scsa_kernels._C`` (csrc/) with torch.utils.cpp_extension.

CPU kernels are always built, against whichever torch is installed (CPU or CUDA
build). Install with ``pip install --no-build-isolation -e .`` after torch, so
the extension is compiled against the torch that will import it. Ninja builds the
sources in parallel: MAX_JOBS jobs (default: all cores).

Instruction set of the CPU kernels (env SCSA_CPU_CAPABILITY):
  "auto" (default): AVX2+FMA+F16C when the build machine has them, else DEFAULT;
  "AVX2" or "DEFAULT" to force one. An AVX2 build refuses to import on a CPU without
  AVX2 (scsa_kernels.ops.cpu then reports why and "auto" uses the reference).
"""
import os
import platform
from glob import glob

from setuptools import setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _cpu_has_avx2() -> bool:
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        return False
    return {"avx2", "fma", "f16c"} <= set(flags)


def _capability_flags():
    choice = os.environ.get("SCSA_CPU_CAPABILITY", "auto").upper()
    if choice not in ("AUTO", "AVX2", "DEFAULT"):
        raise SystemExit(f"SCSA_CPU_CAPABILITY must be auto, AVX2 or DEFAULT, got {choice!r}")
    if choice == "AVX2" or (choice == "AUTO" and _cpu_has_avx2()):
        # Same flags and macros as PyTorch's own AVX2 kernels, so at::vec::Vectorized
        # uses its AVX2 implementation (vectorised exp, conversions).
        return ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2",
                "-DSCSA_REQUIRE_AVX2"]
    return ["-DCPU_CAPABILITY=DEFAULT"]


def _extensions():
    from torch.utils.cpp_extension import CppExtension

    sources = sorted(glob(os.path.join("csrc", "*.cpp")) + glob(os.path.join("csrc", "cpu", "*.cpp")))
    return [CppExtension(
        name="scsa_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        # OpenMP: at::parallel_for is a header template that uses `omp parallel`
        # when torch's parallel backend is OpenMP (the default build).
        extra_compile_args={"cxx": ["-O3", "-fopenmp", *_capability_flags()]},
        extra_link_args=["-fopenmp"],
    )]


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    os.environ.setdefault("MAX_JOBS", str(os.cpu_count() or 1))
    return BuildExtension.with_options(use_ninja=True)


setup(ext_modules=_extensions(), cmdclass={"build_ext": _build_ext()})
