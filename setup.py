"""Build script. The C++/CUDA extension ``scsa_kernels._C`` is added here by the CPU-kernel work."""
from setuptools import setup

setup()
