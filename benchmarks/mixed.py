"""Mixed-precision benchmark: all-MiniLM-L6-v2, uniform bits against exact per-layer allocation, and peers.

One run does the whole pipeline on the 36 encoder Linear layers (embeddings, LayerNorms and the
unused pooler stay float) and judges each model on the 1000 evaluation sentences of
``bitsfusion.zoo.minilm`` (mean and 5th-percentile cosine to the fp32 embeddings, top-10 neighbour
overlap); nothing it is judged on is used for calibration:

1. **analysis**: ``measure_sensitivity`` over ``--bits`` x ``--group-sizes`` x ``--calibrations``
   candidates (asymmetric grid, ALS scales); the loss of each cell (output MSE of the embeddings) on
   ``--batches`` calibration batches, the GPTQ/AWQ input Hessians from ``--hessian-batches``;
2. **allocation**: ``allocate`` (exact multiple-choice knapsack, HiGHS) at each ``--budgets`` average
   bits per weight, *stored* counting (every byte: codes with padding, float16 scales and zeros);
   the paper's counting (``log2`` levels, no overhead) is shown beside it;
3. **additivity**: each plan's predicted loss (sum of its cells) against its measured loss on the
   calibration batches; ``--refine`` adds a measured refinement of each plan within its budget;
4. **quantization** of a copy by each plan (``quantize_`` with the same Hessians), then evaluation;
   with ``--sequential-batches N`` also a "sequential" row per budget: the same plan quantized by
   ``quantize_(..., sequential=True)`` on ``N`` calibration batches (``nn.sequential``: layers in forward
   order, each fitted on the partly quantized model's inputs toward the float outputs; beyond 32 batches the
   MiniLM spec continues with its distillation sentences, never the evaluation ones);
5. **uniform** rows for 8/4/3/2 bits: round-to-nearest (asymmetric, group 64, ALS, the best uniform
   RTN choice of ``benchmarks/quality.py``) and GPTQ with the same grid;
6. **peers** from ``benchmarks/peers.py`` when installed (``benchmarks/requirements-peers.txt``), at
   their own settings, bits counted from what each stores.

Wall times: ``analysis s`` is measuring the table (once, shared by every mixed row), ``alloc s``
solving one budget, ``quantize s`` quantizing one copy (peers: their own quantization).

Kernels: the whole run uses ``--kernel`` (``$BITSFUSION_KERNEL``; default ``reference``, exact arithmetic,
so the table measures the weights); each sequential row is also evaluated on the native kernels' own choice
(``auto``: int8 activations for more than 4 rows), printed under the table.

Usage::

    python benchmarks/mixed.py                                  # the full table (~20 min on 2 cores)
    python benchmarks/mixed.py --sens /tmp/sens.json            # keep/resume the sensitivity table
    python benchmarks/mixed.py --write docs/BENCHMARKS.md       # rewrite the mixed-precision section
    python benchmarks/mixed.py --smoke                          # 2 layers' worth of candidates (seconds)
    python benchmarks/mixed.py --refine --sequential-batches 128 --write docs/BENCHMARKS.md   # as documented
    python benchmarks/mixed.py --rotations 128 --table-only --sens rot.json   # the rotated candidates alone
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from torch import nn  # noqa: E402

import peers  # noqa: E402
import quality  # noqa: E402
from bitsfusion.allocate import allocate, check_additivity, refine  # noqa: E402
from bitsfusion.analysis import OutputProbe, default_candidates, measure_sensitivity  # noqa: E402
from bitsfusion.analysis.sensitivity import resolve_loss  # noqa: E402
from bitsfusion.errors import BitsFusionError  # noqa: E402
from bitsfusion.nn import quantize_  # noqa: E402
from bitsfusion.pack.accounting import packed_nbytes, paper_bits_per_weight  # noqa: E402
from bitsfusion.plan import BitPlan  # noqa: E402
from bitsfusion.types import QScheme  # noqa: E402
from bitsfusion.zoo import get_model_spec  # noqa: E402
from bitsfusion.zoo.minilm import reference_embeddings  # noqa: E402

START, END = "<!-- mixed:start -->", "<!-- mixed:end -->"
HEADING = "## Mixed precision: all-MiniLM-L6-v2"


@dataclass
class Row:
    """One model of the table."""

    name: str
    stored_bpw: float
    paper_bpw: float | None
    scores: dict[str, float] | None = None
    quantize_s: float = float("nan")
    alloc_s: float | None = None
    predicted: float | None = None
    measured: float | None = None
    note: str = ""


def encoder_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: tuple(m.weight.shape) for n, m in model.named_modules()
            if isinstance(m, nn.Linear) and n.startswith("encoder.layer.")}


def uniform_row(spec, reference, scheme: QScheme, name: str, hessians) -> Row:
    shapes = encoder_shapes(reference)
    weights = sum(n * k for n, k in shapes.values())
    row = Row(name, 8 * sum(packed_nbytes(scheme, s) for s in shapes.values()) / weights,
              paper_bits_per_weight(scheme))
    model = copy.deepcopy(reference)
    start = time.perf_counter()
    quantize_(model, BitPlan(default=None, rules={quality.ENCODER_LINEARS: scheme}), progress=False,
              hessians=hessians if scheme.calibration.uses_inputs else None)
    row.quantize_s = time.perf_counter() - start
    row.scores = spec.evaluate(reference, model)
    return row


def mixed_row(spec, reference, plan, name: str, hessians, alloc_s: float, point) -> Row:
    row = Row(name, plan.bits_per_weight, plan.paper_bits_per_weight, alloc_s=alloc_s,
              predicted=point.predicted, measured=point.measured)
    model = copy.deepcopy(reference)
    start = time.perf_counter()
    quantize_(model, plan.plan(), progress=False, hessians=hessians)
    row.quantize_s = time.perf_counter() - start
    row.scores = spec.evaluate(reference, model)
    return row


def sequential_row(spec, reference, plan, name: str, batches, alloc_s: float) -> Row:
    row = Row(name, plan.bits_per_weight, plan.paper_bits_per_weight, alloc_s=alloc_s)
    model = copy.deepcopy(reference)
    start = time.perf_counter()
    quantize_(model, plan.plan(), progress=False, calibration_data=batches, forward=spec.run, sequential=True)
    row.quantize_s = time.perf_counter() - start
    row.scores = spec.evaluate(reference, model)
    kernel = os.environ.get("BITSFUSION_KERNEL")
    os.environ["BITSFUSION_KERNEL"] = "auto"
    try:
        native = spec.evaluate(reference, model)
    finally:
        if kernel is None:
            os.environ.pop("BITSFUSION_KERNEL", None)
        else:
            os.environ["BITSFUSION_KERNEL"] = kernel
    row.note = (f"{name}: mean cosine {native['mean_cos']:.4f}, p5 {native['p5_cos']:.4f}, top-10 "
                f"{native['top10_overlap']:.4f} on the native kernels (auto)")
    return row


def peer_rows(spec, reference, only: list[str]) -> list[Row]:
    rows = []
    for name, fn in peers.PEERS.items():
        if only and not any(o in name for o in only):
            continue
        try:
            run = fn(reference)
        except peers.PeerUnavailable as e:
            rows.append(Row(f"peer {name}", float("nan"), None, note=f"not run: {e.reason}"))
            continue
        row = Row(f"peer {name}", run.bits_per_weight, None, quantize_s=run.seconds)
        row.scores = spec.evaluate(reference, run.model)
        rows.append(row)
    return rows


def _f(x: float | None, fmt: str) -> str:
    return "" if x is None or x != x else format(x, fmt)


def row_line(r: Row) -> str:
    if r.scores is None:
        return f"| {r.name} | {r.note} | | | | | | | | |"
    s = r.scores
    return (f"| {r.name} | {r.stored_bpw:.3f} | {_f(r.paper_bpw, '.3f')} | {s['mean_cos']:.4f} | {s['p5_cos']:.4f} | "
            f"{s['top10_overlap']:.4f} | {_f(r.predicted, '.3g')} | {_f(r.measured, '.3g')} | "
            f"{_f(r.alloc_s, '.1f')} | {r.quantize_s:.1f} |")


def markdown(rows: list[Row], command: str, analysis: str, seconds: float) -> str:
    import datetime

    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return "\n".join([
        f"Command: `{command}`  ",
        f"Machine: {quality.machine()}  ",
        f"Date: {date}; whole run {seconds / 60:.1f} min.  ",
        analysis,
        "",
        "| model | bits/w stored | bits/w paper | mean cos | p5 cos | top-10 overlap | predicted loss | "
        "measured loss | alloc s | quantize s |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        *(row_line(r) for r in rows),
        *([""] + [f"- {r.note}" for r in rows if r.scores is not None and r.note]
          if any(r.scores is not None and r.note for r in rows) else []),
    ])


def _ints(text: str) -> list[int]:
    return [int(p) for p in text.split(",") if p.strip()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--bits", default="1,2,3,4,5,6,8", help="candidate bit widths")
    ap.add_argument("--group-sizes", default="64,128,0", help="candidate group sizes (0 = per channel)")
    ap.add_argument("--calibrations", default="gptq", help="candidate quantizers, e.g. none,gptq")
    ap.add_argument("--rotations", default="0", help="candidate Hadamard rotations, e.g. 0,128 (0 = none)")
    ap.add_argument("--table-only", action="store_true",
                    help="stop after measuring the sensitivity table (--sens); e.g. to add candidates in a second "
                         "table that SensitivityTable.merged combines")
    ap.add_argument("--budgets", default="4,3,2.5,2,1.75", help="average stored bits per weight")
    ap.add_argument("--uniform", default="8,4,3,2", help="uniform bit widths for the comparison rows")
    ap.add_argument("--batches", type=int, default=8, help="calibration batches each cell's loss is measured on")
    ap.add_argument("--hessian-batches", type=int, default=32, help="calibration batches of the input Hessians")
    ap.add_argument("--refine", action="store_true", help="also a measured refinement of each plan")
    ap.add_argument("--sequential-batches", type=int, default=0,
                    help="also each plan quantized sequentially on this many calibration batches (0 = no)")
    ap.add_argument("--kernel", default="reference", help="$BITSFUSION_KERNEL for the run (auto, reference, ...)")
    ap.add_argument("--peers", default="torch-int8,hqq,quanto,bnb-nf4", help="peer name filters ('' = none)")
    ap.add_argument("--sens", type=Path, help="sensitivity table JSON to keep/resume")
    ap.add_argument("--smoke", action="store_true", help="2 and 4 bits, group 64, one budget, no peers")
    ap.add_argument("--write", type=Path, help="rewrite the mixed-precision section of this markdown file")
    args = ap.parse_args(argv)
    if args.smoke:
        args.bits, args.group_sizes, args.budgets, args.uniform, args.peers = "2,4", "64", "3", "", ""
        args.batches, args.hessian_batches, args.sequential_batches = 2, 4, 2
    command = ("python benchmarks/mixed.py " + " ".join(argv if argv is not None else sys.argv[1:])).strip()
    started = time.perf_counter()
    os.environ["BITSFUSION_KERNEL"] = args.kernel
    spec = get_model_spec("minilm")
    reference = spec.build()
    reference_embeddings(reference)
    loss_batches, h_batches = spec.calibration(args.batches), spec.calibration(args.hessian_batches)
    candidates = default_candidates(_ints(args.bits), grid="asymmetric", method="als",
                                    group_sizes=[g or None for g in _ints(args.group_sizes)],
                                    calibrations=[c for c in args.calibrations.split(",") if c],
                                    rotations=_ints(args.rotations))
    t0 = time.perf_counter()
    table = measure_sensitivity(reference, loss_batches, candidates, run=spec.run, loss="mse",
                                include=lambda n, _: n.startswith("encoder.layer."), path=args.sens,
                                hessian_batches=h_batches, progress=sys.stderr.isatty())
    analysis_s = time.perf_counter() - t0
    measured_s = float(table.meta.get("seconds", analysis_s))
    rho = table.meta.get("proxy_spearman", {})
    analysis = (f"Analysis: {len(table.layers)} layers x {len(candidates)} candidates "
                f"({', '.join(str(c) for c in candidates[:3])}, ...) measured in {measured_s:.0f} s "
                f"({args.batches} loss batches, {args.hessian_batches} Hessian batches of 16 sentences); "
                f"proxy rank correlation with the cells (Spearman): "
                + (", ".join(f"{k} {v:.3f}" for k, v in rho.items()) or "-") + ".")
    print(analysis, file=sys.stderr, flush=True)
    if args.table_only:
        return 0
    names = list(table.layers)
    probe = OutputProbe(reference, loss_batches, names, run=spec.run, loss=resolve_loss("mse")[1],
                        hessian_batches=h_batches)
    hessians = {n: probe.hessian(n) for n in names}
    seq_batches = spec.calibration(args.sequential_batches) if args.sequential_batches else None
    rows: list[Row] = []
    for b in _ints(args.uniform):
        for cal in ("none", "gptq"):
            scheme = QScheme(b, 64, "asymmetric", "als", calibration=cal)
            rows.append(uniform_row(spec, reference, scheme, f"uniform {scheme}", hessians))
            print(row_line(rows[-1]), file=sys.stderr, flush=True)
    for budget in [float(b) for b in args.budgets.split(",")]:
        try:
            t1 = time.perf_counter()
            plan = allocate(table, avg_bits=budget, counting="stored")
            alloc_s = time.perf_counter() - t1
        except BitsFusionError as e:
            rows.append(Row(f"mixed <= {budget:g}", float("nan"), None, note=f"not run: {e}"))
            continue
        point = check_additivity(probe, [plan])[0]
        rows.append(mixed_row(spec, reference, plan, f"mixed <= {budget:g}", hessians, alloc_s, point))
        print(row_line(rows[-1]), file=sys.stderr, flush=True)
        if seq_batches is not None:
            rows.append(sequential_row(spec, reference, plan, f"mixed <= {budget:g} sequential", seq_batches,
                                       alloc_s))
            print(row_line(rows[-1]), rows[-1].note, file=sys.stderr, flush=True)
        if args.refine:
            t1 = time.perf_counter()
            refined = refine(probe, table, plan, progress=False)
            alloc_s = time.perf_counter() - t1
            point = check_additivity(probe, [refined.plan])[0]
            rows.append(mixed_row(spec, reference, refined.plan, f"mixed <= {budget:g} refined", hessians,
                                  alloc_s, point))
            print(row_line(rows[-1]), file=sys.stderr, flush=True)
    if args.peers:
        for r in peer_rows(spec, reference, [p for p in args.peers.split(",") if p]):
            rows.append(r)
            print(row_line(r), file=sys.stderr, flush=True)
    section = markdown(rows, command, analysis, time.perf_counter() - started)
    print(section)
    if args.write:
        quality.write_section(args.write, section, START, END, HEADING)
    return 1 if args.smoke and any(r.scores is None for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
