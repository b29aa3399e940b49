"""Default benchmark suites per device: which shapes, dtypes and modes a plain ``scsa-bench`` runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

from .shapes import FEATURE_MAPS, Shape, feature_map_shapes
from .traffic import MODES

LATENCY_BATCH = 1
TRAINING_BATCH = {"cuda": 32, "cpu": 8}


@dataclass(frozen=True)
class Case:
    """One benchmark case: x of ``shape`` and ``dtype``, timed in each of ``modes``."""

    shape: Shape
    dtype: torch.dtype
    modes: Tuple[str, ...] = MODES


def cuda_suite() -> List[Case]:
    """Every DESIGN.md feature map, model by model: training batch in float32 and bfloat16 (all
    modes), then batch-1 latency in bfloat16 (forward). Ordered by priority (ResNet-50 first), so
    that a time budget cuts the tail and not one kind of case entirely."""
    cases = []
    for model in FEATURE_MAPS:
        training = feature_map_shapes(TRAINING_BATCH["cuda"], (model,))
        cases += [Case(s, dtype) for s in training for dtype in (torch.float32, torch.bfloat16)]
        cases += [Case(s, torch.bfloat16, ("forward",)) for s in feature_map_shapes(LATENCY_BATCH, (model,))]
    return cases


def cpu_suite() -> List[Case]:
    """A few minutes on a 2-core machine: float32, the ResNet-50 maps plus one MobileNetV2 and one
    YOLO map at batch 8 (all modes), then the ResNet-50 maps at batch 1 (forward)."""
    batch = TRAINING_BATCH["cpu"]
    training = feature_map_shapes(batch, ("resnet50",)) + [
        Shape(batch, 144, 56, 56, "mobilenetv2"), Shape(batch, 256, 40, 40, "yolo640")]
    latency = feature_map_shapes(LATENCY_BATCH, ("resnet50",))
    return [Case(s, torch.float32) for s in training] + [Case(s, torch.float32, ("forward",)) for s in latency]


def quick_suite() -> List[Case]:
    """Seconds: two small shapes, float32, every mode."""
    return [Case(Shape(2, 64, 28, 28, "resnet50-small"), torch.float32),
            Case(Shape(1, 128, 14, 14, "resnet50-small"), torch.float32)]


def default_suite(device: torch.device, quick: bool) -> List[Case]:
    if quick:
        return quick_suite()
    return cuda_suite() if device.type == "cuda" else cpu_suite()


def custom_suite(shapes: Sequence[Shape], dtypes: Sequence[torch.dtype], modes: Sequence[str]) -> List[Case]:
    return [Case(s, dtype, tuple(modes)) for s in shapes for dtype in dtypes]
