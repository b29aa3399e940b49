"""The eager training path's weight packing and parameter gradient kernels (triton/parameters.py)
against the torch ops they replace: ``weights.pack_weights`` (bitwise: every packed element is a
copy) and the sums over the batch + ``weights.unpack_gradients`` (fp32 sums in another order).

Without a GPU the kernels run under TRITON_INTERPRET=1 on CPU tensors (conftest.py sets it).
Outputs are allocated NaN-filled (poison), so an element a kernel forgets to write fails.
"""
import pytest
import torch

pytest.importorskip("triton")

from conftest import HAS_CUDA  # noqa: E402
from scsa_kernels import backends  # noqa: E402
from scsa_kernels.config import SCSAConfig  # noqa: E402
from scsa_kernels.testing import random_weights  # noqa: E402
from scsa_kernels.weights import pack_weights, packed_parameters, unpack_gradients  # noqa: E402

REASON = backends.unavailable_reason("triton")
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"triton backend unavailable: {REASON}")
DEVICE = "cuda" if HAS_CUDA else "cpu"

# (dim, options, parameter dtype): kernel sizes of 1 and wider than the default, unequal groups,
# q/k/v biases, every float dtype, dims that fill a program and dims that span several
CASES = {
    "default_fp32": (16, dict(), torch.float32),
    "bias_bf16": (8, dict(qkv_bias=True, group_kernel_sizes=(1, 3, 5, 3)), torch.bfloat16),
    "wide_kernels_fp16": (12, dict(group_kernel_sizes=(7, 1, 1, 11)), torch.float16),
    "several_programs_bias_fp32": (96, dict(qkv_bias=True), torch.float32),
}


@pytest.fixture(autouse=True)
def poison(monkeypatch):
    from scsa_kernels.ops import triton as ops
    monkeypatch.setattr(ops, "_empty", lambda *a, **k: torch.empty(*a, **k).fill_(float("nan")))


def _case(name):
    dim, options, dtype = CASES[name]
    config = SCSAConfig(dim, **options)
    return config, random_weights(config, dtype=dtype, device=DEVICE), torch.empty(1, dim, 4, 4, device=DEVICE)


@pytest.mark.parametrize("name", sorted(CASES))
def test_pack_is_pack_weights_bitwise(name):
    from scsa_kernels.ops import triton as ops
    config, weights, x = _case(name)
    for got, expected in zip(ops._eager_pack(x, weights, config), pack_weights(weights, config)):
        assert got.dtype == torch.float32 and got.shape == expected.shape
        assert torch.equal(got.view(torch.int32), expected.view(torch.int32))


def test_pack_keeps_special_values_and_reads_strided_parameters():
    """NaN, -0.0 and inf arrive as they are (selects, not sums); a non-contiguous parameter is read
    by its values, not its storage."""
    from scsa_kernels.ops import triton as ops
    config, weights, x = _case("bias_bf16")
    weights.norm_h_weight.data[0] = float("nan")
    weights.q_bias.data[1] = -0.0
    weights.conv_weights[3].data[0, 0, 0] = float("inf")
    strided = torch.randn(2 * config.dim, device=DEVICE, dtype=torch.bfloat16)[::2]
    weights = weights._replace(norm_bias=strided)
    got, expected = ops._eager_pack(x, weights, config), pack_weights(weights, config)
    for g, e in zip(got, expected):
        assert torch.equal(g.view(torch.int32), e.view(torch.int32))


def _partials(config, batch, generator):
    """Random ParameterPartials of a backward at this batch size (fp32 flat buffers)."""
    from scsa_kernels.ops import triton as ops
    C, K = config.dim, config.max_kernel_size
    conv = torch.randn(2 * batch * (C * K + C), generator=generator).to(DEVICE)
    small = torch.randn(batch * 12 * C, generator=generator).to(DEVICE)
    return ops.ParameterPartials.of(conv, small, batch, C, K)


@pytest.mark.parametrize("batch", [1, 7, 9, 40])  # one partial row step or several, a partial last one
@pytest.mark.parametrize("name", sorted(CASES))
def test_parameter_grads_are_the_summed_unpacked_partials(name, batch):
    """Against float64 sums of the same partials, unpacked by unpack_gradients, within the rigorous
    bound of a float32 sum of n = 2*batch terms (n * u * the sum of their magnitudes), then one
    rounding to the parameters' dtype; shapes and dtypes the parameters'."""
    from scsa_kernels.ops import triton as ops
    config, weights, x = _case(name)
    parts = _partials(config, batch, torch.Generator().manual_seed(batch))
    got = ops._parameter_grads(parts, weights, config, x.device)

    def unpacked_sums(transform):
        packed = torch.cat([transform(parts.conv.double()).view(parts.conv_rows, -1).sum(0),
                            transform(parts.small.double()).view(parts.small_rows, -1).sum(0)])
        return unpack_gradients(packed, weights, config)

    params = packed_parameters(weights, config)
    assert len(got) == len(params)
    for g, p, e, magnitude in zip(got, params, unpacked_sums(lambda t: t), unpacked_sums(torch.abs)):
        assert g.shape == p.shape and g.dtype == p.dtype
        bound = 2 * batch * torch.finfo(torch.float32).eps / 2 * magnitude.double()
        bound += torch.finfo(p.dtype).eps * e.double().abs()  # the final rounding (and the expected's own)
        assert ((g.double() - e.double()).abs() <= bound).all(), name


def test_parameter_grads_are_deterministic_and_propagate_nan():
    from scsa_kernels.ops import triton as ops
    config, weights, x = _case("several_programs_bias_fp32")
    parts = _partials(config, 33, torch.Generator().manual_seed(0))
    parts.small[5 * 12 * config.dim + 3] = float("nan")  # sample 5's partial of norm_h.weight[3]
    first = torch.cat([g.flatten() for g in ops._parameter_grads(parts, weights, config, x.device)])
    second = torch.cat([g.flatten() for g in ops._parameter_grads(parts, weights, config, x.device)])
    assert torch.equal(first.view(torch.int32), second.view(torch.int32))
    assert first.isnan().sum() == 1
