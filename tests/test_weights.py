"""scsa_kernels.weights: the packed layout of the fused backends and its adjoint."""
import pytest
import torch

from conftest import backend_device, skip_unless_available
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


def test_inference_calls_share_one_cached_pack_while_the_weights_hold_their_bits(monkeypatch):
    """Repeated inference calls on CPU share one cached pack; a write to a weight, in place through
    ``.data`` (no version counter moves) or bit by bit (a signed zero, a NaN payload), gets a new one
    with the new values."""
    from scsa_kernels import weights as weights_module
    config = SCSAConfig(16)
    w = random_weights(config)
    monkeypatch.setattr(weights_module, "_PACK_CACHE", weights_module.InferencePackCache())
    with torch.no_grad():
        cached = weights_module.cached_packed_weights(w, config)
        assert weights_module.cached_packed_weights(w, config).conv_weight is cached.conv_weight
        for write in (lambda t: t.data.mul_(2), lambda t: t.data.fill_(0.0), lambda t: t.data.fill_(-0.0),
                      lambda t: t.data.view(torch.int32).fill_(0x7FC00001)):
            before = weights_module.cached_packed_weights(w, config)
            write(w.norm_bias)
            after = weights_module.cached_packed_weights(w, config)
            assert after is not before and torch.equal(after.norm_bias.view(torch.int32), w.norm_bias.view(torch.int32))
    assert len(weights_module._PACK_CACHE.entries) == 1


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_inference_follows_in_place_writes_through_data(backend):
    """mmengine's EMA hook swaps a model's weights with its averages in place through ``.data``
    before each validation (``p.data.copy_``), which moves no version counter: the next inference
    call must compute with the new weights (a cache keyed by version counters served the old ones)."""
    from scsa_kernels import SCSA
    module = _fused_module(backend).eval()
    averaged = SCSA(16, window_size=3, backend="reference").to(backend_device(backend)).eval()
    x = torch.randn(2, 16, 9, 9, device=backend_device(backend))
    with torch.no_grad():
        module(x)
        for p, q in zip(module.parameters(), averaged.parameters()):
            p.data.copy_(q.data)
        torch.testing.assert_close(module(x), averaged(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_a_compiled_fused_module_compiles_once(monkeypatch, backend):
    """torch.compile traces the weight packing of a fused backend without touching its eager index
    cache: a traced cache fill put the cache in the graph's guards, so the second compiled call
    compiled everything again, and so would the first compiled call after any eager call that
    fills it. Here: a compiled training step, an eager one (another module, the same config) and
    two more compiled ones make one compilation."""
    from scsa_kernels import SCSA
    from scsa_kernels import weights as weights_module
    skip_unless_available(backend)
    torch._dynamo.reset()
    monkeypatch.setattr(weights_module, "_CONSTANTS", {})
    graphs = []

    def counting_backend(graph_module, example_inputs):
        graphs.append(graph_module)
        return graph_module.forward  # runs the traced graph as it is: the op itself at run time

    device = backend_device(backend)
    compiled = torch.compile(SCSA(16, window_size=3, backend=backend).to(device), backend=counting_backend, fullgraph=True)
    for step, module in enumerate([compiled, SCSA(16, window_size=3, backend=backend).to(device), compiled, compiled]):
        module(torch.randn(2, 16, 9, 9, device=device, requires_grad=True)).sum().backward()
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


def _fused_module(backend, **kwargs):
    from scsa_kernels import SCSA
    skip_unless_available(backend)
    return SCSA(16, window_size=3, backend=backend, **kwargs).to(backend_device(backend))


@pytest.mark.parametrize("backend", ["cpu", "triton"])
@pytest.mark.parametrize("frozen", [False, True], ids=["trainable", "frozen"])
def test_inference_mode_calls_cache_nothing_that_autograd_cannot_save(monkeypatch, backend, frozen):
    """A first call under torch.inference_mode fills the packing caches (gather indices, the
    inference pack). Made there they were inference tensors, and the next call with autograd
    failed with "Inference tensors cannot be saved for backward" (the Triton op saves its packed
    weights; with frozen weights the pack comes from the inference cache). Then: a training step
    works and matches the reference."""
    from scsa_kernels import SCSA
    from scsa_kernels import weights as weights_module
    from scsa_kernels.testing import compare
    monkeypatch.setattr(weights_module, "_CONSTANTS", {})
    monkeypatch.setattr(weights_module, "_PACK_CACHE", weights_module.InferencePackCache())
    module = _fused_module(backend).requires_grad_(not frozen)
    x = torch.randn(2, 16, 9, 9, device=backend_device(backend))
    with torch.inference_mode():
        inferred = module(x)
    runs = []  # (x, module) after a training step: fused, reference in float32, reference in float64
    for m, dtype in ((module, torch.float32), (SCSA(16, window_size=3, backend="reference"), torch.float32),
                     (SCSA(16, window_size=3, backend="reference"), torch.float64)):
        if m is not module:
            m.load_state_dict(module.state_dict())
            m.to(device=x.device, dtype=dtype).requires_grad_(not frozen)
        xx = x.to(dtype, copy=True).requires_grad_()
        out = m(xx)
        out.square().sum().backward()
        runs.append((xx, m, out))
    torch.testing.assert_close(runs[0][2], inferred, rtol=0, atol=0)
    (x32, fused, _), (x32_ref, reference, _), (x64, exact, _) = runs
    grads = [("x", x32, x32_ref, x64)]
    grads += [(name, p, r, e) for (name, p), r, e in zip(fused.named_parameters(), reference.parameters(),
                                                         exact.parameters()) if p.requires_grad]
    for name, got, same_dtype, exact_value in grads:
        result = compare(name, got.grad, same_dtype.grad, exact_value.grad.double())
        assert result.ok, result


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_a_module_made_under_inference_mode_runs(backend):
    """Parameters made under torch.inference_mode (a model built or loaded in an inference server's
    inference_mode block) are inference tensors, which have no version counter (a cache that read
    them raised): an in-place update there reaches the next call. Outputs by the tolerance rule
    (float64 reference)."""
    from scsa_kernels import SCSA
    from scsa_kernels.testing import compare
    x = torch.randn(2, 16, 9, 9, device=backend_device(backend))
    with torch.inference_mode():
        module = _fused_module(backend)
        references = [SCSA(16, window_size=3, backend="reference").to(device=x.device, dtype=dtype)
                      for dtype in (torch.float32, torch.float64)]
        for reference in references:
            reference.load_state_dict(module.state_dict())
        first, second = module(x), module(x)
        for m in (module, *references):
            m.q.weight.mul_(2)  # in place, as inference mode allows on inference tensors
        updated, same_dtype, exact = module(x), references[0](x), references[1](x.double())
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    result = compare("out after the update", updated, same_dtype, exact)
    assert result.ok, result


def test_inference_pack_cache_keeps_one_pack_per_live_module(monkeypatch):
    """Every live module keeps its pack however many there are (a fixed number of recent entries missed
    on every call of a model with more SCSA modules than that, called in turn), and a module's
    entry goes when its weights do."""
    import gc
    from scsa_kernels import weights as weights_module
    monkeypatch.setattr(weights_module, "_PACK_CACHE", weights_module.InferencePackCache())
    packs = []
    monkeypatch.setattr(weights_module, "_pack_flat",
                        lambda *args, _pack=weights_module._pack_flat: packs.append(1) or _pack(*args))
    config = SCSAConfig(16)
    models = [random_weights(config) for _ in range(40)]
    with torch.no_grad():
        for _ in range(3):
            first = [weights_module.cached_packed_weights(w, config) for w in models]
    assert len(packs) == 40
    assert all(a is b for a, b in zip(first, [weights_module.cached_packed_weights(w, config) for w in models]))
    del models[10:]
    gc.collect()
    assert len(weights_module._PACK_CACHE.entries) == 10
