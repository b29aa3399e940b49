"""Benchmark shapes: the DESIGN.md list ("Measuring speed") and ``--shape B,C,H,W`` parsing."""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch


@dataclass(frozen=True)
class Shape:
    """One SCSA input, x of shape (batch, channels, height, width); ``source`` says where it occurs."""

    batch: int
    channels: int
    height: int
    width: int
    source: str = "custom"

    @property
    def dims(self) -> Tuple[int, int, int, int]:
        return self.batch, self.channels, self.height, self.width

    @property
    def numel(self) -> int:
        return self.batch * self.channels * self.height * self.width

    def __str__(self) -> str:
        return "x".join(map(str, self.dims))


# Feature maps (C, H, W) where SCSA sits in the models of SPEC.md, at their usual input sizes.
FEATURE_MAPS = {
    "resnet50": ((64, 56, 56), (128, 28, 28), (256, 14, 14), (512, 7, 7)),  # bottleneck mid channels, 224 input
    "mobilenetv2": ((96, 112, 112), (144, 56, 56), (192, 28, 28), (384, 14, 14), (960, 7, 7)),  # hidden dims
    "yolo640": ((128, 80, 80), (256, 40, 40), (512, 20, 20)),  # neck maps at 640 input
}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
          "float64": torch.float64}


def feature_map_shapes(batch: int, models: Sequence[str] = tuple(FEATURE_MAPS)) -> List[Shape]:
    """Every feature map of ``models`` at batch ``batch``, in FEATURE_MAPS order."""
    return [Shape(batch, c, h, w, model) for model in models for c, h, w in FEATURE_MAPS[model]]


def parse_shape(text: str) -> Shape:
    """"B,C,H,W" (or "BxCxHxW") -> Shape; ValueError naming the rule otherwise."""
    parts = [p for p in re.split(r"[,x\s]+", text.strip()) if p]
    if len(parts) != 4 or not all(p.isdigit() for p in parts):
        raise ValueError(f"--shape must be four positive integers B,C,H,W, got {text!r}")
    batch, channels, height, width = map(int, parts)
    if min(batch, channels, height, width) < 1:
        raise ValueError(f"--shape sizes must be >= 1, got {text!r}")
    if channels % 4:
        raise ValueError(f"--shape channel count must be a multiple of 4 (SCSA's 4 groups), got C={channels}")
    return Shape(batch, channels, height, width)


def parse_dtype(text: str) -> torch.dtype:
    """"float32" / "fp32" / "bf16" ... -> torch dtype."""
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16", "fp64": "float64",
               "double": "float64", "float": "float32"}
    name = aliases.get(text.lower(), text.lower())
    if name not in DTYPES:
        raise ValueError(f"--dtype must be one of {sorted(DTYPES)}, got {text!r}")
    return DTYPES[name]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")
