"""``bitsfusion pareto sens.json --out pareto.png``: predicted quality against bits per weight, in one plot.

Two series from the table: *uniform* (each candidate scheme given to every layer) and *mixed* (the
exact optimum at each ``--budgets`` value); the plan at ``--mark`` bits is marked. Loss is the
table's metric (log scale; lower is better); the x axis is bits per weight in ``--counting``
(stored: every byte of the packed format; paper: log2 of the levels). ``--check`` also measures
each mixed plan on the model the table was made from (all its layers quantized at once, the
same calibration batches and loss) and plots the measured loss beside the prediction.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from ..allocate import TableAllocation, check_additivity, pareto_from_table, uniform_points
from ..analysis import LOSSES, OutputProbe, SensitivityTable
from ..errors import ConfigError
from ..zoo.resolve import generic_spec, resolve_model

__all__ = ["pareto_command", "plot_pareto", "measured_losses"]

DEFAULT_BUDGETS = "1.5,1.75,2,2.25,2.5,2.75,3,3.5,4,5,6,8"


def plot_pareto(
    table: SensitivityTable, front: list[TableAllocation], out: Path, *, counting: str, mark: float | None,
    measured: list[float] | None = None,
) -> Path:
    """Write the plot (PNG by ``out``'s suffix, matplotlib's Agg backend)."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the pareto plot needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    uni = uniform_points(table, counting)
    ax.plot([u[1] for u in uni], [u[2] for u in uni], "s--", color="tab:gray", label="uniform (predicted)")
    for scheme, x, y in uni:
        ax.annotate(f"{scheme.bits}b", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    xs = [p.avg_bits(counting) for p in front]
    ax.plot(xs, [p.predicted_loss for p in front], "o-", color="tab:blue", label="mixed, exact (predicted)")
    if measured is not None:
        ax.plot(xs, measured, "x:", color="tab:red", label="mixed (measured, whole plan)")
    if mark is not None and front:
        chosen = min(front, key=lambda p: abs(p.avg_bits(counting) - mark))
        ax.plot([chosen.avg_bits(counting)], [chosen.predicted_loss], "*", color="tab:orange", markersize=16,
                label=f"chosen: {chosen.avg_bits(counting):.2f} bits")
    ax.set_yscale("log")
    ax.set_xlabel(f"bits per weight ({counting} counting" + (", every overhead)" if counting == "stored" else ")"))
    ax.set_ylabel(f"{table.metric} loss of the output (lower is better)")
    ax.set_title(f"{table.meta.get('model', 'model')}: {len(table.layers)} layers")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def measured_losses(table: SensitivityTable, front: list[TableAllocation]) -> list[float]:
    """Measured loss of each plan on the model the table names (``meta['model']``), whole plan at once."""
    model, loss, batches = table.meta.get("model"), table.meta.get("loss", table.metric), table.meta.get("batches")
    if isinstance(loss, str) and loss.startswith("proxy:"):
        raise ConfigError(f"--check compares predicted with measured output loss, and this table holds {loss} "
                          "values, not an output loss: analyze with --loss mse (or cosine, kl) to check additivity")
    if not isinstance(model, str) or loss not in LOSSES or not isinstance(batches, int):
        raise ConfigError("--check needs a table made by `bitsfusion analyze` (it records the model, loss and "
                          "batches); this one does not")
    module, _, spec = resolve_model(model)
    spec = spec or generic_spec(model, lambda: module)
    calibrated = any(s.calibration.uses_inputs for s in table.schemes)
    h_batches = table.meta.get("hessian_batches", batches)
    separate = calibrated and isinstance(h_batches, int) and h_batches != batches
    probe = OutputProbe(module, spec.calibration(batches), list(table.layers), run=spec.run, loss=LOSSES[loss],
                        moments=calibrated, hessian_batches=spec.calibration(h_batches) if separate else None)
    return [p.measured for p in check_additivity(probe, front)]


def pareto_command(
    table_path: Path = typer.Argument(..., metavar="SENS_JSON", help="table written by `bitsfusion analyze`"),
    out: Path = typer.Option(..., "--out", "-o", help="plot to write (e.g. pareto.png)"),
    budgets: str = typer.Option(DEFAULT_BUDGETS, help="average bits per weight of the mixed points"),
    mark: Optional[float] = typer.Option(None, help="mark the mixed point nearest these average bits"),
    counting: str = typer.Option("stored", help="stored (every byte) or paper (log2 levels)"),
    check: bool = typer.Option(False, "--check", help="also measure each mixed plan on the model (additivity)"),
) -> None:
    """Plot predicted quality vs bits per weight: uniform candidates and the exact mixed front."""
    console = Console()
    table = SensitivityTable.load(table_path)
    try:
        levels = [float(b) for b in budgets.split(",") if b.strip()]
    except ValueError:
        raise ConfigError(f"--budgets {budgets!r}: expected comma-separated numbers such as 2,2.5,3") from None
    front = pareto_from_table(table, levels, counting=counting)
    if not front:
        raise ConfigError(f"no budget in {budgets} is feasible for this table; raise them")
    measured = measured_losses(table, front) if check else None
    plot_pareto(table, front, out, counting=counting, mark=mark, measured=measured)
    view = Table(title=f"mixed-precision front ({counting} counting; {table.metric} loss)", title_justify="left")
    for col in ("bits/w stored", "bits/w paper", "bytes", "predicted", *(("measured", "measured/predicted")
                                                                         if measured else ())):
        view.add_column(col, justify="right")
    for i, p in enumerate(front):
        extra = (f"{measured[i]:.4g}", f"{measured[i] / p.predicted_loss:.3f}") if measured else ()
        view.add_row(f"{p.bits_per_weight:.3f}", f"{p.paper_bits_per_weight:.3f}", f"{p.nbytes:,}",
                     f"{p.predicted_loss:.4g}", *extra)
    console.print(view)
    console.print(f"wrote {out}")
