"""``bitsfusion eval DIR [--model MODEL] [--active-bits B]``: quality of an artifact against its float original.

The float original is rebuilt from the source the manifest recorded at save time (a bundled
name, a factory or a model directory) unless ``--model`` names it. The artifact is loaded
into a second fresh copy of it. Bundled models are judged by their own evaluator (MiniLM:
embedding cosine and top-10 neighbour overlap on 1000 sentences); any other model by the
cosine, MSE and SQNR of its output on fixed inputs. ``--active-bits`` runs every layer on
its top ``B`` bit-planes (a precision the layers must store: their bits or a nested one).
"""

from __future__ import annotations

import contextlib
import math
import time
from pathlib import Path
from typing import Any, Iterator, Optional

import typer
from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from ..errors import ConfigError
from ..nn import load, set_active_bits
from ..pack.io import read_manifest
from ..zoo.resolve import generic_spec, rebuild, resolve_model

__all__ = ["eval_command", "Stages", "artifact_source", "scores_table"]


class Stages:
    """Named, timed steps: a spinner with elapsed time while one runs, a ``done`` line after it.

    ``times`` maps each finished step's name to its wall-clock seconds.
    """

    def __init__(self, console: Console):
        self.console = console
        self.times: dict[str, float] = {}

    @contextlib.contextmanager
    def stage(self, name: str, *, spinner: bool = True) -> Iterator[None]:
        """Time the block as ``name``; ``spinner=False`` when the block shows its own progress bar."""
        start = time.perf_counter()
        if spinner:
            columns = (SpinnerColumn(), TextColumn("{task.description}"), TimeElapsedColumn())
            with Progress(*columns, console=self.console, transient=True) as progress:
                progress.add_task(name, total=None)
                yield
        else:
            yield
        self.times[name] = time.perf_counter() - start
        self.console.print(f"[green]done[/green] {name} [dim]({self.times[name]:.1f} s)[/dim]", highlight=False)


def artifact_source(manifest: dict[str, Any]) -> Any:
    """The model source ``save`` recorded (``{"zoo": ...}``, ``{"factory": ...}``, ``{"path": ...}``)."""
    model = manifest.get("model")
    if isinstance(model, dict) and "source" in model:
        return model["source"]
    return manifest.get("source")


def _source_name(source: Any) -> str:
    if isinstance(source, dict):
        return str(next((source[k] for k in ("zoo", "factory", "path") if k in source), source))
    return str(source)


def scores_table(scores: dict[str, float], title: str) -> Table:
    """The evaluator's named scores, one row each."""
    table = Table(title=title, title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for name, value in scores.items():
        table.add_row(name, "inf" if math.isinf(value) else f"{value:.5f}" if abs(value) < 1e4 else f"{value:.4g}")
    return table


def eval_command(
    artifact: Path = typer.Argument(..., help="artifact directory written by `bitsfusion quantize`"),
    model: Optional[str] = typer.Option(None, "--model", help="the float original (default: the recorded source)"),
    active_bits: Optional[int] = typer.Option(None, "--active-bits", min=1, max=8, help="run on the top B bit-planes"),
) -> None:
    """Evaluate an artifact against the float model it was quantized from."""
    console = Console()
    stages = Stages(console)
    manifest = read_manifest(artifact)
    source = artifact_source(manifest)
    if model is None and source is None:
        raise ConfigError(f"{artifact}: the manifest records no model source; pass the original with --model")

    def build() -> Any:
        return resolve_model(model)[0] if model is not None else rebuild(source)[0]

    with stages.stage("rebuilding the float original"):
        if model is not None:
            reference, _, spec = resolve_model(model)
        else:
            reference, spec = rebuild(source)
    with stages.stage(f"loading {artifact}"):
        candidate = load(artifact, model=build())
        if active_bits is not None:
            set_active_bits(candidate, active_bits)
    spec = spec or generic_spec(model or _source_name(source), build)
    with stages.stage(f"evaluating ({spec.name})"):
        scores = spec.evaluate(reference, candidate)
    bits = f", active bits {active_bits}" if active_bits is not None else ""
    console.print(scores_table(scores, title=f"{artifact} vs float {spec.name}{bits}"))
