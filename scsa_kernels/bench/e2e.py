"""End-to-end benchmark: ResNet-50 with SCSA in every bottleneck (resnet.py), images/s for a
training step (forward, cross-entropy, backward, SGD step) and for inference, with the
reference SCSA vs each fused backend. ``plain`` (no SCSA at all) shows what SCSA costs."""
from __future__ import annotations

import math
import os
import time
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

from .report import E2E_COLUMNS, CsvWriter, e2e_table
from .resnet import RESNET50_STAGES, ResNet
from .providers import first_call_seconds
from .runner import error_status, log
from .shapes import dtype_name
from .timing import Workload, time_workloads

PHASES = ("train", "inference")
MODEL_STAGES = RESNET50_STAGES  # tests swap in a smaller network
ROUNDS = 5
# (warm-up ms, measured ms) per provider and phase
E2E_TIME_PER_MEASUREMENT = {("cuda", False): (200.0, 800.0), ("cuda", True): (100.0, 300.0),
                            ("cpu", False): (500.0, 3000.0), ("cpu", True): (100.0, 300.0)}


def min_image_size(stages) -> int:
    """Smallest input whose last stage map still holds one 7x7 SCSA pooling window (stem: /4)."""
    return 7 * 4 * math.prod(stride for _, _, stride in stages)


def build_models(fused: Sequence[str], dtype: torch.dtype, device: torch.device,
                 memory_format: torch.memory_format = torch.contiguous_format) -> Dict[str, torch.nn.Module]:
    """provider -> ResNet-50 in ``memory_format``; every SCSA model starts from the reference model's weights."""
    torch.manual_seed(0)
    reference = ResNet("reference", MODEL_STAGES)
    models = {"plain": ResNet(None, MODEL_STAGES), "reference": reference}
    for name in fused:
        models[name] = ResNet(name, MODEL_STAGES)
        models[name].load_state_dict(reference.state_dict())
    return {name: m.to(device=device, dtype=dtype, memory_format=memory_format) for name, m in models.items()}


def phase_workload(model: torch.nn.Module, phase: str, images: torch.Tensor, labels: torch.Tensor) -> Workload:
    """(prepare, run): "train" = one SGD step on (images, labels); "inference" = eval forward, no grad."""
    if phase == "inference":
        model.eval()

        def infer(_):
            with torch.no_grad():
                model(images)

        return (lambda: None, infer)
    model.train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)

    def step(_):
        F.cross_entropy(model(images), labels).backward()
        optimizer.step()

    return (lambda: optimizer.zero_grad(set_to_none=True), step)


def run_phase(models: Dict[str, torch.nn.Module], phase: str, images: torch.Tensor, labels: torch.Tensor,
              device: torch.device, warmup_ms: float, rep_ms: float, base_row: Dict) -> List[Dict]:
    """One row per model: a model whose first step raises gets an error row, the others are timed."""
    works, rows = {}, []
    for name, model in models.items():
        work = phase_workload(model, phase, images, labels)
        try:
            first_call_seconds(work, device)
            works[name] = work
        except Exception as exc:  # one broken backend must not end the run: its row says why
            rows.append(dict(base_row, provider=name, status=error_status(exc)))
    timings = time_workloads(device, works, warmup_ms, rep_ms, ROUNDS) if works else {}
    reference = timings.get("reference")
    for name, t in timings.items():
        rows.append(dict(base_row, model="resnet50-scsa" if name != "plain" else "resnet50", provider=name,
                         status="ok", median_ms=t.median_ms, p20_ms=t.p20_ms, p80_ms=t.p80_ms, samples=t.samples,
                         images_per_s=images.shape[0] / (t.median_ms * 1e-3),
                         speedup_vs_reference=reference.median_ms / t.median_ms if reference else None))
    return rows


def run_e2e(args, device: torch.device, env: Dict[str, str], fused: Sequence[str], out: str) -> int:
    batch = args.e2e_batch or (1 if args.quick else 32 if device.type == "cuda" else 4)
    smallest = min_image_size(MODEL_STAGES)
    size = args.e2e_image_size or max(224, smallest)
    if size < smallest:
        raise SystemExit(f"scsa-bench: --e2e-image-size must be >= {smallest} (SCSA needs 7x7 maps), got {size}")
    warmup_ms, rep_ms = E2E_TIME_PER_MEASUREMENT[(device.type, args.quick)]
    warmup_ms, rep_ms = args.warmup_ms or warmup_ms, args.rep_ms or rep_ms
    torch.backends.cudnn.benchmark = True  # as training scripts do; a no-op on CPU
    writer = CsvWriter(os.path.join(out, "e2e.csv"), E2E_COLUMNS)
    rows: List[Dict] = []
    start = time.perf_counter()
    over_budget = lambda: args.time_budget is not None and time.perf_counter() - start > args.time_budget
    for dtype, layout in [(d, l) for d in args.dtype or [torch.float32] for l in args.layout or ["nchw"]]:
        name = f"{dtype_name(dtype)} {layout}"
        if over_budget():
            log(f"time budget of {args.time_budget:.0f} s spent: {name} not measured")
            continue
        # channels_last: model and images, as a channels_last training script has them
        memory_format = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        models = build_models(fused, dtype, device, memory_format)
        images = torch.randn(batch, 3, size, size, device=device, dtype=dtype).contiguous(memory_format=memory_format)
        labels = torch.randint(0, 1000, (batch,), device=device)
        for phase in PHASES:
            if over_budget():
                log(f"time budget of {args.time_budget:.0f} s spent: {name} {phase} not measured")
                continue
            log(f"e2e ResNet-50 {phase}, batch {batch}, {size}x{size}, {name}: {', '.join(models)}")
            base_row = dict(env, model="resnet50-scsa", batch=batch, image_size=size, dtype=dtype_name(dtype),
                            layout=layout, phase=phase)
            phase_rows = run_phase(models, phase, images, labels, device, warmup_ms, rep_ms, base_row)
            writer.write(phase_rows)
            rows += phase_rows
    print(e2e_table(rows))
    log(f"wrote {writer.path}")
    return 0
