"""``scsa(x, weights, config)``: the functional entry point for users who own their parameters."""
from __future__ import annotations

import torch

from . import backends
from .config import SCSAConfig, check_input
from .weights import SCSAWeights, check_weights


def scsa(x: torch.Tensor, weights: SCSAWeights, config: SCSAConfig, training: bool = False,
         backend: str = "auto") -> torch.Tensor:
    """SCSA forward. x: (B, dim, H, W) float16/bfloat16/float32/float64, any strides.

    Returns a tensor of x's shape, dtype and memory format. Validates ``x`` before
    any kernel runs; ``backend`` is "auto" or a name from ``backends.BACKENDS``.
    """
    backends.check_backend_name(backend)
    tensors = weights.tensors()
    check_input(x, config, tensors)
    check_weights(weights, config, tensors)
    if x.shape[0] == 0:
        return _empty_batch(x, tensors)
    return backends.select(backend, x, config, training).scsa(x, weights, config, training)


def _empty_batch(x: torch.Tensor, tensors) -> torch.Tensor:
    """out for an empty batch: nothing to compute, but x and every parameter get a gradient (empty,
    zeros), as from the reference (an unused parameter stalls DistributedDataParallel)."""
    return x * 0 + sum(t.sum() for t in tensors) * 0
