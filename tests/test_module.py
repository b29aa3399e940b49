"""The drop-in module: state_dict keys and shapes per option, checkpoints both ways, backend dispatch."""
import dataclasses

import pytest
import torch

from scsa_kernels import SCSA, SCSAConfig, backends

from authors_scsa import SCSA as AuthorsSCSA

OPTION_SETS = [
    dict(dim=16, head_num=1),
    dict(dim=16, head_num=4, qkv_bias=True),
    dict(dim=16, head_num=2, window_size=3, down_sample_mode="recombination"),
    dict(dim=16, head_num=2, window_size=-1, down_sample_mode="recombination"),
    dict(dim=24, head_num=3, window_size=2, group_kernel_sizes=(1, 3, 5, 11), down_sample_mode="max_pool",
         gate_layer="softmax"),
]


def expected_shapes(dim, head_num=1, window_size=7, group_kernel_sizes=(3, 5, 7, 9), qkv_bias=False,
                    down_sample_mode="avg_pool", **_):
    g = dim // 4
    shapes = {}
    for name, k in zip(("local_dwc", "global_dwc_s", "global_dwc_m", "global_dwc_l"), group_kernel_sizes):
        shapes[f"{name}.weight"] = (g, 1, k)
        shapes[f"{name}.bias"] = (g,)
    for name in ("norm_h", "norm_w", "norm"):
        shapes[f"{name}.weight"] = shapes[f"{name}.bias"] = (dim,)
    for name in "qkv":
        shapes[f"{name}.weight"] = (dim, 1, 1, 1)
        if qkv_bias:
            shapes[f"{name}.bias"] = (dim,)
    if down_sample_mode == "recombination" and window_size != -1:
        shapes["conv_d.weight"] = (dim, dim * window_size ** 2, 1, 1)
    return shapes


@pytest.mark.parametrize("options", OPTION_SETS)
def test_state_dict_keys_and_shapes(options):
    state = SCSA(**options).state_dict()
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_shapes(**options)


@pytest.mark.parametrize("options", OPTION_SETS)
def test_checkpoints_load_both_ways_strict(options):
    authors = AuthorsSCSA(**{"head_num": 1, **options})
    ours = SCSA(**options)
    ours.load_state_dict(authors.state_dict(), strict=True)
    for key, value in ours.state_dict().items():
        assert torch.equal(value, authors.state_dict()[key]), key
    authors.load_state_dict(SCSA(**options).state_dict(), strict=True)


def test_weights_view_shares_parameters():
    module = SCSA(8, qkv_bias=True)
    assert {id(t) for t in module.weights().tensors()} == {id(p) for p in module.parameters()}


class _Doubled(torch.nn.Module):
    def forward(self, weight):
        return 2 * weight


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_weights_follow_functional_call_and_parametrizations(backend):
    """weights() reads the parameter dicts directly (fast path); swapped and parametrized tensors still count."""
    torch.manual_seed(0)
    module = SCSA(8, qkv_bias=True, backend=backend)
    x = torch.randn(2, 8, 7, 7)
    swapped = {name: torch.randn_like(p) for name, p in module.named_parameters()}
    authors = AuthorsSCSA(8, 1, qkv_bias=True)
    authors.load_state_dict(swapped)
    torch.testing.assert_close(torch.func.functional_call(module, swapped, (x,)), authors(x))
    state = {name: p.detach().clone() for name, p in module.named_parameters()}
    torch.nn.utils.parametrize.register_parametrization(module.q, "weight", _Doubled())
    authors.load_state_dict({**state, "q.weight": 2 * state["q.weight"]})
    torch.testing.assert_close(module(x), authors(x))


def test_default_initialisation_matches_pytorch_layers():
    torch.manual_seed(0)
    ours = SCSA(16, 2, qkv_bias=True)
    torch.manual_seed(0)
    authors = AuthorsSCSA(16, 2, qkv_bias=True)
    for key, value in authors.state_dict().items():
        assert torch.equal(ours.state_dict()[key], value), key


def test_reference_backend_explicit_and_auto_agree():
    x = torch.randn(2, 8, 9, 9)
    auto = SCSA(8, window_size=3)
    explicit = SCSA(8, window_size=3, backend="reference")
    explicit.load_state_dict(auto.state_dict())
    torch.testing.assert_close(auto(x), explicit(x))


def test_auto_picks_an_available_backend_for_cpu_tensors():
    config = SCSAConfig(8, window_size=2)
    name = backends.auto_choice(torch.randn(1, 8, 4, 4), config)
    assert backends.unavailable_reason(name) is None


def test_config_round_trips_through_constructor():
    config = SCSAConfig(12, head_num=3, window_size=2, group_kernel_sizes=(1, 3, 5, 7), qkv_bias=True,
                        down_sample_mode="max_pool", attn_drop_ratio=0.1, gate_layer="softmax")
    assert SCSA(**dataclasses.asdict(config)).config == config


def test_parameters_get_gradients():
    module = SCSA(16, 2, window_size=2, qkv_bias=True, down_sample_mode="recombination")
    module(torch.randn(2, 16, 6, 6)).square().sum().backward()
    for name, p in module.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


def test_compiling_before_any_eager_call_has_no_graph_break():
    """A fresh process whose first SCSA call is compiled (fullgraph): every backend auto may pick
    is imported with the package, since dynamo cannot trace an import."""
    import subprocess
    import sys

    script = ("import torch; from scsa_kernels import SCSA; m = SCSA(8, window_size=2); "
              "print(torch.compile(m, backend='eager', fullgraph=True)(torch.randn(1, 8, 4, 4)).shape)")
    res = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "torch.Size([1, 8, 4, 4])" in res.stdout, res.stderr[-3000:]
