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
from the reference's (torch's RNG stream), the distribution does not.
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


def saved_dropout_p(config, dropout_seed: Optional[torch.Tensor]) -> float:
    """p for the backward of a call whose forward drew ``dropout_seed`` (None: no dropout ran)."""
    return 0.0 if dropout_seed is None else config.attn_drop_ratio
