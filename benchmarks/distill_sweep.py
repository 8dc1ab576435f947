"""Short distillation runs of one MiniLM plan under several configurations, from one post-training start.

The start (the exact allocation at ``--bits`` stored bits per weight of the sensitivity table ``--sens``,
GPTQ, or sequential GPTQ with ``--sequential``) is prepared once and copied for every configuration, so
the runs differ only in their ``DistillConfig`` fields. Each prints one JSON line: the configuration, its
wall time, the validation trace and the scores on the 1000 evaluation sentences. This is how the learning
rates of the recorded ``mixed3`` case were chosen (``docs/BENCHMARKS.md``, the distillation section).

Usage::

    python benchmarks/distill_sweep.py --sens benchmarks/results/minilm_sens.json --steps 800 \\
        --configs '[{"lr": 4e-5, "scale_lr": 4e-4}, {"lr": 1e-4, "scale_lr": 1e-4, "feature_weight": 1.0}]'
"""

from __future__ import annotations

import argparse
import copy
import json
from pathlib import Path

from distill import _plan_from_table  # benchmarks/distill.py, beside this script

from bitsfusion.train import prepare
from bitsfusion.train.distill import DistillConfig, Distiller
from bitsfusion.zoo import get_model_spec


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sens", type=Path, required=True, help="sensitivity table (benchmarks/mixed.py --sens)")
    ap.add_argument("--bits", type=float, default=3.0, help="stored bits per weight of the allocation")
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--configs", required=True, help="JSON list of DistillConfig field overrides, one per run")
    ap.add_argument("--sequential", action="store_true", help="start from sequential GPTQ on 128 batches")
    args = ap.parse_args(argv)
    try:
        configs = json.loads(args.configs)
    except json.JSONDecodeError as e:
        raise SystemExit(f"--configs is not JSON ({e}); give a list of objects, e.g. '[{{\"lr\": 1e-4}}]'") from None
    if not isinstance(configs, list) or not all(isinstance(c, dict) for c in configs):
        raise SystemExit('--configs must be a JSON list of objects, e.g. \'[{"lr": 1e-4}]\'')
    spec = get_model_spec("minilm")
    recipe = spec.distill()
    plan = _plan_from_table(args.sens, args.bits, spec.default_skip)
    teacher, start = spec.build(), spec.build()
    prepare(start, plan, calibration_data=spec.calibration(128 if args.sequential else 32), forward=spec.run,
            progress=False, sequential=args.sequential)
    print(json.dumps({"start": spec.evaluate(teacher, start)}), flush=True)
    data = recipe.batches(recipe.default_data())
    for overrides in configs:
        config = DistillConfig(**{"steps": args.steps, "eval_every": max(args.steps // 4, 1), **overrides})
        distiller = Distiller(teacher, copy.deepcopy(start), forward=recipe.forward, output_loss=recipe.output_loss,
                              features=recipe.features, feature_mask=recipe.feature_mask, config=config,
                              evaluate=recipe.evaluator(teacher, ()), progress=False)
        result = distiller.fit(data)
        scores = spec.evaluate(teacher, distiller.student)
        print(json.dumps({"config": overrides, "wall_s": round(result.wall_s),
                          "validation": [(e["step"], round(e["score"], 4)) for e in result.evaluations],
                          "evaluation": {k: round(v, 4) for k, v in scores.items()}}), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
