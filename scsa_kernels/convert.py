"""``convert_model``: swap every SCSA in a model (the authors' or ours) for ours, same weights."""
from __future__ import annotations

import logging
import warnings

import torch
from torch import nn

from .config import SCSAConfig
from .module import CONV_NAMES, SCSA

log = logging.getLogger("scsa_kernels")


def config_of(module: nn.Module) -> SCSAConfig:
    """Read the SCSA options off ``module`` (ours, or the authors' attribute layout)."""
    if isinstance(module, SCSA):
        return module.config
    return SCSAConfig(
        dim=module.dim, head_num=module.head_num, window_size=module.window_size,
        group_kernel_sizes=tuple(getattr(module, n).kernel_size[0] for n in CONV_NAMES),
        qkv_bias=module.q.bias is not None, down_sample_mode=module.down_sample_mode,
        attn_drop_ratio=module.attn_drop.p, gate_layer="softmax" if isinstance(module.sa_gate, nn.Softmax) else "sigmoid",
    )


def is_scsa(module: nn.Module) -> bool:
    """Ours, or any class named SCSA with the authors' parameter names."""
    if isinstance(module, SCSA):
        return True
    names = {n for n, _ in module.named_parameters()}
    return type(module).__name__ == "SCSA" and {f"{c}.weight" for c in CONV_NAMES} | {"q.weight", "norm.weight"} <= names


def replacement(module: nn.Module, backend: str) -> SCSA:
    """Our SCSA with ``module``'s options, holding ``module``'s very Parameter objects (assigned, not
    copied): an optimizer or EMA built before the conversion keeps updating the converted model,
    and no weight is held twice. Device, dtype and requires_grad come with them."""
    c = config_of(module)
    with torch.device("meta"):  # placeholders, replaced by module's parameters below
        new = SCSA(c.dim, c.head_num, c.window_size, c.group_kernel_sizes, c.qkv_bias,
                   c.down_sample_mode, c.attn_drop_ratio, c.gate_layer, backend=backend)
    frozen = [p for p in module.parameters() if not p.requires_grad]
    new.load_state_dict(module.state_dict(keep_vars=True), strict=True, assign=True)
    for p in frozen:  # assign=True gives each parameter the placeholder's requires_grad
        p.requires_grad_(False)
    return new.train(module.training)


def convert_model(model: nn.Module, backend: str = "auto") -> nn.Module:
    """Replace, in place, every SCSA submodule of ``model`` with ``scsa_kernels.SCSA``.

    Weights (the very Parameter objects, see ``replacement``), device, dtype and train/eval mode
    carry over. Returns ``model``; the number replaced is logged (logger "scsa_kernels", INFO) and a
    warning is issued when there was none. ``model`` itself, if an SCSA, is returned converted.
    """
    if is_scsa(model):
        return replacement(model, backend)
    targets = [(name, m) for name, m in model.named_modules() if name and is_scsa(m)]
    for name, module in targets:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, replacement(module, backend))
    if targets:
        log.info("convert_model: replaced %d SCSA module(s) with backend=%r", len(targets), backend)
    else:
        warnings.warn("convert_model: found no SCSA module to replace", stacklevel=2)
    return model
