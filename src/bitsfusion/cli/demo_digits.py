"""``bitsfusion demo`` on the bundled diffusion model: BitsFusion's pipeline from fp32 UNet to a reloaded artifact.

Steps (each timed, with progress bars): build the trained fp32 digits UNet (``zoo.digits``) and sample the
evaluation set with it; **analyze** every quantizable layer except the time-embedding ones (they are cached,
not quantized): the noise-prediction MSE along the float model's sampling trajectories with one layer
quantized, for each candidate (``--candidate-bits`` x group 128 / per channel, round to nearest); **allocate** one
candidate per layer, exactly, under ``--avg-bits`` (every stored byte counted; the paper's counting is shown
too), ``conv_in``/``conv_out`` pinned at 8 bits; **quantize** a copy with the chosen bits and groups by GPTQ, as fake-quant
layers (the post-training result, evaluated); **distill** it (stage I: CFG-aware noise + feature
distillation, timesteps from Beta(3, 1)) for ``--distill-steps`` steps; convert to packed layers; **cache**
the time embedding for the sampler's timesteps (float16 tables, the time layers dropped); **save**;
**load** from disk; sample again and compare. For contrast, every layer at uniform 2 bits
(round-to-nearest, asymmetric, group 64, ALS scales) with the same time-embedding cache.

The table: the UNet's weights (the bytes of every tensor the artifact stores: codes, scales, zeros, float
biases and norms, time-embedding tables) and the artifact's bytes on disk (plus the safetensors header and the
JSON manifest with its per-tensor SHA-256, ~40% of the file at this size) against the fp32 UNet's parameters,
bits per quantized weight (ours: every byte;
the paper's: log2 of the grid's levels), conditional accuracy of the samples (the bundled judge),
Frechet distance to the held-out digits in the judge's feature space, per-sample MSE to the fp32
model's image from the same noise. The sample grids go side by side into one PNG (``--grid``).
"""

from __future__ import annotations

import copy
import tempfile
from pathlib import Path
from typing import Any, Optional

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from ..allocate import allocate
from ..analysis import default_candidates, measure_sensitivity
from ..integrations.diffusers import cache_time_embeddings
from ..nn import collect_hessians, load, quantize_, save
from ..pack.io import artifact_nbytes, read_manifest
from ..plan import BitPlan
from ..train import DistillConfig, convert, prepare
from ..types import Calibration, Grid, QScheme, ScaleMethod
from ..zoo import digits as D
from ..zoo import get_model_spec
from .evaluate import Stages
from .inspect import fmt_bytes

__all__ = ["digits_demo", "DigitsDemoResult", "paper_bits_of"]

LOSS_BATCHES = 3
HESSIAN_BATCHES = 12
DISTILL_STEPS = 300
EVAL_PER_CLASS = 30
EVAL_STEPS = D.STEPS


def paper_bits_of(manifest: dict[str, Any]) -> float:
    """Average bits per quantized weight as the paper counts them (log2 of the grid's levels), from a manifest."""
    num = den = 0.0
    for entry in manifest["layers"].values():
        scheme = QScheme.from_dict(entry["scheme"])
        n = int(entry["shape"][0]) * int(entry["shape"][1])
        num += scheme.grid.info_bits(scheme.bits) * n
        den += n
    return num / den


class DigitsDemoResult(dict):
    """Column name -> {size_bytes, weight_bytes, bits_per_weight, paper_bits, accuracy, frechet, image_mse}; plus
    ``.images`` (column -> samples), ``.labels``, ``.plan_counts``, ``.times``."""


def _sampler(console: Console, name: str, total: int) -> tuple[Progress, Any]:
    progress = Progress(TextColumn(name), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                        console=console, transient=True)
    task = progress.add_task(name, total=total)
    return progress, lambda: progress.advance(task)


def digits_demo(
    *, avg_bits: float = 1.99, candidate_bits: tuple[int, ...] = (1, 2, 3, 4), distill_steps: int = DISTILL_STEPS,
    out: Path | None = None, grid: Path | None = None, sens: Path | None = None, per_class: int = EVAL_PER_CLASS,
    steps: int = EVAL_STEPS, console: Console | None = None, distill_config: DistillConfig | None = None,
    data_steps: int = 0,
) -> DigitsDemoResult:
    """Run the pipeline (module docstring) and return the measured table; prints progress to ``console``.

    ``data_steps`` > 0 adds BitsFusion's stage II after the distillation: that many steps of plain noise
    prediction on the real training digits (validation, and so the kept state, still against the fp32 model).
    """
    console = console or Console()
    stages = Stages(console)
    spec = get_model_spec("digits")
    noise, labels = D.eval_noise(per_class)
    sched = D.scheduler()
    sched.set_timesteps(steps)
    timesteps = sched.timesteps.clone()
    result = DigitsDemoResult()
    result.images, result.labels = {}, labels  # type: ignore[attr-defined]

    def generate(name: str, model: torch.nn.Module) -> torch.Tensor:
        progress, tick = _sampler(console, f"sample {name}", steps * ((len(labels) + 511) // 512))
        with progress:
            images = D.generate(model, noise, labels, steps=steps, progress=tick)
        result.images[name] = images  # type: ignore[attr-defined]
        return images

    def score(name: str, images: torch.Tensor) -> dict[str, float]:
        ref = result.images["fp32"]  # type: ignore[attr-defined]
        return {**D.image_scores(images, labels), "image_mse": float(((images - ref) ** 2).mean())}

    # The table ranks round-to-nearest candidates (a GPTQ solve per cell would triple the analysis); the
    # chosen bits and groups are then quantized with GPTQ, which only lowers each layer's error.
    candidates = default_candidates(candidate_bits, group_sizes=(128, None))
    skip = BitPlan(default=candidates[0], rules={p: None for p in spec.default_skip})
    with tempfile.TemporaryDirectory(prefix="bitsfusion-demo-") as tmp:
        path = out if out is not None else Path(tmp) / f"digits-{avg_bits:g}bit"
        with stages.stage("build: the trained fp32 digits UNet"):
            reference = spec.build()
            fp32_bytes = sum(p.numel() * p.element_size() for p in reference.parameters())
        with stages.stage(f"sample: fp32, {len(labels)} digits x {steps} DDIM steps", spinner=False):
            generate("fp32", reference)
        result["fp32"] = {"size_bytes": fp32_bytes, "weight_bytes": fp32_bytes, "bits_per_weight": 32.0, "paper_bits": 32.0,
                          **score("fp32", result.images["fp32"])}  # type: ignore[attr-defined]
        with stages.stage("calibrate: the fp32 model's sampling trajectories"):
            loss_batches = spec.calibration(LOSS_BATCHES)
            h_batches = spec.calibration(HESSIAN_BATCHES)
        with stages.stage(f"analyze: {len(candidates)} candidates per layer, noise-prediction MSE", spinner=False):
            table = measure_sensitivity(reference, loss_batches, candidates, run=spec.run, loss="mse",
                                        include=lambda name, _: skip.resolve(name) is not None, path=sens,
                                        hessian_batches=h_batches)
        with stages.stage(f"allocate: exact, <= {avg_bits:g} stored bits per weight, conv_in/conv_out at 8"):
            plan = allocate(table, avg_bits=avg_bits, pins=spec.default_pins)
        with stages.stage("quantize: GPTQ by the plan", spinner=False):
            hessians = collect_hessians(reference, h_batches, forward=spec.run, names=list(plan.choices),
                                        progress=False)
            model = copy.deepcopy(reference)
            gptq = BitPlan(default=None, rules={n: s.replace(calibration=Calibration.GPTQ)
                                                for n, s in plan.choices.items()})
            prepare(model, gptq, progress=True, hessians=hessians)
        mixed = f"mixed {avg_bits:g}-bit PTQ"
        with stages.stage(f"sample: {mixed}", spinner=False):
            ptq_scores = score(mixed, generate(mixed, model))
        if distill_steps:
            config = distill_config or DistillConfig(steps=distill_steps, warmup_steps=min(50, distill_steps // 5 + 1),
                                                     eval_every=max(50, distill_steps // 4))
            with stages.stage(f"distill: {config.steps} steps, noise + feature distillation", spinner=False):
                spec.distill().run(reference, model, config=config)
        if data_steps:
            config2 = DistillConfig(steps=data_steps, lr=(distill_config.lr if distill_config else 1e-4) / 2,
                                    warmup_steps=min(50, data_steps // 5 + 1), eval_every=max(50, data_steps // 4))
            with stages.stage(f"train: {data_steps} steps of stage II, noise prediction on real digits",
                              spinner=False):
                D.distill_recipe("data").run(reference, model, config=config2)
        convert(model)
        with stages.stage(f"cache: time embedding at the {len(timesteps)} sampler timesteps"):
            report = cache_time_embeddings(model, timesteps)
        with stages.stage(f"save: {path}"):
            save(model, path, source={"zoo": "digits"})
        del model
        with stages.stage("load: the artifact from disk"):
            loaded = load(path)
        last = f"mixed {avg_bits:g}-bit + distill" if distill_steps or data_steps else f"mixed {avg_bits:g}-bit (artifact)"
        with stages.stage(f"sample: {last} (loaded artifact)", spinner=False):
            final_scores = score(last, generate(last, loaded))
        manifest = read_manifest(path)
        sizes = {"size_bytes": artifact_nbytes(path), "weight_bytes": manifest["accounting"]["total_bytes"],
                 "bits_per_weight": manifest["accounting"]["bits_per_weight"],
                 "paper_bits": paper_bits_of(manifest)}
        with stages.stage("contrast: uniform 2-bit round to nearest", spinner=False):
            uniform = copy.deepcopy(reference)
            scheme = QScheme(bits=2, group_size=64, grid=Grid.ASYMMETRIC, method=ScaleMethod.ALS)
            quantize_(uniform, BitPlan(default=None, rules={n: scheme for n in table.layers}), progress=False)
            cache_time_embeddings(uniform, timesteps)
            upath = Path(tmp) / "uniform2"
            save(uniform, upath, source={"zoo": "digits"})
            umanifest = read_manifest(upath)
            u_scores = score("uniform 2-bit PTQ", generate("uniform 2-bit PTQ", uniform))
        result["uniform 2-bit PTQ"] = {"size_bytes": artifact_nbytes(upath),
                                       "weight_bytes": umanifest["accounting"]["total_bytes"],
                                       "bits_per_weight": umanifest["accounting"]["bits_per_weight"],
                                       "paper_bits": paper_bits_of(umanifest), **u_scores}
        result[mixed] = {**sizes, **ptq_scores}
        result[last] = {**sizes, **final_scores}
        if grid is not None:
            order = ["fp32", "uniform 2-bit PTQ", mixed, last]
            D.save_grid({k: result.images[k] for k in order}, labels, grid)  # type: ignore[attr-defined]
    counts: dict[str, int] = {}
    for s in plan.choices.values():
        counts[str(s)] = counts.get(str(s), 0) + 1
    result.plan_counts, result.times, result.cache = counts, dict(stages.times), report  # type: ignore[attr-defined]
    return result


def demo_table(result: DigitsDemoResult, avg_bits: float) -> Table:
    """The demo's table: one column per model, one row per quantity."""
    view = Table(title=f"digits UNet (diffusers UNet2DConditionModel): BitsFusion at {avg_bits:g} bits",
                 title_justify="left")
    view.add_column("", justify="left")
    for col in result:
        view.add_column(col, justify="right")
    fp32 = result["fp32"]["size_bytes"]
    rows = [
        ("UNet weights (every tensor's bytes)", lambda r: f"{fmt_bytes(r['weight_bytes'])} ({fp32 / r['weight_bytes']:.1f}x)"),
        ("artifact on disk (+ headers, manifest)", lambda r: f"{fmt_bytes(r['size_bytes'])} ({fp32 / r['size_bytes']:.1f}x)"),
        ("bits / quantized weight, every byte", lambda r: f"{r['bits_per_weight']:.3f}"),
        ("bits / quantized weight, paper's counting", lambda r: f"{r['paper_bits']:.3f}"),
        ("conditional accuracy", lambda r: f"{100 * r['accuracy']:.1f}%"),
        ("Frechet distance (judge features)", lambda r: f"{r['frechet']:.2f}"),
        ("image MSE to fp32", lambda r: f"{r['image_mse']:.4f}"),
    ]
    for label, fmt in rows:
        view.add_row(label, *(fmt(r) for r in result.values()))
    return view


def run_digits_demo(avg_bits: float, candidate_bits: tuple[int, ...], distill_steps: int, out: Optional[Path],
                    grid: Optional[Path], sens: Optional[Path]) -> None:
    """``bitsfusion demo`` (the default model): run, print the table, the plan and the times."""
    console = Console()
    grid = grid if grid is not None else Path("demo-digits.png")
    result = digits_demo(avg_bits=avg_bits, candidate_bits=candidate_bits, distill_steps=distill_steps, out=out,
                         grid=grid, sens=sens, console=console)
    console.print(demo_table(result, avg_bits))
    mix = ", ".join(f"{n} x {k}" for k, n in sorted(result.plan_counts.items()))  # type: ignore[attr-defined]
    console.print(f"plan: {mix}", highlight=False)
    console.print(result.cache.summary(), highlight=False)  # type: ignore[attr-defined]
    console.print(f"sample grids: {grid}", highlight=False)
    times = ", ".join(f"{name.split(':')[0]} {sec:.1f} s" for name, sec in result.times.items())  # type: ignore[attr-defined]
    console.print(f"times: {times}; total {sum(result.times.values()):.1f} s", highlight=False)  # type: ignore[attr-defined]
