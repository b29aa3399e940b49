"""convert_model: every SCSA (the authors' or ours) replaced in place, same outputs."""
import pytest
import torch
from torch import nn

from scsa_kernels import SCSA, convert_model

from authors_scsa import SCSA as AuthorsSCSA


class Block(nn.Module):
    def __init__(self, channels, attention):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.attention = attention

    def forward(self, x):
        return x + self.attention(torch.relu(self.conv(x)))


def small_model():
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        Block(16, AuthorsSCSA(16, 2, window_size=2)),
        Block(16, AuthorsSCSA(16, 4, window_size=-1, gate_layer="softmax", qkv_bias=True)),
        nn.Sequential(Block(16, AuthorsSCSA(16, 1, window_size=3, down_sample_mode="max_pool"))),
        Block(16, SCSA(16, 2, window_size=2, backend="reference")),
    )
    for p in model.parameters():
        p.data.add_(0.2 * torch.randn_like(p))
    return model.double().eval()


def test_convert_replaces_every_scsa_and_keeps_outputs(caplog):
    model = small_model()
    x = torch.randn(2, 3, 12, 12, dtype=torch.float64)
    before = model(x)
    with caplog.at_level("INFO", logger="scsa_kernels"):
        converted = convert_model(model, backend="reference")
    assert converted is model
    assert "replaced 4 SCSA" in caplog.text
    scsa_modules = [m for m in model.modules() if type(m).__name__ == "SCSA"]
    assert len(scsa_modules) == 4 and all(isinstance(m, SCSA) for m in scsa_modules)
    assert all(p.dtype == torch.float64 for p in model.parameters())
    assert not any(m.training for m in scsa_modules)
    torch.testing.assert_close(model(x), before, rtol=1e-12, atol=1e-12)


def test_convert_a_bare_module_returns_the_replacement():
    authors = AuthorsSCSA(8, 2, window_size=2).train()
    ours = convert_model(authors)
    assert isinstance(ours, SCSA) and ours.training and ours.config.head_num == 2


def test_convert_warns_when_nothing_to_replace():
    with pytest.warns(UserWarning, match="found no SCSA"):
        convert_model(nn.Linear(2, 2))


def test_converted_modules_hold_the_original_parameters():
    """The replacements take over the very Parameter objects (no copies): an optimizer made before the
    conversion updates the converted model, and no weight is held twice. Frozen stays frozen."""
    model = small_model().float().train()
    model[1].attention.q.weight.requires_grad_(False)
    before = list(model.parameters())
    frozen = model[1].attention.q.weight
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    convert_model(model, backend="auto")
    assert all(a is b for a, b in zip(model.parameters(), before)) and len(list(model.parameters())) == len(before)
    assert model[1].attention.q.weight is frozen and not frozen.requires_grad
    snapshot = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(2, 3, 12, 12)).square().mean().backward()
    optimizer.step()
    for p, s in zip(model.parameters(), snapshot):
        if p is frozen:
            assert p.grad is None and torch.equal(p, s)
        elif p.grad.abs().max() > 1e-6:  # (a global-pool softmax module's norm_h/norm_w biases get ~1e-20)
            assert not torch.equal(p, s), "the optimizer made before the conversion did not update it"
