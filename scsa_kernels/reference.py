"""SPEC.md as plain PyTorch: the oracle every fused backend is checked against.

Written to read like the spec, one function per stage, with the authors' own
operators (mean, depthwise Conv1d, GroupNorm, pooling, q @ k^T). Computation
runs in float32 for half inputs (float64 stays float64); the output has x's
dtype and memory format.
"""
from __future__ import annotations

from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F

from .config import GROUP_NORM_EPS, NUM_GROUPS, SCSAConfig
from .weights import SCSAWeights

Tensor = torch.Tensor


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for float16/bfloat16/float32, float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def gate(t: Tensor, gate_layer: str, dim: int) -> Tensor:
    """SPEC gates: elementwise sigmoid, or softmax along ``dim``."""
    return torch.softmax(t, dim=dim) if gate_layer == "softmax" else torch.sigmoid(t)


def group_norm(t: Tensor, groups: int, weight: Tensor, bias: Tensor) -> Tensor:
    """GroupNorm (eps 1e-5, biased variance). The aten op, not F.group_norm: the latter refuses
    a group of a single value in training mode (dim=4 with H=1), which SCSA defines (output = bias)."""
    return torch.group_norm(t, groups, weight, bias, GROUP_NORM_EPS)


def spatial_gate(means: Tensor, weights: SCSAWeights, norm_weight: Tensor, norm_bias: Tensor,
                 config: SCSAConfig) -> Tensor:
    """One SMSA direction. means: (B, C, L) row or column means -> gate (B, C, L)."""
    groups = means.split(config.group_channels, dim=1)
    filtered = torch.cat([
        F.conv1d(group, w.to(means.dtype), b.to(means.dtype), padding=k // 2, groups=config.group_channels)
        for group, w, b, k in zip(groups, weights.conv_weights, weights.conv_biases, config.group_kernel_sizes)
    ], dim=1)
    normed = group_norm(filtered, NUM_GROUPS, norm_weight.to(means.dtype), norm_bias.to(means.dtype))
    return gate(normed, config.gate_layer, dim=2)


def spatial_gates(x: Tensor, weights: SCSAWeights, config: SCSAConfig) -> Tuple[Tensor, Tensor]:
    """SMSA. x: (B, C, H, W) -> a_h (B, C, H), a_w (B, C, W)."""
    a_h = spatial_gate(x.mean(dim=3), weights, weights.norm_h_weight, weights.norm_h_bias, config)
    a_w = spatial_gate(x.mean(dim=2), weights, weights.norm_w_weight, weights.norm_w_bias, config)
    return a_h, a_w


def down_sample(x_s: Tensor, weights: SCSAWeights, config: SCSAConfig) -> Tensor:
    """PCSA step 1. x_s: (B, C, H, W) -> pooled (B, C, H', W')."""
    ws = config.window_size
    if config.global_pool:
        return F.adaptive_avg_pool2d(x_s, 1)
    if config.down_sample_mode == "avg_pool":
        return F.avg_pool2d(x_s, ws, stride=ws)
    if config.down_sample_mode == "max_pool":
        return F.max_pool2d(x_s, ws, stride=ws)
    height, width = config.pooled_size(x_s.shape[2], x_s.shape[3])
    cropped = x_s[:, :, : height * ws, : width * ws]
    return F.conv2d(F.pixel_unshuffle(cropped, ws), weights.conv_d_weight.to(x_s.dtype))


# Applied to the attention weights P (B, heads, D, D) in training; default: F.dropout.
AttentionDropout = Callable[[Tensor], Tensor]


def channel_gate(pooled: Tensor, weights: SCSAWeights, config: SCSAConfig, training: bool,
                 attention_dropout: Optional[AttentionDropout] = None) -> Tensor:
    """PCSA steps 2-6. pooled: (B, C, H', W') -> ca (B, C, 1, 1)."""
    batch, channels = pooled.shape[:2]
    dt = pooled.dtype
    y = group_norm(pooled, 1, weights.norm_weight.to(dt), weights.norm_bias.to(dt))

    def project(weight, bias):  # depthwise 1x1 conv == per-channel scale (+ bias)
        return F.conv2d(y, weight.to(dt), None if bias is None else bias.to(dt), groups=channels)

    n = pooled.shape[2] * pooled.shape[3]  # not -1 in the reshapes: ambiguous for an empty batch
    heads = lambda t: t.reshape(batch, config.head_num, config.head_dim, n)  # (B, heads, d, N)
    q = heads(project(weights.q_weight, weights.q_bias))
    k = heads(project(weights.k_weight, weights.k_bias))
    v = heads(project(weights.v_weight, weights.v_bias))
    attn = (q @ k.transpose(-2, -1)) * config.head_dim ** -0.5
    attn = attn.softmax(dim=-1)
    if training and attention_dropout is not None:
        attn = attention_dropout(attn)
    else:
        attn = F.dropout(attn, config.attn_drop_ratio, training)
    o = (attn @ v).reshape(batch, channels, n)
    return gate(o.mean(dim=2), config.gate_layer, dim=1)[:, :, None, None]


def scsa_reference(x: Tensor, weights: SCSAWeights, config: SCSAConfig, training: bool = False,
                   attention_dropout: Optional[AttentionDropout] = None) -> Tensor:
    """out = x * a_h * a_w * ca. x: (B, C, H, W), any float dtype and strides -> same shape, dtype, format.
    ``attention_dropout`` replaces F.dropout on P in training (testing: the fused kernels' masks)."""
    xc = x.to(compute_dtype(x.dtype))
    a_h, a_w = spatial_gates(xc, weights, config)
    x_s = xc * a_h[:, :, :, None] * a_w[:, :, None, :]
    ca = channel_gate(down_sample(x_s, weights, config), weights, config, training, attention_dropout)
    return (ca * x_s).to(x.dtype)
