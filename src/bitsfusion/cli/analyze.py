"""``bitsfusion analyze MODEL --out sens.json``: per-layer sensitivity table for mixed-precision allocation.

For every quantizable layer and candidate scheme (``--bits`` x ``--group-size`` x ``--calibration``,
on one ``--grid`` and ``--method``; several group sizes compete when given, e.g. ``64,128,0``), only that layer is quantized and the model's calibration batches
(``--batches`` of the model's ``ModelSpec``) are run; the table records the loss of the output
against the float model (``--loss``: mse, cosine = 1 - cosine, kl), the weight error and two cheap
proxies with their Spearman rank correlation to the measured cells. ``--out`` is written after
every cell and resumed when it exists: rerun the same command after an interruption.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from ..analysis import SensitivityTable, default_candidates, measure_sensitivity, scheme_key
from ..errors import ConfigError
from ..plan import BitPlan
from ..types import Calibration, Grid, QScheme, ScaleMethod, check_rotation
from ..zoo.registry import ModelSpec
from ..zoo.resolve import generic_spec, resolve_model

HESSIAN_BATCHES = 32
"""Calibration batches for input Hessians by default (MiniLM: all 512 calibration sentences)."""

__all__ = ["analyze_command", "run_analysis", "parse_bits", "parse_group_sizes", "parse_calibrations",
           "parse_rotations", "sensitivity_table"]


def parse_bits(text: str) -> tuple[int, ...]:
    """``"1,2,4" -> (1, 2, 4)``; a usage error (exit 2) for anything else or bits outside 1..8."""
    try:
        bits = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated bit widths such as 1,2,4; got {text!r}") from None
    if not bits or any(not 1 <= b <= 8 for b in bits):
        raise typer.BadParameter(f"bit widths must be in 1..8, got {text!r}")
    return bits


def parse_group_sizes(text: str) -> tuple[int | None, ...]:
    """``"64,128,0" -> (64, 128, None)`` (0 = per channel); a usage error for anything else."""
    try:
        sizes = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated group sizes such as 64,128,0; got {text!r}") from None
    if not sizes or any(g < 0 for g in sizes):
        raise typer.BadParameter(f"group sizes must be >= 0 (0 = per channel), got {text!r}")
    return tuple(g or None for g in sizes)


def parse_calibrations(text: str) -> tuple[Calibration, ...]:
    """``"none,gptq" -> (NONE, GPTQ)``; a usage error naming the allowed values."""
    try:
        return tuple(Calibration(p.strip()) for p in text.split(",") if p.strip())
    except ValueError:
        allowed = ", ".join(c.value for c in Calibration)
        raise typer.BadParameter(f"calibrations must be among {allowed}; got {text!r}") from None


def parse_rotations(text: str) -> tuple[int, ...]:
    """``"0,128" -> (0, 128)`` (Hadamard blocks, 0 = none); a usage error for anything else."""
    try:
        rots = tuple(int(p) for p in text.split(",") if p.strip())
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated rotations such as 0,128; got {text!r}") from None
    if not rots:
        raise typer.BadParameter("give at least one rotation (0 = none)")
    for r in rots:
        try:
            check_rotation(r)
        except ConfigError as e:
            raise typer.BadParameter(str(e)) from None
    return rots


def _spec_for(model: str, module: Any, spec: ModelSpec | None) -> ModelSpec:
    return spec if spec is not None else generic_spec(model, lambda: module)


def run_analysis(
    model: str, candidates: list[QScheme], *, out: Path | None, loss: str, batches: int, skip: list[str],
    hessian_batches: int = HESSIAN_BATCHES,
) -> tuple[SensitivityTable, Any, dict[str, Any], ModelSpec]:
    """Resolve ``model``, measure its table (resuming ``out``); return (table, module, source, spec).

    Calibrated candidates take their Hessians from ``hessian_batches`` calibration batches, when
    any candidate is calibrated (else none are drawn: the proxies then use the loss batches).
    """
    if batches < 1:
        raise ConfigError(f"--batches must be at least 1, got {batches}")
    if hessian_batches < 1:
        raise ConfigError(f"--hessian-batches must be at least 1, got {hessian_batches}")
    module, source, spec = resolve_model(model)
    spec = _spec_for(model, module, spec)
    skips = BitPlan(default=candidates[0], rules={r: None for r in (*skip, *spec.default_skip)})
    calibrated = any(c.calibration.uses_inputs for c in candidates)
    table = measure_sensitivity(
        module, spec.calibration(batches), candidates, run=spec.run, loss=loss,
        include=lambda name, _: skips.resolve(name) is not None, path=out,
        meta={"model": model, "source": source, "loss": loss, "batches": batches, "skip": list(skip)},
        hessian_batches=spec.calibration(hessian_batches) if calibrated else None,
    )
    return table, module, source, spec


def sensitivity_table(table: SensitivityTable, title: str) -> Table:
    """Layers x candidates, each cell the measured loss (3 significant digits)."""
    view = Table(title=title, title_justify="left")
    view.add_column("layer")
    view.add_column("params", justify="right")
    for s in table.schemes:
        view.add_column(scheme_key(s), justify="right")
    for name, info in table.layers.items():
        cells = table.loss.get(name, {})
        view.add_row(name, f"{info.params:,}", *(f"{cells[k]:.3g}" if (k := scheme_key(s)) in cells else "-"
                                                  for s in table.schemes))
    return view


def analyze_command(
    model: str = typer.Argument(..., help="bundled name (minilm, tiny), transformers/diffusers dir, or pkg.module:factory"),
    out: Path = typer.Option(..., "--out", "-o", help="sensitivity table JSON (resumed when it exists)"),
    bits: str = typer.Option("1,2,3,4,5,6,8", help="candidate bit widths (balanced grid: 8 becomes 7)"),
    grid: Grid = typer.Option(Grid.ASYMMETRIC, help="integer grid of every candidate"),
    method: ScaleMethod = typer.Option(ScaleMethod.ALS, help="scale method of every candidate"),
    group_size: str = typer.Option("64", "--group-size",
                                   help="weights per scale along K, 0 = per channel; several compete: 64,128,0"),
    calibration: str = typer.Option("none", help="quantizers competing per bit width, e.g. none,gptq"),
    rotation: str = typer.Option("0", help="Hadamard input rotations competing (block along K, 0 = none), e.g. 0,128"),
    loss: str = typer.Option("mse", help="output loss: mse, cosine (1 - cosine), kl; or a proxy, no pass per "
                                         "cell: proxy:input_weighted, proxy:hawq"),
    batches: int = typer.Option(8, help="calibration batches the loss of every cell is measured on"),
    hessian_batches: int = typer.Option(HESSIAN_BATCHES, "--hessian-batches",
                                        help="calibration batches the GPTQ/AWQ input Hessians come from"),
    skip: list[str] = typer.Option([], "--skip", help="layer left out: exact name or re:<pattern> (repeatable)"),
) -> None:
    """Measure the sensitivity table: loss of the output when only one layer is quantized, per candidate."""
    console = Console()
    candidates = default_candidates(parse_bits(bits), grid=grid, method=method, group_sizes=parse_group_sizes(group_size),
                                    calibrations=parse_calibrations(calibration), rotations=parse_rotations(rotation))
    started = time.perf_counter()
    table, _, _, _ = run_analysis(model, candidates, out=out, loss=loss, batches=batches, skip=skip,
                                  hessian_batches=hessian_batches)
    console.print(sensitivity_table(table, f"{out}: {table.metric} loss of the output, one layer quantized"))
    rho = table.meta.get("proxy_spearman", {})
    console.print("proxy rank correlation (Spearman) with the measured cells: "
                  + (", ".join(f"{k} {v:.3f}" for k, v in rho.items()) or "-"))
    console.print(f"{len(table.layers)} layers x {len(table.schemes)} candidates in "
                  f"{time.perf_counter() - started:.1f} s this run ({table.meta.get('seconds', 0.0):.1f} s measuring "
                  f"in total; replay {'on' if table.meta.get('replay') else 'off'}); wrote {out}")
