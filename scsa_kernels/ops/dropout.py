"""Attention dropout of the fused backends: one seed per training call, masks drawn in-kernel.

SPEC: dropout(p = attn_drop_ratio) on P, after the softmax, in training only. The fused kernels
keep the attention weight of sample b, row channel c (global index) and column j of its head,
element e = (b*C + c)*D + j (D = channels per head), scaled by 1/(1-p), when

    uniform(tl.randint4x(seed, e // 4)[e % 4]) >= p

with Triton's Philox4x32-10 (``tl.randint4x``: one counter gives four words, so the CPU
kernels run a quarter of the Philox calls) and ``uniform`` = Triton's ``uint_to_uniform_float``
(as ``tl.rand``). The Triton kernels compute it in ``_dropout_scale``
(scsa_kernels/triton/channel_attention.py), the CPU kernels bit for bit in
csrc/cpu/attention_dropout.h: one seed gives the same masks on either backend. The masks differ
from the reference's (torch's RNG stream), the distribution does not. ``attention_dropout_masks``
materializes them in plain PyTorch, so the reference can apply the kernels' masks
(``testing.compare_backend`` in training, ``scsa-check``); the tests hold all three to it.
"""
from __future__ import annotations

from typing import Optional, Tuple

import torch


def attention_dropout_args(config, training: bool, device) -> Tuple[float, Optional[torch.Tensor]]:
    """(p, seed) for one call of a fused op: p = attn_drop_ratio in training, with a (1,) int64
    seed drawn from torch's generator of ``device`` (torch.manual_seed reproduces the masks; the
    backward takes the same seed and draws the same masks again); (0.0, None) without dropout."""
    if not training or config.attn_drop_ratio == 0.0:
        return 0.0, None
    return config.attn_drop_ratio, torch.randint(2 ** 62, (1,), dtype=torch.int64, device=device)


_WORD = 0xFFFFFFFF
_ROUND_A, _ROUND_B = 0xD2511F53, 0xCD9E8D57  # Philox4x32 round multipliers
_KEY_A, _KEY_B = 0x9E3779B9, 0xBB67AE85      # Weyl increments of the key


def _mul_hi_lo(a: torch.Tensor, k: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """High and low 32-bit words of a * k (a: int64 tensor of uint32 values, k: uint32): k is split
    into 16-bit halves so that no int64 product overflows."""
    low_half = a * (k & 0xFFFF)
    t = a * (k >> 16) + (low_half >> 16)
    return t >> 16, ((t & 0xFFFF) << 16 | low_half & 0xFFFF) & _WORD


def _philox4x32_10(seed: int, counters: torch.Tensor) -> torch.Tensor:
    """Philox4x32-10 of the counters (n low, n high, 0, 0) under key = seed, as ``tl.randint4x``:
    counters (n,) int64 -> (n, 4) int64 words in [0, 2**32)."""
    c0, c1 = counters & _WORD, (counters >> 32) & _WORD
    c2, c3 = torch.zeros_like(c0), torch.zeros_like(c0)
    k0, k1 = seed & _WORD, (seed >> 32) & _WORD
    for _ in range(10):
        hi_b, lo_b = _mul_hi_lo(c2, _ROUND_B)
        hi_a, lo_a = _mul_hi_lo(c0, _ROUND_A)
        c0, c1, c2, c3 = hi_b ^ c1 ^ k0, lo_b, hi_a ^ c3 ^ k1, lo_a
        k0, k1 = (k0 + _KEY_A) & _WORD, (k1 + _KEY_B) & _WORD
    return torch.stack([c0, c1, c2, c3], dim=-1)


def _uniform(words: torch.Tensor) -> torch.Tensor:
    """``tl.uint_to_uniform_float``: uint32 words (int64) -> [0, 1) float32."""
    signed = torch.where(words >= 2 ** 31, words - 2 ** 32, words)
    return torch.where(signed < 0, -signed - 1, signed).to(torch.float32) * 4.6566127342e-10


def attention_dropout_masks(seed: torch.Tensor, p: float, batch: int, heads: int, head_dim: int,
                            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """The masks M (0 or 1/(1-p)) the fused kernels apply to P for ``seed`` ((1,) int64), in plain
    PyTorch: (B, heads, D, D) on seed's device, element (b, h, i, j) for row channel h*D + i and
    column j (flat index = the module docstring's e). ``dtype``: the kernels' compute type (float32,
    float64 for float64 inputs on CPU), in which 1/(1-p) is rounded."""
    count = batch * heads * head_dim * head_dim
    counters = torch.arange((count + 3) // 4, dtype=torch.int64, device=seed.device)
    words = _philox4x32_10(int(seed.item()), counters).flatten()[:count]  # element e = word e % 4 of counter e // 4
    kept = _uniform(words) >= torch.tensor(p, dtype=torch.float32)  # compared in float32, as the kernels do
    return (kept.to(dtype) / (1 - torch.tensor(p, dtype=dtype))).view(batch, heads, head_dim, head_dim)


def kernel_masks_dropout(seed: Optional[torch.Tensor], config, batch: int, dtype: torch.dtype):
    """The reference's ``attention_dropout`` that applies the masks the fused kernels drew for
    ``seed`` (``attention_dropout_masks``; dtype: the kernels' compute type), or None when no
    dropout ran (seed None)."""
    if seed is None:
        return None
    masks = attention_dropout_masks(seed, config.attn_drop_ratio, batch, config.head_num, config.head_dim, dtype)
    return lambda attn: attn * masks.to(attn.dtype)


def saved_dropout_p(config, dropout_seed: Optional[torch.Tensor]) -> float:
    """p for the backward of a call whose forward drew ``dropout_seed`` (None: no dropout ran)."""
    return 0.0 if dropout_seed is None else config.attn_drop_ratio
