"""``bitsfusion demo``: MiniLM at 4 bits, end to end, from float weights to a reloaded artifact.

Steps (each timed): build the pretrained fp32 all-MiniLM-L6-v2; embed the 1000 evaluation
sentences with it; quantize a copy (every encoder Linear and the pooler; default 4 bits,
groups of 64, symmetric grid, ALS scales); save the artifact (to ``--out`` or a temporary
directory); load it from disk into a fresh skeleton; embed the sentences again and compare.

The table puts the artifact beside the fp32 model: bits per quantized weight with every
overhead counted, encoder Linear bytes, the whole model on disk (the artifact keeps the
embeddings and LayerNorms in float32, as stored), mean / 5th-percentile embedding cosine and
top-10 neighbour overlap.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..nn import load, quantize_, save
from ..pack.accounting import packed_nbytes
from ..pack.io import artifact_nbytes, read_manifest
from ..plan import BitPlan
from ..types import Grid, QScheme, ScaleMethod
from ..zoo import get_model_spec
from ..zoo.minilm import model_dir, reference_embeddings
from .evaluate import Stages
from .inspect import fmt_bytes

__all__ = ["demo_command", "demo_rows"]

ENCODER_PREFIX = "encoder."


def _layer_bytes(manifest: dict[str, Any], prefix: str) -> tuple[int, int]:
    """``(weights, stored bytes)`` of the quantized layers whose name starts with ``prefix``."""
    weights = nbytes = 0
    for fqn, entry in manifest["layers"].items():
        if fqn.startswith(prefix):
            shape = (int(entry["shape"][0]), int(entry["shape"][1]))
            weights += shape[0] * shape[1]
            nbytes += packed_nbytes(QScheme.from_dict(entry["scheme"]), shape)
    return weights, nbytes


def demo_rows(manifest: dict[str, Any], artifact: Path, scores: dict[str, float]) -> list[tuple[str, str, str]]:
    """``(quantity, fp32, bitsfusion)`` rows of the demo table, from the saved manifest and the scores."""
    q_weights, q_bytes = _layer_bytes(manifest, "")
    enc_weights, enc_bytes = _layer_bytes(manifest, ENCODER_PREFIX)
    fp32_file = (model_dir() / "model.safetensors").stat().st_size
    disk = artifact_nbytes(artifact)
    return [
        ("bits per quantized weight (all overhead)", "32", f"{8 * q_bytes / q_weights:.3f}"),
        ("quantized layers / weights", "-", f"{len(manifest['layers'])} / {q_weights:,}"),
        ("encoder Linear bytes", fmt_bytes(4 * enc_weights), f"{fmt_bytes(enc_bytes)} ({4 * enc_weights / enc_bytes:.2f}x)"),
        ("whole model on disk", fmt_bytes(fp32_file), f"{fmt_bytes(disk)} ({fp32_file / disk:.2f}x)"),
        ("mean cosine to fp32", "1", f"{scores['mean_cos']:.5f}"),
        ("5th-percentile cosine", "1", f"{scores['p5_cos']:.5f}"),
        ("top-10 neighbour overlap", "1", f"{scores['top10_overlap']:.4f}"),
    ]


def demo_command(
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="keep the artifact here (default: a temp dir)"),
    bits: int = typer.Option(4, min=1, max=8, help="bits per weight code"),
    group_size: int = typer.Option(64, "--group-size", min=1, help="weights per scale along K"),
) -> None:
    """Quantize MiniLM, save, reload from disk and evaluate it against fp32 on 1000 sentences."""
    console = Console()
    stages = Stages(console)
    spec = get_model_spec("minilm")
    scheme = QScheme(bits=bits, group_size=group_size, grid=Grid.SYMMETRIC, method=ScaleMethod.ALS)
    with tempfile.TemporaryDirectory(prefix="bitsfusion-demo-") as tmp:
        path = out if out is not None else Path(tmp) / f"minilm-{bits}bit"
        with stages.stage("build: fp32 all-MiniLM-L6-v2"):
            reference = spec.build()
        with stages.stage("reference: embed 1000 sentences in fp32"):
            reference_embeddings(reference)
        with stages.stage(f"quantize: {scheme}", spinner=False):
            model = copy.deepcopy(reference)
            quantize_(model, BitPlan(default=scheme, rules={p: None for p in spec.default_skip}), progress=True)
        with stages.stage(f"save: {path}"):
            save(model, path, source={"zoo": "minilm"})
        del model
        with stages.stage("load: from disk into a fresh skeleton"):
            loaded = load(path, model=spec.build())
        with stages.stage("evaluate: embed 1000 sentences with the artifact, compare"):
            scores = spec.evaluate(reference, loaded)
        rows = demo_rows(read_manifest(path), path, scores)
    table = Table(title=f"all-MiniLM-L6-v2, {scheme}", title_justify="left")
    table.add_column("")
    table.add_column("fp32", justify="right")
    table.add_column("bitsfusion", justify="right")
    for row in rows:
        table.add_row(*row)
    console.print(table)
    times = ", ".join(f"{name.split(':')[0]} {sec:.1f} s" for name, sec in stages.times.items())
    console.print(f"times: {times}; total {sum(stages.times.values()):.1f} s", highlight=False)
