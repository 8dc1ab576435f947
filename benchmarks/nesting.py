"""Nesting benchmark: what running a ``b``-bit code at ``b' < b`` bits costs, and what prefix-aware codes save.

On heavy-tailed random weights (Student-t, df = 4) of ``--size N K`` (default 1024 x 1024), group 64,
ALS scales, a ``b``-bit scheme with ``nested = (2, 3)`` is quantized two ways:

- (a) truncation: the direct ``b``-bit codes, each ``b'`` with its own least-squares scale (zero);
- (b) prefix-aware: codes chosen for every stored prefix at once (``quant.nested.fit_nested``).

Each cell is a squared error relative to a direct quantisation at the same precision: for ``b' < b``
the direct ``b'``-bit ALS quantisation, for ``b`` itself the plain ``b``-bit one (so ``1.000`` means
no price paid). ``+x%`` is the extra error. A second table shows (b) when the full precision's
weight in the prefix-aware objective is lowered (``full_weight``): the trade between the nested
precisions and the stored one. Prints markdown.

Usage::

    python benchmarks/nesting.py                       # 1024 x 1024, seed 0, symmetric grid
    python benchmarks/nesting.py --size 512 512 --seed 3 --grid asymmetric
"""

from __future__ import annotations

import argparse
import time

import torch

from bitsfusion.quant import quantize
from bitsfusion.types import Grid, QScheme, ScaleMethod


def _sq_error(w: torch.Tensor, w_hat: torch.Tensor) -> float:
    return float((w.double() - w_hat.double()).square().sum())


def _cell(ratio: float) -> str:
    return f"{ratio:.3f} ({100 * (ratio - 1):+.1f}%)"


def run(
    n: int, k: int, seed: int, grid: Grid, group: int, full_bits: list[int], nested: tuple[int, ...],
    trade: list[float],
) -> str:
    gen = torch.Generator().manual_seed(seed)
    w = _student_t(n, k, gen)
    direct = {}
    for b in sorted(set(nested) | set(full_bits)):
        qw = quantize(w, QScheme(bits=b, group_size=group, grid=grid, method=ScaleMethod.ALS))
        direct[b] = _sq_error(w, qw.dequantize())
    lines = [
        f"Student-t df=4 weights {n}x{k}, seed {seed}, {grid.value} grid, group {group}, ALS; "
        f"nested={nested}. Cells: squared error / direct quantisation at that precision.",
        "",
        "| stored b | run at | direct rel. error | (a) truncation + LS refit | (b) prefix-aware | time (a) / (b) |",
        "|---|---|---|---|---|---|",
    ]
    for b in full_bits:
        scheme = QScheme(bits=b, group_size=group, grid=grid, method=ScaleMethod.ALS, nested=nested)
        t0 = time.perf_counter()
        qa = quantize(w, scheme, prefix_aware=False)
        t1 = time.perf_counter()
        qb = quantize(w, scheme, prefix_aware=True)
        t2 = time.perf_counter()
        for p in scheme.precisions:
            ra = _sq_error(w, qa.dequantize(p)) / direct[p]
            rb = _sq_error(w, qb.dequantize(p)) / direct[p]
            rel = direct[p] / float(w.double().square().sum())
            times = f"{t1 - t0:.2f} s / {t2 - t1:.2f} s" if p == b else ""
            lines.append(f"| {b} | {p} | {rel:.5f} | {_cell(ra)} | {_cell(rb)} | {times} |")
    if trade:
        lines += ["", "(b) with a lower full_weight (error / direct):", "",
                  "| stored b | full_weight | " + " | ".join(f"run at {p}" for p in (*nested, "b")) + " |",
                  "|---|---|" + "---|" * (len(nested) + 1)]
        for b in full_bits:
            scheme = QScheme(bits=b, group_size=group, grid=grid, method=ScaleMethod.ALS, nested=nested)
            for fw in trade:
                qw = quantize(w, scheme, full_weight=fw)
                cells = [_cell(_sq_error(w, qw.dequantize(p)) / direct[p]) for p in scheme.precisions]
                lines.append(f"| {b} | {fw:g} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _student_t(n: int, k: int, gen: torch.Generator) -> torch.Tensor:
    """Student-t (df = 4) samples from ``gen``: ``z / sqrt(chi2_4 / 4)``, scaled to ~0.02."""
    z = torch.randn(n, k, generator=gen)
    chi2 = torch.randn(4, n, k, generator=gen).square().sum(0)
    return 0.02 * z / (chi2 / 4).sqrt()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, nargs=2, default=(1024, 1024), metavar=("N", "K"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--grid", choices=[Grid.SYMMETRIC.value, Grid.ASYMMETRIC.value], default="symmetric")
    parser.add_argument("--group", type=int, default=64)
    parser.add_argument("--bits", type=int, nargs="+", default=[4, 8], help="stored precisions b")
    parser.add_argument("--nested", type=int, nargs="+", default=[2, 3], help="nested precisions b'")
    parser.add_argument("--trade", type=float, nargs="*", default=[0.3, 0.1, 0.01],
                        help="full_weight values for the trade-off table (none: skip it)")
    args = parser.parse_args()
    print(run(args.size[0], args.size[1], args.seed, Grid(args.grid), args.group, args.bits, tuple(args.nested),
              args.trade))


if __name__ == "__main__":
    main()
