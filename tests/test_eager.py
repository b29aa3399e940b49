"""scsa_kernels.ops.eager: the one autograd node of the fused backends' eager training calls.

Its backward gives the fused kernels' gradients (the backends' own tests hold them to the
reference); a backward with create_graph=True gives the reference's differentiable gradients, from
the same inputs and, with attention dropout, the masks the forward's kernels drew.
"""
import pytest
import torch

from conftest import backend_device
from scsa_kernels import SCSA, backends

FUSED = [name for name in ("cpu", "triton") if backends.unavailable_reason(name) is None]


@pytest.fixture(autouse=True)
def eager_node(monkeypatch):
    """The Triton backend's eager calls take this node on a GPU; under the interpreter they take the
    registered op unless told otherwise."""
    if "triton" in FUSED:
        from scsa_kernels.ops import triton as triton_ops
        monkeypatch.setattr(triton_ops, "EAGER_BYPASS", True)


def close(got, expected, rtol=1e-4):
    """Every tensor within rtol of the largest magnitude of its expected value."""
    for g, e in zip(got, expected, strict=True):
        assert (g - e).abs().max() <= rtol * e.abs().max(), (g - e).abs().max() / e.abs().max()


def gradient_penalty_grads(module, x):
    """Gradients of |d sum(out^2) / dx|^2 with respect to x and every parameter (double backward)."""
    x = x.clone().requires_grad_()
    (dx,) = torch.autograd.grad(module(x).square().sum(), x, create_graph=True)
    return torch.autograd.grad(dx.square().sum(), [x, *module.parameters()])


@pytest.mark.parametrize("backend", FUSED)
@pytest.mark.parametrize("options", [dict(), dict(down_sample_mode="recombination", head_num=2, qkv_bias=True)],
                         ids=["default", "recombination"])
def test_double_backward_matches_the_reference(backend, options):
    device = backend_device(backend)
    module = SCSA(16, window_size=3, backend=backend, **options).to(device)
    reference = SCSA(16, window_size=3, backend="reference", **options).to(device)
    reference.load_state_dict(module.state_dict())
    x = torch.randn(2, 16, 9, 9, device=device)
    close(gradient_penalty_grads(module, x), gradient_penalty_grads(reference, x))


@pytest.mark.parametrize("backend", FUSED)
def test_create_graph_keeps_the_forwards_dropout_masks(backend):
    """Training with attention dropout: the differentiable gradients (create_graph) are the fused
    kernels' gradients for the same dropout draw, not those of other masks."""
    device = backend_device(backend)
    module = SCSA(16, window_size=3, head_num=2, attn_drop_ratio=0.5, backend=backend).to(device).train()
    x = torch.randn(2, 16, 9, 9, device=device, requires_grad=True)
    grads = []
    for create_graph in (False, True):
        torch.manual_seed(7)  # the same dropout seed for both calls
        grads.append(torch.autograd.grad(module(x).square().sum(), [x, *module.parameters()],
                                         create_graph=create_graph))
    close(grads[1], grads[0])
