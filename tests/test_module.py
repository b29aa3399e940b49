"""The drop-in module: state_dict keys and shapes per option, checkpoints both ways, backend dispatch."""
import dataclasses

import pytest
import torch

from scsa_kernels import SCSA, SCSAConfig, backends

from authors_scsa import SCSA as AuthorsSCSA
from conftest import backend_device, skip_unless_available

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


def _gradients(module, x, backward, call=None):
    """Gradients of x and of every parameter after ``backward(call(x))`` (call: the module by default)."""
    x = x.clone().requires_grad_()
    module.zero_grad(set_to_none=True)
    backward((call or module)(x))
    return [x.grad] + [p.grad for p in module.parameters()]


def _plain(out):
    out.square().sum().backward()


def _deterministic(out):
    torch.use_deterministic_algorithms(True)
    try:
        out.square().sum().backward()
    finally:
        torch.use_deterministic_algorithms(False)


def _anomaly_mode(out):
    with torch.autograd.detect_anomaly(check_nan=True):
        out.square().sum().backward()


def _retain_graph_twice(out):
    """Two backward passes over one graph accumulate: halved, the plain gradients (exact in binary)."""
    loss = out.square().sum() * 0.5
    loss.backward(retain_graph=True)
    loss.backward()


CONTEXTS = {"deterministic_algorithms": _deterministic, "anomaly_mode": _anomaly_mode,
            "retain_graph_twice": _retain_graph_twice}


@pytest.mark.parametrize("context", sorted(CONTEXTS))
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_training_contexts_give_the_plain_gradients(backend, context):
    """Deterministic-algorithms mode, anomaly detection and a retained graph run twice: the same
    gradients as a plain backward, bitwise (the fused backward is deterministic). But the Triton
    backward in deterministic-algorithms mode: it gives each autotuned kernel its fixed config, which
    may sum in another order than the autotuner's pick (the interpreter's is the smallest tile), so
    there the gradients are bitwise those of another such backward and the plain ones to rounding."""
    skip_unless_available(backend)
    device = backend_device(backend)
    module = SCSA(16, window_size=3, head_num=2, backend=backend).to(device)
    x = torch.randn(2, 16, 7, 8, device=device)
    got, plain = _gradients(module, x, CONTEXTS[context]), _gradients(module, x, _plain)
    if backend == "triton" and context == "deterministic_algorithms":
        for a, b, expected in zip(got, _gradients(module, x, CONTEXTS[context]), plain):
            assert torch.equal(a, b)
            torch.testing.assert_close(a, expected, rtol=1e-5, atol=1e-6)
        return
    for a, expected in zip(got, plain):
        assert torch.equal(a, expected)


@pytest.mark.parametrize("use_reentrant", [False, True])
@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_activation_checkpointing_gives_the_plain_gradients(backend, use_reentrant):
    """torch.utils.checkpoint around the module, with attention dropout: its recomputed forward (RNG
    state restored) draws the same masks, so the gradients are the plain ones, bitwise."""
    from torch.utils.checkpoint import checkpoint

    skip_unless_available(backend)
    device = backend_device(backend)
    module = SCSA(16, window_size=3, head_num=2, attn_drop_ratio=0.3, backend=backend).to(device).train()
    x = torch.randn(2, 16, 7, 8, device=device)

    def seeded(seed, call):
        def run(x):
            torch.manual_seed(seed)
            return call(x)
        return run

    plain = _gradients(module, x, _plain, seeded(7, module))
    checkpointed = _gradients(module, x, _plain,
                              seeded(7, lambda x: checkpoint(module, x, use_reentrant=use_reentrant)))
    other_masks = _gradients(module, x, _plain, seeded(8, module))
    assert any(not torch.equal(a, b) for a, b in zip(plain, other_masks)), "dropout drew no masks"
    for got, expected in zip(checkpointed, plain):
        assert torch.equal(got, expected)


@pytest.mark.parametrize("backend", ["cpu", "triton"])
def test_full_backward_hooks_see_the_gradients(backend):
    """register_full_backward_hook around the fused node: the hook gets grad_input = d loss / d x."""
    skip_unless_available(backend)
    device = backend_device(backend)
    module = SCSA(16, window_size=3, backend=backend).to(device)
    seen = []
    module.register_full_backward_hook(lambda m, grad_input, grad_output: seen.append(grad_input[0].clone()))
    x = torch.randn(2, 16, 7, 8, device=device, requires_grad=True)
    module(x).square().sum().backward()
    assert len(seen) == 1 and torch.equal(seen[0], x.grad)


def test_concurrent_inference_from_threads():
    """Three modules called from four threads at once (an inference server), some calls with autograd:
    every output is the single-threaded one, bitwise (shared caches: packs, plans, indices)."""
    import threading
    backend = "cpu" if backends.unavailable_reason("cpu") is None else "reference"
    modules = [SCSA(16, window_size=3, backend=backend).eval() for _ in range(3)]
    x = torch.randn(2, 16, 9, 9)
    with torch.no_grad():
        expected = [m(x) for m in modules]
    failures = []

    def worker(k):
        try:
            for i in range(60):
                j = (i + k) % 3
                if i % 7 == 0:
                    out = modules[j](x.clone().requires_grad_())
                    out.sum().backward()
                    out = out.detach()
                else:
                    with torch.no_grad():
                        out = modules[j](x)
                if not torch.equal(out, expected[j]):
                    failures.append((k, i))
        except Exception as exc:  # noqa: BLE001 (reported below)
            failures.append(repr(exc))

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures[:5]
