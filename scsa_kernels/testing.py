"""The tolerance rule (DESIGN.md "Tolerances") and helpers to compare any backend with the reference.

Used by the test suite of every backend and by ``scsa-check``: one definition of
"matches the reference".
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import List, Optional

import torch

from .config import SCSAConfig
from .functional import scsa
from .ops.dropout import attention_dropout_args, kernel_masks_dropout
from .reference import compute_dtype, scsa_reference
from .weights import SCSAWeights

# Absolute floor of the rule, as a fraction of max |reference| of the compared tensor.
RELATIVE_FLOOR = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 8e-3}


@dataclass
class Comparison:
    """One compared tensor: the fused error, the bound it must stay under, and the verdict."""

    name: str
    error: float
    bound: float

    @property
    def ok(self) -> bool:
        return self.error <= self.bound


def max_error(value: torch.Tensor, exact: torch.Tensor) -> float:
    """max |value - exact|; inf when NaN/Inf sit in different places (NaN never passes alone)."""
    value = value.detach().double()
    nonfinite = ~torch.isfinite(exact)
    if not torch.equal(~torch.isfinite(value), nonfinite):
        return float("inf")
    if nonfinite.any() and not torch.equal(value[nonfinite].nan_to_num(), exact[nonfinite].nan_to_num()):
        return float("inf")
    diff = (value - exact)[~nonfinite]
    return diff.abs().max().item() if diff.numel() else 0.0


def compare(name: str, fused: torch.Tensor, reference_same_dtype: torch.Tensor, exact: torch.Tensor) -> Comparison:
    """The rule: error(fused) <= 2 * error(reference in fused's dtype) + floor * max|exact|."""
    finite = exact[torch.isfinite(exact)]
    scale = max(1.0, finite.abs().max().item()) if finite.numel() else 1.0
    bound = 2 * max_error(reference_same_dtype, exact) + RELATIVE_FLOOR[fused.dtype] * scale
    return Comparison(name, max_error(fused, exact), bound)


def random_weights(config: SCSAConfig, dtype=torch.float32, device="cpu",
                   generator: Optional[torch.Generator] = None) -> SCSAWeights:
    """Fresh random parameters in the authors' shapes, scaled so that every gate and softmax is non-trivial."""
    from .module import SCSA

    module = SCSA(**dataclasses.asdict(config))
    state = {}
    for name, t in module.state_dict().items():
        r = torch.randn(t.shape, generator=generator, dtype=torch.float64)
        if name.startswith("norm") and name.endswith(".weight"):
            r = 1 + 0.3 * r  # GroupNorm scales near 1 keep the normalised spread
        elif name == "conv_d.weight":
            r = r / t.shape[1] ** 0.5
        elif name.endswith(".bias"):
            r = 0.3 * r
        state[name] = r
    module.load_state_dict(state)
    return module.to(device=device, dtype=dtype).weights().map(lambda t: t.detach())


def _leaves(x: torch.Tensor, weights: SCSAWeights, dtype=None):
    cast = (lambda t: t.detach().to(dtype)) if dtype is not None else (lambda t: t.detach().clone())
    x_leaf = cast(x).requires_grad_()
    return x_leaf, weights.map(lambda t: cast(t).requires_grad_())


def _forward_backward(fn, x, weights, grad_out):
    out = fn(x, weights)
    grads = torch.autograd.grad(out, [x, *weights.tensors()], grad_out.to(out.dtype), allow_unused=True)
    return out, grads


def _layout(t: torch.Tensor):
    """The strides that matter: a dimension of size 1 may have any stride in the same memory layout."""
    return tuple(stride for size, stride in zip(t.shape, t.stride()) if size > 1)


def _with_kernel_masks(fused_fn, x: torch.Tensor, config: SCSAConfig):
    """Training with attention dropout: (fused_fn run under a fixed RNG state, the reference's attention
    dropout applying the masks the fused kernels draw in that state). A fused training call draws its
    dropout seed first (ops/dropout.attention_dropout_args), so replaying the draw gives the seed."""
    rng_seed = int(torch.randint(2 ** 62, (1,)))
    devices = [x.device] if x.device.type == "cuda" else []

    def seeded(fn, *args):
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(rng_seed)
            return fn(*args)

    _, seed = seeded(attention_dropout_args, config, True, x.device)
    return (lambda xx, ww: seeded(fused_fn, xx, ww)), kernel_masks_dropout(seed, config, x.shape[0],
                                                                           compute_dtype(x.dtype))


def compare_backend(backend: str, x: torch.Tensor, weights: SCSAWeights, config: SCSAConfig,
                    grad_out: Optional[torch.Tensor] = None, check_grads: bool = True,
                    training: bool = False) -> List[Comparison]:
    """Run ``backend`` on (x, weights), forward and backward, and compare each result (output, dx,
    every parameter gradient) with the reference by the tolerance rule. Eval mode unless
    ``training``; with attention dropout the reference then applies the masks the fused kernels draw
    (not for ``backend="reference"``, whose dropout is torch's own)."""
    if grad_out is None:
        grad_out = torch.randn(x.shape, dtype=torch.float64, device=x.device)
    fused_fn = lambda xx, ww: scsa(xx, ww, config, training=training, backend=backend)
    kernel_dropout = None
    if training and config.attn_drop_ratio > 0:
        if backend == "reference":
            raise ValueError("the reference backend draws torch's dropout masks, not the fused kernels': "
                             "compare it with dropout in eval mode")
        fused_fn, kernel_dropout = _with_kernel_masks(fused_fn, x, config)
    ref_fn = lambda xx, ww: scsa_reference(xx, ww, config, training=training, attention_dropout=kernel_dropout)
    runs = []
    for fn, dtype in ((fused_fn, None), (ref_fn, None), (ref_fn, torch.float64)):
        xx, ww = _leaves(x, weights, dtype)
        if dtype is torch.float64:
            xx = xx.detach().to(memory_format=torch.contiguous_format).requires_grad_()
        if check_grads:
            runs.append(_forward_backward(fn, xx, ww, grad_out))
        else:
            with torch.no_grad():
                runs.append((fn(xx, ww), ()))
    (fused, fused_grads), (ref, ref_grads), (exact, exact_grads) = runs
    results = [compare("out", fused, ref, exact.double())]
    if _layout(fused) != _layout(ref):
        results.append(Comparison("out memory format", float("inf"), 0.0))
    names = ["x"] + weights.names()
    for name, g, rg, eg in zip(names, fused_grads, ref_grads, exact_grads):
        if g is None or eg is None:
            results.append(Comparison(f"grad {name} (missing)", float("inf") if g is None and eg is not None else 0.0, 0.0))
            continue
        results.append(compare(f"grad {name}", g, rg, eg.double()))
    return results
