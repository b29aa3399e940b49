"""Default benchmark suites per device: which shapes, dtypes and modes a plain ``scsa-bench`` runs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Sequence, Tuple

import torch

from .shapes import FEATURE_MAPS, Shape, dtype_name, feature_map_shapes
from .traffic import MODES

LAYOUTS = ("nchw", "channels_last")  # memory format of x (and grad_out)
LATENCY_BATCH = 1
TRAINING_BATCH = {"cuda": 64, "cpu": 8}
CUDA_TRAINING_MODES = ("forward", "forward+backward")


@dataclass(frozen=True)
class Case:
    """One benchmark case: x of ``shape``, ``dtype`` and ``layout`` (LAYOUTS), timed in each of ``modes``."""

    shape: Shape
    dtype: torch.dtype
    modes: Tuple[str, ...] = MODES
    layout: str = "nchw"

    def __str__(self) -> str:
        name = f"{self.shape} {dtype_name(self.dtype)}"
        return name if self.layout == "nchw" else f"{name} {self.layout}"


def cuda_suite() -> List[Case]:
    """Most important first, so that a time budget cuts the tail (a cut run keeps its rows):
    the ResNet-50 bottleneck maps at the training batch in bfloat16 (forward, forward+backward),
    batch-1 bfloat16 forward latency of the ResNet-50 maps (64x56x56 first), the other DESIGN.md
    models' maps likewise, the ResNet-50 maps in channels_last (what AMP training of convnets
    uses) and the 1x64x56x56 channels_last forward, then float32 of the ResNet-50 maps and the
    backward-only mode."""
    batch = TRAINING_BATCH["cuda"]
    bf16, fp32 = torch.bfloat16, torch.float32
    resnet = feature_map_shapes(batch, ("resnet50",))
    others = [m for m in FEATURE_MAPS if m != "resnet50"]
    cases = [Case(s, bf16, CUDA_TRAINING_MODES) for s in resnet]
    cases += [Case(s, bf16, ("forward",)) for s in feature_map_shapes(LATENCY_BATCH, ("resnet50",))]
    for model in others:
        cases += [Case(s, bf16, CUDA_TRAINING_MODES) for s in feature_map_shapes(batch, (model,))]
        cases += [Case(s, bf16, ("forward",)) for s in feature_map_shapes(LATENCY_BATCH, (model,))]
    cases += [Case(s, bf16, CUDA_TRAINING_MODES, "channels_last") for s in resnet]
    # batch 1: a few programs per plane pass when each takes 16 channels (64 channels: 4)
    cases += [Case(feature_map_shapes(LATENCY_BATCH, ("resnet50",))[0], bf16, ("forward",), "channels_last")]
    cases += [Case(s, fp32, CUDA_TRAINING_MODES) for s in resnet]
    cases += [Case(s, dtype, ("backward",)) for dtype in (bf16, fp32) for s in resnet]
    return cases


def cpu_suite() -> List[Case]:
    """A few minutes on a 2-core machine: float32, the ResNet-50 maps plus one MobileNetV2 and one
    YOLO map at batch 8 (all modes), then the ResNet-50 maps at batch 1 (forward), then two
    ResNet-50 maps at batch 8 in channels_last (all modes)."""
    batch = TRAINING_BATCH["cpu"]
    training = feature_map_shapes(batch, ("resnet50",)) + [
        Shape(batch, 144, 56, 56, "mobilenetv2"), Shape(batch, 256, 40, 40, "yolo640")]
    latency = feature_map_shapes(LATENCY_BATCH, ("resnet50",))
    channels_last = [Case(s, torch.float32, MODES, "channels_last") for s in training[:4:2]]
    return ([Case(s, torch.float32) for s in training] + [Case(s, torch.float32, ("forward",)) for s in latency]
            + channels_last)


def quick_suite() -> List[Case]:
    """Seconds: two small shapes, float32, every mode."""
    return [Case(Shape(2, 64, 28, 28, "resnet50-small"), torch.float32),
            Case(Shape(1, 128, 14, 14, "resnet50-small"), torch.float32)]


def default_suite(device: torch.device, quick: bool) -> List[Case]:
    if quick:
        return quick_suite()
    return cuda_suite() if device.type == "cuda" else cpu_suite()


def custom_suite(shapes: Sequence[Shape], dtypes: Sequence[torch.dtype], modes: Sequence[str],
                 layouts: Sequence[str] = ("nchw",)) -> List[Case]:
    return [Case(s, dtype, tuple(modes), layout) for s in shapes for dtype in dtypes for layout in layouts]
