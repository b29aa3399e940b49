"""The C++ CPU backend (csrc/cpu, scsa_kernels/ops/cpu.py) against the reference.

Every comparison uses the tolerance rule of scsa_kernels.testing (error of the fused
result <= 2x the reference's own error in that dtype + a small floor, both measured
against the reference in float64), on fresh random inputs per test.
"""
import subprocess
import sys

import pytest
from hypothesis import given, settings
import torch
from torch import nn

from conftest import (AUTOCAST_MODES, DOMINATED_SOFTMAX_CASES, autocast_differences, dominated_softmax_errors,
                      single_channel_group_bias_grads)
from strategies import random_cases
from scsa_kernels import SCSA, BackendUnavailableError, SCSAConfig, scsa
from scsa_kernels import backends
from scsa_kernels.ops import cpu as cpu_backend
from scsa_kernels.reference import scsa_reference
from scsa_kernels.testing import compare_backend, random_weights
from scsa_kernels.weights import conv_d_matrix, pack_weights

needs_ext = pytest.mark.skipif(cpu_backend.unavailable_reason() is not None,
                               reason=f"{cpu_backend.unavailable_reason()} (test_extension_is_built fails)")


def assert_matches(results):
    bad = [f"{r.name}: error {r.error:.3g} > bound {r.bound:.3g}" for r in results if not r.ok]
    assert not bad, "\n".join(bad)


def test_extension_is_built():
    assert cpu_backend.unavailable_reason() is None


# (config kwargs, input shape): every SPEC option the CPU kernels implement, odd shapes.
CONFIGS = [
    pytest.param(dict(), (2, 16, 14, 14), id="default"),
    pytest.param(dict(), (3, 8, 23, 17), id="default-remainder"),
    pytest.param(dict(head_num=2, qkv_bias=True), (2, 16, 15, 9), id="heads2-qkvbias"),
    pytest.param(dict(head_num=4, window_size=3), (2, 16, 10, 11), id="heads4-ws3"),
    pytest.param(dict(down_sample_mode="max_pool"), (2, 8, 15, 22), id="maxpool"),
    pytest.param(dict(down_sample_mode="max_pool", window_size=2, head_num=2), (2, 8, 9, 7), id="maxpool-ws2"),
    pytest.param(dict(window_size=-1), (2, 8, 5, 6), id="global"),
    pytest.param(dict(window_size=-1, down_sample_mode="max_pool"), (2, 8, 7, 3), id="global-maxmode"),
    pytest.param(dict(window_size=-1, down_sample_mode="recombination"), (1, 8, 4, 5), id="global-recombmode"),
    # recombination: cells (space-to-depth) projected by conv_d; rows and columns past the last window
    pytest.param(dict(down_sample_mode="recombination", window_size=3, head_num=2), (2, 16, 10, 11),
                 id="recombination-ws3-remainder"),
    pytest.param(dict(down_sample_mode="recombination", window_size=2, gate_layer="softmax", qkv_bias=True),
                 (1, 8, 7, 6), id="recombination-ws2-softmax"),
    pytest.param(dict(down_sample_mode="recombination", window_size=1), (2, 8, 3, 4), id="recombination-ws1"),
    pytest.param(dict(gate_layer="softmax"), (2, 16, 14, 13), id="softmax-gate"),
    pytest.param(dict(gate_layer="softmax", head_num=2, down_sample_mode="max_pool", qkv_bias=True),
                 (2, 16, 12, 12), id="softmax-max-heads-bias"),
    pytest.param(dict(group_kernel_sizes=(1, 3, 11, 5), window_size=3), (2, 8, 9, 10), id="kernels-1-3-11-5"),
    pytest.param(dict(group_kernel_sizes=(3, 3, 3, 3), window_size=1), (1, 4, 3, 5), id="ws1-tiny"),
    pytest.param(dict(group_kernel_sizes=(13, 9, 7, 1)), (2, 8, 7, 30), id="kernels-longer-than-H"),
    pytest.param(dict(attn_drop_ratio=0.1), (2, 8, 14, 14), id="dropout-eval"),
    # one pooled position (the single-position softmax), d = 44 and 22: vector lanes and tails
    pytest.param(dict(), (2, 44, 7, 9), id="one-position-d44"),
    pytest.param(dict(head_num=2, gate_layer="softmax"), (3, 44, 8, 10), id="one-position-heads2-d22"),
]


@needs_ext
@pytest.mark.parametrize("kwargs,shape", CONFIGS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_matches_reference(kwargs, shape, dtype):
    config = SCSAConfig(dim=shape[1], **kwargs)
    x = torch.randn(shape, dtype=dtype)
    assert_matches(compare_backend("cpu", x, random_weights(config, dtype=dtype), config))


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("kwargs", [dict(), dict(head_num=2, down_sample_mode="max_pool", gate_layer="softmax"),
                                    dict(down_sample_mode="recombination", window_size=3)],
                         ids=["default", "max-softmax-heads", "recombination"])
def test_reduced_precision(dtype, kwargs):
    config = SCSAConfig(dim=16, **kwargs)
    x = torch.randn(2, 16, 15, 17).to(dtype)
    assert_matches(compare_backend("cpu", x, random_weights(config), config))


def _layouts(dtype):
    base = lambda *s: torch.randn(*s).to(dtype)
    return {
        "channels_last": lambda: base(2, 16, 15, 13).to(memory_format=torch.channels_last),
        "sliced": lambda: base(3, 20, 19, 25)[1:, 2:18, 1:-2, ::2],
        "hw-transposed": lambda: base(2, 16, 13, 15).transpose(2, 3),
        "channels_last-sliced": lambda: base(2, 16, 16, 16).to(memory_format=torch.channels_last)[:, :, 1:, :15],
    }


@needs_ext
@pytest.mark.parametrize("layout", list(_layouts(torch.float32)))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_strided_inputs(layout, dtype):
    x = _layouts(dtype)[layout]()
    assert not x.is_contiguous()
    config = SCSAConfig(dim=16, head_num=2, down_sample_mode="max_pool" if layout == "sliced" else "avg_pool")
    # compare_backend also checks that the output keeps the reference's (= x's) memory format
    assert_matches(compare_backend("cpu", x, random_weights(config), config,
                                   grad_out=torch.randn(x.shape, dtype=torch.float64).transpose(0, 1).contiguous()
                                   .transpose(0, 1)))


@needs_ext
def test_size_one_dimension_with_any_stride():
    """H = 1 in a permuted tensor: the size-1 dimension's stride is not the reference's (an elementwise
    result renormalizes it), the memory layout is the same; compare_backend must accept it."""
    x = torch.randn(1, 2, 11, 16).permute(1, 3, 0, 2)
    config = SCSAConfig(dim=16, window_size=-1, down_sample_mode="max_pool", gate_layer="softmax")
    assert x.stride(2) != scsa_reference(x, random_weights(config), config).stride(2)
    assert_matches(compare_backend("cpu", x, random_weights(config), config))


@needs_ext
@pytest.mark.parametrize("mode", ["avg_pool", "max_pool", "recombination"])
def test_every_element_is_written_before_it_is_read(mode):
    """Results do not depend on what the allocator hands out: with torch's deterministic fill every
    allocation (the kernels' outputs and scratch buffers, at::empty in csrc/) starts as NaN, and the
    forward and every gradient are bitwise those of a run without it; the output keeps x's format."""
    config = SCSAConfig(dim=8, window_size=3, down_sample_mode=mode)
    w = random_weights(config).map(lambda t: t.requires_grad_())
    x = torch.randn(2, 8, 9, 9).to(memory_format=torch.channels_last).requires_grad_()
    grad_out = torch.randn(x.shape)

    def forward_backward():
        out = scsa(x, w, config, backend="cpu")
        return [out, *torch.autograd.grad(out, [x, *w.tensors()], grad_out)]

    plain = forward_backward()
    fill = torch.utils.deterministic.fill_uninitialized_memory
    torch.use_deterministic_algorithms(True)
    torch.utils.deterministic.fill_uninitialized_memory = True
    try:
        assert torch.isnan(torch.empty(4)).all(), "the deterministic fill is off: nothing would be poisoned"
        poisoned = forward_backward()
    finally:
        torch.use_deterministic_algorithms(False)
        torch.utils.deterministic.fill_uninitialized_memory = fill
    for a, b in zip(plain, poisoned):
        assert torch.equal(a, b)
    assert poisoned[0].is_contiguous(memory_format=torch.channels_last)


@needs_ext
def test_gradcheck_float64():
    config = SCSAConfig(dim=8, head_num=2, qkv_bias=True, window_size=3, group_kernel_sizes=(1, 3, 5, 7))
    weights = random_weights(config, dtype=torch.float64).map(lambda t: t.requires_grad_())
    x = torch.randn(2, 8, 7, 8, dtype=torch.float64, requires_grad=True)
    names = weights.names()

    def fn(x, *flat):
        w = weights.map(lambda t: flat[[id(u) for u in weights.tensors()].index(id(t))])
        return scsa(x, w, config, backend="cpu")

    assert len(names) == len(weights.tensors())
    assert torch.autograd.gradcheck(fn, (x, *weights.tensors()), eps=1e-6, atol=1e-7)


@needs_ext
@pytest.mark.parametrize("kwargs", [dict(down_sample_mode="max_pool", gate_layer="softmax"), dict(window_size=-1)],
                         ids=["max-softmax", "global"])
def test_gradcheck_float64_options(kwargs):
    config = SCSAConfig(dim=8, window_size=kwargs.pop("window_size", 3), **kwargs)
    w = random_weights(config, dtype=torch.float64)
    packed = [t.detach().requires_grad_() for t in pack_weights(w, config, dtype=torch.float64)]
    x = torch.randn(1, 8, 7, 6, dtype=torch.float64, requires_grad=True)
    options = config.kernel_options
    fn = lambda x, *p: torch.ops.scsa_kernels.scsa_forward(x, *p, *options)[0]
    assert torch.autograd.gradcheck(fn, (x, *packed), eps=1e-6, atol=1e-7)


def _op_args(config, shape, dtype=torch.float32, requires_grad=False, channels_last=False, dropout_p=0.0):
    from scsa_kernels.reference import compute_dtype
    x = torch.randn(shape, dtype=dtype)
    if channels_last:
        x = x.to(memory_format=torch.channels_last)
    weights = random_weights(config)
    packed = [t.detach() for t in pack_weights(weights, config, dtype=compute_dtype(dtype))]
    conv_d = conv_d_matrix(weights, config)
    if requires_grad:
        x.requires_grad_()
        packed = [t.requires_grad_() for t in packed]
    extra = ()  # (dropout_p, dropout_seed, conv_d), as far as the case needs them
    if dropout_p or conv_d is not None:
        extra = (dropout_p, torch.randint(2 ** 62, (1,)) if dropout_p else None)
    if conv_d is not None:
        extra += (conv_d.detach().requires_grad_(requires_grad),)
    return (x, *packed, *config.kernel_options, *extra)


OPCHECK_CASES = [
    pytest.param(dict(), (2, 8, 9, 10), {}, id="default"),
    pytest.param(dict(down_sample_mode="max_pool", head_num=2, gate_layer="softmax"), (2, 8, 9, 10), {},
                 id="max-softmax"),
    pytest.param(dict(window_size=-1), (1, 8, 5, 6), dict(channels_last=True), id="global-cl"),
    pytest.param(dict(), (2, 8, 9, 10), dict(dtype=torch.bfloat16), id="bf16"),
    pytest.param(dict(head_num=2), (2, 8, 9, 10), dict(dropout_p=0.3), id="dropout"),
    pytest.param(dict(down_sample_mode="recombination", window_size=2), (2, 8, 5, 7), {}, id="recombination"),
]


@needs_ext
@pytest.mark.parametrize("kwargs,shape,extra", OPCHECK_CASES)
@pytest.mark.parametrize("requires_grad", [False, True])
def test_opcheck_forward(kwargs, shape, extra, requires_grad):
    config = SCSAConfig(dim=shape[1], window_size=kwargs.pop("window_size", 3), **kwargs)
    args = _op_args(config, shape, requires_grad=requires_grad, **extra)
    torch.library.opcheck(torch.ops.scsa_kernels.scsa_forward.default, args)


@needs_ext
@pytest.mark.parametrize("kwargs,shape,extra", OPCHECK_CASES)
def test_opcheck_backward(kwargs, shape, extra):
    config = SCSAConfig(dim=shape[1], window_size=kwargs.pop("window_size", 3), **kwargs)
    args = _op_args(config, shape, **extra)
    x, weights, options = args[0], args[1:11], args[11:]  # head_num ... softmax_gate (, dropout_p, seed)
    saved = torch.ops.scsa_kernels.scsa_forward(*args)[1:]
    grad_out = torch.randn_like(x)
    torch.library.opcheck(torch.ops.scsa_kernels.scsa_backward.default, (grad_out, x, *weights, *saved, *options))


@needs_ext
def test_op_rejects_bad_arguments():
    config = SCSAConfig(dim=8)
    args = list(_op_args(config, (1, 8, 9, 9)))
    bad_dtype = list(args)
    bad_dtype[1] = bad_dtype[1].double()
    with pytest.raises(RuntimeError, match="conv_weight must be Float"):
        torch.ops.scsa_kernels.scsa_forward(*bad_dtype)
    bad_heads = list(args)
    bad_heads[11] = 3
    with pytest.raises(RuntimeError, match="head_num must divide channels"):
        torch.ops.scsa_kernels.scsa_forward(*bad_heads)
    bad_shape = list(args)
    bad_shape[9] = bad_shape[9][:2]
    with pytest.raises(RuntimeError, match="qkv_weight must have shape"):
        torch.ops.scsa_kernels.scsa_forward(*bad_shape)


@needs_ext
@pytest.mark.parametrize("index", [-1, -9, 81], ids=["minus_one", "minus_w", "plane_size"])
def test_backward_op_rejects_an_argmax_outside_the_plane(index):
    """The backward writes each max-pool window's gradient at its saved argmax (h*W + w): a caller's
    index outside [0, H*W) is refused before any kernel runs (-1 wrote before a row buffer: a heap
    corruption), an index inside the plane is accepted."""
    config = SCSAConfig(dim=8, window_size=3, down_sample_mode="max_pool")
    args = _op_args(config, (1, 8, 9, 9))
    x, weights, options = args[0], args[1:11], args[11:]
    saved = list(torch.ops.scsa_kernels.scsa_forward(*args)[1:])
    grad_out = torch.randn_like(x)
    saved[5] = saved[5].clone()  # argmax (B, C, N) of flat indices into the 9x9 plane
    saved[5][0, 3, 1] = 80
    torch.ops.scsa_kernels.scsa_backward(grad_out, x, *weights, *saved, *options)
    saved[5][0, 3, 1] = index
    with pytest.raises(RuntimeError, match=r"saved argmax must hold in-plane indices h\*W \+ w in \[0, 81\)"):
        torch.ops.scsa_kernels.scsa_backward(grad_out, x, *weights, *saved, *options)


class TinyNet(nn.Module):
    def __init__(self, **scsa_kwargs):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, padding=1)
        self.attn = SCSA(16, backend="cpu", **scsa_kwargs)
        self.head = nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.head(torch.relu(self.attn(self.conv(x))))


@needs_ext
@pytest.mark.parametrize("kwargs", [dict(head_num=2), dict(down_sample_mode="max_pool", gate_layer="softmax"),
                                    dict(down_sample_mode="recombination", window_size=3)],
                         ids=["avg", "max-softmax", "recombination"])
def test_torch_compile_fullgraph(kwargs):
    torch._dynamo.reset()
    model = TinyNet(**kwargs)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 14, 15, requires_grad=True)
    out_eager = model(x)
    grads_eager = torch.autograd.grad(out_eager.square().sum(), [x, *model.parameters()])
    out_compiled = compiled(x)
    grads_compiled = torch.autograd.grad(out_compiled.square().sum(), [x, *model.parameters()])
    torch.testing.assert_close(out_compiled, out_eager, rtol=1e-5, atol=1e-5)
    for a, b in zip(grads_compiled, grads_eager):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@needs_ext
def test_torch_compile_fullgraph_with_attention_dropout():
    """The seed is drawn inside the graph (Inductor's RNG, not eager's stream): a seeded compiled
    training step repeats exactly, and dropout changes the output."""
    torch._dynamo.reset()
    model = TinyNet(attn_drop_ratio=0.3)
    compiled = torch.compile(model, fullgraph=True)
    x = torch.randn(2, 3, 14, 15, requires_grad=True)
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        out = compiled(x)
        runs.append([out, *torch.autograd.grad(out.square().sum(), [x, *model.parameters()])])
    assert all(torch.equal(a, b) and torch.isfinite(a).all() for a, b in zip(*runs))
    with torch.no_grad():
        assert not torch.allclose(runs[0][0], model.eval()(x))


@needs_ext
@pytest.mark.parametrize("kwargs", [dict(head_num=2, qkv_bias=True), dict(down_sample_mode="max_pool",
                                                                            gate_layer="softmax"),
                                    dict(down_sample_mode="recombination", window_size=5)],
                         ids=["avg", "max-softmax", "recombination"])
def test_thread_count_independent(kwargs):
    """Every reduction of the kernels runs inside one task in a fixed order: 1 and 2 threads agree
    bitwise. With 3 samples, 1 thread runs the passes sample by sample and 2 threads stage by stage
    (csrc/cpu/schedule.h), so this also compares the two schedules. Recombination's GEMMs are
    ATen's (MKL), whose summation order may depend on the thread count: bitwise equal on the AMD
    EPYC VMs, not on an Intel Xeon one (2026-11-27); there the results agree to float32 rounding."""
    config = SCSAConfig(dim=32, **kwargs)
    w = random_weights(config)
    x = torch.randn(3, 32, 21, 19)
    g = torch.randn_like(x)

    def run(threads):
        previous = torch.get_num_threads()
        torch.set_num_threads(threads)
        try:
            xx = x.clone().requires_grad_()
            ww = w.map(lambda t: t.clone().requires_grad_())
            out = scsa(xx, ww, config, backend="cpu")
            return [out, *torch.autograd.grad(out, [xx, *ww.tensors()], g)]
        finally:
            torch.set_num_threads(previous)

    for a, b in zip(run(1), run(2)):
        if config.uses_conv_d:
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)  # sums of C*ws*ws (800) products
        else:
            assert torch.equal(a, b)


@needs_ext
@pytest.mark.parametrize("qkv_bias", [False, True])
def test_eager_training_call_is_one_node_matching_the_registered_op(qkv_bias):
    """Eager training calls skip the op's Python autograd wrapper and the packing nodes (one
    autograd.Function, ops/eager.py); gradients equal the registered op's bitwise."""
    config = SCSAConfig(dim=16, head_num=2, qkv_bias=qkv_bias)
    w = random_weights(config).map(lambda t: t.requires_grad_())
    x = torch.randn(2, 16, 11, 9, requires_grad=True)
    g = torch.randn_like(x)
    out = scsa(x, w, config, backend="cpu")
    assert all(type(n).__name__ == "AccumulateGrad" for n, _ in out.grad_fn.next_functions)
    leaves = [x, *w.tensors()]
    fused = torch.autograd.grad(out, leaves, g)
    out_op = torch.ops.scsa_kernels.scsa_forward(x, *pack_weights(w, config), *config.kernel_options)[0]
    registered = torch.autograd.grad(out_op, leaves, g)
    assert torch.equal(out, out_op)
    for a, b in zip(fused, registered):
        assert torch.equal(a, b)


@needs_ext
def test_auto_picks_cpu_for_supported_configs():
    x = torch.randn(1, 8, 7, 7)
    assert backends.auto_choice(x, SCSAConfig(dim=8)) == "cpu"
    for training in (False, True):
        assert backends.auto_choice(x, SCSAConfig(dim=8, attn_drop_ratio=0.2), training=training) == "cpu"


DROPOUT_CASES = {  # config, x shape, dtype
    "heads_softmax": (SCSAConfig(16, head_num=2, window_size=3, attn_drop_ratio=0.3, gate_layer="softmax"),
                      (2, 16, 7, 8), torch.float32),
    "one_position": (SCSAConfig(32, window_size=-1, attn_drop_ratio=0.5, qkv_bias=True), (2, 32, 5, 6),
                     torch.float32),  # N == 1: scores recomputed in the exp pass
    "float64_max_pool": (SCSAConfig(16, head_num=4, window_size=2, down_sample_mode="max_pool", attn_drop_ratio=0.2),
                         (1, 16, 6, 6), torch.float64),
    "bfloat16_row_tail": (SCSAConfig(20, window_size=3, attn_drop_ratio=0.1), (2, 20, 6, 7), torch.bfloat16),
    "recombination": (SCSAConfig(16, head_num=2, window_size=2, attn_drop_ratio=0.3, down_sample_mode="recombination"),
                      (2, 16, 5, 6), torch.float32),
    # rows past 32 weights draw 24 Philox counters per call: rows of 100, and of 38 (rows start mid-counter)
    "long_rows": (SCSAConfig(100, window_size=3, attn_drop_ratio=0.3), (2, 100, 6, 7), torch.float32),
    "long_rows_unaligned": (SCSAConfig(76, head_num=2, window_size=3, attn_drop_ratio=0.3), (2, 76, 6, 6),
                            torch.float32),
}


@needs_ext
@pytest.mark.parametrize("name", sorted(DROPOUT_CASES))
def test_attention_dropout_draws_the_triton_kernels_masks(name):
    """Training with attn_drop_ratio > 0: forward and every gradient match the reference applying the
    masks ops.dropout.attention_dropout_masks gives for the seed the call drew (the Triton kernels'
    masks, test_triton_ops checks): the C++ Philox is Triton's, bit for bit."""
    config, shape, dtype = DROPOUT_CASES[name]
    x = torch.randn(shape, dtype=dtype)
    assert_matches(compare_backend("cpu", x, random_weights(config, dtype=dtype), config, training=True))


@needs_ext
def test_attention_dropout_is_seeded_by_torch():
    module = SCSA(16, head_num=2, window_size=3, attn_drop_ratio=0.4, backend="cpu")
    x = torch.randn(2, 16, 7, 7, requires_grad=True)
    runs = []
    for manual_seed in (0, 0, 1):
        torch.manual_seed(manual_seed)
        module.zero_grad()
        x.grad = None
        out = module(x)
        out.square().sum().backward()
        runs.append([out.detach(), x.grad] + [p.grad for p in module.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(runs[0], runs[1]))
    assert not torch.equal(runs[0][0], runs[2][0])
    module.eval()
    with torch.no_grad():
        torch.testing.assert_close(module(x), scsa(x, module.weights(), module.config, backend="reference"))


@needs_ext
@pytest.mark.parametrize("options", [dict(down_sample_mode="recombination", window_size=3),
                                     dict(attn_drop_ratio=0.2, down_sample_mode="recombination", window_size=3)],
                         ids=["recombination", "recombination-dropout"])
def test_every_option_is_supported_on_cpu_tensors(options):
    config = SCSAConfig(dim=8, **options)
    x = torch.randn(2, 8, 9, 9)
    for training in (False, True):
        assert backends.why_not("cpu", x, config, training) is None
    assert backends.auto_choice(x, config, True) == "cpu"
    reason = backends.why_not("cpu", x.to("meta"), config, False)
    assert reason is not None and "CPU tensors" in reason
    with pytest.raises(BackendUnavailableError, match="CPU tensors"):
        scsa(x.to("meta"), random_weights(config, device="meta"), config, backend="cpu")


@needs_ext
@pytest.mark.parametrize("layout", ["channels_last", "sliced"])
def test_recombination_strided_inputs(layout):
    config = SCSAConfig(dim=16, head_num=2, window_size=3, down_sample_mode="recombination")
    if layout == "channels_last":
        x = torch.randn(2, 16, 10, 9).to(memory_format=torch.channels_last)
    else:
        x = torch.randn(2, 20, 13, 12)[:, 2:18, 1:-1, ::1][..., 1:]
    assert_matches(compare_backend("cpu", x, random_weights(config), config))


@needs_ext
def test_empty_batch():
    config = SCSAConfig(dim=8)
    assert scsa(torch.randn(0, 8, 9, 9), random_weights(config), config, backend="cpu").shape == (0, 8, 9, 9)


@needs_ext
@pytest.mark.parametrize("mode", ["avg_pool", "max_pool", "recombination"])
def test_nonfinite_inputs_match_the_reference(mode):
    """A NaN in one sample and an Inf in another reach exactly the outputs and gradients they reach
    in the reference (every value of those samples), and nothing of the finite sample."""
    config = SCSAConfig(8, window_size=3, down_sample_mode=mode)
    x = torch.randn(3, 8, 9, 9)
    x[1, 2, 4, 5] = float("nan")
    x[2, 0, 0, 0] = float("inf")
    assert_matches(compare_backend("cpu", x, random_weights(config), config))


def test_missing_extension_gives_a_clear_reason():
    code = (
        "import sys; sys.modules['scsa_kernels._C'] = None\n"
        "import torch, scsa_kernels as s\n"
        "from scsa_kernels import backends\n"
        "from scsa_kernels.testing import random_weights\n"
        "r = backends.unavailable_reason('cpu'); assert r and 'scsa_kernels._C' in r, r\n"
        "c = s.SCSAConfig(dim=8); x = torch.randn(1, 8, 7, 7)\n"
        "assert backends.auto_choice(x, c) == 'reference'\n"
        "try:\n"
        "    s.scsa(x, random_weights(c), c, backend='cpu')\n"
        "except s.BackendUnavailableError as e:\n"
        "    assert 'pip install' in str(e), e; print('clear error')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "clear error" in result.stdout


@needs_ext
def test_inference_call_goes_below_autograd_and_matches_the_registered_op():
    """Inference calls (grad mode off, or nothing requires grad) skip the op's Python autograd
    layer: no graph, the registered op's result bitwise, and x.requires_grad under no_grad is fine."""
    config = SCSAConfig(dim=16, head_num=2)
    w = random_weights(config)
    x = torch.randn(2, 16, 11, 9)
    expected = torch.ops.scsa_kernels.scsa_forward(x, *pack_weights(w, config), *config.kernel_options)[0]
    out = scsa(x, w, config, backend="cpu")  # grad mode on, no input requires grad
    assert out.grad_fn is None and not out.requires_grad
    assert torch.equal(out, expected)
    with torch.no_grad():
        out = scsa(x.clone().requires_grad_(), w, config, backend="cpu")
    assert out.grad_fn is None and torch.equal(out, expected)


@needs_ext
def test_inference_pack_cache_sees_weight_updates():
    """Inference reuses packed weights; every kind of weight update must invalidate them."""
    module = SCSA(16, head_num=2, qkv_bias=True, backend="cpu").eval()
    x = torch.randn(2, 16, 14, 14)

    def check():
        with torch.no_grad():
            torch.testing.assert_close(module(x), scsa_reference(x, module.weights(), module.config))

    check()
    with torch.no_grad():
        module.q.weight.mul_(-2.0)          # in place: version counter
        module.norm_h.bias.add_(0.5)
    check()
    module.local_dwc.weight.data = torch.randn_like(module.local_dwc.weight)  # new storage
    check()
    module.load_state_dict({k: torch.randn_like(v) for k, v in module.state_dict().items()})
    check()
    for _ in range(3):  # fresh modules may reuse ids and memory of freed ones
        module = SCSA(16, head_num=2, qkv_bias=True, backend="cpu").eval()
        with torch.no_grad():
            for prm in module.parameters():
                prm.copy_(torch.randn_like(prm))
        check()
        del module
        module = SCSA(16, head_num=2, qkv_bias=True, backend="cpu").eval()
    # with autograd on, weights get gradients (no cache)
    out = module(x)
    out.sum().backward()
    assert all(prm.grad is not None for prm in module.parameters())


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("dim,mode,hw", [(40, "max_pool", (17, 15)), (44, "avg_pool", (17, 15)),
                                         (24, "avg_pool", (40, 33))])
def test_channels_last_matches_nchw_bitwise(dtype, dim, mode, hw):
    """Strided layouts are swept in channel tiles (by 8x8 transposes, bfloat16 converted on the
    way; 44 channels leave a tile of 12 for the plain loops; small planes move whole, 40x33 row
    by row), but every plane sees its rows in the same order as in NCHW, so results agree
    bitwise (output and every gradient)."""
    config = SCSAConfig(dim=dim, head_num=2, down_sample_mode=mode)
    w = random_weights(config)
    x = torch.randn(3, dim, *hw).to(dtype)
    g = torch.randn_like(x)

    def run(xx, gg):
        xx = xx.clone().requires_grad_()
        ww = w.map(lambda t: t.clone().requires_grad_())
        out = scsa(xx, ww, config, backend="cpu")
        return [out, *torch.autograd.grad(out, [xx, *ww.tensors()], gg)]

    cl = lambda t: t.contiguous(memory_format=torch.channels_last)
    for a, b in zip(run(x, g), run(cl(x), cl(g))):
        assert torch.equal(a, b)


@needs_ext
@pytest.mark.slow
@pytest.mark.skipif(not __import__("os").environ.get("SCSA_RUN_HUGE"),
                    reason="needs ~9 GB of memory; set SCSA_RUN_HUGE=1 to run")
def test_more_than_2_31_elements():
    """64-bit indexing: a float16 input of more than 2**31 elements; checks the last plane's
    means and output against values computed directly from x."""
    config = SCSAConfig(dim=4, window_size=-1)
    w = random_weights(config)
    height, width = 23171, 23171  # 4 * 23171**2 = 2.15e9 > 2**31
    x = torch.empty(1, 4, height, width, dtype=torch.float16).uniform_(-1, 1)
    assert x.numel() > 2 ** 31
    packed = pack_weights(w, config)
    out, x_h, x_w, a_h, a_w, _, _, _, _, ca = torch.ops.scsa_kernels.scsa_forward(x, *packed,
                                                                                *config.kernel_options)
    last = x[0, 3]
    torch.testing.assert_close(x_h[0, 3, -5:], last[-5:].float().mean(dim=1), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(x_w[0, 3, -5:], last[:, -5:].float().mean(dim=0), rtol=1e-4, atol=1e-6)
    expected = last[-3:, -3:].float() * a_h[0, 3, -3:, None] * a_w[0, 3, None, -3:] * ca[0, 3]
    torch.testing.assert_close(out[0, 3, -3:, -3:].float(), expected, rtol=2e-3, atol=1e-5)


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_single_channel_groups_cancel_the_conv_bias(dtype):
    """The conv bias gradients that are exactly 0 stay at rounding level (see the helper)."""
    largest = single_channel_group_bias_grads("cpu", dtype, draws=20)
    assert max(largest.values()) < 1e-9, largest


@needs_ext
@pytest.mark.parametrize("case", sorted(DOMINATED_SOFTMAX_CASES))
def test_dominated_softmax_rows_keep_the_q_k_gradients_accurate(case):
    """Where one attention weight dominates a row (conftest.DOMINATED_SOFTMAX_CASES: 100 pooled
    positions, and one, where the backward finds the top column from k's extremes), the q and k weight
    gradients stay within twice the float32 reference's own error (the tolerance rule without its floor)."""
    for name, (fused, reference) in dominated_softmax_errors("cpu", case=case).items():
        assert fused <= 2 * reference, (name, fused, reference)


@needs_ext
@pytest.mark.parametrize("mode", AUTOCAST_MODES)
@pytest.mark.parametrize("x_dtype", [torch.float32, torch.bfloat16])
def test_autocast_changes_nothing(mode, x_dtype):
    assert autocast_differences("cpu", mode, x_dtype) == []


@needs_ext
@settings(max_examples=100, deadline=None, database=None)
@given(case=random_cases(dtypes=(torch.float32, torch.float64, torch.bfloat16)))
def test_random_configs_match_reference(case):
    """Property: for any valid config, shape, dtype and layout, forward and every gradient match the
    reference (a random search over the option space, beside the hand-picked cases above)."""
    config, x, weights, grad_out = case
    assert_matches(compare_backend("cpu", x, weights, config, grad_out=grad_out))
