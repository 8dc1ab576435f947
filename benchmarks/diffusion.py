"""BitsFusion on the bundled diffusion UNet (``zoo.digits``): fp32 vs uniform 2-bit PTQ vs mixed 1.99-bit PTQ vs
mixed 1.99-bit + distillation, measured on generated samples.

    python benchmarks/diffusion.py --write docs/BENCHMARKS.md        # ~30 min on 2 cores
    python benchmarks/diffusion.py --smoke                            # a few minutes, nothing written

The pipeline is ``bitsfusion demo``'s (``cli.demo_digits.digits_demo``) with more samples (``--per-class``
of each digit, default 100: 1000 images) and a longer distillation
(``--distill-steps`` of stage I, then ``--data-steps`` of stage II: plain noise prediction on the real
training images). Scores: conditional accuracy (the bundled judge, 1.000 on the held-out digits),
Frechet distance to the 360 held-out digits in the judge's 64-d features, mean per-sample MSE to the
fp32 image from the same noise. Sizes: the artifact on disk (time-embedding cache included) against
the fp32 UNet's parameters. Records go to ``benchmarks/results/diffusion.json`` (one per run, appended,
so the run-to-run spread is in the file); ``--write`` renders every recorded run into the markdown.
"""

from __future__ import annotations

import argparse
import datetime
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import quality  # noqa: E402
from bitsfusion.cli.demo_digits import digits_demo  # noqa: E402
from bitsfusion.train import DistillConfig  # noqa: E402
from bitsfusion.zoo import digits as D  # noqa: E402

START, END = "<!-- diffusion:start -->", "<!-- diffusion:end -->"
HEADING = "## Diffusion: the digits UNet at 1.99 bits (issue 6)"


def run(args: argparse.Namespace) -> dict[str, Any]:
    config = DistillConfig(steps=args.distill_steps, warmup_steps=min(100, args.distill_steps // 5 + 1),
                           eval_every=max(50, args.distill_steps // 6), lr=args.lr, scale_lr=args.scale_lr)
    started = time.perf_counter()
    result = digits_demo(avg_bits=args.avg_bits, distill_steps=args.distill_steps, per_class=args.per_class,
                         steps=args.steps, grid=args.grid, distill_config=config, data_steps=args.data_steps)
    return {
        "date": datetime.date.today().isoformat(), "machine": quality.machine(),
        "threads": torch.get_num_threads(), "wall_s": time.perf_counter() - started,
        "settings": {"avg_bits": args.avg_bits, "per_class": args.per_class, "steps": args.steps,
                     "guidance": D.GUIDANCE, "distill_steps": args.distill_steps, "data_steps": args.data_steps,
                     "lr": args.lr, "scale_lr": args.scale_lr},
        "columns": {k: dict(v) for k, v in result.items()},
        "plan": result.plan_counts, "times": result.times, "cache": result.cache.summary(),  # type: ignore[attr-defined]
    }


def markdown(records: list[dict[str, Any]], command: str) -> str:
    last = records[-1]
    cols = last["columns"]
    names = list(cols)
    fp32 = cols["fp32"]
    s = last["settings"]
    lines = [
        f"Command: `{command}`.  ",
        f"Machine: {last['machine']}; recorded {last['date']}, {last['wall_s'] / 60:.1f} min in all.  ",
        f"Model: the bundled digits UNet (diffusers UNet2DConditionModel, 1.49 M parameters, SD-1.5's layer types). "
        f"Sampling: DDIM {s['steps']} steps, guidance {s['guidance']}, {10 * s['per_class']} samples "
        f"({s['per_class']} per digit) from fixed noise, the same for every column. Plan: analysis on the fp32 "
        "model's sampling trajectories (noise-prediction MSE), exact allocation at <= "
        f"{s['avg_bits']} stored bits per quantized weight (every byte counted), conv_in/conv_out at 8 bits, "
        "GPTQ; time embedding cached (float16, the time layers dropped). Distillation: "
        f"{s['distill_steps']} steps of stage I (noise + feature distillation, condition dropped 10%, "
        f"timesteps ~ Beta(3, 1)) and {s['data_steps']} of stage II (noise prediction on the real digits), "
        f"lr {s['lr']:g}, scale lr {s['scale_lr']:g}. Sizes: the bytes of every stored tensor (codes, scales, zeros, float biases and norms, time-embedding tables), and "
        "the artifact files on disk, against the fp32 UNet's parameters.",
        "",
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| UNet weights (tensor bytes) | " + " | ".join(
            f"{c['weight_bytes'] / 1e3:,.0f} kB ({fp32['size_bytes'] / c['weight_bytes']:.1f}x)" for c in cols.values()) + " |",
        "| artifact on disk (+ headers, manifest) | " + " | ".join(
            f"{c['size_bytes'] / 1e3:,.0f} kB ({fp32['size_bytes'] / c['size_bytes']:.1f}x)" for c in cols.values()) + " |",
        "| bits / weight, every byte | " + " | ".join(f"{c['bits_per_weight']:.3f}" for c in cols.values()) + " |",
        "| bits / weight, paper's counting | " + " | ".join(f"{c['paper_bits']:.3f}" for c in cols.values()) + " |",
        "| conditional accuracy | " + " | ".join(f"{100 * c['accuracy']:.1f}%" for c in cols.values()) + " |",
        "| Frechet distance | " + " | ".join(f"{c['frechet']:.2f}" for c in cols.values()) + " |",
        "| image MSE to fp32 | " + " | ".join(f"{c['image_mse']:.4f}" for c in cols.values()) + " |",
        "",
        f"Plan: {', '.join(f'{n} x {k}' for k, n in sorted(last['plan'].items()))}. {last['cache']}.",
    ]
    final = cols[names[-1]]
    acc_ok = final["accuracy"] >= fp32["accuracy"] - 0.02
    fd_ok = final["frechet"] <= 1.25 * fp32["frechet"]
    size_ok = fp32["size_bytes"] / final["weight_bytes"] >= 12
    lines += ["", "Targets (issue 6):", "",
              f"- conditional accuracy within 2 points of fp32: {'met' if acc_ok else 'NOT met'} "
              f"({100 * final['accuracy']:.1f}% vs {100 * fp32['accuracy']:.1f}%)",
              f"- Frechet distance within 25% of fp32's: {'met' if fd_ok else 'NOT met'} "
              f"({final['frechet']:.2f} vs {fp32['frechet']:.2f}, limit {1.25 * fp32['frechet']:.2f})",
              f"- UNet weights at least 12x smaller than fp32: {'met' if size_ok else 'NOT met'} "
              f"({fp32['size_bytes'] / final['weight_bytes']:.1f}x the tensor bytes; the artifact file with its "
              f"headers and JSON manifest is {fp32['size_bytes'] / final['size_bytes']:.1f}x)"]
    lines += ["", f"Spread: {len(records)} recorded run(s), each from seed 0; every run of this script appends one to "
              "`benchmarks/results/diffusion.json`. Wall times are of 2 shared cores (other work may have run beside)."]
    if len(records) > 1:
        lines += ["", "Every recorded run (spread):", "", "| date | settings | " + " | ".join(
            f"{n} acc / FD" for n in names) + " |", "|---|---|" + "---|" * len(names)]
        for r in records:
            st = r["settings"]
            lines.append(f"| {r['date']} | {st['per_class']}/digit, {st['steps']} steps, {st['distill_steps']}+"
                         f"{st['data_steps']} train | " + " | ".join(
                             f"{100 * c['accuracy']:.1f}% / {c['frechet']:.2f}" for c in r["columns"].values()) + " |")
    lines += ["", "![samples](images/digits_grid.png)"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--avg-bits", type=float, default=1.99)
    ap.add_argument("--per-class", type=int, default=100)
    ap.add_argument("--steps", type=int, default=D.STEPS, help="DDIM steps of every sample")
    ap.add_argument("--distill-steps", type=int, default=1500)
    ap.add_argument("--data-steps", type=int, default=0)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--scale-lr", type=float, default=1e-3)
    ap.add_argument("--grid", type=Path, default=Path("docs/images/digits_grid.png"))
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/diffusion.json"))
    ap.add_argument("--write", type=Path, help="rewrite the diffusion section of this markdown file")
    ap.add_argument("--smoke", action="store_true", help="5 per digit, 10 steps, 20 training steps; writes nothing")
    args = ap.parse_args(argv)
    if args.smoke:
        args.per_class, args.steps, args.distill_steps, args.data_steps = 5, 10, 20, 0
        args.grid = Path("/tmp/digits_grid_smoke.png")
    record = run(args)
    command = "python benchmarks/diffusion.py " + " ".join(argv if argv is not None else sys.argv[1:])
    record["command"] = command
    for name, c in record["columns"].items():
        print(f"{name}: {c['size_bytes']:,} B, {c['bits_per_weight']:.3f} bits/w, acc {c['accuracy']:.3f}, "
              f"FD {c['frechet']:.2f}, MSE {c['image_mse']:.4f}", flush=True)
    if args.smoke:
        return 0
    records = json.loads(args.results.read_text(encoding="utf-8")) if args.results.exists() else []
    records.append(record)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.results.with_suffix(".tmp")
    tmp.write_text(json.dumps(records, indent=1) + "\n", encoding="utf-8")
    tmp.replace(args.results)
    if args.write is not None:
        quality.write_section(args.write, markdown(records, command), START, END, HEADING)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
