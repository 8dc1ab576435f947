"""Output-aware quantizers on all-MiniLM-L6-v2: calibration none vs gptq vs awq vs awq+gptq.

For each bit width, grid and scale method (group 64), the 36 encoder Linear layers of a copy of
the fp32 model are quantized (embeddings, LayerNorms and the unused pooler stay float) and the
1000 evaluation sentences of ``bitsfusion.zoo.minilm`` are embedded and compared with the fp32
embeddings (mean and 5th-percentile cosine, top-10 neighbour overlap).

Calibration data: ``--batches`` (default 32, all 512 sentences) of the zoo's calibration batches
(``bitsfusion.zoo.minilm``: other standard-library docstrings, none of them evaluation sentences,
batched by length so little padding reaches the Hessians). The Hessians of the float model are
collected once (``collect_hessians``) and reused for every scheme. Columns: ``quantize s`` is the wall time
of ``quantize_``; ``out err`` is the mean over layers of ``tr(dW H dW^T) / tr(W H W^T)``.

Usage::

    python benchmarks/calibrated.py                                    # the full table (~30 min on 2 cores)
    python benchmarks/calibrated.py --bits 3 --grids symmetric --methods als   # one slice
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bitsfusion.nn import QModule, collect_hessians, quantize_  # noqa: E402
from bitsfusion.plan import BitPlan  # noqa: E402
from bitsfusion.quant import output_error  # noqa: E402
from bitsfusion.types import Calibration, Grid, QScheme, ScaleMethod  # noqa: E402
from bitsfusion.zoo import get_model_spec  # noqa: E402
from bitsfusion.zoo.minilm import reference_embeddings  # noqa: E402

ENCODER_LINEARS = r"re:encoder\.layer\.\d+\..*"
def mean_output_error(model: nn.Module, reference: nn.Module, hessians: dict[str, torch.Tensor]) -> float:
    errs = []
    float_layers = dict(reference.named_modules())
    for fqn, m in model.named_modules():
        if isinstance(m, QModule) and fqn in hessians:
            w = float_layers[fqn].weight.detach().reshape(m.shape)
            errs.append(output_error(w, m.packed.dequantize(), hessians[fqn]))
    return sum(errs) / len(errs)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bits", type=int, nargs="+", default=[4, 3, 2])
    ap.add_argument("--grids", nargs="+", default=["asymmetric", "symmetric"], choices=[g.value for g in Grid])
    ap.add_argument("--methods", nargs="+", default=["als", "mse"], choices=[m.value for m in ScaleMethod])
    ap.add_argument("--calibrations", nargs="+", default=[c.value for c in Calibration],
                    choices=[c.value for c in Calibration])
    ap.add_argument("--batches", type=int, default=32, help="calibration batches of 16 sentences (at most 32)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (1 by default: on a shared machine more threads than free cores stall)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    command = "python benchmarks/calibrated.py " + " ".join(argv if argv is not None else sys.argv[1:])
    print(f"Command: `{command.strip()}`  \ntorch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)

    spec = get_model_spec("minilm")
    reference = spec.build()
    reference_embeddings(reference)
    batches = spec.calibration(args.batches)
    start = time.perf_counter()
    probe = spec.build()
    names = [n for n, m in probe.named_modules() if isinstance(m, nn.Linear) and n.startswith("encoder.layer.")]
    hessians = collect_hessians(probe, batches, forward=spec.run, names=names, progress=False)
    print(f"Hessians of {len(hessians)} layers from {args.batches} batches in "
          f"{time.perf_counter() - start:.1f} s\n", flush=True)

    print("| bits | grid | method | calibration | mean cos | p5 cos | top-10 overlap | out err | quantize s |")
    print("|---:|---|---|---|---:|---:|---:|---:|---:|", flush=True)
    for bits in args.bits:
        for grid in args.grids:
            for method in args.methods:
                for calibration in args.calibrations:
                    scheme = QScheme(bits, 64, grid, method, calibration=calibration)
                    model = copy.deepcopy(reference)
                    t0 = time.perf_counter()
                    report = quantize_(model, BitPlan(default=None, rules={ENCODER_LINEARS: scheme}),
                                       hessians=hessians, progress=False)
                    seconds = time.perf_counter() - t0
                    assert len(report.quantized) == 36, report.summary()
                    s = spec.evaluate(reference, model)
                    err = mean_output_error(model, reference, hessians)
                    print(f"| {bits} | {grid} | {method} | {calibration} | {s['mean_cos']:.4f} | {s['p5_cos']:.4f} | "
                          f"{s['top10_overlap']:.4f} | {err:.4f} | {seconds:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
