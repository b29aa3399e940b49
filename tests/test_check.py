"""scsa-check: passes on the reference, fails on deliberately broken backends injected here."""
import pytest
import torch

from fake_backends import install_backend
from scsa_kernels import backends, check
from scsa_kernels.reference import scsa_reference


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny tensors: one thread is faster, and immune to OpenMP barrier stalls on a loaded machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` (a backward bug)."""

    @staticmethod
    def forward(ctx, t, scale):
        ctx.scale = scale
        return t.view_as(t)

    @staticmethod
    def backward(ctx, grad):
        return grad * ctx.scale, None


def output_off_by_1e3(x, weights, config, training):
    return scsa_reference(x, weights, config, training) * (1 + 1e-3)


def norm_weight_grad_off_by_1_percent(x, weights, config, training):
    return scsa_reference(x, weights._replace(norm_weight=ScaleGrad.apply(weights.norm_weight, 1.01)), config,
                          training)


def crashes(x, weights, config, training):
    raise RuntimeError("kernel launch failed")


def test_passes_on_the_reference(capsys):
    assert check.main(["--backend", "reference", "--quick", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "FAIL" not in out and "20 passed, 0 failed" in out


def test_default_checks_every_available_fused_backend(monkeypatch, capsys):
    monkeypatch.setattr(backends, "BACKENDS", ("reference", "unbuilt"))
    install_backend(monkeypatch, "unbuilt").unavailable_reason = lambda: "not built"
    install_backend(monkeypatch, "fake")
    assert check.main(["--quick", "--device", "cpu"]) == 0
    lines = capsys.readouterr().out.splitlines()
    fake = [l for l in lines if l.startswith("fake ")]
    assert len(fake) == 20 and all(" PASS " in l for l in fake)
    assert not any(l.startswith(("unbuilt", "reference")) for l in lines)


@pytest.mark.parametrize("broken, worst", [(output_off_by_1e3, "out"),
                                           (norm_weight_grad_off_by_1_percent, "grad norm.weight"),
                                           (crashes, "")])
def test_fails_on_a_broken_backend(monkeypatch, capsys, broken, worst):
    install_backend(monkeypatch, "broken", broken)
    assert check.main(["--backend", "broken", "--quick", "--device", "cpu"]) == 1
    out = capsys.readouterr().out
    failing = [l for l in out.splitlines() if " FAIL " in l]
    assert failing and all(worst in l for l in failing)
    assert any("float32" in l for l in failing)
    if broken is crashes:
        assert "kernel launch failed" in failing[0]


def test_skips_are_reported_and_nothing_run_is_a_failure(monkeypatch, capsys):
    fake = install_backend(monkeypatch, "fake")
    fake.unavailable_reason = lambda: "fake needs hardware we do not have"
    assert check.main(["--backend", "fake", "--quick", "--device", "cpu"]) == 1
    assert "fake needs hardware we do not have" in capsys.readouterr().out


def test_a_device_the_backend_cannot_take_is_one_skip_line(monkeypatch, capsys):
    fake = install_backend(monkeypatch, "fake")
    fake.unsupported_reason = lambda x, config, training: "CUDA tensors only" if x.device.type == "cpu" else None
    assert check.main(["--backend", "fake", "--backend", "reference", "--quick", "--device", "cpu"]) == 0
    skips = [l for l in capsys.readouterr().out.splitlines() if " SKIP " in l]
    assert len(skips) == 1 and "(all)" in skips[0] and "CUDA tensors only" in skips[0]


def test_a_fake_backend_replaces_a_cached_module_of_the_same_name(monkeypatch, capsys):
    """backends.load caches modules (main's _LOADED): a fake installed by one test must not be
    what the next test with the same backend name runs."""
    install_backend(monkeypatch, "broken", output_off_by_1e3)
    assert backends.load("broken").scsa is output_off_by_1e3
    monkeypatch.undo()
    assert "broken" not in getattr(backends, "_LOADED", {})
    install_backend(monkeypatch, "broken", crashes)
    assert backends.load("broken").scsa is crashes


TRAINING_CASE = next(c for c in check.CASES if c.training)


def kernel_masks_ignored(x, weights, config, training):
    """A backend whose dropout is torch's own, not the masks of the seed it drew (a dropout bug)."""
    from scsa_kernels.ops.dropout import attention_dropout_args
    attention_dropout_args(config, training, x.device)
    return scsa_reference(x, weights, config, training)


@pytest.mark.parametrize("backend, status", [("cpu", "PASS"), ("reference", "SKIP"), ("masks_ignored", "FAIL")])
def test_training_with_dropout_compares_against_the_kernels_masks(monkeypatch, backend, status):
    """The training case: the reference applies the masks of the seed the fused call drew, so a
    backend applying other masks fails; the reference itself has nothing to compare."""
    if backend == "cpu" and backends.unavailable_reason("cpu") is not None:
        pytest.skip(backends.unavailable_reason("cpu"))
    install_backend(monkeypatch, "masks_ignored", kernel_masks_ignored)
    result = check.check_one(backend, TRAINING_CASE, torch.float32, "contiguous", "cpu")
    assert result.status == status, result


def test_permuted_layout_is_not_contiguous():
    x = check.make_input((2, 16, 5, 7), torch.float32, "cpu", "permuted")
    assert x.shape == (2, 16, 5, 7) and not x.is_contiguous() and not x.is_contiguous(
        memory_format=torch.channels_last)


@pytest.mark.parametrize("name", ["auto", "nonesuch"])
def test_backend_not_in_the_registry_is_a_usage_error(capsys, name):
    """--backend takes the registry's concrete backends: "auto" is no backend to check, and an unknown
    name is argparse's usage error (exit status 2), not a traceback."""
    with pytest.raises(SystemExit) as exit_info:
        check.main(["--backend", name])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "invalid choice" in err and repr(name) in err
