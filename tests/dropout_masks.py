"""The attention dropout masks as the Triton kernels draw them, materialized for tests.

A test-only Triton kernel calls the kernels' own ``_dropout_scale``, so test_triton_ops can hold
the plain-PyTorch definition (``ops.dropout.attention_dropout_masks``, which the reference applies
in ``testing.compare_backend``) to what the kernels really draw.
"""
import torch

from conftest import HAS_CUDA

import triton
import triton.language as tl

from scsa_kernels.triton.channel_attention import _dropout_scale


@triton.jit
def _dropout_masks_kernel(seed_ptr, out_ptr, drop_p, C, D, BLOCK: tl.constexpr):
    """The kernels' dropout scales M of sample program_id(0), row channel program_id(1) -> out (B, C, D)."""
    b, c = tl.program_id(0).to(tl.int64), tl.program_id(1)  # b int64, as the kernels' own
    cols = tl.arange(0, BLOCK)
    scales = _dropout_scale(seed_ptr, drop_p, b, C, D, c + tl.arange(0, 1), cols)
    tl.store(out_ptr + (b * C + c) * D + cols[None, :], scales, mask=(cols < D)[None, :])


def kernel_dropout_masks(seed, p, batch, heads, D):
    """(B, heads, D, D) fp32 on seed's device: the masks (0 or 1/(1-p)) the kernels draw from ``seed``
    ((1,) int64). The kernel runs on the GPU when there is one, else under the interpreter."""
    device = "cuda" if HAS_CUDA else "cpu"
    out = torch.empty(batch, heads * D, D, device=device)
    _dropout_masks_kernel[(batch, heads * D)](seed.to(device), out, p, heads * D, D, BLOCK=triton.next_power_of_2(D))
    return out.view(batch, heads, D, D).to(seed.device)
