"""Distillation benchmark: all-MiniLM-L6-v2 quantised, then distilled from the float model on this machine.

Cases (each a separate training run from the post-training result; ``--cases`` picks some):

- ``mixed2`` / ``mixed3``: the exact allocation at 2.0 / 3.0 stored bits per weight (every byte counted) of
  the sensitivity table ``--sens`` (``benchmarks/mixed.py --sens`` writes one; without it the table is
  measured here, ~7 min), GPTQ start, distilled ``--steps`` steps; ``mixed2-seq`` / ``mixed3-seq``: the same
  started from sequential GPTQ (``prepare(..., sequential=True)`` on ``--sequential-batches`` calibration
  batches, ``nn.sequential``); ``mixed2-rot`` / ``mixed3-rot``: the allocation over ``--sens`` merged with
  ``--sens-rot``, a table of Hadamard-rotated candidates (``QScheme.rotation``), so each layer may be rotated;
- ``nested``: uniform 4-bit asymmetric group-64 GPTQ storing 3 and 2 bits too, trained with the loss summed
  over 4, 3 and 2 active bits (``--nested-steps``), against ``uniform4`` / ``uniform3`` / ``uniform2``:
  the same scheme without nesting, each trained ``--nested-steps`` steps at its own precision alone.

Training data: the bundled distillation sentences (third-party docstrings, none of them evaluated on or
calibrated on); validation (best state kept): 256 calibration sentences; evaluation: the 1000 shared
sentences (mean and 5th-percentile cosine to fp32, top-10 neighbour overlap), through the fake-quant forward
and, at the stored precision, through the packed model on the native kernels. Each finished case is saved
to ``--results`` (JSON), so cases can run in separate invocations; ``--write`` renders every case there.

Usage::

    python benchmarks/distill.py --sens sens.json --cases mixed2,mixed3 --write docs/BENCHMARKS.md
    python benchmarks/distill.py --cases nested,uniform4,uniform3,uniform2 --write docs/BENCHMARKS.md
    python benchmarks/distill.py --smoke      # 2 cases x 4 steps on tiny data (seconds)
"""

from __future__ import annotations

import argparse
import datetime
import json
import re
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402

import quality  # noqa: E402
from bitsfusion.allocate import allocate  # noqa: E402
from bitsfusion.analysis import SensitivityTable  # noqa: E402
from bitsfusion.nn import set_active_bits  # noqa: E402
from bitsfusion.plan import BitPlan  # noqa: E402
from bitsfusion.train import convert, prepare  # noqa: E402
from bitsfusion.train.distill import DistillConfig  # noqa: E402
from bitsfusion.types import QScheme  # noqa: E402
from bitsfusion.zoo import get_model_spec  # noqa: E402
from bitsfusion.zoo.minilm import load_distill_sentences  # noqa: E402

START, END = "<!-- distill:start -->", "<!-- distill:end -->"
HEADING = "## Distillation: all-MiniLM-L6-v2"
HESSIAN_BATCHES = 32
UNIFORM = {b: QScheme(bits=b, group_size=64, grid="asymmetric", calibration="gptq") for b in (4, 3, 2)}
NESTED = QScheme(bits=4, group_size=64, grid="asymmetric", calibration="gptq", nested=(3, 2))
NESTED_CASES = ("nested", "uniform4", "uniform3", "uniform2")


def _plan_from_table(sens: Path | None, avg_bits: float, skip: tuple[str, ...], sens_rot: Path | None = None) -> BitPlan:
    if sens is None:
        raise SystemExit("the mixed cases need --sens TABLE (python benchmarks/mixed.py --sens TABLE writes one)")
    table = SensitivityTable.load(sens)
    if sens_rot is not None:
        table = table.merged(SensitivityTable.load(sens_rot))
    plan = allocate(table, avg_bits=avg_bits).plan()
    return plan.with_rules({rule: None for rule in skip})


def _case(name: str, args: argparse.Namespace, skip: tuple[str, ...]) -> tuple[BitPlan, DistillConfig, tuple[int, ...]]:
    steps, nsteps = args.steps, args.nested_steps
    common = {"lr": args.lr, "scale_lr": args.scale_lr, "eval_every": args.eval_every, "seed": args.seed,
              "feature_weight": args.feature_weight, "dampen": args.dampen}
    if name in ("mixed2", "mixed3", "mixed2-seq", "mixed3-seq", "mixed2-rot", "mixed3-rot"):
        rot = None
        if name.endswith("-rot"):
            if args.sens_rot is None:
                raise SystemExit(f"{name} needs --sens-rot TABLE (python benchmarks/mixed.py --rotations 128 "
                                 "--table-only --sens TABLE writes one)")
            rot = args.sens_rot
        plan = _plan_from_table(args.sens, 2.0 if name.startswith("mixed2") else 3.0, skip, rot)
        return plan, DistillConfig(steps=steps, **common), ()
    if name == "nested":
        plan = BitPlan(default=NESTED, rules={rule: None for rule in skip})
        weights = tuple(float(w) for w in args.bit_weights.split(",")) if args.bit_weights else ()
        return plan, DistillConfig(steps=nsteps, bits=(4, 3, 2), bit_weights=weights, **common), (4, 3, 2)
    if name.startswith("uniform") and int(name[-1]) in UNIFORM:
        plan = BitPlan(default=UNIFORM[int(name[-1])], rules={rule: None for rule in skip})
        return plan, DistillConfig(steps=nsteps, **common), ()
    raise SystemExit(f"unknown case {name!r}; cases: mixed2, mixed3, mixed2-seq, mixed3-seq, mixed2-rot, mixed3-rot, "
                     "nested, uniform4, uniform3, uniform2")


def run_case(name: str, args: argparse.Namespace) -> dict[str, Any]:
    spec = get_model_spec("minilm")
    recipe = spec.distill()
    plan, config, bits = _case(name, args, spec.default_skip)
    if args.smoke:
        config = DistillConfig(**{**config.to_dict(), "steps": 4, "eval_every": 2})
    teacher, student = spec.build(), spec.build()
    t0 = time.perf_counter()
    seq = name.endswith("-seq")  # started from sequential post-training quantization (nn.sequential)
    n_batches = 4 if args.smoke else (args.sequential_batches if seq else HESSIAN_BATCHES)
    report = prepare(student, plan, calibration_data=spec.calibration(n_batches), forward=spec.run, progress=False,
                     sequential=seq)
    prepare_s = time.perf_counter() - t0
    levels = bits or (None,)

    def scores() -> dict[str, dict[str, float]]:
        out = {}
        for b in levels:
            if b is not None:
                set_active_bits(student, b)
            out[str(b or "stored")] = spec.evaluate(teacher, student)
        if bits:
            set_active_bits(student, max(bits))
        return out

    before = scores()
    lines = load_distill_sentences()[:256] if args.smoke else None
    ckpt = None if args.checkpoints is None else args.checkpoints / name
    result = recipe.run(teacher, student, lines, config=config, checkpoint_dir=ckpt, progress=not args.quiet)
    after = scores()
    convert(student)
    packed = spec.evaluate(teacher, student)  # stored precision, native kernels where they take the call
    totals = report.totals()
    return {
        "case": name, "bits_per_weight": totals["bits_per_weight"], "packed_bytes": totals["packed_bytes"],
        "layers": totals["layers"], "config": config.to_dict(), "before": before, "after": after, "packed": packed,
        "prepare_s": prepare_s, "train_s": result.wall_s, "steps": result.steps, "best_step": result.best_step,
        "resumed_from": result.resumed_from, "evaluations": result.evaluations,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "threads": torch.get_num_threads(), "machine": quality.machine(),
    }


def _row(label: str, bpw: float, s: dict[str, float], extra: str) -> str:
    return (f"| {label} | {bpw:.3f} | {s['mean_cos']:.4f} | {s['p5_cos']:.4f} | {s['top10_overlap']:.3f} | "
            f"{extra} |")


def _machine(record: dict[str, Any]) -> str:
    """The machine a case ran on (records before ``machine`` was kept: this one, with the recorded threads)."""
    return record.get("machine") or re.sub(r"\(\d+ threads\)", f"({record['threads']} threads)", quality.machine())


def markdown(results: dict[str, dict[str, Any]], command: str) -> str:
    machines = sorted({_machine(r) for r in results.values()})
    lines = [
        f"Command: `{command}` (each case's own command line is in its JSON record).  ",
        f"Machine: {'; '.join(machines)}.  ",
        "Model: all-MiniLM-L6-v2, the 36 encoder Linear layers quantized (embeddings, LayerNorms and the unused "
        "pooler float). Bits per weight: stored counting, every byte of codes, scales and zeros. Scores: the 1000 "
        "shared evaluation sentences against fp32. Training: the bundled distillation sentences (third-party "
        "docstrings, disjoint from evaluation and calibration), batch 32, AdamW, validation on 256 calibration "
        "sentences every `eval_every` steps with the best state kept. `train s` is the wall time of training "
        "(2 threads) including its validations; `packed` is the converted artifact on the native kernels "
        "(int8 activations where the kernel choice takes them). Spread: each case ran once (one run is up to 30 "
        "minutes), from seed 0 unless its name says another; validation scores along each run are in its JSON record "
        "(`benchmarks/results/distill.json`).",
        "",
        "| model | bits/w | mean cos | p5 cos | top-10 | training |",
        "|---|---|---|---|---|---|",
    ]
    for name, r in results.items():
        bpw = r["bits_per_weight"]
        cfg = r["config"]
        for level, s in r["before"].items():
            at = "" if level == "stored" else f" @ {level} bits"
            lines.append(_row(f"{name} post-training{at}", bpw, s, "-"))
        for level, s in r["after"].items():
            at = "" if level == "stored" else f" @ {level} bits"
            lines.append(_row(f"{name} distilled{at}", bpw, s,
                              f"{r['steps']} steps, {r['train_s']:.0f} s (best at {r['best_step']}), lr {cfg['lr']:g}"
                              + (f", loss over {cfg['bits']} bits" if cfg["bits"] else "")
                              + (f" weighted {cfg['bit_weights']}" if cfg.get("bit_weights") else "")
                              + (f", feature weight {cfg['feature_weight']:g}" if cfg["feature_weight"] != 0.01 else "")
                              + (f", dampen {cfg['dampen']:g}" if cfg.get("dampen") else "")))
        lines.append(_row(f"{name} distilled, packed", bpw, r["packed"], f"recorded {r['date']}"))
    targets = []
    for name in ("mixed2", "mixed2-seq", "mixed2-rot"):
        if name not in results:
            continue
        r = results[name]
        a, minutes = r["after"]["stored"], r["train_s"] / 60
        ok = a["mean_cos"] >= 0.95 and a["top10_overlap"] >= 0.80 and r["bits_per_weight"] <= 2.0 and minutes <= 30
        targets.append(f"- <= 2.0 bits ({name}): mean cosine >= 0.95 and top-10 >= 0.80 in <= 30 min of training: "
                       f"{'met' if ok else 'NOT met'} ({a['mean_cos']:.4f}, {a['top10_overlap']:.3f}, {minutes:.1f} min)")
    for name in ("mixed3", "mixed3-seq", "mixed3-rot"):
        if name not in results:
            continue
        r = results[name]
        a, minutes = r["after"]["stored"], r["train_s"] / 60
        ok = a["mean_cos"] >= 0.99 and r["bits_per_weight"] <= 3.0 and minutes <= 30
        targets.append(f"- <= 3.0 bits ({name}): mean cosine >= 0.99 in <= 30 min: {'met' if ok else 'NOT met'} "
                       f"({a['mean_cos']:.4f}, {minutes:.1f} min)")
    if targets:
        lines += ["", "Targets (issue 5):", "", *targets]
    seeds = sorted({int(k.partition("/seed")[2] or 0) for k in results})
    runs = [(seed, "" if seed == 0 else f"/seed{seed}") for seed in seeds]
    runs = [(seed, sfx) for seed, sfx in runs if all(f"{c}{sfx}" in results for c in NESTED_CASES)]
    if runs:
        lines += ["", "Nested (one artifact stored at 4 bits, run at 4, 3 and 2 active bits) against a model trained "
                  "for each precision alone, same steps and seed (records `nested/seedN` etc. for seeds past 0):", "",
                  "| seed | active bits | nested mean cos | alone mean cos | difference | target |",
                  "|---|---|---|---|---|---|"]
        for seed, sfx in runs:
            for b in (4, 3, 2):
                n = results[f"nested{sfx}"]["after"][str(b)]["mean_cos"]
                a = results[f"uniform{b}{sfx}"]["after"]["stored"]["mean_cos"]
                lines.append(f"| {seed} | {b} | {n:.4f} | {a:.4f} | {n - a:+.4f} | "
                             f"{'met' if n >= a - 0.01 else 'NOT met'} (within 0.01) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="mixed2,mixed3,nested,uniform4,uniform3,uniform2")
    ap.add_argument("--sens", type=Path, help="sensitivity table for the mixed cases (benchmarks/mixed.py --sens)")
    ap.add_argument("--sens-rot", type=Path,
                    help="the -rot cases: a table of rotated candidates merged with --sens (benchmarks/mixed.py "
                         "--rotations 128 --table-only --sens TABLE)")
    ap.add_argument("--steps", type=int, default=4000, help="steps of the mixed cases")
    ap.add_argument("--nested-steps", type=int, default=1000, help="steps of the nested and uniform cases")
    ap.add_argument("--sequential-batches", type=int, default=128,
                    help="calibration batches of the -seq cases' sequential post-training start")
    ap.add_argument("--bit-weights", default="",
                    help="the nested case's loss weights for 4, 3 and 2 active bits, e.g. 1,1,2 (default equal)")
    ap.add_argument("--feature-weight", type=float, default=0.01,
                    help="weight of the block-output (feature) loss against the output loss")
    ap.add_argument("--dampen", type=float, default=0.0,
                    help="oscillation-dampening weight (DistillConfig.dampen; 0: off)")
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--scale-lr", type=float, default=1e-3)
    ap.add_argument("--eval-every", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0, help="training seed (data order, sampling); the start does not depend on it")
    ap.add_argument("--results", type=Path, default=Path("benchmarks/results/distill.json"))
    ap.add_argument("--checkpoints", type=Path, help="keep resumable checkpoints here (one directory per case)")
    ap.add_argument("--write", type=Path, help="rewrite the distillation section of this markdown file")
    ap.add_argument("--smoke", action="store_true", help="4 steps per case on 256 sentences (seconds)")
    ap.add_argument("--quiet", action="store_true", help="no progress bars")
    args = ap.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    if args.results.exists() and not args.smoke:
        results = json.loads(args.results.read_text(encoding="utf-8"))
    cases = [c for c in args.cases.split(",") if c]
    command = ("python benchmarks/distill.py " + " ".join(argv if argv is not None else sys.argv[1:]) if cases
               else "make bench-distill (one invocation per group of cases; --cases '' only re-renders the recorded cases)")
    for name in cases:
        print(f"== {name}", flush=True)
        record = run_case(name, args)
        record["command"] = command
        results[name if args.seed == 0 else f"{name}/seed{args.seed}"] = record
        shown = {k: {m: round(v, 4) for m, v in s.items()} for k, s in record["after"].items()}
        print(f"{name}: {record['bits_per_weight']:.3f} bits/w, after {shown}, packed "
              f"{record['packed']['mean_cos']:.4f}, {record['train_s']:.0f} s", flush=True)
        if not args.smoke:
            args.results.parent.mkdir(parents=True, exist_ok=True)
            tmp = args.results.with_suffix(".tmp")
            tmp.write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
            tmp.replace(args.results)
    if args.write is not None and not args.smoke:
        quality.write_section(args.write, markdown(results, command), START, END, HEADING)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
