"""The attention dropout masks the fused kernels draw, materialized for tests.

A test-only Triton kernel calls the kernels' own ``_dropout_scale``, so the masks are the
definition (scsa_kernels/ops/dropout.py), not a re-derivation. ``shared_dropout_masks`` (a
fixture) makes the reference apply the masks of the seed the last fused call drew, so a training
call with dropout can be compared with the reference element for element.
"""
from types import SimpleNamespace

import pytest
import torch

from conftest import HAS_CUDA

try:
    import triton
    import triton.language as tl
except ImportError:  # the fixture skips; modules importing this one still load
    triton = None

if triton is not None:
    from scsa_kernels.triton.channel_attention import _dropout_scale

    @triton.jit
    def _dropout_masks_kernel(seed_ptr, out_ptr, drop_p, C, D, BLOCK: tl.constexpr):
        """The kernels' dropout scales M of sample program_id(0), row channel program_id(1) -> out (B, C, D)."""
        b, c = tl.program_id(0), tl.program_id(1)
        cols = tl.arange(0, BLOCK)
        scales = _dropout_scale(seed_ptr, drop_p, b, C, D, c + tl.arange(0, 1), cols)
        tl.store(out_ptr + (b * C + c) * D + cols[None, :], scales, mask=(cols < D)[None, :])


def dropout_masks(seed, p, batch, heads, D):
    """(B, heads, D, D) fp32 on seed's device: the masks (0 or 1/(1-p)) the kernels draw from ``seed``
    ((1,) int64). The kernel runs on the GPU when there is one, else under the interpreter."""
    device = "cuda" if HAS_CUDA else "cpu"
    out = torch.empty(batch, heads * D, D, device=device)
    _dropout_masks_kernel[(batch, heads * D)](seed.to(device), out, p, heads * D, D, BLOCK=triton.next_power_of_2(D))
    return out.view(batch, heads, D, D).to(seed.device)


@pytest.fixture
def shared_dropout_masks(monkeypatch):
    """The reference's attention dropout applies the masks of the seed the last fused call drew."""
    if triton is None:
        pytest.skip("triton is not installed: the masks come from a Triton kernel")
    from scsa_kernels import reference
    from scsa_kernels.ops import dropout as fused_dropout
    seeds = []
    draw = fused_dropout.attention_dropout_args
    monkeypatch.setattr(fused_dropout, "attention_dropout_args",
                        lambda *args: (lambda r: seeds.append(r[1]) or r)(draw(*args)))

    def dropout(attn, p, training):  # attn: (B, heads, D, D)
        assert training and p > 0
        return attn * dropout_masks(seeds[-1], p, *attn.shape[:3]).to(attn.dtype)

    monkeypatch.setattr(reference, "F", SimpleNamespace(**{**vars(torch.nn.functional), "dropout": dropout}))
