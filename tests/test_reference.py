"""The reference against an independent float64 evaluation of SPEC.md and the authors' module."""
import dataclasses

import pytest
from hypothesis import given, settings, strategies as st
import torch

from scsa_kernels import SCSA, SCSAConfig, scsa_reference
from scsa_kernels.testing import random_weights

from authors_scsa import SCSA as AuthorsSCSA
from independent_scsa import independent_scsa

# One config per option value, plus combinations that interact (heads x bias, softmax x max pool).
CONFIGS = [
    SCSAConfig(8, window_size=2),
    SCSAConfig(8, window_size=2, gate_layer="softmax"),
    SCSAConfig(8, window_size=2, down_sample_mode="max_pool"),
    SCSAConfig(8, window_size=2, down_sample_mode="recombination"),
    SCSAConfig(8, window_size=-1),
    SCSAConfig(8, window_size=-1, down_sample_mode="max_pool", gate_layer="softmax"),
    SCSAConfig(8, head_num=2, window_size=3, qkv_bias=True),
    SCSAConfig(12, head_num=3, window_size=2, group_kernel_sizes=(1, 3, 5, 7), down_sample_mode="max_pool",
               gate_layer="softmax", qkv_bias=True),
    SCSAConfig(8, head_num=4, window_size=3, group_kernel_sizes=(9, 7, 1, 3), down_sample_mode="recombination",
               qkv_bias=True, gate_layer="softmax"),
]
IDS = [f"{c.down_sample_mode}-ws{c.window_size}-h{c.head_num}-{c.gate_layer}-b{int(c.qkv_bias)}-k{''.join(map(str, c.group_kernel_sizes))}"
       for c in CONFIGS]


def state_dict_of(weights, config):
    return dict(zip(weights.names(), weights.tensors()))


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_forward_and_gradients_match_independent_float64(config):
    weights = random_weights(config, dtype=torch.float64)
    x = torch.randn(2, config.dim, 7, 5, dtype=torch.float64)
    grad_out = torch.randn_like(x)
    results = []
    for fn in (lambda xx, ww: scsa_reference(xx, ww, config),
               lambda xx, ww: independent_scsa(xx, state_dict_of(ww, config), config)):
        xx = x.clone().requires_grad_()
        ww = weights.map(lambda t: t.clone().requires_grad_())
        out = fn(xx, ww)
        results.append((out, torch.autograd.grad(out, [xx, *ww.tensors()], grad_out)))
    (ref, ref_grads), (ind, ind_grads) = results
    torch.testing.assert_close(ref, ind, rtol=1e-10, atol=1e-12)
    for name, g_ref, g_ind in zip(["x"] + weights.names(), ref_grads, ind_grads):
        torch.testing.assert_close(g_ref, g_ind, rtol=1e-9, atol=1e-11, msg=lambda m: f"grad {name}: {m}")


@pytest.mark.parametrize("config", CONFIGS, ids=IDS)
def test_gradcheck_float64(config):
    weights = random_weights(config, dtype=torch.float64)
    x = torch.randn(1, config.dim, 6, 7, dtype=torch.float64, requires_grad=True)
    params = [t.requires_grad_() for t in weights.tensors()]
    rebuild = lambda flat: weights.map(lambda t: flat[next(i for i, p in enumerate(params) if p is t)])

    def fn(xx, *flat):
        return scsa_reference(xx, rebuild(flat), config)

    assert torch.autograd.gradcheck(fn, (x, *params), eps=1e-6, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("config", [c for c in CONFIGS if c.down_sample_mode != "recombination" or c.window_size == -1],
                         ids=[i for c, i in zip(CONFIGS, IDS) if c.down_sample_mode != "recombination" or c.window_size == -1])
def test_reference_computes_the_authors_function(config):
    authors = AuthorsSCSA(**{f.name: getattr(config, f.name) for f in dataclasses.fields(config)}).double().eval()
    ours = SCSA(**dataclasses.asdict(config), backend="reference").double().eval()
    authors.load_state_dict(ours.state_dict(), strict=True)
    for p in authors.parameters():  # move off the default init so every parameter matters
        p.data.add_(0.3 * torch.randn_like(p))
    ours.load_state_dict(authors.state_dict(), strict=True)
    x = torch.randn(3, config.dim, 9, 8, dtype=torch.float64)
    torch.testing.assert_close(ours(x), authors(x), rtol=1e-12, atol=1e-12)


def test_attention_dropout_matches_authors_in_training():
    config = SCSAConfig(16, head_num=2, window_size=2, attn_drop_ratio=0.4)
    authors = AuthorsSCSA(16, 2, window_size=2, attn_drop_ratio=0.4).double().train()
    ours = SCSA(16, 2, window_size=2, attn_drop_ratio=0.4, backend="reference").double().train()
    ours.load_state_dict(authors.state_dict())
    x = torch.randn(2, 16, 6, 6, dtype=torch.float64)
    torch.manual_seed(123)
    out_ours = ours(x)
    torch.manual_seed(123)
    out_authors = authors(x)
    torch.testing.assert_close(out_ours, out_authors, rtol=1e-12, atol=1e-12)
    assert not torch.allclose(out_ours, ours.eval()(x)), "dropout in training must change the output"
    assert config.attn_drop_ratio == 0.4


@st.composite
def configs_and_shapes(draw):
    dim = 4 * draw(st.integers(1, 4))
    head_num = draw(st.sampled_from([h for h in (1, 2, 3, 4) if dim % h == 0]))
    window_size = draw(st.sampled_from([-1, 1, 2, 3]))
    config = SCSAConfig(
        dim, head_num, window_size,
        group_kernel_sizes=tuple(draw(st.lists(st.sampled_from([1, 3, 5, 7]), min_size=4, max_size=4))),
        qkv_bias=draw(st.booleans()),
        down_sample_mode=draw(st.sampled_from(["avg_pool", "max_pool", "recombination"])),
        gate_layer=draw(st.sampled_from(["sigmoid", "softmax"])),
    )
    low = max(window_size, 1)
    shape = (draw(st.integers(1, 2)), dim, draw(st.integers(low, 7)), draw(st.integers(low, 7)))
    return config, shape


@settings(max_examples=25, deadline=None)
@given(configs_and_shapes())
def test_property_reference_equals_independent(case):
    config, shape = case
    weights = random_weights(config, dtype=torch.float64)
    x = torch.randn(shape, dtype=torch.float64)
    torch.testing.assert_close(scsa_reference(x, weights, config),
                               independent_scsa(x, state_dict_of(weights, config), config), rtol=1e-10, atol=1e-12)
