"""scsa_kernels.weights: the packed layout of the fused backends and its adjoint."""
import pytest
import torch

from scsa_kernels import SCSAConfig
from scsa_kernels.testing import random_weights
from scsa_kernels.weights import packed_parameters, pack_weights, unpack_gradients


@pytest.mark.parametrize("qkv_bias", [False, True])
@pytest.mark.parametrize("param_dtype,pack_dtype", [(torch.float32, torch.float32), (torch.float64, torch.float64),
                                                    (torch.bfloat16, torch.float32)])
def test_unpack_gradients_is_the_adjoint_of_pack_weights(qkv_bias, param_dtype, pack_dtype):
    """Exactly what autograd gives through pack_weights, in each parameter's shape and dtype."""
    config = SCSAConfig(dim=16, qkv_bias=qkv_bias, group_kernel_sizes=[3, 9, 5, 7])
    weights = random_weights(config).map(lambda t: t.to(param_dtype).requires_grad_())
    packed = pack_weights(weights, config, pack_dtype)
    packed_grads = [torch.randn_like(t) for t in packed]
    params = packed_parameters(weights, config)
    expected = torch.autograd.grad(packed, params, packed_grads)
    flat = torch.cat([t.flatten() for t in packed_grads])
    for got in (unpack_gradients(packed_grads, weights, config), unpack_gradients(flat, weights, config)):
        assert len(got) == len(params) == len(weights.tensors())
        for g, e, p in zip(got, expected, params):
            assert g.shape == p.shape and g.dtype == p.dtype
            assert torch.equal(g, e)


def test_cuda_graph_capture_packs_inside_the_graph(monkeypatch):
    """While a CUDA graph is captured, inference packs the weights afresh (the packing ops land in
    the graph, so replays follow in-place weight updates) and leaves the inference cache alone;
    otherwise repeated inference calls share one cached pack. (The capture itself: GPU test
    test_gpu_cuda_graph_inference_follows_in_place_weight_updates.)"""
    from scsa_kernels import weights as weights_module
    config = SCSAConfig(16)
    w = random_weights(config)
    monkeypatch.setattr(weights_module, "_PACK_CACHE", weights_module.InferencePackCache())
    with torch.no_grad():
        cached = weights_module.packed_weights(w, config)
        assert weights_module.packed_weights(w, config).conv_weight is cached.conv_weight
        monkeypatch.setattr(weights_module, "capturing_cuda_graph", lambda t: True)
        fresh = weights_module.packed_weights(w, config)
    assert fresh.conv_weight is not cached.conv_weight and torch.equal(fresh.conv_weight, cached.conv_weight)
    assert len(weights_module._PACK_CACHE.entries) == 1


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_a_compiled_fused_module_compiles_once(monkeypatch, backend):
    """torch.compile traces the weight packing of a fused backend without touching its eager index
    cache: a traced cache fill put the cache in the graph's guards, so the second compiled call
    compiled everything again, and so would the first compiled call after any eager call that
    fills it. Here: a compiled training step, an eager one (another module, the same config) and
    two more compiled ones make one compilation."""
    from scsa_kernels import SCSA, backends
    from scsa_kernels import weights as weights_module
    if backends.unavailable_reason(backend):
        pytest.skip(backends.unavailable_reason(backend))
    torch._dynamo.reset()
    monkeypatch.setattr(weights_module, "_CONSTANTS", {})
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward  # runs the traced graph as it is: the op itself at run time

    compiled = torch.compile(SCSA(16, window_size=3, backend=backend), backend=counting_backend, fullgraph=True)
    for step, module in enumerate([compiled, SCSA(16, window_size=3, backend=backend), compiled, compiled]):
        module(torch.randn(2, 16, 9, 9, requires_grad=True)).sum().backward()
        assert len(graphs) == 1, f"step {step}: {len(graphs)} compilations"


def test_packing_constants_made_inside_a_cuda_graph_capture_are_not_cached(monkeypatch):
    """The packing's cached constants (gather indices, the zero slot) are made by eager calls: one made
    while a CUDA graph is captured holds nothing until a replay (its fill kernel is only recorded),
    so later eager calls must not read it from the cache."""
    from scsa_kernels import weights as weights_module
    config = SCSAConfig(16)
    w = random_weights(config)
    monkeypatch.setattr(weights_module, "_CONSTANTS", {})
    monkeypatch.setattr(weights_module, "capturing_cuda_graph", lambda t: True)
    captured = pack_weights(w, config)
    assert weights_module._CONSTANTS == {}
    monkeypatch.setattr(weights_module, "capturing_cuda_graph", lambda t: False)
    eager = pack_weights(w, config)
    assert {key[0] for key in weights_module._CONSTANTS} == {"pack", "zero"}
    assert all(torch.equal(a, b) for a, b in zip(captured, eager))
