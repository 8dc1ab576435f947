"""``Distiller``: recover a quantised student's quality by distilling a float teacher, on ``accelerate``.

The student is a model ``prepare``-d for quantisation-aware training (fake-quant layers); the teacher is
the float model. Every step runs the teacher (no gradients) and the student on one batch of unlabelled
inputs and minimises::

    loss = sum_b  w_b * ( output_loss(student_b, teacher, batch)
                          + feature_weight * mean_f relative_mse(feature_f(student_b), feature_f(teacher)) )

over the precisions ``b`` of ``DistillConfig.bits`` (one term at the stored bits by default; several for
nested, Matryoshka-style training, the student switched with ``nn.set_active_bits`` before each
forward), plus ``dampen`` times the fake-quant layers' mean ``dampening_loss`` (latent weights pulled to
the centres of their rounding cells, against codes oscillating; 0 by default). Features are the outputs of
named modules (BitsFusion: the UNet's down/up blocks, weight 0.01),
captured by forward hooks on both models.

What is trained: the latent weights, the learnable scales and zeros (``qat``), and by ``train_float``
the student's other float parameters: ``"norms"`` (parameters of one dimension: biases, norm weights;
the default), ``"all"`` (embeddings too) or ``"none"``. AdamW, linear warm-up then cosine decay, global
gradient-norm clipping. The student runs in eval mode (no dropout), so the teacher's targets are exact.

Engine: Hugging Face ``accelerate``. One CPU process, several GPUs (DDP) or several nodes run the same
code: ``accelerate launch --num_processes N script.py``. The batch for global step ``s`` on rank ``r`` of
``W`` is batch ``s * W + r`` of a seeded per-epoch permutation of ``data``, so a run is reproducible and
resumes at the exact batch.

Checkpoints (``checkpoint_dir``): every ``checkpoint_every`` steps and at the end, atomically
(``train.checkpoint``); ``fit`` resumes from one found there. Evaluation: every ``eval_every`` steps
``evaluate(student) -> {name: value}`` on the main process, and once before the first step;
``eval_metric`` (higher is better) picks the best state, the start included, which is kept (in the
checkpoint too) and restored at the end; after ``patience`` evaluations
without improvement training stops early. A rich progress bar shows loss, learning rate and ETA.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..errors import ConfigError
from ..nn.active_bits import set_active_bits
from .checkpoint import load_checkpoint, save_checkpoint
from .config import DistillConfig
from .losses import feature_loss
from .qat import fake_quant_layers, latent_parameters, quant_parameters

__all__ = ["DistillConfig", "Distiller", "DistillResult"]

@dataclass
class DistillResult:
    """What ``fit`` did: steps run (in total, over resumes), the logged history, the best evaluation."""

    steps: int
    history: list[dict[str, Any]] = field(default_factory=list)
    evaluations: list[dict[str, Any]] = field(default_factory=list)
    best: dict[str, Any] | None = None
    best_step: int | None = None
    stopped_early: bool = False
    resumed_from: int | None = None
    wall_s: float = 0.0


class _Features:
    """Forward hooks that keep the outputs of named modules (the first tensor of a tuple output)."""

    def __init__(self, model: nn.Module, names: Sequence[str]):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ConfigError(f"feature modules {missing} are not in the model; name modules of "
                              f"model.named_modules(), e.g. {list(modules)[1:4]}")
        self.out: dict[str, torch.Tensor] = {}
        self.handles = [modules[n].register_forward_hook(self._hook(n)) for n in names]

    def _hook(self, name: str) -> Callable[..., None]:
        def keep(_m: nn.Module, _i: Any, out: Any) -> None:
            self.out[name] = out[0] if isinstance(out, (tuple, list)) else out
        return keep

    def take(self) -> dict[str, torch.Tensor]:
        out, self.out = self.out, {}
        return out

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


class Distiller:
    """Distil ``teacher`` into the fake-quant ``student`` (see the module docstring).

    Args:
        teacher, student: models of one architecture; ``student`` holds fake-quant layers (``prepare``).
        forward: ``forward(model, batch) -> output`` (with gradients for the student).
        output_loss: ``output_loss(student_out, teacher_out, batch) -> scalar tensor``.
        features: names of modules whose outputs are matched with ``relative_mse``.
        feature_mask: ``feature_mask(batch) -> mask`` broadcasting against the features (e.g. padding
            tokens dropped), or None.
        config: ``DistillConfig``.
        evaluate: ``evaluate(student) -> {name: float}``, run every ``config.eval_every`` steps.
        checkpoint_dir: where checkpoints go and are resumed from (None: no checkpoints).
        accelerator: an ``accelerate.Accelerator`` (default: a new one, which honours ``accelerate launch``).
        progress: show a progress bar (main process only).
    """

    def __init__(
        self, teacher: nn.Module, student: nn.Module, *, forward: Callable[[nn.Module, Any], Any],
        output_loss: Callable[[Any, Any, Any], torch.Tensor], features: Sequence[str] = (),
        feature_mask: Callable[[Any], torch.Tensor | None] | None = None, config: DistillConfig | None = None,
        evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
        checkpoint_dir: str | Path | None = None, accelerator: Any = None, progress: bool = True,
    ):
        self.config = config or DistillConfig()
        if not fake_quant_layers(student):
            raise ConfigError("the student has no fake-quant layers: run bitsfusion.train.prepare(student, plan) "
                              "before distilling")
        if self.config.eval_every and evaluate is None:
            raise ConfigError("DistillConfig.eval_every is set but no evaluate= function was given")
        if self.config.patience and not self.config.eval_every:
            raise ConfigError("DistillConfig.patience needs eval_every > 0 (early stopping counts evaluations)")
        self.teacher, self.student = teacher, student
        self.forward, self.output_loss = forward, output_loss
        self.features, self.feature_mask = tuple(features), feature_mask
        self.evaluate = evaluate
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.progress = progress
        if accelerator is None:
            from accelerate import Accelerator
            from accelerate.utils import DistributedDataParallelKwargs

            accelerator = Accelerator(cpu=not torch.cuda.is_available(),
                                      kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=True)])
        self.accelerator = accelerator

    # -- set-up ------------------------------------------------------------------------------------

    def _trainable(self) -> dict[str, list[nn.Parameter]]:
        student = self.student
        for p in student.parameters():
            p.requires_grad_(False)
        latent, quant = latent_parameters(student), quant_parameters(student)
        taken = {id(p) for p in latent + quant}
        mode = self.config.train_float
        other = [p for p in student.parameters() if id(p) not in taken and
                 (mode == "all" or (mode == "norms" and p.dim() <= 1))]
        for p in latent + quant + other:
            p.requires_grad_(True)
        return {"latent": latent, "quant": quant, "float": other}

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        return {n: p.detach().cpu().clone() for n, p in self.student.named_parameters() if p.requires_grad}

    def _load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        params = {n: p for n, p in self.student.named_parameters() if p.requires_grad}
        if set(params) != set(state):
            extra, missing = sorted(set(state) - set(params))[:3], sorted(set(params) - set(state))[:3]
            raise ConfigError(f"the checkpoint trains other parameters than this student (only in the checkpoint: "
                              f"{extra}, only here: {missing}): it is from another plan or model; use another "
                              f"checkpoint directory")
        with torch.no_grad():
            for n, p in params.items():
                p.copy_(state[n].to(p.device))

    def _batch_index(self, step: int, n: int) -> int:
        acc = self.accelerator
        g = step * acc.num_processes + acc.process_index
        epoch, pos = divmod(g, n)
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.config.seed * 100_003 + epoch))
        return int(perm[pos])

    # -- the step ------------------------------------------------------------------------------------

    def _loss_at(self, model: nn.Module, batch: Any, t_out: Any, t_feat: dict[str, torch.Tensor],
                 hooks: "_Features | None") -> tuple[torch.Tensor, dict[str, float]]:
        s_out = self.forward(model, batch)
        loss = self.output_loss(s_out, t_out, batch)
        parts = {"output": float(loss.detach())}
        if hooks is not None:
            s_feat = hooks.take()
            silent = [n for n in self.features if n not in s_feat or n not in t_feat]
            if silent:
                raise ConfigError(f"feature modules {silent} produced no output in forward(); name modules the "
                                  "forward pass runs")
            mask = None if self.feature_mask is None else self.feature_mask(batch)
            f = feature_loss([(s_feat[n], t_feat[n]) for n in self.features], mask)
            parts["features"] = float(f.detach())
            loss = loss + self.config.feature_weight * f
        return loss, parts

    def _move(self, batch: Any) -> Any:
        device = self.accelerator.device
        if isinstance(batch, torch.Tensor):
            return batch.to(device)
        if isinstance(batch, dict):
            return {k: self._move(v) for k, v in batch.items()}
        if isinstance(batch, (list, tuple)):
            return type(batch)(self._move(v) for v in batch)
        return batch

    # -- fit -------------------------------------------------------------------------------------------

    def fit(self, data: Sequence[Any]) -> DistillResult:
        """Train for ``config.steps`` steps on batches of ``data`` (resuming from a checkpoint if found)."""
        if len(data) == 0:
            raise ConfigError("distillation got no batches: give it unlabelled inputs")
        cfg, acc = self.config, self.accelerator
        t_start = time.perf_counter()
        groups = self._trainable()
        lrs = {"latent": cfg.lr, "quant": cfg.scale_lr, "float": cfg.lr}
        param_groups = [{"params": ps, "lr": lrs[k], "name": k} for k, ps in groups.items() if ps and lrs[k] > 0]
        optimizer = torch.optim.AdamW(param_groups, lr=cfg.lr, weight_decay=cfg.weight_decay)
        base_lrs = [g["lr"] for g in optimizer.param_groups]
        params = [p for g in param_groups for p in g["params"]]
        self.teacher.to(acc.device).eval()
        for p in self.teacher.parameters():
            p.requires_grad_(False)
        self.student.to(acc.device)

        result = DistillResult(steps=0)
        best_state: dict[str, torch.Tensor] | None = None
        bad_evals, start = 0, 0
        ckpt = None if self.checkpoint_dir is None else load_checkpoint(self.checkpoint_dir)
        if ckpt is not None:
            tr = ckpt.trainer
            self._load_trainable(ckpt.params)
            optimizer.load_state_dict(ckpt.optimizer)
            start = int(tr["step"])
            result.history, result.evaluations = tr.get("history", []), tr.get("evaluations", [])
            result.best, result.best_step = tr.get("best"), tr.get("best_step")
            bad_evals, result.resumed_from = int(tr.get("bad_evals", 0)), start
            best_state = ckpt.best
            result.stopped_early = bool(tr.get("stopped_early"))

        model, optimizer = acc.prepare(self.student, optimizer)
        model.eval()
        unwrapped = acc.unwrap_model(model)
        s_hooks = _Features(unwrapped, self.features) if self.features else None
        t_hooks = _Features(self.teacher, self.features) if self.features else None
        bits = cfg.bits or (None,)
        weights = cfg.bit_weights or tuple(1.0 for _ in bits)
        layers = [m for _, m in fake_quant_layers(unwrapped)]
        if cfg.eval_every and start == 0 and not result.evaluations:
            if self._evaluate(0, result):  # the start is a candidate too: training never returns worse
                best_state = self._trainable_state()
        bar = self._bar(start) if self.progress and acc.is_main_process else None
        step = start
        try:
            while step < cfg.steps and not result.stopped_early:
                batch = self._move(data[self._batch_index(step, len(data))])
                factor = cfg.lr_factor(step)
                for g, base in zip(optimizer.param_groups, base_lrs):
                    g["lr"] = base * factor
                with torch.no_grad():
                    t_out = self.forward(self.teacher, batch)
                    t_feat = t_hooks.take() if t_hooks is not None else {}
                optimizer.zero_grad(set_to_none=True)
                total, logged = 0.0, {}
                for i, (b, w) in enumerate(zip(bits, weights)):
                    if b is not None:
                        set_active_bits(unwrapped, b)
                    sync = acc.no_sync(model) if i < len(bits) - 1 else contextlib.nullcontext()
                    with sync:
                        loss, parts = self._loss_at(model, batch, t_out, t_feat, s_hooks)
                        scaled = loss * w
                        if cfg.dampen > 0 and i == len(bits) - 1:  # once a step, whatever the precisions
                            damp = torch.stack([m.dampening_loss() for m in layers]).mean()
                            parts["dampen"] = float(damp.detach())
                            scaled = scaled + cfg.dampen * damp
                        acc.backward(scaled)
                    total += w * float(loss.detach()) + (cfg.dampen * parts["dampen"] if "dampen" in parts else 0.0)
                    logged.update({(f"{k}@{b}" if b is not None else k): v for k, v in parts.items()})
                if cfg.bits:
                    set_active_bits(unwrapped, max(cfg.bits))
                grad_norm = acc.clip_grad_norm_(params, cfg.grad_clip) if cfg.grad_clip > 0 else None
                optimizer.step()
                step += 1
                loss_mean = float(acc.reduce(torch.tensor(total, device=acc.device), reduction="mean"))
                if step % cfg.log_every == 0 or step == cfg.steps:
                    result.history.append({"step": step, "loss": loss_mean, **logged,
                                           "lr": base_lrs[0] * factor,
                                           "grad_norm": None if grad_norm is None else float(grad_norm)})
                if bar is not None:
                    bar[0].update(bar[1], completed=step, loss=loss_mean, lr=base_lrs[0] * factor)
                if cfg.eval_every and (step % cfg.eval_every == 0 or step == cfg.steps):
                    improved = self._evaluate(step, result)
                    if improved is not None:
                        if improved:
                            best_state, bad_evals = self._trainable_state(), 0
                        else:
                            bad_evals += 1
                    if cfg.patience and bad_evals >= cfg.patience and acc.is_main_process:
                        acc.set_trigger()
                    if acc.check_trigger():
                        result.stopped_early = True
                if self.checkpoint_dir is not None and (step % cfg.checkpoint_every == 0 or step == cfg.steps
                                                        or result.stopped_early):
                    self._checkpoint(step, optimizer, result, bad_evals, best_state)
        finally:
            if bar is not None:
                bar[0].stop()
            for h in (s_hooks, t_hooks):
                if h is not None:
                    h.remove()
        if best_state is not None:
            self._load_trainable(best_state)
        self.student = acc.unwrap_model(model)
        result.steps = step
        result.wall_s = time.perf_counter() - t_start
        return result

    def _evaluate(self, step: int, result: DistillResult) -> bool | None:
        """Evaluate on the main process; True/False: improved or not (None on other ranks)."""
        acc = self.accelerator
        improved = None
        if acc.is_main_process:
            assert self.evaluate is not None
            with torch.no_grad():
                scores = dict(self.evaluate(acc.unwrap_model(self.student)))
            metric = self.config.eval_metric
            if metric not in scores:
                raise ConfigError(f"evaluate() returned {sorted(scores)}, without eval_metric {metric!r}")
            result.evaluations.append({"step": step, **scores})
            improved = result.best is None or scores[metric] > result.best[metric]
            if improved:
                result.best, result.best_step = scores, step
            if self.progress:
                from rich.console import Console

                shown = ", ".join(f"{k} {v:.4f}" for k, v in scores.items() if isinstance(v, float))
                Console(stderr=True).print(f"step {step}: {shown}{' (best)' if improved else ''}")
        acc.wait_for_everyone()
        return improved

    def _checkpoint(self, step: int, optimizer: Any, result: DistillResult, bad_evals: int,
                    best_state: dict[str, torch.Tensor] | None) -> None:
        acc = self.accelerator
        if acc.is_main_process:
            assert self.checkpoint_dir is not None
            trainer = {"step": step, "config": self.config.to_dict(), "world_size": acc.num_processes,
                       "history": result.history, "evaluations": result.evaluations, "best": result.best,
                       "best_step": result.best_step, "bad_evals": bad_evals, "stopped_early": result.stopped_early}
            inner = optimizer.optimizer if hasattr(optimizer, "optimizer") else optimizer
            save_checkpoint(self.checkpoint_dir, trainer, self._trainable_state(), inner.state_dict(), best_state)
        acc.wait_for_everyone()

    def _bar(self, start: int) -> tuple[Any, Any]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, \
            TimeRemainingColumn

        bar = Progress(TextColumn("distilling"), BarColumn(), MofNCompleteColumn(),
                       TextColumn("loss {task.fields[loss]:.4g}  lr {task.fields[lr]:.2g}"), TimeElapsedColumn(),
                       TextColumn("ETA"), TimeRemainingColumn(), transient=False)
        task = bar.add_task("", total=self.config.steps, completed=start, loss=float("nan"), lr=0.0)
        bar.start()
        return bar, task
