"""``bitsfusion demo``: the main job end to end on a bundled model, from float weights to a reloaded artifact.

``--model digits`` (the default; ``cli.demo_digits``): BitsFusion on the bundled diffusion UNet at 1.99
bits: analyze, allocate, GPTQ, distill, cache the time embedding, save, reload, sample, and a table of size,
bits, conditional accuracy, Frechet distance and MSE to fp32 against fp32 and uniform 2-bit, with the
sample grids in one PNG. ``--model minilm`` (``cli.demo_minilm``): the same flow on the pretrained
all-MiniLM-L6-v2 at 2.0 bits, judged by embedding cosine on 1000 sentences.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from .analyze import parse_bits

__all__ = ["demo_command", "DEMO_MODELS"]

DEMO_MODELS = {"digits": 1.99, "minilm": 2.0}  # model -> its default budget (stored bits per weight)


def demo_command(
    model: str = typer.Option("digits", "--model", "-m", help=f"bundled model: {' or '.join(DEMO_MODELS)}"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="keep the artifact here (default: a temp dir)"),
    avg_bits: Optional[float] = typer.Option(None, "--avg-bits", min=1.1, max=8.5,
                                             help="budget: average stored bits per weight, every overhead counted "
                                                  "(default: 1.99 for digits, 2.0 for minilm)"),
    candidate_bits: str = typer.Option("1,2,3,4", "--candidate-bits", callback=parse_bits,
                                       help="bit widths each layer may get"),
    sens: Optional[Path] = typer.Option(None, "--sens", help="keep (and resume) the sensitivity table here"),
    distill_steps: Optional[int] = typer.Option(None, "--distill-steps", min=0,
                                                help="distillation steps after quantization (0: post-training "
                                                     "only; default 300 for digits, 150 for minilm)"),
    grid: Optional[Path] = typer.Option(None, "--grid", help="digits: the sample-grid PNG (default demo-digits.png)"),
) -> None:
    """Analyze, allocate, quantize, distill, save, reload and evaluate a bundled model (default: the digits UNet)."""
    if model not in DEMO_MODELS:
        raise typer.BadParameter(f"{model!r} is not a demo model; choose {' or '.join(DEMO_MODELS)}",
                                 param_hint="--model")
    bits = avg_bits if avg_bits is not None else DEMO_MODELS[model]
    if model == "digits":
        from .demo_digits import DISTILL_STEPS, run_digits_demo

        steps = DISTILL_STEPS if distill_steps is None else distill_steps
        run_digits_demo(bits, tuple(candidate_bits), steps, out, grid, sens)
    else:
        from .demo_minilm import DISTILL_STEPS as MINILM_STEPS
        from .demo_minilm import run_minilm_demo

        run_minilm_demo(bits, tuple(candidate_bits), MINILM_STEPS if distill_steps is None else distill_steps,
                        out, sens)
