"""``bitsfusion allocate sens.json --avg-bits 2.0 --out plan.json``: the best plan a budget allows.

Budgets: ``--avg-bits`` (bits per weight of the table's layers; ``--counting stored`` counts every
byte of the packed format, scales and zeros included; ``--counting paper`` counts ``log2(levels)``
as the BitsFusion paper does) and/or ``--max-bytes`` (stored bytes: ``6MB`` = 6,000,000,
``6MiB`` = 6 * 2^20). ``--pin NAME=BITS`` fixes a layer (exact name or ``re:<pattern>``).
``--method exact`` solves the multiple-choice knapsack exactly; ``--method threshold`` applies
BitsFusion's rule (``S = MSE * N^-0.3`` under a bisected threshold, +1 bit above the
``--percentile``). The plan file is a ``BitPlan`` (``bitsfusion quantize MODEL --plan plan.json``)
with the prediction under ``"allocation"``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..allocate import TableAllocation, allocate, threshold_allocate
from ..analysis import SensitivityTable
from ..errors import ConfigError
from ..pack.accounting import bits_per_weight, packed_nbytes
from .inspect import fmt_bytes

__all__ = ["allocate_command", "parse_bytes", "parse_pins", "allocate_from", "allocation_table"]

_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}


def parse_bytes(text: str) -> int:
    """``"6MB" -> 6_000_000``, ``"1.5MiB" -> 1_572_864``, ``"4096" -> 4096``; ConfigError otherwise."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if m is None or m.group(2).upper() not in _UNITS:
        raise ConfigError(f"--max-bytes {text!r}: expected a number with an optional unit "
                          f"({', '.join(u for u in _UNITS if u)}), e.g. 6MB")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def parse_pins(items: list[str]) -> dict[str, int]:
    """``["head=8", "re:.*stem=8"] -> {"head": 8, "re:.*stem": 8}``; ConfigError naming a bad item."""
    pins: dict[str, int] = {}
    for item in items:
        name, sep, bits = item.rpartition("=")
        if not sep or not name or not bits.strip().isdigit() or not 1 <= int(bits) <= 8:
            raise ConfigError(f"--pin {item!r}: expected NAME=BITS with BITS in 1..8, e.g. head=8 or re:.*stem=8")
        pins[name] = int(bits)
    return pins


def allocate_from(
    table: SensitivityTable, *, avg_bits: float | None, max_bytes: str | None, method: str, counting: str,
    pins: list[str], percentile: float,
) -> TableAllocation:
    """Run the chosen method on ``table`` with parsed budget and pins."""
    limit = parse_bytes(max_bytes) if max_bytes is not None else None
    if avg_bits is None and limit is None:
        raise ConfigError("give a budget: --avg-bits (e.g. 2.0) or --max-bytes (e.g. 6MB)")
    if method == "exact":
        return allocate(table, avg_bits=avg_bits, max_bytes=limit, counting=counting, pins=parse_pins(pins))
    if method == "threshold":
        return threshold_allocate(table, avg_bits=avg_bits, max_bytes=limit, counting=counting,
                                  pins=parse_pins(pins), percentile=percentile)
    raise ConfigError(f"--method {method!r}: use exact or threshold")


def allocation_table(table: SensitivityTable, result: TableAllocation, title: str) -> Table:
    """One row per layer: scheme, stored bytes, stored bits per weight, measured cell (predicted loss)."""
    view = Table(title=title, title_justify="left")
    for col in ("layer", "shape", "scheme"):
        view.add_column(col)
    for col in ("bytes", "bits/w (stored)", "loss cell"):
        view.add_column(col, justify="right")
    for name, scheme in result.choices.items():
        shape = table.layers[name].shape
        cell = "unmeasured" if name in result.unmeasured else f"{table.cell(name, scheme):.3g}"
        pin = " (pinned)" if name in result.pinned else ""
        view.add_row(name, "x".join(map(str, shape)), f"{scheme}{pin}", f"{packed_nbytes(scheme, shape):,}",
                     f"{bits_per_weight(scheme, shape):.3f}", cell)
    return view


def summary_lines(result: TableAllocation, metric: str) -> list[str]:
    """Predicted loss, bytes and bits per weight in both countings, each named."""
    return [
        f"method {result.method}; budget counted as {result.counting} bits",
        f"predicted {metric} loss (sum of cells): {result.predicted_loss:.4g}",
        f"stored: {fmt_bytes(result.nbytes)} ({result.nbytes:,} B), {result.bits_per_weight:.3f} bits per weight "
        "(every overhead counted)",
        f"paper counting (log2 levels, no overhead): {result.paper_bits_per_weight:.3f} bits per weight",
    ]


def allocate_command(
    table_path: Path = typer.Argument(..., metavar="SENS_JSON", help="table written by `bitsfusion analyze`"),
    out: Path = typer.Option(..., "--out", "-o", help="plan JSON to write (a BitPlan)"),
    avg_bits: Optional[float] = typer.Option(None, "--avg-bits", min=0.0, help="average bits per weight"),
    max_bytes: Optional[str] = typer.Option(None, "--max-bytes", help="stored bytes, e.g. 6MB or 5.5MiB"),
    pin: list[str] = typer.Option([], "--pin", help="NAME=BITS: fix a layer (exact name or re:<pattern>)"),
    method: str = typer.Option("exact", help="exact (knapsack) or threshold (BitsFusion's rule)"),
    counting: str = typer.Option("stored", help="how --avg-bits counts: stored (every byte) or paper (log2 levels)"),
    percentile: float = typer.Option(90.0, help="threshold method: +1 bit above this percentile (90, 95, 98)"),
) -> None:
    """Choose one candidate per layer minimising the predicted loss under the budget; write the plan."""
    console = Console()
    table = SensitivityTable.load(table_path)
    result = allocate_from(table, avg_bits=avg_bits, max_bytes=max_bytes, method=method, counting=counting,
                           pins=pin, percentile=percentile)
    result.save(out)
    console.print(allocation_table(table, result, f"{out}: plan from {table_path}"))
    for line in summary_lines(result, table.metric):
        console.print(line, highlight=False)
