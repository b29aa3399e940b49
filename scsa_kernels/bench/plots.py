"""PNG plots of benchmark rows (dicts as written to / read back from the CSV)."""
from __future__ import annotations

import os
from collections import defaultdict
from typing import Dict, List, Sequence

BASELINE = "eager"


def number(value) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def case_label(row: Dict) -> str:
    """x-axis label of a row: its shape, marked "cl" for channels_last inputs (CSVs without the
    layout column are NCHW)."""
    return f"{row['shape']} cl" if row.get("layout") == "channels_last" else row["shape"]


def provider_colours(panels: Dict[str, Dict[str, Dict[str, float]]]) -> Dict[str, str]:
    """One matplotlib colour per provider for every panel (a panel missing a provider must not shift
    the others' colours), in order of first appearance."""
    providers = dict.fromkeys(p for by_provider in panels.values() for p in by_provider)
    return {p: f"C{i % 10}" for i, p in enumerate(providers)}


def _bar_grid(panels: Dict[str, Dict[str, Dict[str, float]]], ylabel: str, title: str, path: str,
              baseline_line: bool) -> str:
    """One subplot per panel; x = shapes, one bar per provider. panels[panel][provider][shape] = value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    colour = provider_colours(panels)
    columns = min(3, len(panels))
    rows = -(-len(panels) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(6.5 * columns, 4.2 * rows), squeeze=False)
    for ax, (panel, by_provider) in zip(axes.flat, panels.items()):
        shapes = list(dict.fromkeys(s for values in by_provider.values() for s in values))
        width = 0.8 / max(1, len(by_provider))
        for i, (provider, values) in enumerate(by_provider.items()):
            ax.bar([j + i * width for j in range(len(shapes))], [values.get(s, 0.0) for s in shapes], width,
                   label=provider, color=colour[provider])
        ax.set_xticks([j + 0.4 - width / 2 for j in range(len(shapes))])
        ax.set_xticklabels(shapes, rotation=45, ha="right", fontsize=7)
        if baseline_line:
            ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_title(panel, fontsize=9)
        ax.set_ylabel(ylabel)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_speedups(rows: Sequence[Dict], path: str) -> str | None:
    """Speedup vs eager per shape and provider, one panel per (dtype, mode). None when nothing was timed."""
    panels: Dict[str, Dict[str, Dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        speedup = number(row.get("speedup_vs_eager"))
        if speedup is not None and row["provider"] != BASELINE:
            panels[f"{row['dtype']} {row['mode']}"][row["provider"]][case_label(row)] = speedup
    if not panels:
        return None
    return _bar_grid(panels, "speedup vs eager reference", "SCSA: speedup per shape (higher is better)", path, True)


def plot_memory(rows: Sequence[Dict], path: str) -> str | None:
    """forward+backward memory per shape and provider (CUDA peak when measured, else bytes saved for
    backward), one panel per dtype. None when no memory was measured."""
    panels: Dict[str, Dict[str, Dict[str, float]]] = defaultdict(lambda: defaultdict(dict))
    for row in rows:
        peak, saved = number(row.get("peak_mem_bytes")), number(row.get("saved_bytes"))
        value, kind = (peak, "CUDA peak allocated") if peak is not None else (saved, "saved for backward")
        if value is not None:
            panels[f"{row['dtype']} forward+backward: {kind}"][row["provider"]][case_label(row)] = value / 2 ** 20
    if not panels:
        return None
    return _bar_grid(panels, "MiB", "SCSA: memory of forward+backward (lower is better)", path, False)


def plot_all(rows: Sequence[Dict], folder: str, stem: str) -> List[str]:
    """Writes <stem>_speedup.png and <stem>_memory.png under ``folder``; returns the paths written."""
    os.makedirs(folder, exist_ok=True)
    written = [plot_speedups(rows, os.path.join(folder, f"{stem}_speedup.png")),
               plot_memory(rows, os.path.join(folder, f"{stem}_memory.png"))]
    return [p for p in written if p]
