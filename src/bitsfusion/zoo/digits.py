"""``digits``: the bundled diffusion model, a class-conditional diffusers UNet trained on sklearn's 8x8 digits.

The model and its judge are described in ``digits_model``. This module makes it a ``ModelSpec``:

* **sampling**: DDIM, ``STEPS`` = 25 steps, classifier-free guidance ``GUIDANCE`` = 1.5, the predicted clean image
  not clipped (measured on 300 fp32 samples: clipping it to [-1, 1] at every step, the scheduler's training
  setting, drops conditional accuracy to 79% at guidance 2; unclipped, 99.7%); evaluation draws
  ``EVAL_PER_CLASS`` samples of each digit from fixed noise (``EVAL_SEED``), so the float model and a
  quantized copy denoise the very same noise;
* **evaluation** (``evaluate(reference, candidate)``): conditional accuracy (the judge's label equals the
  requested one), Frechet distance between the generated and the 360 held-out real images in the
  judge's 64-d feature space, and BitsFusion's per-sample MSE to the float model's image from the same
  noise; the reference's samples are cached per reference model;
* **calibration** (``calibration(n)``): the inputs the float UNet sees along sampling trajectories (both
  guidance halves) at ``n`` timesteps spread over the 25, from noise (``CALIBRATION_SEED``) never used in
  evaluation; sensitivity is noise-prediction MSE on them (``run = noise_prediction``);
* **plan defaults**: the time-embedding layers are skipped (they are cached, ``TIME_LAYERS``) and
  ``conv_in``/``conv_out`` pinned at 8 bits (``PINS``);
* **distillation** (``distill_recipe``): stage I noise + feature distillation on the 1,437 training images,
  validated on trajectories from yet another seed.
"""

from __future__ import annotations

import functools
import weakref
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import ConfigError
from ..integrations.diffusers import (PINS, TIME_LAYERS, feature_blocks, noise_distill_recipe, noise_prediction,
                                      sample, trajectory_batches)
from ..nn.time_cache import TimestepOneHot
from ..train.recipe import DistillRecipe
from .digits_model import (CLASSES, IMAGE, NULL_CLASS, SCHEDULER_CONFIG, ClassConditioner, load_classifier,
                           load_digits_split, load_trained)
from .registry import ModelSpec, register_model

__all__ = ["STEPS", "GUIDANCE", "scheduler", "conditioner", "build_digits", "generate", "eval_noise", "judge",
           "frechet_distance", "reference_samples", "sampler_steps", "evaluate", "digits_spec", "distill_recipe", "save_grid",
           "calibration"]

STEPS = 25
GUIDANCE = 1.5
EVAL_PER_CLASS = 50
EVAL_SEED = 2024
CALIBRATION_SEED = 7
VALIDATION_SEED = 11
CALIBRATION_SAMPLES = 64


def scheduler() -> Any:
    """A fresh DDIM scheduler on the training noise schedule (deterministic, eta = 0, no clipping of x0)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**{**SCHEDULER_CONFIG, "clip_sample": False})


@functools.cache
def _trained() -> tuple[dict[str, torch.Tensor], ClassConditioner]:
    unet, cond = load_trained()
    cond.requires_grad_(False)
    return {k: v.clone() for k, v in unet.state_dict().items()}, cond


def conditioner() -> ClassConditioner:
    """The trained label -> cross-attention tokens module (shared, frozen)."""
    return _trained()[1]


def build_digits() -> nn.Module:
    """A fresh float32 copy of the trained UNet, eval mode."""
    from .digits_model import build_unet

    unet = build_unet()
    unet.load_state_dict(_trained()[0])
    return unet.eval()


def eval_noise(per_class: int = EVAL_PER_CLASS, seed: int = EVAL_SEED) -> tuple[torch.Tensor, torch.Tensor]:
    """``(noise [10 * per_class, 1, 8, 8], labels)``: labels 0..9, ``per_class`` of each, noise from ``seed``."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(CLASSES).repeat_interleave(per_class)
    return torch.randn(len(labels), 1, IMAGE, IMAGE, generator=g), labels


def generate(unet: nn.Module, noise: torch.Tensor, labels: torch.Tensor, *, steps: int | None = None,
             guidance: float = GUIDANCE, progress: Any = None) -> torch.Tensor:
    """Images ``[n, 1, 8, 8]`` in [-1, 1] for ``labels`` from ``noise`` (DDIM, classifier-free guidance).

    ``steps`` defaults to the UNet's time-embedding cache (a cached UNet runs only at its step count), else 25.
    """
    steps = sampler_steps(unet) if steps is None else steps
    cond = conditioner()
    with torch.no_grad():
        c = cond(labels)
        u = cond(torch.full_like(labels, NULL_CLASS))
    return sample(unet, scheduler(), noise, c, u, steps=steps, guidance=guidance, progress=progress).clamp(-1, 1)


@functools.cache
def judge() -> nn.Module:
    """The digit classifier (held-out accuracy 1.000 on the 360 test images; ``digits_model``)."""
    return load_classifier()


def frechet_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """Frechet distance between Gaussians fitted to feature rows ``a`` [n, d] and ``b`` [m, d]."""
    from scipy import linalg

    a64, b64 = a.double().numpy(), b.double().numpy()
    mu_a, mu_b = a64.mean(0), b64.mean(0)
    ca, cb = torch.from_numpy(a64).T.cov().numpy(), torch.from_numpy(b64).T.cov().numpy()
    covmean, _ = linalg.sqrtm(ca @ cb, disp=False)
    covmean = covmean.real
    return float(((mu_a - mu_b) ** 2).sum() + (ca + cb - 2 * covmean).trace())


@functools.cache
def _real_features() -> torch.Tensor:
    with torch.no_grad():
        return judge().features(load_digits_split()["test_x"])


def image_scores(images: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    """``accuracy`` (judge's label = requested) and ``frechet`` (to the held-out images) of generated images."""
    with torch.no_grad():
        clf = judge()
        acc = float((clf(images).argmax(1) == labels).float().mean())
        fd = frechet_distance(clf.features(images), _real_features())
    return {"accuracy": acc, "frechet": fd}


_REFERENCE: "weakref.WeakKeyDictionary[nn.Module, dict[int, tuple[tuple[int, ...], torch.Tensor]]]" = \
    weakref.WeakKeyDictionary()


def _version(model: nn.Module) -> tuple[int, ...]:
    return tuple(p._version for p in model.parameters())


def sampler_steps(unet: nn.Module) -> int:
    """The step count a UNet samples with: its time-embedding cache's, else ``STEPS``."""
    cache = getattr(unet, "time_proj", None)
    return len(cache.timesteps) if isinstance(cache, TimestepOneHot) else STEPS


def reference_samples(reference: nn.Module, steps: int = STEPS) -> torch.Tensor:
    """The float model's evaluation samples at ``steps``, generated once per reference model and step count
    (until its weights change)."""
    runs = _REFERENCE.setdefault(reference, {})
    hit = runs.get(steps)
    if hit is None or hit[0] != _version(reference):
        noise, labels = eval_noise()
        runs[steps] = (_version(reference), generate(reference, noise, labels, steps=steps))
    return runs[steps][1]


def evaluate(reference: nn.Module, candidate: nn.Module, *, images: torch.Tensor | None = None) -> dict[str, float]:
    """``accuracy``, ``frechet`` and ``image_mse`` (mean per-sample MSE to the reference's image from the same
    noise, at the candidate's step count) of ``candidate``'s samples; ``images`` skips generating them."""
    noise, labels = eval_noise()
    steps = sampler_steps(candidate)
    ref = reference_samples(reference, steps)
    cand = generate(candidate, noise, labels, steps=steps) if images is None else images
    return {**image_scores(cand, labels), "image_mse": float(((cand - ref) ** 2).mean())}


def calibration(n: int, seed: int = CALIBRATION_SEED) -> list[dict[str, torch.Tensor]]:
    """``n`` batches of UNet inputs along the float model's trajectories (128 rows each: both guidance halves),
    at ``n`` of the 25 timesteps evenly spread (the trajectories are sampled once per seed)."""
    if not 1 <= n <= STEPS:
        raise ConfigError(f"calibration takes 1 to {STEPS} batches (one per sampler timestep), got {n}")
    every = _trajectory(seed)
    keep = sorted({round(i * (STEPS - 1) / max(1, n - 1)) for i in range(n)})
    return [every[i] for i in keep]


@functools.cache
def _trajectory(seed: int) -> list[dict[str, torch.Tensor]]:
    noise, labels = eval_noise(CALIBRATION_SAMPLES // CLASSES + 1, seed)
    noise, labels = noise[:CALIBRATION_SAMPLES], labels[:CALIBRATION_SAMPLES]
    cond = conditioner()
    with torch.no_grad():
        c, u = cond(labels), cond(torch.full_like(labels, NULL_CLASS))
    return trajectory_batches(_calibration_unet(), scheduler(), noise, c, u, steps=STEPS, guidance=GUIDANCE, at=STEPS)


@functools.cache
def _calibration_unet() -> nn.Module:
    return build_digits()


def _validate(teacher: nn.Module, student: nn.Module) -> dict[str, float]:
    batches = _validation_batches()
    num = den = 0.0
    with torch.no_grad():
        for b in batches:
            r, c = noise_prediction(teacher, b), noise_prediction(student, b)
            num += float(((c - r) ** 2).sum())
            den += float((r ** 2).sum())
    rel = num / max(den, 1e-30)
    return {"noise_rel_mse": rel, "score": 1.0 - rel}


@functools.cache
def _validation_batches() -> list[dict[str, torch.Tensor]]:
    return calibration(6, VALIDATION_SEED)


def distill_recipe(stage: str = "distill") -> DistillRecipe:
    """Stage I (``"distill"``, the default) or stage II (``"data"``) on the training split."""
    data = load_digits_split()
    cond = conditioner()
    return noise_distill_recipe(data["train_x"], data["train_y"], cond, NULL_CLASS, scheduler(), stage=stage,
                                features=feature_blocks(_calibration_unet()), validate=_validate)


def save_grid(columns: dict[str, torch.Tensor], labels: torch.Tensor, path: str | Path, per_class: int = 8) -> Path:
    """One PNG: for each named set of images a block of 10 rows (digits) x ``per_class`` samples, side by side,
    the name above each block. Images [-1, 1] (ink dark on white), upscaled 4x, 2 px apart."""
    from PIL import Image, ImageDraw

    scale, pad, head, gap = 4, 12, 16, 2
    cell = IMAGE * scale + gap
    block_w = per_class * cell
    width = len(columns) * block_w + (len(columns) + 1) * pad
    height = head + CLASSES * cell + pad
    canvas = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(canvas)
    for j, (name, images) in enumerate(columns.items()):
        x0 = pad + j * (block_w + pad)
        draw.text((x0, 2), name, fill=0)
        for digit in range(CLASSES):
            picks = images[labels == digit][:per_class]
            for k, img in enumerate(picks):
                px = ((1 - (img[0].clamp(-1, 1) + 1) / 2) * 255).round().to(torch.uint8).numpy()
                tile = Image.fromarray(px, "L").resize((cell - gap, cell - gap), Image.NEAREST)
                canvas.paste(tile, (x0 + k * cell, head + digit * cell))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    canvas.save(tmp, format="PNG")
    tmp.replace(path)
    return path


@register_model("digits")
def digits_spec() -> ModelSpec:
    """The bundled diffusion model (``zoo.digits``)."""
    return ModelSpec(
        name="digits",
        description="class-conditional diffusers UNet2DConditionModel on sklearn's 8x8 digits (1.49 M params)",
        build=build_digits,
        calibration=calibration,
        evaluate=evaluate,
        run=noise_prediction,
        default_skip=TIME_LAYERS,
        default_pins=dict(PINS),
        distill=distill_recipe,
    )
