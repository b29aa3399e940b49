"""Every error of SPEC.md ("Shapes and inputs that are errors") and every valid edge input."""
import re

import pytest
import torch

from scsa_kernels import SCSA, SCSAConfig, BackendUnavailableError, scsa_reference
from scsa_kernels.testing import random_weights

from independent_scsa import independent_scsa

CONSTRUCTOR_ERRORS = [
    (dict(dim=6), ValueError, "dim must be a positive multiple of 4"),
    (dict(dim=0), ValueError, "dim must be a positive multiple of 4"),
    (dict(dim=8, head_num=3), ValueError, "dim must be divisible by head_num"),
    (dict(dim=8, head_num=0), ValueError, "head_num must be >= 1"),
    (dict(dim=8.0), TypeError, "dim must be an int"),
    (dict(dim=8, group_kernel_sizes=(3, 5, 7)), ValueError, "exactly 4 sizes"),
    (dict(dim=8, group_kernel_sizes=(3, 5, 7, 9, 11)), ValueError, "exactly 4 sizes"),
    (dict(dim=8, group_kernel_sizes=(3, 4, 7, 9)), ValueError, "odd and >= 1"),
    (dict(dim=8, group_kernel_sizes=(3, 5, -1, 9)), ValueError, "odd and >= 1"),
    (dict(dim=8, group_kernel_sizes=(3, 5, 7, 9.0)), TypeError, "group_kernel_sizes"),
    (dict(dim=8, group_kernel_sizes=3), TypeError, "group_kernel_sizes must be a sequence of 4 ints, got int"),
    (dict(dim=8, down_sample_mode="median"), ValueError, "down_sample_mode must be one of"),
    (dict(dim=8, gate_layer="relu"), ValueError, "gate_layer must be one of"),
    (dict(dim=8, attn_drop_ratio=1.0), ValueError, "attn_drop_ratio must be in [0, 1)"),
    (dict(dim=8, attn_drop_ratio=-0.1), ValueError, "attn_drop_ratio must be in [0, 1)"),
    (dict(dim=8, window_size=0), ValueError, "window_size must be >= 1 or -1"),
    (dict(dim=8, backend="tpu"), ValueError, "backend must be one of"),
    (dict(dim=8, not_an_option=1), TypeError, "not_an_option"),
]


@pytest.mark.parametrize("kwargs,error,message", CONSTRUCTOR_ERRORS, ids=[m for _, _, m in CONSTRUCTOR_ERRORS])
def test_constructor_errors_name_argument_and_rule(kwargs, error, message):
    with pytest.raises(error, match=re.escape(message)):
        SCSA(**kwargs)


def test_authors_unused_kwargs_are_accepted():
    SCSA(8, 2, fuse_bn=True, norm_cfg=dict(type="BN"), act_cfg=dict(type="ReLU"))


INPUT_ERRORS = [
    (lambda: [[1.0]], TypeError, "must be a torch.Tensor"),
    (lambda: torch.zeros(1, 8, 8, 8, dtype=torch.int64), TypeError, "float16, bfloat16, float32 or float64"),
    (lambda: torch.zeros(1, 8, 8, 8, dtype=torch.bool), TypeError, "float16, bfloat16, float32 or float64"),
    (lambda: torch.zeros(1, 8, 8, 8, dtype=torch.complex64), TypeError, "float16, bfloat16, float32 or float64"),
    (lambda: torch.zeros(1, 8, 8, 8).to(torch.float8_e4m3fn), TypeError, "float16, bfloat16, float32 or float64"),
    (lambda: torch.randn(8, 8, 8), ValueError, "must be 4-D"),
    (lambda: torch.randn(1, 1, 8, 8, 8), ValueError, "must be 4-D"),
    (lambda: torch.randn(1, 12, 8, 8), ValueError, "C == dim == 8"),
    (lambda: torch.randn(1, 8, 6, 8), ValueError, "H >= window_size"),
    (lambda: torch.randn(1, 8, 8, 3), ValueError, "W >= window_size"),
]


@pytest.mark.parametrize("make_input,error,message", INPUT_ERRORS, ids=[m for _, _, m in INPUT_ERRORS])
def test_input_errors_raise_before_compute(make_input, error, message):
    with pytest.raises(error, match=message):
        SCSA(8, window_size=7)(make_input())


def test_input_on_other_device_than_parameters():
    module = SCSA(8, window_size=2).to("meta")
    with pytest.raises(ValueError, match="parameters are on meta"):
        module(torch.randn(1, 8, 4, 4))


def test_unavailable_backend_explains_why():
    with pytest.raises(BackendUnavailableError, match="'cuda'.*not implemented"):
        SCSA(8, window_size=2, backend="cuda")(torch.randn(1, 8, 4, 4))


def test_global_pool_has_no_size_rule():
    assert SCSA(8, window_size=-1)(torch.randn(2, 8, 1, 1)).shape == (2, 8, 1, 1)


@pytest.mark.parametrize("batch", [0, 2])
@pytest.mark.parametrize("shape", [(0, 5), (5, 0)])
def test_global_pool_of_an_empty_plane_is_an_error(batch, shape):
    """window_size=-1 pools the whole plane: an empty one has nothing to pool (the rule of the
    windows: H, W >= 1), refused before any kernel runs, with an empty batch too."""
    for backend in ("auto", "reference"):
        with pytest.raises(ValueError, match=re.escape("H >= 1 and W >= 1 (window_size=-1)")):
            SCSA(8, window_size=-1, backend=backend)(torch.randn(batch, 8, *shape))


WEIGHT_MISMATCHES = [  # (config of the call, the weights' module options, message)
    (dict(group_kernel_sizes=(5, 3, 7, 9)), {}, "local_dwc.weight must have shape (2, 1, 5), got (2, 1, 3)"),
    (dict(qkv_bias=True), {}, "q.bias must have shape (8,), got none"),
    ({}, dict(qkv_bias=True), "it has no ['k.bias', 'q.bias', 'v.bias']"),
    (dict(down_sample_mode="recombination"), {}, "conv_d.weight must have shape (8, 72, 1, 1), got none"),
    (dict(dim=12), {}, "local_dwc.weight must have shape (3, 1, 3), got (2, 1, 3)"),
]


@pytest.mark.parametrize("backend", ["auto", "reference"])
@pytest.mark.parametrize("config_options,module_options,message", WEIGHT_MISMATCHES,
                         ids=[m for _, _, m in WEIGHT_MISMATCHES])
def test_functional_weights_must_fit_the_config(backend, config_options, module_options, message):
    """scsa(x, weights, config) with weights that are not the config's (same element count and a
    permuted kernel size ran on the C++ kernels and gave another function): a ValueError naming the
    parameter and its shape, before any kernel runs."""
    from scsa_kernels import scsa
    config = SCSAConfig(**{"dim": 8, "window_size": 3, **config_options})
    weights = SCSA(8, window_size=3, **module_options).weights()
    with pytest.raises(ValueError, match=re.escape(message)):
        scsa(torch.randn(2, config.dim, 9, 11), weights, config, backend=backend)


# ---- valid edge inputs -------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["auto", "reference"])
def test_empty_batch_returns_empty_and_backprops(backend):
    """An empty batch: empty out, x and every parameter get a gradient (zeros), as the reference's
    autograd gives them (a parameter without one stalls DistributedDataParallel)."""
    module = SCSA(8, window_size=2, backend=backend)
    x = torch.randn(0, 8, 5, 5, requires_grad=True)
    out = module(x)
    assert out.shape == (0, 8, 5, 5)
    out.sum().backward()
    assert x.grad.shape == x.shape
    assert all(p.grad is not None and torch.equal(p.grad, torch.zeros_like(p)) for p in module.parameters())


def test_reference_computes_an_empty_batch():
    """scsa_reference, the spec in code, takes B = 0 too (its reshapes named N, not -1)."""
    module = SCSA(8, head_num=2, window_size=2)
    x = torch.randn(0, 8, 5, 5, requires_grad=True)
    out = scsa_reference(x, module.weights(), module.config)
    out.sum().backward()
    assert out.shape == x.shape and x.grad.shape == x.shape
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in module.parameters())


@pytest.mark.parametrize("layout", ["channels_last", "sliced", "transposed_hw"])
def test_non_contiguous_inputs(layout):
    config = SCSAConfig(8, head_num=2, window_size=3)
    base = torch.randn(2, 8, 11, 13)
    x = {"channels_last": base.to(memory_format=torch.channels_last),
         "sliced": torch.randn(3, 16, 11, 26)[::2, 1::2, :, ::2],
         "transposed_hw": base.transpose(2, 3)}[layout]
    assert not x.is_contiguous()
    weights = random_weights(config)
    out = scsa_reference(x, weights, config)
    torch.testing.assert_close(out, scsa_reference(x.contiguous(), weights, config), rtol=1e-6, atol=1e-6)
    if layout == "channels_last":
        assert out.is_contiguous(memory_format=torch.channels_last)
    grad_out = torch.randn(x.shape)
    dx = [torch.autograd.grad(scsa_reference(xx, weights, config), xx, grad_out)[0]
          for xx in (x.requires_grad_(), x.detach().contiguous().requires_grad_())]
    torch.testing.assert_close(dx[0], dx[1], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_computes_in_float32(dtype):
    """Half-precision inputs: the float32 evaluation of the same values, rounded once to x's dtype. So
    within half an ulp of the exact result (plus float32's rounding), relative to its largest element:
    computed in x's dtype, the errors were 1.07 (float16) and 1.26 (bfloat16) ulps on 20 draws."""
    config = SCSAConfig(16, head_num=2, window_size=3, qkv_bias=True)
    weights = random_weights(config, dtype=dtype)
    x = torch.randn(2, 16, 10, 9, dtype=dtype)
    out = scsa_reference(x, weights, config)
    assert out.dtype == dtype
    in_float32 = scsa_reference(x.float(), weights.map(torch.Tensor.float), config)
    assert torch.equal(out, in_float32.to(dtype))
    exact = scsa_reference(x.double(), weights.map(torch.Tensor.double), config)
    half_ulp = (torch.finfo(dtype).eps / 2 + 2 ** -20) * exact.abs().max().item()
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=half_ulp)


def test_nan_and_inf_propagate():
    module = SCSA(8, window_size=2)
    x = torch.randn(2, 8, 6, 6)
    x[0, 3, 2, 4] = float("nan")
    x[1, 5, 1, 1] = float("inf")
    out = module(x)
    assert out.shape == x.shape
    assert torch.isnan(out[0]).any()
    assert not torch.isfinite(out[1]).all()


def test_odd_sizes_drop_partial_windows():
    """At 9x11 with window 4 the last row and the last three columns lie outside every window, so they
    reach the output only through the row and column means: a change there that keeps every mean (+e,
    -e, -e, +e at rows {0, 8} x columns {8, 9}) changes the output only at those four elements (x
    itself, times the unchanged gates), and the result is SPEC.md's evaluated independently."""
    config = SCSAConfig(8, window_size=4)
    weights = random_weights(config, dtype=torch.float64)
    x = torch.randn(2, 8, 9, 11, dtype=torch.float64)
    rows, cols = torch.tensor([0, 0, 8, 8]), torch.tensor([8, 9, 8, 9])
    moved = x.clone()
    moved[:, :, rows, cols] += 0.5 * torch.tensor([1.0, -1.0, -1.0, 1.0], dtype=torch.float64)
    out, out_moved = scsa_reference(x, weights, config), scsa_reference(moved, weights, config)
    changed = torch.zeros(9, 11, dtype=torch.bool)
    changed[rows, cols] = True
    torch.testing.assert_close(out_moved[..., ~changed], out[..., ~changed], rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out_moved[..., changed], out[..., changed])
    state = dict(zip(weights.names(), weights.tensors()))
    torch.testing.assert_close(out, independent_scsa(x, state, config), rtol=1e-10, atol=1e-12)
