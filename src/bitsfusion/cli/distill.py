"""``bitsfusion distill MODEL --plan plan.json --out DIR``: quantise by a plan, recover quality by distillation.

The student is MODEL ``prepare``-d by the plan (``--plan``, or one scheme from ``--bits``/``--group-size``/
``--grid``/``--nested`` as in ``quantize``; GPTQ/AWQ schemes calibrate on the model's calibration batches),
the teacher a fresh float copy. Training runs the model's ``DistillRecipe`` on ``--data`` (one unlabelled
sentence per line; default: the bundled distillation text) for ``--steps`` steps, validating every
``--eval-every`` steps on held-out data and keeping the best state. ``--train-bits 4,3,2`` sums the loss over
those precisions (nested training; the plan must store them, e.g. ``--nested 3,2``), ``--bit-weights 1,1,1.25``
weighs them (the MiniLM nested benchmark weighs 2 bits 1.25: docs/BENCHMARKS.md, *Distillation*).

``DIR`` receives ``checkpoint/`` (resumable: run the same command again after a kill), ``model/`` (the
packed artifact, as ``quantize`` writes it) and ``report.json`` (configuration, quality before and after on
the model's evaluation data, the training history). Several processes or GPUs:
``accelerate launch --num_processes N $(which bitsfusion) distill ...`` (only the main process writes).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.table import Table

from ..errors import ConfigError
from ..jsonfile import write_json
from ..nn import active_bits_of, save, set_active_bits
from ..pack.io import read_manifest
from ..train import convert, prepare
from ..train.distill import DistillConfig
from ..types import Grid, QScheme, ScaleMethod
from ..zoo.registry import model_names, get_model_spec
from ..zoo.resolve import resolve_model
from .analyze import HESSIAN_BATCHES
from .quantize import build_plan, parse_nested

__all__ = ["distill_command", "read_lines"]


def read_lines(path: Path) -> list[str]:
    """Non-empty lines of a UTF-8 text file; ConfigError naming the file when unreadable or empty."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"--data {path}: no such file; give a text file with one sentence per line") from None
    except UnicodeDecodeError as e:
        raise ConfigError(f"--data {path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise ConfigError(f"--data {path} holds no non-empty lines; give one sentence per line")
    return lines


def parse_weights(text: str) -> tuple[float, ...]:
    """``"1,1,1.25" -> (1.0, 1.0, 1.25)``; ``""`` -> ``()`` (equal weights); a bad value raises ``ConfigError``."""
    if not text.strip():
        return ()
    try:
        weights = tuple(float(part) for part in text.split(","))
    except ValueError:
        raise ConfigError(f"--bit-weights: expected comma-separated numbers such as 1,1,1.25; got {text!r}") from None
    if any(not w >= 0.0 or w == float("inf") for w in weights):
        raise ConfigError(f"--bit-weights: weights must be finite and >= 0; got {text!r}")
    return weights


def _recipe_of(spec: Any, model: str) -> Any:
    with_recipe = [n for n in model_names() if get_model_spec(n).distill is not None]
    if spec is None or spec.distill is None:
        raise ConfigError(f"{model!r} has no distillation recipe (how to batch its data, what to match); "
                          f"bundled models with one: {', '.join(with_recipe)}. From Python, fill in a "
                          "bitsfusion.train.DistillRecipe for your model")
    return spec.distill()


def _scores_table(rows: dict[str, dict[str, float]]) -> Table:
    table = Table(title="quality against the float model (evaluation data)")
    names = sorted({k for r in rows.values() for k in r})
    table.add_column("model")
    for n in names:
        table.add_column(n, justify="right")
    for label, scores in rows.items():
        table.add_row(label, *(f"{scores[n]:.4f}" if n in scores else "-" for n in names))
    return table


def distill_command(
    model: str = typer.Argument(..., help="bundled model with a distillation recipe (minilm)"),
    out: Path = typer.Option(..., "--out", "-o", help="directory for checkpoint/, model/ and report.json"),
    plan: Optional[Path] = typer.Option(None, "--plan", help="BitPlan JSON (replaces the scheme options)"),
    bits: int = typer.Option(2, min=1, max=8, help="bits per weight code (without --plan)"),
    group_size: int = typer.Option(64, "--group-size", min=0, help="weights per scale along K; 0 = per channel"),
    grid: Grid = typer.Option(Grid.ASYMMETRIC, help="integer grid"),
    method: ScaleMethod = typer.Option(ScaleMethod.ALS, help="how the starting scales are chosen"),
    calibration: str = typer.Option("gptq", help="post-training quantizer the training starts from: none, gptq, awq"),
    nested: str = typer.Option("", callback=parse_nested, help="lower precisions also stored, e.g. 3,2"),
    rotation: int = typer.Option(0, "--rotation", help="Hadamard rotation of each layer's input, the block along K "
                                                       "(a power of two, e.g. 128; 0 = none)"),
    skip: list[str] = typer.Option([], "--skip", help="layer kept in float: exact name or re:<pattern> (repeatable)"),
    data: Optional[Path] = typer.Option(None, "--data", help="unlabelled text, one sentence per line "
                                        "(default: the bundled distillation sentences)"),
    steps: int = typer.Option(2000, min=1, help="optimizer steps"),
    lr: float = typer.Option(1e-4, min=0.0, help="learning rate of latent weights and float parameters"),
    scale_lr: float = typer.Option(1e-3, "--scale-lr", min=0.0, help="learning rate of log-scales and zeros"),
    feature_weight: float = typer.Option(0.01, "--feature-weight", min=0.0, help="weight of block-output matching"),
    dampen: float = typer.Option(0.0, min=0.0, help="weight pulling latent weights to their levels, against "
                                 "oscillating codes (0: off)"),
    train_bits: str = typer.Option("", "--train-bits", callback=parse_nested,
                                   help="nested training: sum the loss over these precisions, e.g. 4,3,2"),
    bit_weights: str = typer.Option("", "--bit-weights",
                                    help="weights of the --train-bits losses, one each, e.g. 1,1,1.25 (default: equal)"),
    train_float: str = typer.Option("norms", "--train-float", help="other float parameters trained: none, norms, all"),
    eval_every: int = typer.Option(250, "--eval-every", min=0, help="validate every N steps (0: never)"),
    patience: int = typer.Option(0, min=0, help="stop after N validations without improvement (0: never)"),
    checkpoint_every: int = typer.Option(200, "--checkpoint-every", min=1, help="checkpoint every N steps"),
    seed: int = typer.Option(0, help="seed of the batch order"),
) -> None:
    """Quantise MODEL by a plan, distil it from the float model, save the packed artifact and a report."""
    console = Console()
    t0 = time.perf_counter()
    config = DistillConfig(steps=steps, lr=lr, scale_lr=scale_lr, feature_weight=feature_weight, dampen=dampen,
                           bits=train_bits, bit_weights=parse_weights(bit_weights),
                           train_float=train_float, eval_every=eval_every, patience=patience,
                           checkpoint_every=checkpoint_every, seed=seed)
    with console.status(f"loading {model}"):
        student, source, spec = resolve_model(model)
    recipe = _recipe_of(spec, model)
    lines = read_lines(data) if data is not None else None
    scheme = None if plan is not None else QScheme(bits=bits, group_size=group_size or None, grid=grid, method=method,
                                                  nested=nested, calibration=calibration, rotation=rotation)
    the_plan = build_plan(scheme, plan, skip, spec.default_skip)
    teacher = spec.build()
    calibrated = any(s is not None and s.calibration.uses_inputs for s in (the_plan.default, *the_plan.rules.values()))
    kwargs: dict[str, Any] = {"calibration_data": spec.calibration(HESSIAN_BATCHES), "forward": spec.run} \
        if calibrated else {}
    report = prepare(student, the_plan, **kwargs)
    if train_bits:
        set_active_bits(student, max(train_bits))  # also checks that every layer stores what training asks
    before = spec.evaluate(teacher, student)
    result = recipe.run(teacher, student, lines, config=config, checkpoint_dir=out / "checkpoint")
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return
    after: dict[str, dict[str, float]] = {}
    for b in sorted(train_bits, reverse=True) or [None]:
        if b is not None:
            set_active_bits(student, b)
        after[f"distilled @{b} bits" if b is not None else "distilled"] = spec.evaluate(teacher, student)
    convert(student)
    if train_bits:
        set_active_bits(student, max(train_bits))
    path = save(student, out / "model", source=source)
    totals = report.totals()
    rows = {"post-training (start)": before, **after}
    write_json(out / "report.json", {
        "model": model, "plan": the_plan.to_dict(), "config": config.to_dict(),
        "bits_per_weight": totals["bits_per_weight"], "packed_bytes": totals["packed_bytes"],
        "quality": rows, "steps": result.steps, "resumed_from": result.resumed_from,
        "stopped_early": result.stopped_early, "best": result.best, "best_step": result.best_step,
        "evaluations": result.evaluations, "history": result.history, "train_s": result.wall_s,
        "wall_s": time.perf_counter() - t0, "active_bits": sorted(set(active_bits_of(student).values())),
    })
    console.print(_scores_table(rows))
    manifest = read_manifest(path)
    console.print(f"{path}: {len(manifest['layers'])} quantized layers, {totals['bits_per_weight']:.3f} bits per "
                  f"weight (every byte counted); {result.steps} steps in {result.wall_s:.0f} s"
                  + (f" (resumed at step {result.resumed_from})" if result.resumed_from else "")
                  + (f"; best validation at step {result.best_step}" if result.best_step is not None else ""),
                  highlight=False)
