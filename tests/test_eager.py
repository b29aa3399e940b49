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


@pytest.mark.parametrize("backend", FUSED + ["reference"])
@pytest.mark.parametrize("options", [dict(), dict(down_sample_mode="recombination")], ids=["avg_pool", "recombination"])
def test_a_weight_written_in_place_before_backward_is_refused(backend, options):
    """A weight changed in place between forward and backward: autograd's version check refuses the
    backward, as for the reference (the fused node read conv_d from the parameter at backward time and
    the rest from the forward's pack: gradients of neither set of weights)."""
    module = SCSA(8, window_size=3, backend=backend, **options).to(backend_device(backend))
    x = torch.randn(2, 8, 9, 11, device=backend_device(backend), requires_grad=True)
    out = module(x)
    with torch.no_grad():
        module.q.weight.mul_(2)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("backend", FUSED)
def test_mixed_dtype_parameters_get_gradients_in_their_own_dtypes(backend):
    """A float16 module whose GroupNorms stay float32 (mmcv's wrap_fp16_model keeps norms so): each
    parameter's gradient comes in its own dtype, the float32 ones to float32 rounding of a float64
    evaluation (every gradient was cast to the first parameter's float16: rounded to 11 bits, ~1e-4 of
    the largest, and past 65504 an inf that a GradScaler takes for an overflow). Measured here: float32
    gradients within 2.7e-6 of the largest, float16 ones 4.7e-4 (60 draws)."""
    device = backend_device(backend)
    module = SCSA(8, window_size=3, backend=backend).to(device).half()
    exact = SCSA(8, window_size=3, backend="reference").to(device)
    exact.load_state_dict(module.state_dict())
    exact.double()
    for name in ("norm_h", "norm_w", "norm"):
        getattr(module, name).float()
    x = torch.randn(2, 8, 9, 11, device=device).half()
    grad_out = torch.randn_like(x)
    module(x).backward(grad_out)
    exact(x.double()).backward(grad_out.double())
    for (name, p), q in zip(module.named_parameters(), exact.parameters()):
        assert p.grad.dtype == p.dtype, name
        close([p.grad.double()], [q.grad], rtol=2e-5 if p.dtype == torch.float32 else 2e-3)
