"""scsa_kernels.backends: which backend runs where. The selection order is in test_module.py; here the
contexts no fused backend can run in (backends.context_reason): torch.func transforms, forward-mode
AD, ONNX export, TorchScript tracing. There ``backend="auto"`` runs the reference and a fused backend
asked for by name refuses with the reason.

The fused ops (C++ and Triton) have no functorch rules and no ONNX translation, and a TorchScript
trace of them would run only where this package is loaded. The exported ONNX graph is run by
onnxruntime, the saved and reloaded TorchScript module by torch, on fresh inputs with a batch size
other than the traced one.
"""
import contextlib
import io

import pytest
import torch

from fake_backends import install_backend
from scsa_kernels import SCSA, BackendUnavailableError, backends, info
from scsa_kernels.config import SCSAConfig
from scsa_kernels.testing import compare

OPTIONS = {
    "default": dict(),
    "heads_bias_maxpool_softmax": dict(head_num=2, qkv_bias=True, down_sample_mode="max_pool", gate_layer="softmax"),
    "recombination_odd_kernels": dict(down_sample_mode="recombination", head_num=4, group_kernel_sizes=(1, 3, 11, 5)),
    "global_pool": dict(window_size=-1),
}


@pytest.mark.parametrize("name", backends.BACKENDS)
def test_every_backends_ops_module_imports(name):
    """Each ops module imports on any machine, whatever is missing (triton, a GPU, the C++ build), and
    says so through unavailable_reason: ``backends.unavailable_reason`` turns an exception at import
    into "unavailable", so a bug there would otherwise pass as a skip of every test of that backend."""
    module = backends.load(name)
    assert module.NAME == name


def export_onnx(module, x, path, dynamo):
    """torch.onnx.export with a dynamic batch dimension (its progress lines silenced)."""
    if dynamo:
        kwargs = dict(dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    else:
        kwargs = dict(input_names=["x"], dynamic_axes={"x": {0: "batch"}})
    with contextlib.redirect_stdout(io.StringIO()):
        torch.onnx.export(module, (x,), str(path), dynamo=dynamo, **kwargs)


@pytest.mark.parametrize("dynamo", [True, False], ids=["dynamo", "torchscript"])
@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_onnx_export_with_auto_matches_the_module(tmp_path, name, dynamo):
    """The exported model computes what the module computes (auto: the C++ backend on this CPU),
    at another batch size and on inputs it never saw."""
    onnxruntime = pytest.importorskip("onnxruntime")  # the dev extra installs both (CI runs these tests)
    pytest.importorskip("onnxscript")  # the dynamo exporter's translator
    module = SCSA(32, **OPTIONS[name]).eval()
    export_onnx(module, torch.randn(2, 32, 15, 13), tmp_path / "scsa.onnx", dynamo)
    session = onnxruntime.InferenceSession(str(tmp_path / "scsa.onnx"))
    x = torch.randn(3, 32, 15, 13)
    (out,) = session.run(None, {session.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        expected = module(x)
    torch.testing.assert_close(torch.from_numpy(out), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", ["default", "recombination_odd_kernels"])
def test_torchscript_trace_with_auto_is_the_reference(tmp_path, name):
    """torch.jit.trace of a module whose parameters require grad (a training checkpoint): the trace
    passes torch's own check (it runs the module twice, once without grad, and compares the graphs:
    the fused eager path traced differently each time), holds only aten ops, and reloaded from a
    file computes what the module computes."""
    module = SCSA(32, **OPTIONS[name]).eval()
    traced = torch.jit.trace(module, torch.randn(2, 32, 15, 13))
    graph = str(traced.inlined_graph)
    assert "scsa_kernels::" not in graph and "prim::PythonOp" not in graph  # neither fused op nor autograd node
    torch.jit.save(traced, str(tmp_path / "scsa.pt"))
    x = torch.randn(3, 32, 15, 13)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.load(str(tmp_path / "scsa.pt"))(x), module(x), rtol=1e-5, atol=1e-6)


def test_torch_func_transforms_with_auto_match_autograd():
    """torch.func.grad of a functional_call (autograd.Function nodes without setup_context fail there)
    and per-sample gradients with vmap over it: what autograd gives for the module, sample by sample,
    by the tolerance rule (the float64 reference's per-sample gradients are the exact values; vmap runs
    the reference, the plain call the fused CPU kernels, so float32 rounding differs between them)."""
    from torch.func import functional_call, grad, vmap
    module = SCSA(16, window_size=3, head_num=2)
    exact_module = SCSA(16, window_size=3, head_num=2, backend="reference").double()
    exact_module.load_state_dict(module.state_dict())
    params = {name: p.detach() for name, p in module.named_parameters()}
    x = torch.randn(3, 16, 9, 9)

    def loss(params, x):
        return functional_call(module, params, (x,)).square().sum()

    per_sample = vmap(grad(loss), in_dims=(None, 0))(params, x.unsqueeze(1))
    for i in range(x.shape[0]):
        for m, sample in ((module, x[i:i + 1]), (exact_module, x[i:i + 1].double())):
            m.zero_grad()
            m(sample).square().sum().backward()
        for (name, p), exact in zip(module.named_parameters(), exact_module.parameters()):
            result = compare(name, per_sample[name][i], p.grad, exact.grad)
            assert result.ok, result


def test_forward_mode_ad_with_auto_matches_the_reference():
    """jvp of the module through torch.autograd.forward_ad (dual tensors) and torch.func.jvp: the
    reference module's (the fused eager node has no jvp)."""
    import torch.autograd.forward_ad as forward_ad
    from torch.func import jvp
    module = SCSA(16, window_size=3)
    reference = SCSA(16, window_size=3, backend="reference")
    reference.load_state_dict(module.state_dict())
    x, tangent = torch.randn(2, 16, 9, 9), torch.randn(2, 16, 9, 9)
    with forward_ad.dual_level():
        dual = forward_ad.unpack_dual(module(forward_ad.make_dual(x, tangent))).tangent
    _, expected = jvp(reference, (x,), (tangent,))
    torch.testing.assert_close(dual, expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(jvp(module, (x,), (tangent,))[1], expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("context,flags,message", [
    ("torch.func", [(torch._C, "_are_functorch_transforms_active")], "torch.func transforms"),
    ("forward_ad", [(torch.autograd.forward_ad, "_current_level", 0)], "forward-mode AD"),
    ("onnx_dynamo", [(torch.compiler, "is_exporting"), (torch.onnx, "is_in_onnx_export")], "no ONNX translation"),
    ("onnx_torchscript", [(torch.jit, "is_tracing"), (torch.onnx, "is_in_onnx_export")], "no ONNX translation"),
    ("torchscript", [(torch.jit, "is_tracing")], "torch.jit.trace is running"),
])
def test_fused_backends_are_ruled_out_in_these_contexts(monkeypatch, context, flags, message):
    """auto picks the reference there; a fused backend asked for by name raises, saying why. The
    flags each context sets (the ONNX exporters run under torch.export or torch.jit.trace)."""
    x, config = torch.randn(1, 8, 4, 4), SCSAConfig(8)
    fused = [name for name in backends.BACKENDS if name != "reference" and backends.unavailable_reason(name) is None]
    assert fused, "no fused backend available: nothing is ruled out"
    assert backends.auto_choice(x, config) != "reference"
    for owner, name, *value in flags:  # a function returning True, or the given value
        monkeypatch.setattr(owner, name, value[0] if value else lambda: True)
    assert backends.auto_choice(x, config) == "reference"
    for name in fused:
        with pytest.raises(BackendUnavailableError, match=message):
            backends.select(name, x, config, False)


def test_auto_passes_over_a_backend_with_an_auto_skip_reason(monkeypatch):
    """A backend that can run here but says why auto should not pick it (``auto_skip_reason``, e.g. the
    Triton kernels on ROCm): auto takes the next in its order, the backend asked for by name runs,
    and ``python -m scsa_kernels.info`` shows the reason and what auto picks instead."""
    x, config = torch.randn(1, 8, 4, 4), SCSAConfig(8)
    calls = []
    fake = install_backend(monkeypatch, "unvalidated", lambda *args: calls.append(args) or args[0])
    monkeypatch.setitem(backends.AUTO_ORDER, "cpu", ("unvalidated", "reference"))
    assert backends.auto_choice(x, config) == "unvalidated"
    fake.auto_skip_reason = lambda: "not run on this platform yet"
    assert backends.auto_choice(x, config) == "reference"
    SCSA(8, window_size=-1, backend="unvalidated")(x)
    assert len(calls) == 1
    report = info.report()
    assert "  unvalidated available (not run on this platform yet)" in report
    assert "cpu tensors -> reference" in report
