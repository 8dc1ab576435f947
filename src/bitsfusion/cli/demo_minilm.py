"""``bitsfusion demo --model minilm``: MiniLM mixed precision end to end, from float weights to a reloaded artifact.

Steps (each timed): build the pretrained fp32 all-MiniLM-L6-v2; embed the 1000 evaluation
sentences with it; **analyze** the 36 encoder Linear layers (the loss of the embeddings with one
layer quantized, for every candidate: ``--candidate-bits`` x groups of 128 or per channel, GPTQ;
8 calibration batches for the loss, 32 for the input Hessians; none of them evaluation sentences);
**allocate** one candidate per layer, exactly, under ``--avg-bits`` stored bits per weight (every
byte counted); **quantize** a copy by that plan (GPTQ, as fake-quant layers that start exactly at the
post-training result, which is evaluated); **distill** it from the fp32 model for ``--distill-steps``
steps on the bundled distillation sentences (``train``; 0 skips it); convert to packed layers; save the
artifact (to ``--out`` or a temporary directory); load it from disk into a fresh skeleton; embed the
sentences again and compare.
For contrast, a copy with every layer at ``round(avg_bits)`` bits, round-to-nearest (asymmetric,
group 64, ALS scales: the best uniform choice measured), is evaluated beside it.

The table puts the artifact beside the fp32 model, the uniform one and the post-training mixed model: bits per quantized weight with
every overhead counted, encoder Linear bytes, the whole model on disk (the artifact keeps the
embeddings and LayerNorms in float32, as stored), mean / 5th-percentile embedding cosine and
top-10 neighbour overlap.
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Optional

from rich.console import Console
from rich.table import Table

from ..allocate import allocate
from ..analysis import default_candidates, measure_sensitivity
from ..nn import collect_hessians, load, quantize_, save
from ..train import DistillConfig, convert, prepare
from ..pack.accounting import packed_nbytes
from ..pack.io import artifact_nbytes, read_manifest
from ..plan import BitPlan
from ..types import Calibration, Grid, QScheme, ScaleMethod
from ..zoo import get_model_spec
from ..zoo.minilm import model_dir, reference_embeddings
from .analyze import HESSIAN_BATCHES
from .evaluate import Stages
from .inspect import fmt_bytes

__all__ = ["run_minilm_demo", "demo_rows"]

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


LOSS_BATCHES = 8
DISTILL_STEPS = 150  # measured in make demo: 62 s on 2 cores, mean cosine 0.871 -> 0.916 at 2.0 bits


def demo_rows(manifest: dict[str, Any], artifact: Path, scores: dict[str, float], uniform: dict[str, Any],
              ptq: dict[str, float]) -> list[tuple[str, ...]]:
    """``(quantity, fp32, uniform, mixed PTQ, bitsfusion)`` rows of the demo table, from the saved manifest and
    scores. ``uniform``: ``bits_per_weight``, ``nbytes`` and the scores of the uniform round-to-nearest copy;
    ``ptq``: the scores of the mixed plan before distillation (same sizes as the artifact)."""
    q_weights, q_bytes = _layer_bytes(manifest, "")
    enc_weights, enc_bytes = _layer_bytes(manifest, ENCODER_PREFIX)
    fp32_file = (model_dir() / "model.safetensors").stat().st_size
    disk = artifact_nbytes(artifact)
    u = uniform
    bpw, layers = f"{8 * q_bytes / q_weights:.3f}", f"{len(manifest['layers'])} / {q_weights:,}"
    enc = f"{fmt_bytes(enc_bytes)} ({4 * enc_weights / enc_bytes:.2f}x)"
    return [
        ("bits per quantized weight (all overhead)", "32", f"{u['bits_per_weight']:.3f}", bpw, bpw),
        ("quantized layers / weights", "-", layers, layers, layers),
        ("encoder Linear bytes", fmt_bytes(4 * enc_weights), fmt_bytes(u["nbytes"]), enc, enc),
        ("whole model on disk", fmt_bytes(fp32_file), "-", "-", f"{fmt_bytes(disk)} ({fp32_file / disk:.2f}x)"),
        *((label, "1", f"{u[key]:{fmt}}", f"{ptq[key]:{fmt}}", f"{scores[key]:{fmt}}")
          for label, key, fmt in (("mean cosine to fp32", "mean_cos", ".5f"), ("5th-percentile cosine", "p5_cos", ".5f"),
                                  ("top-10 neighbour overlap", "top10_overlap", ".4f"))),
    ]


def run_minilm_demo(avg_bits: float, candidate_bits: tuple[int, ...], distill_steps: int, out: Optional[Path],
                    sens: Optional[Path]) -> None:
    """Analyze, allocate and quantize MiniLM to --avg-bits, distill, save, reload, evaluate on 1000 sentences."""
    console = Console()
    stages = Stages(console)
    spec = get_model_spec("minilm")
    candidates = default_candidates(candidate_bits, group_sizes=(128, None), calibrations=(Calibration.GPTQ,))
    uniform_scheme = QScheme(bits=max(1, min(8, round(avg_bits))), group_size=64, grid=Grid.ASYMMETRIC,
                             method=ScaleMethod.ALS)
    skip = BitPlan(default=candidates[0], rules={p: None for p in spec.default_skip})
    with tempfile.TemporaryDirectory(prefix="bitsfusion-demo-") as tmp:
        path = out if out is not None else Path(tmp) / f"minilm-{avg_bits:g}bit"
        with stages.stage("build: fp32 all-MiniLM-L6-v2"):
            reference = spec.build()
        with stages.stage("reference: embed 1000 sentences in fp32"):
            reference_embeddings(reference)
        h_batches = spec.calibration(HESSIAN_BATCHES)
        with stages.stage(f"analyze: {len(candidates)} candidates per layer", spinner=False):
            table = measure_sensitivity(reference, spec.calibration(LOSS_BATCHES), candidates, run=spec.run,
                                        include=lambda name, _: skip.resolve(name) is not None, path=sens,
                                        hessian_batches=h_batches)
        with stages.stage(f"allocate: exact, <= {avg_bits:g} stored bits per weight"):
            plan = allocate(table, avg_bits=avg_bits)
        with stages.stage("quantize: GPTQ by the plan", spinner=False):
            hessians = collect_hessians(reference, h_batches, forward=spec.run, names=list(plan.choices),
                                        progress=False)
            model = copy.deepcopy(reference)
            prepare(model, plan.plan(), progress=True, hessians=hessians)
        with stages.stage("evaluate: the post-training model"):
            ptq = spec.evaluate(reference, model)
        if distill_steps:
            with stages.stage(f"distill: {distill_steps} steps from the fp32 model", spinner=False):
                config = DistillConfig(steps=distill_steps, warmup_steps=min(50, distill_steps // 5 + 1))
                spec.distill().run(reference, model, config=config)
        convert(model)
        with stages.stage(f"save: {path}"):
            save(model, path, source={"zoo": "minilm"})
        del model
        with stages.stage("load: from disk into a fresh skeleton"):
            loaded = load(path, model=spec.build())
        with stages.stage("evaluate: embed 1000 sentences with the artifact, compare"):
            scores = spec.evaluate(reference, loaded)
        with stages.stage(f"contrast: uniform {uniform_scheme}, round to nearest"):
            uniform_model = copy.deepcopy(reference)
            report = quantize_(uniform_model, BitPlan(default=None, rules={n: uniform_scheme for n in plan.choices}),
                               progress=False)
            uniform = {**spec.evaluate(reference, uniform_model), "nbytes": report.totals()["packed_bytes"],
                       "bits_per_weight": report.totals()["bits_per_weight"]}
        rows = demo_rows(read_manifest(path), path, scores, uniform, ptq)
    view = Table(title=f"all-MiniLM-L6-v2: mixed precision at <= {avg_bits:g} stored bits per weight",
                 title_justify="left")
    last = f"+ distilled {distill_steps} steps" if distill_steps else "(artifact)"
    for col, justify in (("", "left"), ("fp32", "right"), (f"uniform {uniform_scheme.bits}-bit RTN", "right"),
                         ("mixed + GPTQ", "right"), (f"mixed + GPTQ {last}", "right")):
        view.add_column(col, justify=justify)  # type: ignore[arg-type]
    for row in rows:
        view.add_row(*row)
    console.print(view)
    mix = ", ".join(f"{n} x {k}" for k, n in sorted(_counts(plan.choices).items()))
    console.print(f"plan: {mix}", highlight=False)
    times = ", ".join(f"{name.split(':')[0]} {sec:.1f} s" for name, sec in stages.times.items())
    console.print(f"times: {times}; total {sum(stages.times.values()):.1f} s", highlight=False)


def _counts(choices: dict[str, QScheme]) -> dict[str, int]:
    out: dict[str, int] = {}
    for s in choices.values():
        out[str(s)] = out.get(str(s), 0) + 1
    return out
