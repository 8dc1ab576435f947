"""Quality benchmark: all-MiniLM-L6-v2 at 8/4/3/2 bits, every grid x scale method, group 64.

For each scheme, the 36 encoder Linear layers of a copy of the fp32 model are quantized
(embeddings, LayerNorms and the unused pooler stay float) and the 1000 evaluation sentences
are embedded and compared with the fp32 embeddings. Columns:

- bits/w stored: ``8 * packed bytes / weights`` over those layers, every overhead counted
  (bit-planes or base-L words with row padding, float16 scales, zeros);
- bits/w paper: ``log2(levels)``, the BitsFusion paper's counting (no overhead);
- mean cos, p5 cos, top-10 overlap: see ``bitsfusion.analysis.metrics``;
- quantize s: wall time of ``quantize_`` (``--repeat R`` runs it R times: min and max shown,
  and the R results are checked to be bit-identical).

Usage::

    python benchmarks/quality.py                       # the full table, printed
    python benchmarks/quality.py --smoke               # 2 bits x symmetric x ALS (CI)
    python benchmarks/quality.py --repeat 2 --write docs/BENCHMARKS.md
"""

from __future__ import annotations

import argparse
import copy
import datetime
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

from bitsfusion.errors import BitsFusionError  # noqa: E402
from bitsfusion.nn import quantize_  # noqa: E402
from bitsfusion.pack.accounting import packed_nbytes, paper_bits_per_weight  # noqa: E402
from bitsfusion.plan import BitPlan  # noqa: E402
from bitsfusion.types import Grid, QScheme, ScaleMethod  # noqa: E402
from bitsfusion.zoo import get_model_spec  # noqa: E402
from bitsfusion.zoo.minilm import reference_embeddings  # noqa: E402

ENCODER_LINEARS = r"re:encoder\.layer\.\d+\..*"
START, END = "<!-- quality:start -->", "<!-- quality:end -->"


@dataclass
class Row:
    bits: int
    grid: Grid
    method: ScaleMethod
    stored_bpw: float = float("nan")
    paper_bpw: float = float("nan")
    scores: dict[str, float] | None = None
    seconds: tuple[float, ...] = ()
    deterministic: bool | None = None
    error: str = ""


def _encoder_linears(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {
        name: tuple(m.weight.shape)
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) and name.startswith("encoder.layer.")
    }


def _state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def run_scheme(spec, reference: nn.Module, row: Row, repeat: int) -> Row:
    """Quantize a copy ``repeat`` times (timing each, checking they agree), then evaluate once.

    A scheme the library refuses (e.g. the balanced grid above 7 bits) becomes a row saying why.
    """
    shapes = _encoder_linears(reference)
    weights = sum(n * k for n, k in shapes.values())
    try:
        scheme = QScheme(bits=row.bits, group_size=64, grid=row.grid, method=row.method)
        row.stored_bpw = 8 * sum(packed_nbytes(scheme, s) for s in shapes.values()) / weights
        row.paper_bpw = paper_bits_per_weight(scheme)
        plan = BitPlan(default=None, rules={ENCODER_LINEARS: scheme})
        seconds, states, model = [], [], None
        for _ in range(repeat):
            model = copy.deepcopy(reference)
            start = time.perf_counter()
            quantize_(model, plan, progress=False)
            seconds.append(time.perf_counter() - start)
            states.append(_state(model))
        row.seconds = tuple(seconds)
        row.deterministic = all(
            all(torch.equal(states[0][k], s[k]) for k in states[0]) for s in states[1:]
        ) if repeat > 1 else None
        row.scores = spec.evaluate(reference, model)
    except BitsFusionError as e:
        row.error = " ".join(str(e).split())
    return row


def machine() -> str:
    """CPU model and core count (lscpu), Python and torch versions, threads used."""
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in lscpu.splitlines() if line.startswith("Model name"))
    except (OSError, subprocess.CalledProcessError, StopIteration):
        model = platform.processor() or "unknown CPU"
    return (f"{model}, {os.cpu_count()} cores visible, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}")


def row_line(r: Row) -> str:
    """One markdown table row."""
    if r.error or r.scores is None:
        return f"| {r.bits} | {r.grid.value} | {r.method.value} | not run: {r.error} | | | | | |"
    head = f"| {r.bits} | {r.grid.value} | {r.method.value} | {r.stored_bpw:.3f} | {r.paper_bpw:.3f} |"
    t = f"{min(r.seconds):.1f}" if len(r.seconds) == 1 else f"{min(r.seconds):.1f}-{max(r.seconds):.1f}"
    return (f"{head} {r.scores['mean_cos']:.5f} | {r.scores['p5_cos']:.5f} | "
            f"{r.scores['top10_overlap']:.4f} | {t} |")


def markdown(rows: list[Row], command: str, seconds: float) -> str:
    """The table section: how it was made, then one row per scheme."""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine()}  ",
        f"Date: {date}; whole run {seconds / 60:.1f} min.",
        "",
        "| bits | grid | method | bits/w stored | bits/w paper | mean cos | p5 cos | top-10 overlap | quantize s |",
        "|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [row_line(r) for r in rows]
    checked = [r.deterministic for r in rows if r.deterministic is not None]
    if checked:
        lines += ["", f"Repeated quantizations bit-identical: {sum(checked)}/{len(checked)} schemes."]
    return "\n".join(lines)


def write_section(doc: Path, section: str, start: str = START, end: str = END,
                  heading: str = "## Quality: all-MiniLM-L6-v2") -> None:
    """Replace the text between ``start`` and ``end`` in ``doc`` (appending heading and markers if absent).

    Written atomically (temporary file, then rename), so other sections are never lost half-way.
    """
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    block = f"{start}\n{section}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + f"\n\n{heading}\n\n" + block + "\n"
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(doc)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="2 bits, symmetric grid, ALS only (CI)")
    ap.add_argument("--bits", default="8,4,3,2", help="comma-separated bit widths")
    ap.add_argument("--repeat", type=int, default=1, help="quantize each scheme this many times (timing spread)")
    ap.add_argument("--write", type=Path, help="rewrite the quality section of this markdown file")
    args = ap.parse_args(argv)
    bits = [2] if args.smoke else [int(b) for b in args.bits.split(",")]
    grids = [Grid.SYMMETRIC] if args.smoke else list(Grid)
    methods = [ScaleMethod.ALS] if args.smoke else list(ScaleMethod)
    spec = get_model_spec("minilm")
    start = time.perf_counter()
    reference = spec.build()
    reference_embeddings(reference)
    rows = []
    for b in bits:
        for grid in grids:
            for method in methods:
                row = run_scheme(spec, reference, Row(b, grid, method), args.repeat)
                rows.append(row)
                print(row_line(row), file=sys.stderr, flush=True)
    command = "python benchmarks/quality.py " + " ".join(argv if argv is not None else sys.argv[1:])
    section = markdown(rows, command.strip(), time.perf_counter() - start)
    print(section)
    if args.write:
        write_section(args.write, section)
    return 1 if args.smoke and any(r.error or r.scores is None for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
