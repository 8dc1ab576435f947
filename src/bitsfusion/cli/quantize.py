"""``bitsfusion quantize MODEL --bits 4 --out DIR``: quantize a model by a plan and save the artifact.

The plan is either ``--plan plan.json`` (a ``BitPlan`` file; it replaces ``--bits``,
``--group-size``, ``--grid``, ``--method`` and ``--nested``) or one scheme for every layer
built from those options. ``--skip`` rules (an exact layer name or ``re:<pattern>``, as in
``BitPlan``) keep layers in floating point and win over the plan; then the model's own
default skips apply (bundled models only).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console

from ..nn import quantize_, save
from ..pack.io import read_manifest
from ..plan import BitPlan
from ..types import Grid, QScheme, ScaleMethod
from ..zoo.resolve import resolve_model
from .inspect import layer_table, skipped_table

__all__ = ["quantize_command", "build_plan", "parse_nested"]


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
    grid: Grid = typer.Option(Grid.SYMMETRIC, help="integer grid"),
    method: ScaleMethod = typer.Option(ScaleMethod.ALS, help="how scales are chosen"),
    nested: str = typer.Option("", callback=parse_nested, help="lower precisions also stored, e.g. 2,3"),
    plan: Optional[Path] = typer.Option(None, "--plan", help="BitPlan JSON (replaces the scheme options)"),
    skip: list[str] = typer.Option([], "--skip", help="layer kept in float: exact name or re:<pattern> (repeatable)"),
) -> None:
    """Quantize MODEL and save it as an artifact (bit-planes + manifest); print the per-layer report."""
    console = Console()
    scheme = None if plan is not None else QScheme(
        bits=bits, group_size=group_size or None, grid=grid, method=method, nested=nested
    )
    with console.status(f"loading {model}"):
        module, source, spec = resolve_model(model)
    the_plan = build_plan(scheme, plan, skip, spec.default_skip if spec is not None else ())
    report = quantize_(module, the_plan, progress=True)
    path = save(module, out, source=source)
    console.print(report.summary())
    manifest = read_manifest(path)
    console.print(layer_table(manifest, title=f"{path}: quantized layers"))
    if report.skipped:
        console.print(skipped_table(report.skipped))
