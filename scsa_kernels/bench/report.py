"""Benchmark rows: the CSV schema, the incremental CSV writer and the printed table."""
from __future__ import annotations

import csv
import os
from typing import Dict, Iterable, List, Sequence

ENVIRONMENT_COLUMNS = ("date", "machine", "device", "device_name", "driver", "cuda", "torch", "triton", "threads", "heap")
MICRO_COLUMNS = ENVIRONMENT_COLUMNS + (
    "shape", "source", "batch", "channels", "height", "width", "dtype", "layout", "mode", "provider", "status",
    "median_ms", "p20_ms", "p80_ms", "samples", "speedup_vs_eager", "speedup_vs_compile",
    "model_bytes", "achieved_gbps", "copy_gbps", "pct_of_copy_bw", "kernel_ms", "kernel_pct_of_copy_bw",
    "launches_per_iter", "graph_launches_per_iter",
    "peak_mem_bytes", "saved_bytes", "first_call_s")
E2E_COLUMNS = ENVIRONMENT_COLUMNS + (
    "model", "batch", "image_size", "dtype", "layout", "phase", "provider", "status", "median_ms", "p20_ms", "p80_ms",
    "samples", "images_per_s", "speedup_vs_reference")


class CsvWriter:
    """Appends rows to ``path`` as they come (a run cut short keeps what it measured)."""

    def __init__(self, path: str, columns: Sequence[str]):
        self.path, self.columns = path, tuple(columns)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "w", newline="") as f:
            csv.writer(f).writerow(self.columns)

    def write(self, rows: Iterable[Dict]) -> None:
        with open(self.path, "a", newline="") as f:
            writer = csv.DictWriter(f, self.columns, extrasaction="raise")
            for row in rows:
                writer.writerow({c: format_value(row.get(c, "")) for c in self.columns})


def format_value(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return "" if value is None else str(value)


def read_csv(path: str) -> List[Dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def format_table(rows: Sequence[Dict], columns: Sequence[str], headers: Sequence[str] = (),
                 left: Sequence[str] = ()) -> str:
    """Fixed-width text table of ``columns`` (headers default to the column names), right-aligned but
    the columns named in ``left``."""
    headers = list(headers) or list(columns)
    cells = [[format_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    align = [str.ljust if c in left else str.rjust for c in columns]
    line = lambda values: "  ".join(a(v, w) for a, v, w in zip(align, values, widths)).rstrip()
    return "\n".join([line(headers), line(["-" * w for w in widths])] + [line(r) for r in cells])


def format_cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"
    return "" if value is None else str(value)


MICRO_TABLE = (("shape", "shape"), ("dtype", "dtype"), ("layout", "layout"), ("mode", "mode"), ("provider", "provider"),
               ("median_ms", "median ms"), ("p20_ms", "p20"), ("p80_ms", "p80"),
               ("speedup_vs_eager", "x eager"), ("speedup_vs_compile", "x compile"),
               ("achieved_gbps", "GB/s"), ("pct_of_copy_bw", "% copy"), ("kernel_ms", "kernels ms"),
               ("launches_per_iter", "launches"), ("graph_launches_per_iter", "graphs"), ("peak_mem_mb", "peak MB"),
               ("saved_mb", "saved MB"), ("status", "status"))
E2E_TABLE = (("model", "model"), ("batch", "batch"), ("image_size", "size"), ("dtype", "dtype"), ("layout", "layout"),
             ("phase", "phase"), ("provider", "provider"), ("median_ms", "median ms"), ("p20_ms", "p20"),
             ("p80_ms", "p80"), ("images_per_s", "images/s"), ("speedup_vs_reference", "x reference"),
             ("status", "status"))


def micro_table(rows: Sequence[Dict]) -> str:
    """The microbenchmark table; memory shown in MB."""
    mb = lambda v: v / 2 ** 20 if isinstance(v, (int, float)) else v
    shown = [dict(r, peak_mem_mb=mb(r.get("peak_mem_bytes")), saved_mb=mb(r.get("saved_bytes"))) for r in rows]
    return format_table(shown, [c for c, _ in MICRO_TABLE], [h for _, h in MICRO_TABLE])


def e2e_table(rows: Sequence[Dict]) -> str:
    return format_table(rows, [c for c, _ in E2E_TABLE], [h for _, h in E2E_TABLE])
