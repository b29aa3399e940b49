"""``scsa(x, weights, config)``: the functional entry point for users who own their parameters."""
from __future__ import annotations

import torch

from . import backends
from .config import SCSAConfig, check_input
from .weights import SCSAWeights


def scsa(x: torch.Tensor, weights: SCSAWeights, config: SCSAConfig, training: bool = False,
         backend: str = "auto") -> torch.Tensor:
    """SCSA forward. x: (B, dim, H, W) float16/bfloat16/float32/float64, any strides.

    Returns a tensor of x's shape, dtype and memory format. Validates ``x`` before
    any kernel runs; ``backend`` is "auto" or a name from ``backends.BACKENDS``.
    """
    backends.check_backend_name(backend)
    check_input(x, config, weights.tensors())
    if x.shape[0] == 0:  # empty batch: nothing to compute, keep the graph to x
        return x * 0
    return backends.select(backend, x, config, training).scsa(x, weights, config, training)
