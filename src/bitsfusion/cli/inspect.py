"""``bitsfusion inspect DIR``: what an artifact holds, layer by layer, and what it costs on disk.

The artifact is fully validated first (structure and every tensor's SHA-256), so a corrupt
or truncated artifact fails here with a one-line ``FormatError`` rather than later.
Bytes and bits per weight are the stored counting of ``pack.accounting``: bit-planes with
their row padding, float16 scales, zeros and nested-precision scales, all counted.
``--heatmap bits.png`` also draws the per-layer bits as a heat map: one row per block (the
layer name up to its first number, e.g. ``encoder.layer.3``), one column per role within a
block (the rest of the name, e.g. ``attention.self.query``); layers with no number form one row.
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any, Optional, Sequence

import typer
from rich.console import Console
from rich.table import Table

from ..pack.accounting import bits_per_weight, packed_nbytes
from ..pack.format import TORCH_DTYPES
from ..pack.io import artifact_nbytes, load_artifact
from ..pack.packed import PackedWeight
from ..errors import ConfigError
from ..types import QScheme

__all__ = ["inspect_command", "layer_table", "skipped_table", "totals_table", "artifact_totals", "fmt_bytes",
           "bits_grid", "plot_heatmap"]


def fmt_bytes(n: float) -> str:
    """``1536 -> "1.50 KiB"``; bytes below 1 KiB as an integer."""
    units = ("B", "KiB", "MiB", "GiB")
    i = 0
    while n >= 1024 and i < len(units) - 1:
        n /= 1024
        i += 1
    return f"{n:,.0f} B" if i == 0 else f"{n:,.2f} {units[i]}"


def _scheme_row(fqn: str, entry: dict[str, Any]) -> list[str]:
    scheme = QScheme.from_dict(entry["scheme"])
    shape = (int(entry["shape"][0]), int(entry["shape"][1]))
    bits = str(scheme.bits) + (f" (+{','.join(map(str, scheme.nested))})" if scheme.nested else "")
    err = entry.get("weight_error")
    return [
        fqn, str(entry.get("type", "?")), "x".join(map(str, shape)), bits,
        "channel" if scheme.group_size is None else str(scheme.group_size),
        scheme.grid.value, scheme.method.value + (f" rot{scheme.rotation}" if scheme.rotation else ""),
        f"{packed_nbytes(scheme, shape):,}", f"{bits_per_weight(scheme, shape):.3f}",
        f"{err:.2e}" if isinstance(err, (int, float)) else "-",
    ]


def layer_table(manifest: dict[str, Any], title: str = "quantized layers") -> Table:
    """One row per quantized layer: layer, type, shape, bits, group, grid, method (with the Hadamard rotation's
    block, ``rot128``, when the input is rotated), bytes, bits/w, weight error."""
    table = Table(title=title, title_justify="left")
    for col in ("layer", "type", "shape", "bits", "group", "grid", "method"):
        table.add_column(col)
    for col in ("bytes", "bits/w", "weight err"):
        table.add_column(col, justify="right")
    for fqn, entry in manifest["layers"].items():
        table.add_row(*_scheme_row(fqn, entry))
    return table


def skipped_table(skipped: Sequence[Any], title: str = "kept in float") -> Table:
    """One row per module ``quantize_`` left as it was: layer, type, reason, and the plan rule that decided."""
    table = Table(title=title, title_justify="left")
    for col in ("layer", "type", "reason", "rule"):
        table.add_column(col)
    for s in skipped:
        table.add_row(s.fqn or "(root)", s.type, s.reason, s.rule or "-")
    return table


def artifact_totals(manifest: dict[str, Any], path: Path) -> dict[str, float]:
    """Quantized weights, their bytes and bits per weight; float tensor bytes; bytes on disk."""
    q_weights = q_bytes = 0
    packed_tensors: set[str] = set()
    for fqn, entry in manifest["layers"].items():
        scheme = QScheme.from_dict(entry["scheme"])
        shape = (int(entry["shape"][0]), int(entry["shape"][1]))
        q_weights += shape[0] * shape[1]
        q_bytes += packed_nbytes(scheme, shape)
        packed_tensors.update(f"{fqn}.{suffix}" for suffix in PackedWeight.tensor_specs(scheme, shape))
    float_bytes = sum(
        math.prod(t["shape"]) * TORCH_DTYPES[t["dtype"]].itemsize
        for name, t in manifest["tensors"].items()
        if name not in packed_tensors
    )
    return {
        "layers": len(manifest["layers"]),
        "quantized_weights": q_weights,
        "quantized_bytes": q_bytes,
        "bits_per_weight": 8 * q_bytes / q_weights if q_weights else math.nan,
        "float_bytes": float_bytes,
        "disk_bytes": artifact_nbytes(path),
    }


def totals_table(totals: dict[str, float]) -> Table:
    """The artifact's totals as a two-column table."""
    table = Table(title="totals", title_justify="left", show_header=False)
    table.add_column("what")
    table.add_column("value", justify="right")
    table.add_row("quantized layers", f"{totals['layers']:,}")
    table.add_row("quantized weights", f"{totals['quantized_weights']:,}")
    table.add_row("quantized layer bytes (all overhead)", fmt_bytes(totals["quantized_bytes"]))
    table.add_row("bits per quantized weight (all overhead)", f"{totals['bits_per_weight']:.3f}")
    table.add_row("float tensors (kept as stored)", fmt_bytes(totals["float_bytes"]))
    table.add_row("artifact on disk (safetensors + manifest)", fmt_bytes(totals["disk_bytes"]))
    return table


_BLOCK = re.compile(r"^(.*?\.\d+)\.(.+)$")


def bits_grid(bits: dict[str, float]) -> tuple[list[str], list[str], list[list[float]]]:
    """``(rows, cols, values)``: layer bits laid out as blocks x roles (NaN where a block lacks a role).

    ``{"enc.0.q": 2, "enc.0.k": 4, "enc.1.q": 3, "head": 8}`` -> rows ``["enc.0", "enc.1", "(other)"]``,
    cols ``["q", "k", "head"]``, values ``[[2, 4, nan], [3, nan, nan], [nan, nan, 8]]``.
    """
    rows: dict[str, dict[str, float]] = {}
    cols: dict[str, None] = {}
    for name, b in bits.items():
        m = _BLOCK.match(name)
        row, col = (m.group(1), m.group(2)) if m else ("(other)", name)
        rows.setdefault(row, {})[col] = b
        cols.setdefault(col)
    names = [r for r in rows if r != "(other)"] + (["(other)"] if "(other)" in rows else [])
    return names, list(cols), [[rows[r].get(c, math.nan) for c in cols] for r in names]


def plot_heatmap(bits: dict[str, float], out: Path, title: str) -> Path:
    """Write the per-layer bits as an annotated heat map image (matplotlib, Agg backend)."""
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("the heat map needs matplotlib: pip install matplotlib") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rows, cols, values = bits_grid(bits)
    data = np.array(values, dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * len(cols), 1.2 + 0.45 * len(rows)))
    im = ax.imshow(np.ma.masked_invalid(data), cmap="viridis", aspect="auto", vmin=1, vmax=8)
    for i in range(len(rows)):
        for j in range(len(cols)):
            if not math.isnan(data[i, j]):
                ax.text(j, i, f"{data[i, j]:g}", ha="center", va="center", color="w", fontsize=8)
    ax.set_xticks(range(len(cols)), cols, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    fig.colorbar(im, ax=ax, label="stored bits per code")
    ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


def inspect_command(
    artifact: Path = typer.Argument(..., help="artifact directory written by `bitsfusion quantize`"),
    heatmap: Optional[Path] = typer.Option(None, "--heatmap", help="also draw per-layer bits as an image"),
) -> None:
    """Per-layer table of a saved artifact (scheme, bytes, bits/weight, weight error) and its totals."""
    console = Console()
    manifest, _ = load_artifact(artifact)
    console.print(layer_table(manifest, title=f"{artifact}: quantized layers"))
    totals = artifact_totals(manifest, artifact)
    console.print(totals_table(totals))
    if heatmap is not None:
        bits = {fqn: float(e["scheme"]["bits"]) for fqn, e in manifest["layers"].items()}
        plot_heatmap(bits, heatmap, f"{artifact.name}: bits per layer ({totals['bits_per_weight']:.2f} stored "
                                    "bits/weight overall)")
        console.print(f"wrote {heatmap}")
