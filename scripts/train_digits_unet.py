"""Train the bundled diffusion model; writes ``zoo/data/digits_unet.safetensors`` (EMA weights, float32).

    python scripts/train_digits_unet.py                  # seed 0, 8000 steps, ~27 minutes on 2 free cores

(0.2 s per step of 64 images on this machine's 2 cores; the bundled weights came from this command, which took
58 minutes because the cores were shared with other work; final smoothed loss 0.105.)

Epsilon prediction on the 1,437 training images (``digits_model.load_digits_split``), timesteps uniform
over the 1000 of ``SCHEDULER_CONFIG``, the label dropped to ``NULL_CLASS`` with p = 0.1 (classifier-free
guidance), AdamW with warm-up and cosine decay, an exponential moving average of the weights
(decay 0.999) which is what is saved. The UNet and the conditioner train together; both go in the
file (``unet.*``, ``cond.*``) with the UNet config, the schedule and this run's settings as metadata.
Reproducible from the seed on the same thread count (float summation order depends on it).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import time

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from bitsfusion.zoo.digits_model import (NULL_CLASS, SCHEDULER_CONFIG, UNET_CONFIG, ClassConditioner, build_unet,
                                         load_digits_split, weights_path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8000)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--drop", type=float, default=0.1, help="probability the label is replaced by NULL_CLASS")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-every", type=int, default=1000)
    ap.add_argument("--out", default=str(weights_path("digits_unet")))
    args = ap.parse_args()

    from diffusers import DDPMScheduler

    torch.manual_seed(args.seed)
    g = torch.Generator().manual_seed(args.seed)
    data = load_digits_split()
    x_all, y_all = data["train_x"], data["train_y"]
    unet, cond = build_unet(), ClassConditioner()
    sched = DDPMScheduler(**SCHEDULER_CONFIG)
    params = list(unet.parameters()) + list(cond.parameters())
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    warmup = 200
    lr_at = lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + torch.cos(torch.tensor(s / args.steps * torch.pi)).item())
    lr_sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    ema_unet, ema_cond = copy.deepcopy(unet).eval(), copy.deepcopy(cond).eval()
    ema_params = list(ema_unet.parameters()) + list(ema_cond.parameters())
    t0, running = time.time(), None
    for step in range(args.steps):
        idx = torch.randint(0, len(y_all), (args.batch,), generator=g)
        x0, y = x_all[idx], y_all[idx].clone()
        y[torch.rand(args.batch, generator=g) < args.drop] = NULL_CLASS
        noise = torch.randn(x0.shape, generator=g)
        t = torch.randint(0, SCHEDULER_CONFIG["num_train_timesteps"], (args.batch,), generator=g)
        x_t = sched.add_noise(x0, noise, t)
        loss = F.mse_loss(unet(x_t, t, encoder_hidden_states=cond(y)).sample, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, p in zip(ema_params, params):
                pe.lerp_(p, 1 - decay)
        running = loss.item() if running is None else 0.99 * running + 0.01 * loss.item()
        if (step + 1) % args.save_every == 0 or step + 1 == args.steps:
            save(args, ema_unet, ema_cond, running, time.time() - t0, step + 1)
        if (step + 1) % 250 == 0 or step == 0:
            el = time.time() - t0
            print(f"step {step + 1}/{args.steps} loss {running:.4f} {el / (step + 1):.3f} s/step "
                  f"eta {el / (step + 1) * (args.steps - step - 1) / 60:.1f} min", flush=True)
    print(f"wrote {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB) after {(time.time() - t0) / 60:.1f} min")


def save(args, ema_unet, ema_cond, running: float, seconds: float, steps: int) -> None:
    """The EMA weights and the run's settings, written atomically (a kill leaves the last save)."""
    tensors = {f"unet.{k}": v.contiguous() for k, v in ema_unet.state_dict().items()}
    tensors.update({f"cond.{k}": v.contiguous() for k, v in ema_cond.state_dict().items()})
    meta = {"unet_config": json.dumps(UNET_CONFIG), "scheduler_config": json.dumps(SCHEDULER_CONFIG),
            "settings": json.dumps(vars(args) | {"threads": torch.get_num_threads()}),
            "steps_done": str(steps), "final_loss": f"{running:.5f}", "train_seconds": f"{seconds:.0f}"}
    tmp = args.out + ".tmp"
    save_file(tensors, tmp, metadata=meta)
    os.replace(tmp, args.out)


if __name__ == "__main__":
    main()
