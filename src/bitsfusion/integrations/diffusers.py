"""BitsFusion for diffusers UNets: time-embedding caching, diffusion sensitivity, sampling, distillation recipes.

Works on any ``diffusers.UNet2DConditionModel`` (Stable Diffusion's UNet, the bundled ``digits`` model):

* **Time-embedding caching** (``cache_time_embeddings``): for the timesteps a scheduler will use, the
  time embedding and every ResNet block's ``time_emb_proj`` output are computed once and stored (float16)
  in ``nn.time_cache`` tables; the time-embedding MLP and the projections leave the model. They are the
  ``TIME_LAYERS`` a plan skips: they are cached exactly, not quantized.
* **Diffusion sensitivity**: ``trajectory_batches`` records the inputs the float UNet sees along real
  sampling trajectories (both halves of classifier-free guidance) at a spread of timesteps; with
  ``noise_prediction`` as the ``run`` and ``loss="mse"``, ``analysis.measure_sensitivity`` measures the
  noise-prediction MSE of each layer at each precision. ``final_image_run`` makes ``run`` a whole
  (short) sampling loop instead, for the final-image MSE. ``PINS`` keeps ``conv_in``/``conv_out`` at 8 bits.
* **Sampling** (``sample``): DDIM/DDPM-style loop with classifier-free guidance, any diffusers scheduler.
* **Training** (``noise_distill_recipe``): stage I, CFG-aware noise distillation (condition dropped with
  p = 0.1, timesteps from Beta(3, 1), feature distillation on the down/up block outputs); stage II
  (``stage="data"``), plain noise prediction on the real data.

Every function takes the conditioning as already-encoded ``encoder_hidden_states`` (SD's text-encoder
output, the digits model's class tokens), so nothing here knows how a model is conditioned.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..nn.time_cache import CachedTimeProjection, PassThrough, TimestepOneHot
from ..train.recipe import DistillRecipe

__all__ = ["TIME_LAYERS", "PINS", "FEATURE_BLOCKS", "cache_time_embeddings", "TimeCacheReport", "sample",
           "trajectory_batches", "noise_prediction", "final_image_run", "beta_timesteps", "noise_distill_recipe",
           "feature_blocks"]

# BitPlan rules for the layers cache_time_embeddings replaces: a plan skips them.
TIME_LAYERS = ("re:time_embedding\\..*", "re:.*\\.time_emb_proj")
# BitsFusion keeps the first and last convolutions at 8 bits.
PINS = {"conv_in": 8, "conv_out": 8}
FEATURE_BLOCKS = ("down_blocks", "up_blocks")


def _check_unet(unet: nn.Module) -> None:
    if not hasattr(unet, "time_proj") or not hasattr(unet, "time_embedding"):
        raise ConfigError(f"{type(unet).__name__} has no time_proj/time_embedding: time-embedding caching "
                          "works on diffusers UNet2DConditionModel-style UNets")


# -- time-embedding caching -------------------------------------------------------------------------


@dataclass(frozen=True)
class TimeCacheReport:
    """What ``cache_time_embeddings`` did: timesteps cached, layers removed, stored table bytes."""

    timesteps: tuple[int, ...]
    replaced: tuple[str, ...]
    removed_params: int
    table_bytes: int

    def summary(self) -> str:
        return (f"time embedding cached at {len(self.timesteps)} timesteps: {len(self.replaced)} modules replaced, "
                f"{self.removed_params:,} parameters removed, {self.table_bytes:,} bytes of tables")


def _resnets_with_time(unet: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(n, m) for n, m in unet.named_modules()
            if isinstance(getattr(m, "time_emb_proj", None), nn.Module)]


def cache_time_embeddings(
    unet: nn.Module, timesteps: Sequence[int] | torch.Tensor, *, dtype: torch.dtype = torch.float16,
) -> TimeCacheReport:
    """Replace ``unet``'s time embedding by tables over ``timesteps`` (in place); the outputs are unchanged
    up to ``dtype`` rounding of the tables (float32 tables: equal to float32 rounding).

    ``timesteps``: the scheduler's inference timesteps (``scheduler.timesteps`` after ``set_timesteps``).
    The UNet then accepts only those timesteps (another one is a ConfigError naming them). Works with
    quantized ``time_emb_proj`` layers too (their output is what gets cached), but the usual plan skips
    ``TIME_LAYERS``: caching makes quantizing them pointless.
    """
    _check_unet(unet)
    if isinstance(unet.time_proj, TimestepOneHot):
        raise ConfigError("this UNet's time embedding is already cached; build it again from the float model "
                          "to cache other timesteps")
    for attr in ("class_embedding", "add_embedding", "time_embed_act"):
        if getattr(unet, attr, None) is not None:
            raise ConfigError(f"this UNet has a {attr} that mixes other inputs into the time embedding; "
                              "its time embedding cannot be cached per timestep (use a plan without caching)")
    ts = torch.as_tensor(timesteps).flatten().round().to(torch.int64)
    if ts.numel() == 0:
        raise ConfigError("timesteps must be non-empty: pass scheduler.timesteps after scheduler.set_timesteps(n)")
    ts = torch.tensor(list(dict.fromkeys(ts.tolist())), dtype=torch.int64)  # PNDM repeats some; keep each once
    param = next(unet.parameters(), None)
    if param is None:
        raise ConfigError("the UNet has no parameters left to infer its dtype from")
    resnets = _resnets_with_time(unet)
    removed = sum(p.numel() for p in unet.time_embedding.parameters())
    tables: dict[str, tuple[torch.Tensor, float, float]] = {}
    with torch.no_grad():
        t_emb = unet.time_proj(ts.to(param.device)).to(param.dtype)
        emb = unet.time_embedding(t_emb)
        probe = torch.tensor([0.0, 1.0], device=param.device, dtype=param.dtype)
        for name, block in resnets:
            if getattr(block, "skip_time_act", False):
                h, (a0, a1) = emb, (0.0, 1.0)
            else:
                h = block.nonlinearity(emb)
                a0, a1 = (float(v) for v in block.nonlinearity(probe))
            tables[name] = (block.time_emb_proj(h).float(), a0, a1)
            removed += sum(p.numel() for p in block.time_emb_proj.parameters())
            removed += sum(b.numel() for b in block.time_emb_proj.buffers())
    unet.time_proj = TimestepOneHot(ts.to(param.device))
    unet.time_embedding = PassThrough()
    nbytes = 0
    for name, block in resnets:
        table, a0, a1 = tables[name]
        block.time_emb_proj = CachedTimeProjection(table.to(dtype), a0, a1)
        nbytes += table.numel() * torch.empty((), dtype=dtype).element_size()
    replaced = ("time_proj", "time_embedding", *(f"{n}.time_emb_proj" for n, _ in resnets))
    return TimeCacheReport(tuple(ts.tolist()), replaced, removed, nbytes)


# -- sampling ---------------------------------------------------------------------------------------


def _eps(unet: nn.Module, x: torch.Tensor, t: Any, cond: torch.Tensor, uncond: torch.Tensor | None,
         guidance: float) -> torch.Tensor:
    if uncond is None or guidance == 1.0:
        return unet(x, t, encoder_hidden_states=cond).sample
    both = unet(torch.cat([x, x]), t, encoder_hidden_states=torch.cat([uncond, cond])).sample
    e_u, e_c = both.chunk(2)
    return e_u + guidance * (e_c - e_u)


def sample(
    unet: nn.Module, scheduler: Any, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None = None,
    *, steps: int = 50, guidance: float = 1.0, generator: torch.Generator | None = None, batch_size: int = 512,
    record: Callable[[int, torch.Tensor, Any], None] | None = None, progress: Any = None,
) -> torch.Tensor:
    """Denoise ``noise`` [n, C, H, W] to images with ``scheduler`` (``set_timesteps(steps)`` is called).

    ``cond``/``uncond``: ``encoder_hidden_states`` of each sample and of "no condition" (``[n, L, D]``);
    ``guidance`` > 1 uses classifier-free guidance (two UNet halves per step). ``generator`` seeds
    stochastic schedulers (DDPM); DDIM with its default eta is deterministic. ``record(i, x, t)`` sees
    every UNet input (for calibration). Runs in ``batch_size`` chunks under ``no_grad`` (not inference
    mode: recorded inputs must stay usable in autograd, e.g. as distillation validation data).
    """
    if noise.dim() != 4 or cond.shape[0] != noise.shape[0]:
        raise ConfigError(f"noise must be [n, C, H, W] and cond [n, L, D] with the same n; got "
                          f"{list(noise.shape)} and {list(cond.shape)}")
    scheduler.set_timesteps(steps)
    outs = []
    with torch.no_grad():
        for s in range(0, noise.shape[0], batch_size):
            x = noise[s:s + batch_size] * scheduler.init_noise_sigma
            c = cond[s:s + batch_size]
            u = None if uncond is None else uncond[s:s + batch_size]
            for i, t in enumerate(scheduler.timesteps):
                x_in = scheduler.scale_model_input(x, t)
                if record is not None:
                    record(i, x_in, t)
                eps = _eps(unet, x_in, t, c, u, guidance)
                kwargs = {"generator": generator} if generator is not None else {}
                x = scheduler.step(eps, t, x, **kwargs).prev_sample
                if progress is not None:
                    progress()
            outs.append(x.float())
    return torch.cat(outs)


def trajectory_batches(
    unet: nn.Module, scheduler: Any, noise: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor | None = None,
    *, steps: int = 50, guidance: float = 1.0, at: int = 8,
) -> list[dict[str, torch.Tensor]]:
    """The UNet inputs along sampling trajectories, ``at`` timesteps evenly spread over the ``steps``.

    Each batch is ``{"sample", "timestep", "encoder_hidden_states"}`` for ``unet(**batch)``: the noisy
    images at one timestep, both CFG halves when ``uncond`` is given (what the sampler really feeds it).
    Calibration for ``measure_sensitivity(run=noise_prediction)`` and for input Hessians.
    """
    keep = {round(i * (steps - 1) / max(1, at - 1)) for i in range(at)}
    found: dict[int, dict[str, torch.Tensor]] = {}

    def record(i: int, x: torch.Tensor, t: Any) -> None:
        if i in keep:
            if uncond is not None and guidance != 1.0:
                xs, ehs = torch.cat([x, x]), torch.cat([uncond[: len(x)], cond[: len(x)]])
            else:
                xs, ehs = x, cond[: len(x)]
            found[i] = {"sample": xs.clone(), "timestep": torch.as_tensor(t).clone(), "encoder_hidden_states": ehs}

    sample(unet, scheduler, noise, cond, uncond, steps=steps, guidance=guidance, record=record,
           batch_size=noise.shape[0])
    return [found[i] for i in sorted(found)]


def noise_prediction(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """``run`` for the analysis: the UNet's noise prediction on a ``trajectory_batches`` batch (float32)."""
    return model(batch["sample"], batch["timestep"], encoder_hidden_states=batch["encoder_hidden_states"]).sample.float()


def final_image_run(scheduler: Any, *, steps: int = 10, guidance: float = 1.0) -> Callable[[nn.Module, Any], torch.Tensor]:
    """``run`` whose output is the final image: ``run(model, {"noise", "cond", "uncond"})`` samples
    ``steps`` steps. With ``loss="mse"`` the sensitivity table holds final-image MSE (one whole sampling
    loop per cell: use few steps and few samples)."""

    def run(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return sample(model, scheduler, batch["noise"], batch["cond"], batch.get("uncond"), steps=steps,
                      guidance=guidance)

    return run


# -- training ---------------------------------------------------------------------------------------


def beta_timesteps(n: int, num_train_timesteps: int, generator: torch.Generator, a: float = 3.0) -> torch.Tensor:
    """``n`` integer timesteps with t / T ~ Beta(a, 1) (density a u^(a-1): more weight toward t = T, where
    quantization error grows). Inverse CDF: u = U^(1/a)."""
    u = torch.rand(n, generator=generator) ** (1.0 / a)
    return (u * num_train_timesteps).long().clamp_(0, num_train_timesteps - 1)


def feature_blocks(unet: nn.Module) -> tuple[str, ...]:
    """The names of the down and up blocks (``down_blocks.0`` ...): where feature distillation matches."""
    return tuple(f"{group}.{i}" for group in FEATURE_BLOCKS for i in range(len(getattr(unet, group, ()))))


def noise_distill_recipe(
    images: torch.Tensor, labels: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor], null_label: int,
    scheduler: Any, *, stage: str = "distill", batch_size: int = 64, drop: float = 0.1, beta_a: float = 3.0,
    features: Sequence[str] = (), repeats: int = 20, seed: int = 0,
    validate: Callable[[nn.Module, nn.Module], dict[str, float]] | None = None,
) -> DistillRecipe:
    """A ``DistillRecipe`` for a conditional UNet on real ``images`` [n, C, H, W] and ``labels`` [n].

    Each batch draws (from its own seed, so teacher and student see the same draw) timesteps from
    Beta(``beta_a``, 1), Gaussian noise, and replaces the label by ``null_label`` with probability
    ``drop``; ``encode(labels)`` gives the ``encoder_hidden_states``. ``stage="distill"`` (stage I):
    the loss is the MSE between student and teacher noise predictions, plus (config ``feature_weight``)
    the relative MSE of the ``features`` modules' outputs (``feature_blocks(unet)``). ``stage="data"``
    (stage II): the MSE between the student's prediction and the true noise. The data are the images
    repeated ``repeats`` times in a seeded order, each batch with its own noise.
    """
    if stage not in ("distill", "data"):
        raise ConfigError(f"stage must be 'distill' (stage I) or 'data' (stage II), got {stage!r}")
    if images.dim() != 4 or labels.shape != (images.shape[0],):
        raise ConfigError(f"images must be [n, C, H, W] and labels [n]; got {list(images.shape)}, "
                          f"{list(labels.shape)}")
    if not 0.0 <= drop < 1.0:
        raise ConfigError(f"drop must be in [0, 1), got {drop}")
    T = int(scheduler.config.num_train_timesteps)

    def batches(items: Sequence[int]) -> list[dict[str, Any]]:
        order = torch.as_tensor(list(items), dtype=torch.long)
        return [{"index": order[s:s + batch_size], "seed": seed * 1_000_003 + s}
                for s in range(0, len(order) - batch_size + 1, batch_size)]

    def draw(batch: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        g = torch.Generator().manual_seed(int(batch["seed"]))
        idx = batch["index"].cpu()
        x0, y = images[idx], labels[idx].clone()
        t = beta_timesteps(len(idx), T, g, beta_a)
        noise = torch.randn(x0.shape, generator=g)
        y[torch.rand(len(idx), generator=g) < drop] = null_label
        return scheduler.add_noise(x0, noise, t), t, y, noise

    def forward(model: nn.Module, batch: dict[str, Any]) -> torch.Tensor:
        x_t, t, y, _ = draw(batch)
        device = next(model.parameters()).device
        with torch.no_grad():
            ehs = encode(y).to(device)
        return model(x_t.to(device), t.to(device), encoder_hidden_states=ehs).sample

    def output_loss(s_out: torch.Tensor, t_out: torch.Tensor, batch: dict[str, Any]) -> torch.Tensor:
        if stage == "data":
            return F.mse_loss(s_out.float(), draw(batch)[3].to(s_out.device))
        return F.mse_loss(s_out.float(), t_out.float())

    def default_data() -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return torch.cat([torch.randperm(len(labels), generator=g) for _ in range(repeats)]).tolist()

    return DistillRecipe(batches=batches, forward=forward, output_loss=output_loss,
                         features=tuple(features) if stage == "distill" else (), validate=validate,
                         default_data=default_data)

