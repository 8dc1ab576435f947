"""Kernel benchmark: BitsFusion's native kernels against torch fp32/bf16 F.linear, fbgemm dynamic int8 and int4.

For each layer shape ``N x K`` (out x in) and rows ``M``, one weight is stored at 8 bits with every lower
precision nested and run at ``active_bits`` in ``--bits`` (so the 2-bit row reads 2 planes of that same
weight: no repacking between precisions). Weights are rotated over enough copies to exceed ``--rotate-mb``
(default 96 MB, three times a 32 MB L3), so every call streams its weight from DRAM, as a large model does.

Per row: our time with the kernel ``kernels.dispatch`` picks (for M = 128 also the exact ``dequant`` GEMM),
median over ``--repeats`` passes (each pass averages one call per rotated copy) and the run-to-run spread
``(max - min) / median``; torch fp32 and bf16 ``F.linear``, fbgemm dynamic int8
(``torch.ao.quantization.quantize_dynamic``), ``torch._weight_int4pack_mm_for_cpu`` (bf16 activations, 4-bit
group 64) where this torch has it; the memory floor (bytes our call must read: the active planes plus the fp32
scales in the kernel layout, over the copy bandwidth ``dst.copy_(src)`` of 256 MB measured in the same run,
read + written bytes per second); ratios > 1 mean ours is faster. Timings include the Python dispatch
(``kernels.dispatch.linear``), as a model sees. Then MiniLM end to end (``--minilm``): fp32, torch dynamic int8,
ours at 4 and 2 bits (the encoder's Linear layers, one 4-bit artifact with 2 bits nested; GELU fused into the
feed-forward up-projection, and at 4 bits also unfused). And, timed interleaved
with their baseline, M = 1 on plain 2/3/4-bit weights against int4pack and the int8 GEMM at M = 128 on 4-bit
weights of group 64, 128 and per channel against fbgemm (``--no-groups`` skips both).

    python benchmarks/kernels.py                              # every shape, M = 1, 8, 128, bits 1 2 3 4 8
    python benchmarks/kernels.py --quick                      # fewer repeats, 4096x4096 and MiniLM shapes
    python benchmarks/kernels.py --write docs/BENCHMARKS.md   # also replace the kernels section there
"""

from __future__ import annotations

import argparse
import copy
import os
import datetime as dt
import platform
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from bitsfusion.kernels import dispatch
from bitsfusion.kernels.repack import kernel_weight
from bitsfusion.pack.packed import PackedWeight
from bitsfusion.quant.codes import QuantizedWeight
from bitsfusion.types import QScheme

SHAPES = {"4096x4096": (4096, 4096), "11008x4096": (11008, 4096), "minilm-qkvo 384x384": (384, 384),
          "minilm-ffn-up 1536x384": (1536, 384), "minilm-ffn-down 384x1536": (384, 1536),
          "unet-attn 320x320": (320, 320), "unet-ff 1280x320": (1280, 320)}
QUICK = ("4096x4096", "minilm-qkvo 384x384", "minilm-ffn-up 1536x384")
START, END = "<!-- kernels:start -->", "<!-- kernels:end -->"
Timing = tuple[float, float]  # (median seconds per call, spread)


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


def random_packed(n: int, k: int, seed: int, scheme: QScheme | None = None) -> PackedWeight:
    """Random codes and scales of ``scheme`` (default: 8-bit symmetric, group 64, every lower precision nested);
    values do not affect speed."""
    scheme = scheme or QScheme(8, group_size=64, nested=tuple(range(1, 8)))
    g = torch.Generator().manual_seed(seed)
    groups = scheme.n_groups(k)
    codes = torch.randint(0, 1 << scheme.bits, (n, k), generator=g, dtype=torch.uint8)
    scale = lambda: (torch.rand(n, groups, generator=g) * 0.01 + 1e-3).half()  # noqa: E731
    qw = QuantizedWeight(codes, scale(), None, scheme, {b: (scale(), None) for b in scheme.nested})
    return PackedWeight.from_quantized(qw)


def floor_bytes(kernel: str, bits: int, n: int, k: int) -> int:
    """Bytes a call must read of a symmetric ``bits``-bit weight (group 64) in the kernel layout: the active planes
    (rows padded to 32 columns) and the per-group scales as that kernel reads them (``lut``: float16 scales, the
    zero a constant; the others: float32 scale and scale * zero)."""
    kb, groups = -(-k // 32) * 4, -(-k // 64)
    return bits * n * kb + (2 if kernel == "lut" else 8) * n * groups


def copies_for(nbytes: int, rotate_mb: int) -> int:
    return max(2, min(512, -(-(rotate_mb << 20) // max(nbytes, 1))))


def time_rotating(calls: list[Callable[[], object]], repeats: int) -> Timing:
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


def int4_calls(n: int, k: int, x: torch.Tensor, rotate_mb: int) -> list[Callable[[], object]] | None:
    """``torch._weight_int4pack_mm_for_cpu`` calls on rotated int4 weights, or None where it does not run."""
    if not hasattr(torch, "_weight_int4pack_mm_for_cpu") or k % 64:
        return None
    try:
        xb = x.bfloat16()
        sz = torch.rand(k // 64, n, 2).bfloat16()
        packs = [torch._convert_weight_to_int4pack_for_cpu(torch.randint(0, 16, (n, k), dtype=torch.int32), 1)
                 for _ in range(copies_for(n * k // 2, rotate_mb))]
        torch._weight_int4pack_mm_for_cpu(xb, packs[0], 64, sz)
    except (RuntimeError, TypeError):
        return None
    return [lambda p=p: torch._weight_int4pack_mm_for_cpu(xb, p, 64, sz) for p in packs]


def baselines(n: int, k: int, m: int, args: argparse.Namespace) -> dict[str, Timing | None]:
    out: dict[str, Timing | None] = {}
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
    del w32
    out["int8"] = time_rotating([lambda q=q: q(x) for q in qs], args.repeats)
    del qs
    calls = int4_calls(n, k, x, args.rotate_mb)
    out["int4"] = None if calls is None else time_rotating(calls, args.repeats)
    return out


def run_shape(name: str, n: int, k: int, args: argparse.Namespace, bw: float) -> list[dict]:
    kb = -(-k // 32) * 4  # plane bytes a row in the kernel layout (padded to 32 columns)
    weights = [random_packed(n, k, s) for s in range(copies_for(8 * n * kb, args.rotate_mb))]
    for p in weights:
        kernel_weight(p)  # load-time repack, outside the timing
    rows = []
    for m in args.rows:
        base = baselines(n, k, m, args)
        x = torch.randn(m, k)
        fmt = lambda t: "   n/a  " if t is None else f"{t[0] * 1e3:8.3f}"  # noqa: E731
        print(f"{name:26s} M={m:<4d} fp32 {fmt(base['fp32'])} ms  bf16 {fmt(base['bf16'])} ms  fbgemm-int8 "
              f"{fmt(base['int8'])} ms  int4pack {fmt(base['int4'])} ms", flush=True)
        for b in args.bits:
            picked = dispatch.choose_kernel(x, weights[0])[0]
            for kern in [picked] + (["dequant"] if m >= 128 else []):
                t, spread = time_rotating([lambda p=p: dispatch.linear(x, p, None, b, kernel=kern) for p in weights],
                                          args.repeats)
                floor = floor_bytes(kern, b, n, k) / (bw * 1e9)
                row = {"shape": name, "m": m, "bits": b, "kernel": kern, "t": t, "spread": spread, "floor": floor,
                       **{key: (None if v is None else v[0]) for key, v in base.items()}}
                rows.append(row)
                ratio = lambda key: "   n/a" if row[key] is None else f"{row[key] / t:6.2f}"  # noqa: E731
                print(f"    ours b={b} {kern:8s} {t * 1e3:8.3f} ms (spread {spread:4.0%})  x fp32 {ratio('fp32')}"
                      f"  x bf16 {ratio('bf16')}  x int8 {ratio('int8')}  x int4 {ratio('int4')}"
                      f"  floor {floor * 1e3:7.3f} ms ({t / floor:5.1f}x floor)", flush=True)
    return rows


def minilm_rows(args: argparse.Namespace) -> list[dict]:
    """MiniLM end to end (``zoo.minilm``): fp32, torch dynamic int8, ours at 4 bits and at 2 (nested)."""
    from bitsfusion.nn import fuse_activations_, quantize_, set_active_bits
    from bitsfusion.plan import BitPlan
    from bitsfusion.zoo.minilm import build_minilm, run

    fp32 = build_minilm().eval()
    dyn = torch.ao.quantization.quantize_dynamic(copy.deepcopy(fp32), {torch.nn.Linear}, dtype=torch.qint8)
    ours = copy.deepcopy(fp32)
    t0 = time.perf_counter()
    quantize_(ours, BitPlan(rules={r"re:encoder\.layer\.\d+\..*": QScheme(4, group_size=64, nested=(2,))}),
              progress=False)
    print(f"MiniLM: quantized the encoder's Linear layers to 4 bits (2 nested) in {time.perf_counter() - t0:.1f} s")
    fused = copy.deepcopy(ours)
    print(f"MiniLM: GELU fused into {len(fuse_activations_(fused))} feed-forward layers")
    rotated = copy.deepcopy(fp32)  # the same scheme with the inputs rotated (QScheme.rotation): the rotation's cost
    quantize_(rotated, BitPlan(rules={r"re:encoder\.layer\.\d+\..*": QScheme(4, group_size=64, nested=(2,),
                                                                             rotation=128)}), progress=False)
    fuse_activations_(rotated)
    channel = copy.deepcopy(fp32)  # one scale per output channel, as fbgemm's int8 weights: no per-group epilogue
    quantize_(channel, BitPlan(rules={r"re:encoder\.layer\.\d+\..*": QScheme(4, group_size=None)}), progress=False)
    fuse_activations_(channel)
    out = []
    for batch, tokens in ((1, 16), (32, 128)):
        g = torch.Generator().manual_seed(0)
        inputs = {"input_ids": torch.randint(1000, 20000, (batch, tokens), generator=g),
                  "token_type_ids": torch.zeros(batch, tokens, dtype=torch.long),
                  "attention_mask": torch.ones(batch, tokens, dtype=torch.long)}
        reps = args.repeats * (40 if batch == 1 else 3)
        models = (("fp32", fp32, None), ("torch dynamic int8", dyn, None), ("ours 4-bit, GELU apart", ours, 4),
                  ("ours 4-bit", fused, 4), ("ours 2-bit (nested)", fused, 2),
                  ("ours 4-bit, rotated 128", rotated, 4), ("ours 4-bit per channel", channel, 4))
        # Interleaved, one call of each model per round, so a noisy stretch of the machine hits all of them.
        times: dict[str, list[float]] = {label: [] for label, _, _ in models}
        with torch.inference_mode():
            for _ in range(reps + 1):
                for label, model, bits in models:
                    if bits is not None:
                        set_active_bits(model, bits)
                    t0 = time.perf_counter()
                    run(model, inputs)
                    times[label].append(time.perf_counter() - t0)
        dyn_passes = times["torch dynamic int8"][1:]
        for label, _, _ in models:
            passes = times[label][1:]  # the first round warms caches up
            t = statistics.median(passes)
            spread = (statistics.quantiles(passes, n=4)[2] - statistics.quantiles(passes, n=4)[0]) / t \
                if len(passes) >= 4 else (max(passes) - min(passes)) / t
            paired = paired_ratio(dyn_passes, passes)
            out.append({"batch": f"{batch} x {tokens}", "model": label, "t": t, "spread": spread, "min": min(passes),
                        "x_int8": paired})
            print(f"MiniLM {batch:2d} x {tokens:3d} tokens  {label:20s} {t * 1e3:8.2f} ms (min {min(passes) * 1e3:.2f}, "
                  f"spread {spread:4.0%})  x dyn int8 (paired) {paired:5.2f}", flush=True)
    return out


GROUP_SIZES = (64, 128, None)


def group_rows(args: argparse.Namespace, n: int = 4096, k: int = 4096, m: int = 128, bits: int = 4) -> list[dict]:
    """The int8-activation GEMM at ``m`` rows on ``bits``-bit weights of group 64, 128 and per channel, against
    fbgemm dynamic int8 (per channel), all four timed interleaved (one pass of each per round).

    What it isolates: the per-group epilogue (convert, scale and zero terms: 3 vector ops per 16 dot products
    at group 64) that a per-channel kernel such as fbgemm does not have.
    """
    qs = []
    for _ in range(copies_for(n * k, args.rotate_mb)):
        lin = torch.nn.Linear(k, n, bias=False)
        qs.append(torch.ao.quantization.quantize_dynamic(torch.nn.Sequential(lin), {torch.nn.Linear},
                                                        dtype=torch.qint8))
    x = torch.randn(m, k)
    calls: dict[str, list[Callable[[], object]]] = {"fbgemm int8": [lambda q=q: q(x) for q in qs]}
    for gs in GROUP_SIZES:
        weights = [random_packed(n, k, seed, QScheme(bits, group_size=gs))
                   for seed in range(copies_for(n * k * bits // 8, args.rotate_mb))]
        for p in weights:
            kernel_weight(p)  # load-time repack, outside the timing
        calls["per channel" if gs is None else f"group {gs}"] = [
            lambda p=p: dispatch.linear(x, p, None, bits, kernel="int8") for p in weights]
    passes = interleaved(calls, args.repeats * 3)
    out = []
    for label, v in passes.items():
        t, ratio = statistics.median(v), paired_ratio(passes["fbgemm int8"], v)
        out.append({"group": label, "t": t, "min": min(v), "spread": (max(v) - min(v)) / t, "x_int8": ratio})
        print(f"{n}x{k} M={m} {bits}-bit int8 GEMM {label:12s} {t * 1e3:7.3f} ms (min {min(v) * 1e3:.3f}, spread "
              f"{(max(v) - min(v)) / t:4.0%})  x fbgemm {ratio:5.2f}", flush=True)
    return out


ROTATION_SHAPES = ((1, 384), (128, 384), (4096, 384), (4096, 1536))


def rotation_rows(args: argparse.Namespace, block: int = 128) -> list[dict]:
    """The Hadamard rotation a rotated scheme applies to each layer's input (``QScheme.rotation``): the native
    kernel (``kernels.native.rotate``, into a new tensor) against the torch form (``quant.rotation.rotate``, a
    block matrix product) and a plain copy of ``x`` (``clone``: its memory traffic), interleaved."""
    from bitsfusion.kernels import native
    from bitsfusion.quant.rotation import rotate

    out = []
    for m, k in ROTATION_SHAPES:
        xs = [torch.randn(m, k) for _ in range(copies_for(m * k * 4, args.rotate_mb))]
        calls: dict[str, list[Callable[[], object]]] = {
            "native": [lambda x=x: native.rotate(x, block) for x in xs],
            "torch": [lambda x=x: rotate(x, block) for x in xs],
            "copy": [lambda x=x: x.clone() for x in xs]}
        passes = interleaved(calls, args.repeats * (20 if m * k < 1 << 16 else 3))
        t = {label: statistics.median(v) for label, v in passes.items()}
        out.append({"shape": f"{m} x {k}", "native": t["native"], "torch": t["torch"], "copy": t["copy"],
                    "spread": (max(passes["native"]) - min(passes["native"])) / t["native"]})
        print(f"rotation {m:4d} x {k:4d} (block {block}): native {t['native'] * 1e3:7.3f} ms, torch "
              f"{t['torch'] * 1e3:7.3f} ms, copy {t['copy'] * 1e3:7.3f} ms", flush=True)
    return out


def paired_ratio(base: list[float], passes: list[float]) -> float:
    """The median over rounds of ``base``'s time over ``passes``' in the same round (> 1: ``passes`` faster):
    a slow stretch of the machine scales both sides of a round, so it moves this less than a ratio of medians."""
    return statistics.median(b / p for b, p in zip(base, passes))


def interleaved(calls: dict[str, list[Callable[[], object]]], rounds: int) -> dict[str, list[float]]:
    """Seconds per call of each label's pass (one call per rotated copy), ``rounds`` rounds of one pass of every
    label in turn (after a warm-up round), so a noisy stretch of the machine hits all of them alike."""
    passes: dict[str, list[float]] = {label: [] for label in calls}
    for r in range(rounds + 1):
        for label, cs in calls.items():
            t = time.perf_counter()
            for c in cs:
                c()
            if r:  # round 0 warms up
                passes[label].append((time.perf_counter() - t) / len(cs))
    return passes


GEMV_BITS = (4, 3, 2)


def gemv_rows(args: argparse.Namespace, bw: float, n: int = 4096, k: int = 4096) -> list[dict]:
    """M = 1 on plain ``b``-bit weights (group 64) for ``b`` in ``GEMV_BITS``, against PyTorch's int4 kernel
    (``torch._weight_int4pack_mm_for_cpu``, group 64, bf16 activations), timed interleaved (one pass of each per
    round, 6x ``--repeats`` rounds): the issue's M = 1 targets as ratios that one noisy stretch cannot skew."""
    x = torch.randn(1, k)
    calls: dict[str, list[Callable[[], object]]] = {}
    int4 = int4_calls(n, k, x, args.rotate_mb)
    if int4 is not None:
        calls["int4pack"] = int4
    floors = {}
    for b in GEMV_BITS:
        weights = [random_packed(n, k, seed, QScheme(b, group_size=64))
                   for seed in range(copies_for(n * k * b // 8, args.rotate_mb))]
        for p in weights:
            kernel_weight(p)
        calls[f"ours {b}-bit"] = [lambda p=p, b=b: dispatch.linear(x, p, None, b) for p in weights]
        floors[f"ours {b}-bit"] = floor_bytes(dispatch.choose_kernel(x, weights[0])[0], b, n, k) / (bw * 1e9)
    passes = interleaved(calls, args.repeats * 6)
    base = passes.get("int4pack")
    out = []
    for label, v in passes.items():
        t = statistics.median(v)
        row = {"weights": label, "t": t, "min": min(v), "spread": (max(v) - min(v)) / t,
               "x_int4": None if base is None else paired_ratio(base, v), "floor": floors.get(label)}
        out.append(row)
        extra = "" if row["floor"] is None else f"  {t / row['floor']:4.1f}x floor"
        ratio = "n/a" if row["x_int4"] is None else f"{row['x_int4']:5.2f}"
        print(f"{n}x{k} M=1 {label:12s} {t * 1e3:7.3f} ms (min {min(v) * 1e3:.3f}, spread {(max(v) - min(v)) / t:4.0%})"
              f"  x int4pack {ratio}{extra}", flush=True)
    return out


def cell(v: float | None, scale: float = 1e3, fmt: str = "{:.3f}") -> str:
    return "n/a" if v is None else fmt.format(v * scale)


def markdown(rows: list[dict], mini: list[dict], header: dict[str, str], groups: list[dict] | None = None,
             gemv: list[dict] | None = None, rotation: list[dict] | None = None) -> str:
    lines = [f"Command: `{header['command']}`  ", f"Machine: {header['machine']}  ",
             f"Date: {header['date']}; whole run {header['minutes']} min; **{header['threads']} threads** (ours and "
             f"torch's); 1-minute load average {header['load']}. Spread: (max - min) / median of "
             f"{header['repeats']} passes.", "",
             "Times in ms per call (weights rotated through > 96 MB, so read from DRAM); `x fp32` etc.: their time / "
             "ours (> 1: ours faster); floor: our bytes / copy bandwidth.", "",
             "| layer N x K | M | bits | ours (kernel) | ours ms | spread | floor ms | x floor | fp32 | bf16 | "
             "fbgemm int8 | int4pack | x fp32 | x bf16 | x int8 | x int4 |",
             "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ratio = lambda key: "n/a" if r[key] is None else f"{r[key] / r['t']:.2f}"  # noqa: E731
        lines.append(f"| {r['shape']} | {r['m']} | {r['bits']} | {r['kernel']} | {cell(r['t'])} | {r['spread']:.0%} | "
                     f"{cell(r['floor'])} | {r['t'] / r['floor']:.1f} | {cell(r['fp32'])} | {cell(r['bf16'])} | "
                     f"{cell(r['int8'])} | {cell(r['int4'])} | {ratio('fp32')} | {ratio('bf16')} | {ratio('int8')} | "
                     f"{ratio('int4')} |")
    if gemv:
        lines += ["", "M = 1 (4096x4096) on plain 2-, 3- and 4-bit weights (group 64, the `lut` kernel) against PyTorch's "
                  "int4 kernel (`torch._weight_int4pack_mm_for_cpu`, group 64, bf16 activations), timed interleaved, "
                  "one pass of each per round (median, minimum, spread = (max - min) / median; `x int4pack`: the median "
                  "over rounds of int4pack's time over ours in the same round); floor: our bytes over the copy "
                  "bandwidth:", "",
                  "| weights | ms | min ms | spread | x int4pack | x floor |", "|---|---:|---:|---:|---:|---:|"]
        lines += [f"| {r['weights']} | {cell(r['t'])} | {cell(r['min'])} | {r['spread']:.0%} | "
                  f"{'n/a' if r['x_int4'] is None else format(r['x_int4'], '.2f')} | "
                  f"{'' if r['floor'] is None else format(r['t'] / r['floor'], '.1f')} |" for r in gemv]
    if groups:
        lines += ["", "Group size and the int8 GEMM (4096x4096, M = 128, 4-bit codes, int8 activations) against fbgemm "
                  "dynamic int8 (per-channel int8 weights), timed interleaved, one pass of each per round (median, "
                  "minimum, spread = (max - min) / median, `x fbgemm int8`: the median over rounds of fbgemm's time over "
                  "ours in the same round); on AVX-512 the per-group scale and zero terms cost 3 vector "
                  "operations per 16 dot-product instructions at group 64:", "",
                  "| weights | ms | min ms | spread | x fbgemm int8 |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['group']} | {cell(r['t'])} | {cell(r['min'])} | {r['spread']:.0%} | {r['x_int8']:.2f} |"
                  for r in groups]
    if mini:
        lines += ["", "MiniLM (all-MiniLM-L6-v2) end to end, sentence embeddings (`zoo.minilm.run`), ms per batch; "
                  "ours: the 36 encoder Linear layers at 4 bits (group 64), 2 bits nested in the same weights, "
                  "with the feed-forward GELU fused into the up-projection's kernel (`nn.fuse_activations_`; "
                  "'GELU apart': the same weights with the model's own `F.gelu` after the layer; 'rotated 128': "
                  "the same scheme with every layer's input rotated, `QScheme(rotation=128)`, the cost of the native "
                  "Hadamard transform of the activations; 'per channel': 4-bit codes with one scale per output "
                  "channel (4 bits and a float16 scale per row of 384 or 1536), as fbgemm's int8 weights have, so no "
                  "per-group terms); the "
                  "models timed interleaved, one call each per round (median, minimum, spread = interquartile "
                  "range / median; `x dyn int8`: the median over rounds of dynamic int8's time over the model's in "
                  "the same round, > 1: faster than dynamic int8):", "",
                  "| batch x tokens | model | ms | min ms | spread | x dyn int8 |", "|---|---|---:|---:|---:|---:|"]
        lines += [f"| {r['batch']} | {r['model']} | {cell(r['t'], fmt='{:.2f}')} | {cell(r['min'], fmt='{:.2f}')} | "
                  f"{r['spread']:.0%} | {r['x_int8']:.2f} |" for r in mini]
    if rotation:
        lines += ["", "The input rotation of a rotated scheme (`QScheme(rotation=128)`: each 128 floats of a row through a "
                  "randomised Hadamard transform before the layer's kernel), into a new tensor: the native kernel "
                  "(`kernels.native.rotate`, butterflies in SIMD registers), the torch form (`quant.rotation.rotate`, "
                  "a block matrix product, what training and the reference use) and a plain copy of `x`, interleaved "
                  "(median; spread of the native one):", "",
                  "| x (M x K) | native ms | torch ms | copy ms | spread |", "|---|---:|---:|---:|---:|"]
        lines += [f"| {r['shape']} | {cell(r['native'], fmt='{:.3f}')} | {cell(r['torch'], fmt='{:.3f}')} | "
                  f"{cell(r['copy'], fmt='{:.3f}')} | {r['spread']:.0%} |" for r in rotation]
    return "\n".join(lines)


def write_section(path: Path, body: str, section: str = "kernels") -> None:
    """Replace the section ``section`` of ``path`` (between ``<!-- section:start -->`` and ``<!-- section:end -->``;
    atomically, see ``quality.write_section``). ``kernels`` is the main table; others (``kernels-avx2``: a CPU
    without AVX-512) keep a second machine's table beside it instead of over it."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import quality

    start, end = (START, END) if section == "kernels" else (f"<!-- {section}:start -->", f"<!-- {section}:end -->")
    quality.write_section(path, body, start, end, "## Kernels" if section == "kernels" else f"## Kernels ({section})")


def machine(bw: float) -> str:
    cpu = platform.processor() or "unknown CPU"
    try:
        cpu = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                   if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    info = dispatch.describe()
    return (f"{cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}, Python {platform.python_version()}, "
            f"native ISA {info.get('isa')}; copy bandwidth {bw:.1f} GB/s (read + write)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", nargs="*", default=None, help=f"names from {list(SHAPES)}")
    ap.add_argument("--rows", nargs="*", type=int, default=[1, 8, 128])
    ap.add_argument("--bits", nargs="*", type=int, default=[1, 2, 3, 4, 8])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rotate-mb", type=int, default=96)
    ap.add_argument("--threads", type=int, default=None,
                    help="torch (and so our) threads; 1 gives steadier numbers when other jobs share the cores")
    ap.add_argument("--quick", action="store_true", help="3 repeats, a subset of shapes")
    ap.add_argument("--no-minilm", dest="minilm", action="store_false", help="skip the MiniLM end-to-end timing")
    ap.add_argument("--minilm-only", action="store_true", help="only the MiniLM end-to-end timing (no --write)")
    ap.add_argument("--no-groups", dest="groups", action="store_false",
                    help="skip the interleaved tables (M = 1 against int4pack; the int8 GEMM by group size at M = 128)")
    ap.add_argument("--write", type=Path, default=None, help="markdown file whose kernels section to replace")
    ap.add_argument("--section", default="kernels",
                    help="name of the section --write replaces (default: kernels, the main table; e.g. "
                         "kernels-avx2 for a machine without AVX-512)")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message=".*deprecated.*")  # torch.ao's dynamic quantisation notices
    if args.quick:
        args.repeats = 3
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    names = args.shapes or (list(QUICK) if args.quick else list(SHAPES))
    start = time.perf_counter()
    load_start = os.getloadavg()[0]
    bw = copy_bandwidth_gbs()
    print(machine(bw), flush=True)
    if args.minilm_only:
        minilm_rows(args)
        return
    rows = [r for name in names for r in run_shape(name, *SHAPES[name], args, bw)]
    gemv = gemv_rows(args, bw) if args.groups else []
    groups = group_rows(args) if args.groups else []
    mini = minilm_rows(args) if args.minilm else []
    rot = rotation_rows(args) if args.groups else []
    if args.write is not None:
        argv = " ".join(a for a in __import__("sys").argv[1:])
        header = {"command": f"python benchmarks/kernels.py {argv}".strip(), "machine": machine(bw),
                  "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
                  "minutes": f"{(time.perf_counter() - start) / 60:.1f}", "repeats": str(args.repeats),
                  "threads": str(torch.get_num_threads()),
                  "load": f"{load_start:.2f} before the run, {os.getloadavg()[0]:.2f} after it (this run included)"}
        write_section(args.write, markdown(rows, mini, header, groups, gemv, rot), args.section)
        print(f"wrote the {args.section} section of {args.write}")


if __name__ == "__main__":
    main()
