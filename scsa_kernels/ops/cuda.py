"""The CUDA C++ extension backend (csrc/cuda): not built yet.

Kept as a named backend so that ``backend="cuda"`` gives a clear reason instead of
an unknown-name error; ``auto`` skips it.
"""
NAME = "cuda"


def unavailable_reason():
    return "the CUDA C++ kernels (csrc/cuda) are not implemented yet; use backend='triton' on GPUs"


def unsupported_reason(x, config, training):
    return unavailable_reason()


def scsa(x, weights, config, training):
    raise NotImplementedError(unavailable_reason())
