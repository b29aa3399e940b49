"""The reference backend: plain PyTorch autograd over ``scsa_kernels.reference``."""
from ..reference import scsa_reference

NAME = "reference"


def unavailable_reason():
    return None


def unsupported_reason(x, config, training):
    return None


def scsa(x, weights, config, training):
    return scsa_reference(x, weights, config, training)
