"""SCSA options and input rules: the one place where both are validated.

Every entry point (module, functional API, every backend) goes through
``SCSAConfig`` (checked once, at construction) and ``check_input`` (checked on
every call, before any kernel runs). Messages name the argument and the rule.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch

GATE_LAYERS = ("sigmoid", "softmax")
DOWN_SAMPLE_MODES = ("avg_pool", "max_pool", "recombination")
GROUP_NORM_EPS = 1e-5
NUM_GROUPS = 4  # SMSA splits channels into 4 conv groups == 4 GroupNorm groups
INPUT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)  # float8 and complex are not


@dataclass(frozen=True)
class SCSAConfig:
    """The hyper-parameters of one SCSA module (SPEC.md, "Constructor")."""

    dim: int
    head_num: int = 1
    window_size: int = 7
    group_kernel_sizes: Tuple[int, int, int, int] = (3, 5, 7, 9)
    qkv_bias: bool = False
    down_sample_mode: str = "avg_pool"
    attn_drop_ratio: float = 0.0
    gate_layer: str = "sigmoid"

    def __post_init__(self) -> None:
        _check_int("dim", self.dim)
        _check_int("head_num", self.head_num)
        _check_int("window_size", self.window_size)
        if self.dim < NUM_GROUPS or self.dim % NUM_GROUPS:
            raise ValueError(f"SCSA: dim must be a positive multiple of 4, got dim={self.dim}")
        if self.head_num < 1:
            raise ValueError(f"SCSA: head_num must be >= 1, got head_num={self.head_num}")
        if self.dim % self.head_num:
            raise ValueError(
                f"SCSA: dim must be divisible by head_num, got dim={self.dim}, head_num={self.head_num}")
        if self.window_size != -1 and self.window_size < 1:
            raise ValueError(
                f"SCSA: window_size must be >= 1 or -1 (global pooling), got window_size={self.window_size}")
        object.__setattr__(self, "group_kernel_sizes", _check_kernel_sizes(self.group_kernel_sizes))
        if self.down_sample_mode not in DOWN_SAMPLE_MODES:
            raise ValueError(
                f"SCSA: down_sample_mode must be one of {DOWN_SAMPLE_MODES}, got {self.down_sample_mode!r}")
        if self.gate_layer not in GATE_LAYERS:
            raise ValueError(f"SCSA: gate_layer must be one of {GATE_LAYERS}, got {self.gate_layer!r}")
        if isinstance(self.attn_drop_ratio, bool) or not isinstance(self.attn_drop_ratio, (int, float)):
            raise TypeError(
                f"SCSA: attn_drop_ratio must be a float, got {type(self.attn_drop_ratio).__name__}")
        if not 0.0 <= self.attn_drop_ratio < 1.0:
            raise ValueError(f"SCSA: attn_drop_ratio must be in [0, 1), got {self.attn_drop_ratio}")
        object.__setattr__(self, "qkv_bias", bool(self.qkv_bias))
        object.__setattr__(self, "attn_drop_ratio", float(self.attn_drop_ratio))

    @property
    def group_channels(self) -> int:
        """g = dim // 4: channels per conv / GroupNorm group."""
        return self.dim // NUM_GROUPS

    @property
    def head_dim(self) -> int:
        """d = dim // head_num: channels per attention head."""
        return self.dim // self.head_num

    @property
    def global_pool(self) -> bool:
        """window_size == -1: adaptive average pooling to 1x1, whatever the mode."""
        return self.window_size == -1

    @property
    def uses_conv_d(self) -> bool:
        """Whether the module owns ``conv_d`` (recombination with a real window)."""
        return self.down_sample_mode == "recombination" and not self.global_pool

    @property
    def kernel_options(self) -> Tuple[int, int, bool, bool]:
        """(head_num, window_size, max_pool, softmax_gate): the option arguments of the fused ops
        (max_pool is off for window_size=-1, which is adaptive average pooling in every mode)."""
        return (self.head_num, self.window_size, self.down_sample_mode == "max_pool" and not self.global_pool,
                self.gate_layer == "softmax")

    @property
    def max_kernel_size(self) -> int:
        return max(self.group_kernel_sizes)

    def pooled_size(self, height: int, width: int) -> Tuple[int, int]:
        """(H', W') of the pooled map; N = H' * W' positions."""
        if self.global_pool:
            return 1, 1
        return height // self.window_size, width // self.window_size


def _check_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"SCSA: {name} must be an int, got {type(value).__name__}")


def _check_kernel_sizes(sizes: Sequence[int]) -> Tuple[int, int, int, int]:
    try:
        sizes = tuple(sizes)
    except TypeError:
        raise TypeError(
            f"SCSA: group_kernel_sizes must be a sequence of 4 ints, got {type(sizes).__name__}") from None
    if len(sizes) != NUM_GROUPS:
        raise ValueError(f"SCSA: group_kernel_sizes must hold exactly 4 sizes, got {len(sizes)}: {sizes}")
    for k in sizes:
        _check_int("group_kernel_sizes[i]", k)
        if k < 1 or k % 2 == 0:
            raise ValueError(f"SCSA: every group_kernel_sizes entry must be odd and >= 1, got {sizes}")
    return sizes


def check_input(x, config: SCSAConfig, parameters: Sequence[Optional[torch.Tensor]] = ()) -> None:
    """Validate one forward input against ``config`` (SPEC.md, "Shapes and inputs that are errors").

    x: (B, dim, H, W) floating tensor, any strides. ``parameters`` are the weights
    the call will use; they must sit on x's device.
    """
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"SCSA: input x must be a torch.Tensor, got {type(x).__name__}")
    if x.dtype not in INPUT_DTYPES:
        raise TypeError(f"SCSA: input x must be float16, bfloat16, float32 or float64, got dtype={x.dtype}")
    if x.dim() != 4:
        raise ValueError(f"SCSA: input x must be 4-D (B, C, H, W), got shape {tuple(x.shape)}")
    if x.shape[1] != config.dim:
        raise ValueError(f"SCSA: input x must have C == dim == {config.dim} channels, got shape {tuple(x.shape)}")
    min_side = 1 if config.global_pool else config.window_size  # the pool's windows must not be empty
    if x.shape[2] < min_side or x.shape[3] < min_side:
        rule = "H >= 1 and W >= 1 (window_size=-1)" if config.global_pool else \
            f"H >= window_size and W >= window_size ({config.window_size})"
        raise ValueError(f"SCSA: input x must have {rule}, got H={x.shape[2]}, W={x.shape[3]}")
    for p in parameters:
        if p is not None and p.device != x.device:
            raise ValueError(f"SCSA: input x is on {x.device} but the module's parameters are on {p.device}")
