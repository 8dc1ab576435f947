"""Kernel benchmark: BitsFusion's native kernels against torch fp32/bf16 F.linear and fbgemm dynamic int8.

For each layer shape ``N x K`` (out x in) and rows ``M``, one weight is stored at 8 bits with every lower
precision nested and run at ``active_bits`` in ``--bits`` (so the 2-bit row reads 2 planes of that same
weight: no repacking between precisions). Weights are rotated over enough copies to exceed ``--rotate-mb``
(default 96 MB, three times a 32 MB L3), so every call streams its weight from DRAM, as a large model does.

Printed per row: median time over ``--repeats`` passes (each pass averages one call per rotated copy), the
spread ``(max - min) / median`` of those passes, ratios to fp32 / bf16 / fbgemm int8 (> 1: ours is faster),
and the memory floor: bytes our call must read (the active planes plus fp32 scales in the kernel layout)
divided by the copy bandwidth measured in the same run (``dst.copy_(src)`` of 256 MB, counted as bytes read
plus written per second). Timings include the Python dispatch (``kernels.dispatch.linear``), as a model sees.

    python benchmarks/kernels.py                 # every shape, M = 1, 8, 128, bits 1 2 3 4 8
    python benchmarks/kernels.py --quick         # fewer repeats, 4096x4096 and MiniLM shapes
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable

import torch
import torch.nn.functional as F

from bitsfusion.kernels import dispatch
from bitsfusion.kernels.repack import kernel_weight
from bitsfusion.pack.packed import PackedWeight
from bitsfusion.quant.codes import QuantizedWeight
from bitsfusion.types import QScheme

SHAPES = {"4096x4096": (4096, 4096), "11008x4096": (11008, 4096), "minilm-qkvo 384x384": (384, 384),
          "minilm-ffn-up 1536x384": (1536, 384), "minilm-ffn-down 384x1536": (384, 1536)}
QUICK = ("4096x4096", "minilm-qkvo 384x384", "minilm-ffn-up 1536x384")


def copy_bandwidth_gbs(mb: int = 256, repeats: int = 5) -> float:
    """Best of ``repeats`` copies of an ``mb`` buffer: (read + written bytes) / s, in GB/s."""
    src = torch.empty(mb << 20, dtype=torch.uint8).fill_(1)
    dst = torch.empty_like(src)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        dst.copy_(src)
        best = min(best, time.perf_counter() - t)
    return 2 * src.numel() / best / 1e9


def random_packed(n: int, k: int, seed: int) -> PackedWeight:
    """An 8-bit symmetric weight (group 64) with every lower precision nested; values do not affect speed."""
    scheme = QScheme(8, group_size=64, nested=tuple(range(1, 8)))
    g = torch.Generator().manual_seed(seed)
    groups = scheme.n_groups(k)
    codes = torch.randint(0, 256, (n, k), generator=g, dtype=torch.uint8)
    scale = lambda: (torch.rand(n, groups, generator=g) * 0.01 + 1e-3).half()  # noqa: E731
    qw = QuantizedWeight(codes, scale(), None, scheme, {b: (scale(), None) for b in scheme.nested})
    return PackedWeight.from_quantized(qw)


def copies_for(nbytes: int, rotate_mb: int) -> int:
    return max(2, min(512, -(-(rotate_mb << 20) // max(nbytes, 1))))


def time_rotating(calls: list[Callable[[], object]], repeats: int) -> tuple[float, float]:
    """(median seconds per call, spread) over ``repeats`` passes, each one call per rotated copy."""
    for c in calls[: min(len(calls), 4)]:
        c()  # warm-up: repacking caches, allocator
    passes = []
    for _ in range(repeats):
        t = time.perf_counter()
        for c in calls:
            c()
        passes.append((time.perf_counter() - t) / len(calls))
    med = statistics.median(passes)
    return med, (max(passes) - min(passes)) / med


def baselines(n: int, k: int, m: int, args: argparse.Namespace) -> dict[str, tuple[float, float]]:
    out: dict[str, tuple[float, float]] = {}
    x = torch.randn(m, k)
    w32 = [torch.randn(n, k) for _ in range(copies_for(4 * n * k, args.rotate_mb))]
    out["fp32"] = time_rotating([lambda w=w: F.linear(x, w) for w in w32], args.repeats)
    w16 = [w.bfloat16() for w in w32[: copies_for(2 * n * k, args.rotate_mb)]]
    xb = x.bfloat16()
    out["bf16"] = time_rotating([lambda w=w: F.linear(xb, w) for w in w16], args.repeats)
    del w16
    qs = []
    for w in w32[: copies_for(n * k, args.rotate_mb)]:
        lin = torch.nn.Linear(k, n, bias=False)
        lin.weight.data = w
        qs.append(torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                        dtype=torch.qint8))
    out["int8"] = time_rotating([lambda q=q: q(x) for q in qs], args.repeats)
    return out


def run_shape(name: str, n: int, k: int, args: argparse.Namespace, bw: float) -> None:
    kb, groups = -(-k // 8), -(-k // 64)
    per_copy = 8 * n * kb  # the 8 stored planes
    weights = [random_packed(n, k, s) for s in range(copies_for(per_copy, args.rotate_mb))]
    for p in weights:
        kernel_weight(p)  # load-time repack, outside the timing
    for m in args.rows:
        base = baselines(n, k, m, args)
        x = torch.randn(m, k)
        print(f"{name:26s} M={m:<4d} fp32 {base['fp32'][0] * 1e3:8.3f} ms   bf16 {base['bf16'][0] * 1e3:8.3f} ms   "
              f"fbgemm-int8 {base['int8'][0] * 1e3:8.3f} ms   (spread {base['fp32'][1]:.0%}/{base['bf16'][1]:.0%}/"
              f"{base['int8'][1]:.0%})")
        for b in args.bits:
            t, spread = time_rotating([lambda p=p: dispatch.linear(x, p, None, b) for p in weights], args.repeats)
            floor = (b * n * kb + 2 * 4 * n * groups) / (bw * 1e9)
            kern = dispatch.choose_kernel(x, weights[0])[0]
            print(f"    ours b={b} {kern:8s} {t * 1e3:8.3f} ms (spread {spread:4.0%})  x fp32 {base['fp32'][0] / t:6.2f}"
                  f"  x bf16 {base['bf16'][0] / t:6.2f}  x int8 {base['int8'][0] / t:6.2f}"
                  f"  floor {floor * 1e3:7.3f} ms ({t / floor:5.1f}x floor)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="*", default=None, help=f"names from {list(SHAPES)}")
    ap.add_argument("--rows", nargs="*", type=int, default=[1, 8, 128])
    ap.add_argument("--bits", nargs="*", type=int, default=[1, 2, 3, 4, 8])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rotate-mb", type=int, default=96)
    ap.add_argument("--quick", action="store_true", help="3 repeats, a subset of shapes")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*deprecated.*")  # torch.ao's dynamic quantisation notices
    if args.quick:
        args.repeats = 3
    names = args.shapes or (list(QUICK) if args.quick else list(SHAPES))
    bw = copy_bandwidth_gbs()
    info = dispatch.describe()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; native={info['native']} "
          f"isa={info.get('isa')} ({info.get('reason') or 'ok'}); copy bandwidth {bw:.1f} GB/s (read+write)")
    for name in names:
        n, k = SHAPES[name]
        run_shape(name, n, k, args, bw)


if __name__ == "__main__":
    main()
