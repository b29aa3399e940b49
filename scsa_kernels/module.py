"""``SCSA``: drop-in replacement for the authors' module (same constructor keywords, same state_dict)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from . import backends
from .config import NUM_GROUPS, SCSAConfig
from .functional import scsa
from .weights import CONV_NAMES, SCSAWeights

# Accepted for config compatibility with the authors' constructor, which never uses them.
IGNORED_AUTHORS_KWARGS = ("fuse_bn", "norm_cfg", "act_cfg")


def _parameter(module: nn.Module, name: str):
    """``getattr(module, name)``, read straight from ``module._parameters`` when it is there: a
    ``nn.Module.__getattr__`` lookup costs ~1 us (the failed normal lookup raises first), ~30 us
    per forward over SCSA's 20 parameters. ``torch.func.functional_call`` swaps tensors in that
    dict too; parametrized or FSDP-flattened modules keep the tensor elsewhere and take getattr."""
    tensor = module._parameters.get(name)
    return tensor if tensor is not None else getattr(module, name)


class SCSA(nn.Module):
    """Spatial and Channel Synergistic Attention (Si et al. 2025), see SPEC.md.

    Input (B, dim, H, W) -> output of the same shape, dtype and memory format.
    Parameter names, shapes and initialisation are the authors', so their
    checkpoints load with ``strict=True``. ``backend`` picks the implementation:
    "auto" (fastest that supports the input), "reference", "triton", "cpu", "cuda".
    """

    def __init__(self, dim: int, head_num: int = 1, window_size: int = 7,
                 group_kernel_sizes: Sequence[int] = (3, 5, 7, 9), qkv_bias: bool = False,
                 down_sample_mode: str = "avg_pool", attn_drop_ratio: float = 0.0,
                 gate_layer: str = "sigmoid", backend: str = "auto", **ignored_authors_kwargs):
        super().__init__()
        unknown = sorted(set(ignored_authors_kwargs) - set(IGNORED_AUTHORS_KWARGS))
        if unknown:
            raise TypeError(f"SCSA got unexpected keyword argument(s) {unknown}")
        self.config = SCSAConfig(dim, head_num, window_size, group_kernel_sizes, qkv_bias,
                                 down_sample_mode, attn_drop_ratio, gate_layer)
        self.backend = backends.check_backend_name(backend)
        g = self.config.group_channels
        for name, k in zip(CONV_NAMES, self.config.group_kernel_sizes):
            setattr(self, name, nn.Conv1d(g, g, kernel_size=k, padding=k // 2, groups=g))
        self.norm_h = nn.GroupNorm(NUM_GROUPS, dim)
        self.norm_w = nn.GroupNorm(NUM_GROUPS, dim)
        self.norm = nn.GroupNorm(1, dim)
        self.q = nn.Conv2d(dim, dim, kernel_size=1, bias=qkv_bias, groups=dim)
        self.k = nn.Conv2d(dim, dim, kernel_size=1, bias=qkv_bias, groups=dim)
        self.v = nn.Conv2d(dim, dim, kernel_size=1, bias=qkv_bias, groups=dim)
        if self.config.uses_conv_d:
            self.conv_d = nn.Conv2d(dim * window_size ** 2, dim, kernel_size=1, bias=False)

    def weights(self) -> SCSAWeights:
        """This module's parameters as an ``SCSAWeights`` (no copies)."""
        convs = [self._modules[name] for name in CONV_NAMES]
        q, k, v = (self._modules[name] for name in "qkv")
        norm_h, norm_w, norm = (self._modules[name] for name in ("norm_h", "norm_w", "norm"))
        bias = lambda conv: _parameter(conv, "bias") if self.config.qkv_bias else None
        return SCSAWeights(
            tuple(_parameter(c, "weight") for c in convs), tuple(_parameter(c, "bias") for c in convs),
            _parameter(norm_h, "weight"), _parameter(norm_h, "bias"),
            _parameter(norm_w, "weight"), _parameter(norm_w, "bias"),
            _parameter(norm, "weight"), _parameter(norm, "bias"),
            _parameter(q, "weight"), _parameter(k, "weight"), _parameter(v, "weight"), bias(q), bias(k), bias(v),
            _parameter(self._modules["conv_d"], "weight") if self.config.uses_conv_d else None,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return scsa(x, self.weights(), self.config, training=self.training, backend=self.backend)

    def extra_repr(self) -> str:
        c = self.config
        return (f"dim={c.dim}, head_num={c.head_num}, window_size={c.window_size}, "
                f"group_kernel_sizes={c.group_kernel_sizes}, qkv_bias={c.qkv_bias}, "
                f"down_sample_mode={c.down_sample_mode!r}, attn_drop_ratio={c.attn_drop_ratio}, "
                f"gate_layer={c.gate_layer!r}, backend={self.backend!r}")
