"""``bitsfusion quantize MODEL --bits 4 --out DIR``: quantize a model by a plan and save the artifact.

The plan is either ``--plan plan.json`` (a ``BitPlan`` file; it replaces ``--bits``,
``--group-size``, ``--grid``, ``--method`` and ``--nested``) or one scheme for every layer
built from those options. ``--skip`` rules (an exact layer name or ``re:<pattern>``, as in
``BitPlan``) keep layers in floating point and win over the plan; then the model's own
default skips apply (bundled models only).

The shortcut ``--avg-bits 2.0`` (or ``--max-bytes 6MB``) runs ``analyze`` (candidates 1,2,3,4,5,6,8
bits x ``--candidate-groups`` (default 64, 128 and per channel) x ``--calibration`` (default ``gptq``) on
``--grid``/``--method``; table kept in ``--sens`` when given, resumed from it) and ``allocate`` (exact, stored counting unless ``--counting paper``; ``--pin``), then
quantizes by the plan it found.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console

from ..analysis import default_candidates
from ..errors import ConfigError
from ..nn import quantize_, save
from ..pack.io import read_manifest
from ..plan import BitPlan
from ..types import Grid, QScheme, ScaleMethod
from ..zoo.registry import ModelSpec
from ..zoo.resolve import resolve_model
from .allocate import allocate_from, summary_lines
from .analyze import HESSIAN_BATCHES, parse_calibrations, parse_group_sizes, parse_rotations, run_analysis
from .inspect import layer_table, skipped_table

__all__ = ["quantize_command", "build_plan", "parse_nested"]

ANALYSIS_BATCHES = 8  # calibration batches each cell's loss is measured on in the --avg-bits shortcut


def parse_nested(text: str) -> tuple[int, ...]:
    """``"2,3" -> (2, 3)``; ``""`` -> ``()``. Typer reports a bad value as a usage error (exit 2)."""
    if not text.strip():
        return ()
    try:
        return tuple(int(part) for part in text.split(","))
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated bit widths such as 2,3; got {text!r}") from None


def build_plan(scheme: QScheme | None, plan_file: Path | None, skip: list[str], default_skip: tuple[str, ...]) -> BitPlan:
    """The plan to run: ``plan_file`` or ``scheme`` for every layer, with ``skip`` then ``default_skip`` kept float."""
    base = BitPlan.load(plan_file) if plan_file is not None else BitPlan(default=scheme)
    rules: dict[str, QScheme | None] = {rule: None for rule in (*skip, *default_skip)}
    for rule, value in base.rules.items():
        rules.setdefault(rule, value)
    return BitPlan(default=base.default, rules=rules)


def quantize_command(
    model: str = typer.Argument(..., help="bundled name (minilm, tiny), transformers/diffusers dir, or pkg.module:factory"),
    out: Path = typer.Option(..., "--out", "-o", help="artifact directory to write"),
    bits: int = typer.Option(4, min=1, max=8, help="bits per weight code"),
    group_size: int = typer.Option(64, "--group-size", min=0, help="weights per scale along K; 0 = per channel"),
    grid: Grid = typer.Option(Grid.ASYMMETRIC, help="integer grid (asymmetric: the best measured at every width)"),
    method: ScaleMethod = typer.Option(ScaleMethod.ALS, help="how scales are chosen"),
    nested: str = typer.Option("", callback=parse_nested, help="lower precisions also stored, e.g. 2,3"),
    rotation: int = typer.Option(0, "--rotation", help="Hadamard rotation of each layer's input, the block along K "
                                                       "(a power of two, e.g. 128; 0 = none)"),
    plan: Optional[Path] = typer.Option(None, "--plan", help="BitPlan JSON (replaces the scheme options)"),
    skip: list[str] = typer.Option([], "--skip", help="layer kept in float: exact name or re:<pattern> (repeatable)"),
    avg_bits: Optional[float] = typer.Option(None, "--avg-bits", min=0.0,
                                             help="mixed precision: analyze + allocate to this average bits/weight"),
    max_bytes: Optional[str] = typer.Option(None, "--max-bytes", help="mixed precision under stored bytes (6MB)"),
    counting: str = typer.Option("stored", help="how --avg-bits counts: stored (every byte) or paper"),
    pin: list[str] = typer.Option([], "--pin", help="mixed precision: NAME=BITS fixes a layer (repeatable)"),
    sens: Optional[Path] = typer.Option(None, "--sens", help="mixed precision: sensitivity table to keep/resume"),
    calibration: str = typer.Option("gptq", help="mixed precision: quantizers competing per bits, e.g. none,gptq"),
    candidate_groups: str = typer.Option("64,128,0", "--candidate-groups",
                                         help="mixed precision: group sizes competing per layer (0 = per channel)"),
    candidate_rotations: str = typer.Option("0", "--candidate-rotations",
                                            help="mixed precision: Hadamard rotations competing per layer, e.g. 0,128"),
    sequential: bool = typer.Option(False, "--sequential",
                                    help="fit calibrated layers in forward order to the float outputs (nn.sequential)"),
    calibration_batches: int = typer.Option(HESSIAN_BATCHES, "--calibration-batches", min=1,
                                            help="calibration batches for calibrated schemes (minilm: 16 sentences each)"),
) -> None:
    """Quantize MODEL and save it as an artifact (bit-planes + manifest); print the per-layer report."""
    console = Console()
    scheme = None if plan is not None else QScheme(
        bits=bits, group_size=group_size or None, grid=grid, method=method, nested=nested, rotation=rotation
    )
    if avg_bits is not None or max_bytes is not None:
        if plan is not None:
            raise ConfigError("--plan and --avg-bits/--max-bytes both choose the plan: give one")
        candidates = default_candidates(grid=grid, method=method, group_sizes=parse_group_sizes(candidate_groups),
                                        calibrations=parse_calibrations(calibration),
                                        rotations=parse_rotations(candidate_rotations))
        table, module, source, spec = run_analysis(model, candidates, out=sens, loss="mse", batches=ANALYSIS_BATCHES,
                                                   skip=skip)
        if spec is not None:  # the model's default pins (digits: conv_in/conv_out at 8), unless --pin names them
            pin = [*(f"{k}={v}" for k, v in spec.default_pins.items() if not any(p.startswith(f"{k}=") for p in pin)),
                   *pin]
        result = allocate_from(table, avg_bits=avg_bits, max_bytes=max_bytes, method="exact", counting=counting,
                               pins=pin, percentile=90.0)
        for line in summary_lines(result, table.metric):
            console.print(line, highlight=False)
        _quantize_and_save(console, module, result.plan(), source, out, spec, sequential, calibration_batches)
        return
    with console.status(f"loading {model}"):
        module, source, spec = resolve_model(model)
    the_plan = build_plan(scheme, plan, skip, spec.default_skip if spec is not None else ())
    _quantize_and_save(console, module, the_plan, source, out, spec, sequential, calibration_batches)


def _quantize_and_save(
    console: Console, module: Any, the_plan: BitPlan, source: Any, out: Path, spec: ModelSpec | None,
    sequential: bool = False, calibration_batches: int = HESSIAN_BATCHES,
) -> None:
    """Quantize by the plan (calibrated schemes get the spec's calibration batches), save, print the report."""
    calibrated = any(s is not None and s.calibration.uses_inputs for s in (the_plan.default, *the_plan.rules.values()))
    kwargs: dict[str, Any] = {}
    if sequential and (spec is None or not calibrated):
        raise ConfigError("--sequential fits calibrated layers (a gptq/awq scheme) on the bundled model's calibration "
                          "batches; " + ("this plan has no calibrated scheme (use --calibration gptq or a plan "
                                         "with calibration)" if spec is not None else
                                         "this model has none: quantize a bundled model, or call "
                                         "quantize_(..., calibration_data=batches, sequential=True) from Python"))
    if calibrated and spec is not None:
        kwargs = {"calibration_data": spec.calibration(calibration_batches), "forward": spec.run,
                  "sequential": sequential}
    report = quantize_(module, the_plan, progress=True, **kwargs)
    path = save(module, out, source=source)
    console.print(report.summary())
    manifest = read_manifest(path)
    console.print(layer_table(manifest, title=f"{path}: quantized layers"))
    if report.skipped:
        console.print(skipped_table(report.skipped))
