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
