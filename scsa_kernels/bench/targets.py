"""The Triton backend's speed and memory targets (issue 3), judged from microbench.csv rows.

    scsa-bench --targets benchmarks/results/nvidia-h200/microbench.csv

Each target names the rows it reads (bfloat16, NCHW, the ResNet-50 bottleneck maps at batch 64)
and the number it needs; a verdict is "met", "missed" or "not measured" (with why: no row, or the
status of a row it needs). The targets are stated for an H100: rows from another card are judged all
the same, and the table's header names the card they came from. Nothing here measures: a verdict is only as
good as the run that wrote the rows. Copy bandwidth is judged for the bytes the fused plan must move
(traffic.PLAN_PASSES: forward 4|x|, forward+backward 9|x|), not the CSV's physical floor (2|x|, 5|x|),
in wall time and in the kernels' device time (kernel_ms: CUDA runs since 2026-11-28).
"""
from __future__ import annotations

import math
from typing import Callable, Dict, List, NamedTuple, Optional, Sequence, Union

from .providers import GRAPHED_SUFFIX
from .report import format_table
from .shapes import DTYPES, FEATURE_MAPS
from .traffic import PLAN_PASSES, X_PASSES

Row = Dict[str, str]
Measured = Union[float, str]  # the number, or why there is none
TARGET_BATCH = 64
TARGET_DTYPE = "bfloat16"
RESNET50_SHAPES = tuple(f"{TARGET_BATCH}x{c}x{h}x{w}" for c, h, w in FEATURE_MAPS["resnet50"])
TARGET_TABLE = (("target", "target"), ("provider", "provider"), ("shape", "shape"), ("measured", "measured"),
                ("goal", "goal"), ("verdict", "verdict"), ("why", "why not measured"))


class Target(NamedTuple):
    """One number a fused provider must reach: ``measure(row, rows)`` of its row of ``mode`` at each of
    ``shapes`` (a float, or a string saying why there is none), at least ``goal`` (at most, with
    ``at_most``), in ``unit``."""

    name: str
    mode: str
    shapes: Sequence[str]
    goal: float
    unit: str
    measure: Callable[[Row, Sequence[Row]], Measured]
    at_most: bool = False


def _column(column: str) -> Callable[[Row, Sequence[Row]], Measured]:
    """The row's own ``column``."""
    return lambda row, rows: _number(row, column)


def _number(row: Row, column: str) -> Measured:
    text = row.get(column, "")
    return float(text) if text else f"no {column}"


def _speedup_vs(provider: str) -> Callable[[Row, Sequence[Row]], Measured]:
    """The median of ``provider``'s row of the same case and mode over this row's median (from the same run)."""
    def measure(row, rows):
        base = _find(rows, provider, row["shape"], row["mode"])
        if base is None:
            return f"no {provider} row"
        status = base.get("status", "")
        if status != "ok":
            return status if provider in status else f"{provider}: {status}"
        return float(base["median_ms"]) / float(row["median_ms"])
    return measure


def _plan_bandwidth(column: str) -> Callable[[Row, Sequence[Row]], Measured]:
    """% of the copy bandwidth for the bytes the plan must move (PLAN_PASSES x's bytes), from the row's
    ``column``, which counts the physical floor (X_PASSES): pct_of_copy_bw (wall time) or
    kernel_pct_of_copy_bw (the kernels' device time)."""
    def measure(row, rows):
        pct = _number(row, column)
        return pct if isinstance(pct, str) else pct * PLAN_PASSES[row["mode"]] / X_PASSES[row["mode"]]
    return measure


def _saved_beyond_x(row: Row, rows: Sequence[Row]) -> Measured:
    """Bytes saved for backward beyond x itself, in % of x's bytes."""
    saved = _number(row, "saved_bytes")
    if isinstance(saved, str):
        return saved
    x_bytes = math.prod(int(row[k]) for k in ("batch", "channels", "height", "width")) * DTYPES[row["dtype"]].itemsize
    return 100.0 * (saved - x_bytes) / x_bytes


TARGETS = (
    Target("forward vs eager", "forward", RESNET50_SHAPES, 4.0, "x", _column("speedup_vs_eager")),
    Target("forward vs max-autotune", "forward", RESNET50_SHAPES, 2.0, "x", _speedup_vs("compile-max-autotune")),
    Target("fwd+bwd vs eager", "forward+backward", RESNET50_SHAPES, 3.0, "x", _column("speedup_vs_eager")),
    Target("fwd+bwd vs compile", "forward+backward", RESNET50_SHAPES, 1.5, "x", _column("speedup_vs_compile")),
    # bandwidth: at the largest map only (the small ones are launch-bound), for the plan's bytes, in wall
    # time and in the kernels' device time (what they reach once the host keeps up, e.g. under CUDA graphs)
    Target("forward copy bw (4|x|, wall)", "forward", RESNET50_SHAPES[:1], 70.0, "%",
           _plan_bandwidth("pct_of_copy_bw")),
    Target("forward copy bw (4|x|, kernels)", "forward", RESNET50_SHAPES[:1], 70.0, "%",
           _plan_bandwidth("kernel_pct_of_copy_bw")),
    Target("fwd+bwd copy bw (9|x|, wall)", "forward+backward", RESNET50_SHAPES[:1], 70.0, "%",
           _plan_bandwidth("pct_of_copy_bw")),
    Target("fwd+bwd copy bw (9|x|, kernels)", "forward+backward", RESNET50_SHAPES[:1], 70.0, "%",
           _plan_bandwidth("kernel_pct_of_copy_bw")),
    Target("saved beyond x", "forward+backward", RESNET50_SHAPES, 10.0, "%", _saved_beyond_x, at_most=True),
)


def _find(rows: Sequence[Row], provider: str, shape: str, mode: str) -> Optional[Row]:
    """The last row of (provider, shape, mode) in bfloat16 NCHW (a later run's row wins)."""
    found = None
    for row in rows:
        if (row.get("provider"), row.get("shape"), row.get("mode"), row.get("dtype"), row.get("layout")) == (
                provider, shape, mode, TARGET_DTYPE, "nchw"):
            found = row
    return found


def _row_problem(row: Row) -> Optional[str]:
    """Why ``row`` measures nothing its provider stands for, or None: a status other than ok, or a
    "+cudagraphs" provider without a profiled CUDA graph replay (the column came on 2026-11-28: older
    rows cannot show that torch.compile did not fall back to plain launches)."""
    if row.get("status") != "ok":
        return row.get("status")
    if row.get("provider", "").endswith(GRAPHED_SUFFIX):
        graphs = _number(row, "graph_launches_per_iter")
        if isinstance(graphs, str):
            return "no CUDA graph replay recorded (no graph_launches_per_iter)"
        if graphs == 0:
            return f"replayed no CUDA graph ({row.get('launches_per_iter')} kernel launches per iteration)"
    return None


def verdict(target: Target, row: Optional[Row], rows: Sequence[Row]) -> Dict[str, str]:
    """One line of the table: what ``target`` measured on ``row`` and whether it reached its goal."""
    line = {"goal": f"{'<=' if target.at_most else '>='} {target.goal:g}{target.unit}"}
    if row is None:
        return dict(line, measured="-", verdict="not measured", why="no row")
    problem = _row_problem(row)
    if problem is not None:
        return dict(line, measured="-", verdict="not measured", why=problem)
    value = target.measure(row, rows)
    if isinstance(value, str):
        return dict(line, measured="-", verdict="not measured", why=value)
    met = value <= target.goal if target.at_most else value >= target.goal
    return dict(line, measured=f"{value:.3g}{target.unit}", verdict="met" if met else "missed")


def judge(rows: Sequence[Row], providers: Sequence[str] = ("triton", "triton+cudagraphs")) -> List[Dict[str, str]]:
    """Every target for every provider of ``providers`` that has a row in ``rows``, shape by shape."""
    present = {row.get("provider") for row in rows}
    lines = []
    for provider in (p for p in providers if p in present):
        for target in TARGETS:
            for shape in target.shapes:
                row = _find(rows, provider, shape, target.mode)
                lines.append(dict(verdict(target, row, rows), target=target.name, provider=provider, shape=shape))
    return lines


def targets_report(rows: Sequence[Row]) -> str:
    """The targets table, headed by the card(s) and date(s) the rows came from."""
    lines = judge(rows)
    if not lines:
        return "no Triton rows: no target can be judged"
    cards = sorted({f"{r.get('device_name')} ({r.get('date', '')[:10]})" for r in rows
                    if r.get("provider") == "triton"})
    head = (f"Triton backend targets (the project's issue 3, stated for an H100), from rows of {', '.join(cards)}; "
            f"{TARGET_DTYPE}, NCHW, batch {TARGET_BATCH}")
    met = sum(line["verdict"] == "met" for line in lines)
    table = format_table(lines, [c for c, _ in TARGET_TABLE], [h for _, h in TARGET_TABLE], left=("verdict", "why"))
    return f"{head}\n{table}\n{met} of {len(lines)} met"
