"""Peer quantizers for the MiniLM quality benchmark: torch dynamic int8, HQQ, optimum-quanto, bitsandbytes.

Each peer quantizes a deep copy of the fp32 reference, the same 36 encoder Linear layers
(``encoder.layer.N.*``) that ``benchmarks/quality.py`` quantizes, at the library's own standard
settings, and returns a ``PeerRun(model, bits_per_weight, seconds)`` (it unpacks as a tuple):

- ``model``: the quantized copy, ready for ``get_model_spec("minilm").evaluate(reference, model)``;
- ``bits_per_weight``: ``8 * stored bytes / weights`` over those layers, counted from the tensors
  the library itself stores for each layer (its ``state_dict``, bias excluded, as quality.py
  excludes it): packed codes, scales, zeros/shifts/absmax, and every metadata tensor it keeps
  (HQQ's encoded meta, quanto's ``input_scale``/``output_scale``, bnb's ``quant_map`` and packed
  ``quant_state``). Worked example, HQQ 4-bit, group 64, float32 compute dtype, a [384, 384]
  layer: W_q 73,728 B (two codes a byte) + scale 9,216 B + zero 9,216 B (2,304 groups x float32)
  + ~150 B meta = 92,310 B -> 8 * 92,310 / 147,456 = 5.008 bits/weight;
- ``seconds``: wall time of quantizing the copy (the deep copy is not timed).

The peers are not project dependencies: install them with ``benchmarks/requirements-peers.txt``
(with the torch constraint it documents). A peer whose package is missing or that fails on this
CPU raises ``PeerUnavailable(name, reason)`` so a benchmark prints the reason and goes on.

Usage::

    python benchmarks/peers.py                 # every peer on MiniLM: bits/w, cosines, overlap, seconds
    python benchmarks/peers.py --only hqq      # the peers whose name contains "hqq"
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
import warnings
from functools import partial
from typing import Callable, NamedTuple

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch  # noqa: E402
from torch import nn  # noqa: E402

__all__ = ["PeerUnavailable", "PeerRun", "encoder_linears", "torch_dynamic_int8", "hqq", "quanto",
           "bnb_4bit", "PEERS", "main"]

ENCODER_PREFIX = "encoder.layer."


class PeerUnavailable(Exception):
    """Peer ``name`` cannot run here; ``reason`` says why (package missing, CPU path failing)."""

    def __init__(self, name: str, reason: str):
        super().__init__(f"{name}: {reason}")
        self.name = name
        self.reason = reason


class PeerRun(NamedTuple):
    """A quantized copy, its stored bits per weight (every overhead counted) and quantize seconds."""

    model: nn.Module
    bits_per_weight: float
    seconds: float


def encoder_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """The Linear layers named ``encoder.layer.*`` (36 for MiniLM), in module order."""
    return {n: m for n, m in model.named_modules() if isinstance(m, nn.Linear) and n.startswith(ENCODER_PREFIX)}


def _replace(model: nn.Module, name: str, new: nn.Module) -> None:
    parent, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent) if parent else model, child, new)


def _stored_bytes(peer: str, module: nn.Module) -> int:
    """Bytes of every tensor ``module.state_dict()`` holds except the bias.

    Only tensors with real storage of their own shape are counted (plain tensors and Parameter
    subclasses such as bnb's Params4bit, whose data is the packed uint8); a wrapper subclass
    (whose numel is the logical, unpacked size) would be miscounted, so it is refused.
    """
    total = 0
    for key, value in module.state_dict().items():
        if not isinstance(value, torch.Tensor) or key.rsplit(".", 1)[-1] == "bias":
            continue
        if type(value) is not torch.Tensor and not isinstance(value, nn.Parameter):
            raise PeerUnavailable(peer, f"cannot count stored bytes of {key} ({type(value).__name__})")
        total += value.numel() * value.element_size()
    return total


def _bits(peer: str, layers: dict[str, nn.Module], weights: int) -> float:
    return 8 * sum(_stored_bytes(peer, m) for m in layers.values()) / weights


def _copy(reference: nn.Module) -> tuple[nn.Module, dict[str, nn.Linear], int]:
    model = copy.deepcopy(reference).eval()
    linears = encoder_linears(model)
    if not linears:
        raise PeerUnavailable("peers", f"{type(reference).__name__} has no Linear named {ENCODER_PREFIX}*")
    return model, linears, sum(m.weight.numel() for m in linears.values())


class _OutsideInferenceMode(nn.Module):
    """Runs ``inner`` with inference mode off (under ``no_grad``).

    quanto's weight tensors are wrapper subclasses whose ``.t()`` fails inside
    ``torch.inference_mode`` ("Cannot set version_counter for inference tensor"), which the
    MiniLM evaluator uses; the arithmetic is unchanged.
    """

    def __init__(self, inner: nn.Module):
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(False), torch.no_grad():
            return self.inner(x)


def _import(peer: str, module: str, package: str):
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise PeerUnavailable(peer, f"not installed ({package}: {e}); see benchmarks/requirements-peers.txt") from None


def torch_dynamic_int8(reference: nn.Module, per_channel: bool = False) -> PeerRun:
    """``torch.ao.quantization.quantize_dynamic`` on fbgemm, its ``default_dynamic_qconfig``.

    Weights int8 with one affine scale (float64) and zero point (int64) per tensor, as torch
    keeps a per-tensor qint8 tensor (8 + 128 / weights bits/weight), or per output row with
    ``per_channel`` (``per_channel_dynamic_qconfig``: 8 + 128 / in_features). Activations are
    quantized per tensor to 7 bits (fbgemm's reduce_range) at run time, per batch; not stored.
    """
    name = "torch-int8" + ("-per-channel" if per_channel else "")
    if "fbgemm" not in torch.backends.quantized.supported_engines:
        raise PeerUnavailable(name, f"fbgemm engine missing (have {torch.backends.quantized.supported_engines})")
    from torch.ao.quantization import default_dynamic_qconfig, per_channel_dynamic_qconfig, quantize_dynamic

    qconfig = per_channel_dynamic_qconfig if per_channel else default_dynamic_qconfig
    model, linears, weights = _copy(reference)
    engine = torch.backends.quantized.engine
    start = time.perf_counter()
    try:
        torch.backends.quantized.engine = "fbgemm"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch 2.13 deprecation notices for torch.ao / quantized tensors
            model = quantize_dynamic(model, {n: qconfig for n in linears}, inplace=True)
    finally:
        torch.backends.quantized.engine = engine
    seconds = time.perf_counter() - start
    stored = 0
    for n in linears:
        w = model.get_submodule(n).weight()
        stored += w.numel() * w.element_size()
        if w.qscheme() in (torch.per_channel_affine, torch.per_channel_symmetric):
            scales, zeros = w.q_per_channel_scales(), w.q_per_channel_zero_points()
            stored += scales.numel() * scales.element_size() + zeros.numel() * zeros.element_size()
        else:
            stored += 8 + 8  # q_scale() is a float64, q_zero_point() an int64
    return PeerRun(model, 8 * stored / weights, seconds)


def hqq(reference: nn.Module, bits: int, group_size: int = 64, compute_dtype: torch.dtype = torch.float32) -> PeerRun:
    """HQQ (``hqq.core.quantize.HQQLinear`` on CPU), ``BaseQuantizeConfig(nbits, group_size)``.

    Its defaults: axis 1, half-quadratic optimized scale and zero per group of ``group_size``
    consecutive weights of a row, zero rounded at 4 bits; codes packed 2 a byte (4-bit), 4 a byte
    (2-bit) or 10 per int32 (3-bit: 3.2 bits/code). Scale and zero are stored in ``compute_dtype``;
    float32 here because the model runs in float32 on CPU (HQQ's GPU default float16 would store
    half the metadata but needs float16 activations).
    """
    name = f"hqq-{bits}bit"
    _import(name, "hqq.core.quantize", "hqq")
    from hqq.core.quantize import BaseQuantizeConfig, HQQBackend, HQQLinear

    model, linears, weights = _copy(reference)
    config = BaseQuantizeConfig(nbits=bits, group_size=group_size)
    HQQLinear.set_backend(HQQBackend.PYTORCH)
    start = time.perf_counter()
    new = {}
    try:
        for n, lin in linears.items():
            new[n] = HQQLinear(lin, config, compute_dtype=compute_dtype, device="cpu", del_orig=True)
            _replace(model, n, new[n])
    except (RuntimeError, AssertionError, NotImplementedError) as e:
        raise PeerUnavailable(name, f"HQQLinear failed on CPU: {e}") from None
    return PeerRun(model, _bits(name, new, weights), time.perf_counter() - start)


def quanto(reference: nn.Module, bits: int, group_size: int | None = 64) -> PeerRun:
    """optimum-quanto ``quantize(weights=qint4|qint2)`` + ``freeze``, weights only.

    Its defaults: affine (scale + shift) per group along the input dim, found by ``MaxOptimizer``
    (min/max); codes packed 2 (int4) or 4 (int2) a byte; scale and shift in the weight dtype
    (float32). ``group_size=None`` keeps quanto's own choice (128 for MiniLM's 384 and 1536 wide
    inputs); an int overrides it before freezing.
    """
    name = f"quanto-int{bits}" + ("" if group_size is None else f"-g{group_size}")
    q = _import(name, "optimum.quanto", "optimum-quanto")
    qtypes = {4: q.qint4, 2: q.qint2}
    if bits not in qtypes:
        raise PeerUnavailable(name, f"quanto has weight qtypes int2/int4/int8, not {bits}-bit")
    model, linears, weights = _copy(reference)
    start = time.perf_counter()
    try:
        q.quantize(model, weights=qtypes[bits], include=list(linears))
        qlayers = {n: model.get_submodule(n) for n in linears}
        if group_size is not None:
            for m in qlayers.values():
                m.weight_group_size = group_size
        q.freeze(model)
    except (RuntimeError, ValueError, NotImplementedError) as e:
        raise PeerUnavailable(name, f"quantize/freeze failed on CPU: {e}") from None
    seconds = time.perf_counter() - start
    if not all(isinstance(m, q.QModuleMixin) for m in qlayers.values()):
        raise PeerUnavailable(name, "quanto left some encoder Linear layers unquantized")
    for n, m in qlayers.items():
        _replace(model, n, _OutsideInferenceMode(m))
    return PeerRun(model, _bits(name, qlayers, weights), seconds)


def bnb_4bit(reference: nn.Module, quant_type: str = "nf4", double_quant: bool = False,
             blocksize: int = 64) -> PeerRun:
    """bitsandbytes ``nn.Linear4bit`` on CPU: nf4 or fp4 codes, absmax scale per block of 64.

    Stored: codes 2 a byte, absmax float32 per block (0.5 bits/weight), or with double
    quantization (``compress_statistics``) absmax as 8-bit codes per block plus a float32
    absmax per 256 blocks and an offset; plus the 16-entry code book and the packed quant_state.
    """
    name = f"bnb-{quant_type}" + ("-dq" if double_quant else "")
    bnb = _import(name, "bitsandbytes", "bitsandbytes")
    model, linears, weights = _copy(reference)
    start = time.perf_counter()
    new = {}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for n, lin in linears.items():
                layer = bnb.nn.Linear4bit(lin.in_features, lin.out_features, bias=lin.bias is not None,
                                          compute_dtype=torch.float32, compress_statistics=double_quant,
                                          quant_type=quant_type, device="meta")
                layer.weight = bnb.nn.Params4bit(lin.weight.data.clone(), requires_grad=False, blocksize=blocksize,
                                                 compress_statistics=double_quant, quant_type=quant_type,
                                                 module=layer).to("cpu")
                layer.bias = None if lin.bias is None else nn.Parameter(lin.bias.data.clone(), requires_grad=False)
                new[n] = layer
                _replace(model, n, layer)
    except (RuntimeError, ValueError, NotImplementedError, AttributeError) as e:
        raise PeerUnavailable(name, f"Linear4bit failed on CPU: {e}") from None
    seconds = time.perf_counter() - start
    return PeerRun(model, _bits(name, new, weights), seconds)


PEERS: dict[str, Callable[[nn.Module], PeerRun]] = {
    "torch-int8": torch_dynamic_int8,
    "torch-int8-per-channel": partial(torch_dynamic_int8, per_channel=True),
    "hqq-4bit": partial(hqq, bits=4),
    "hqq-3bit": partial(hqq, bits=3),
    "hqq-2bit": partial(hqq, bits=2),
    "quanto-int4": partial(quanto, bits=4, group_size=None),
    "quanto-int4-g64": partial(quanto, bits=4, group_size=64),
    "quanto-int2": partial(quanto, bits=2, group_size=None),
    "quanto-int2-g64": partial(quanto, bits=2, group_size=64),
    "bnb-nf4": partial(bnb_4bit, quant_type="nf4", double_quant=False),
    "bnb-nf4-dq": partial(bnb_4bit, quant_type="nf4", double_quant=True),
    "bnb-fp4": partial(bnb_4bit, quant_type="fp4", double_quant=False),
    "bnb-fp4-dq": partial(bnb_4bit, quant_type="fp4", double_quant=True),
}
"""Every peer at its standard settings, by the name a benchmark row shows."""


def main(argv: list[str] | None = None) -> int:
    """Run the peers on MiniLM and print one markdown row each (evaluated as quality.py does)."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--only", default="", help="run only the peers whose name contains this text")
    args = ap.parse_args(argv)
    from bitsfusion.zoo import get_model_spec
    from bitsfusion.zoo.minilm import reference_embeddings

    spec = get_model_spec("minilm")
    reference = spec.build()
    reference_embeddings(reference)
    print("| peer | bits/w stored | mean cos | p5 cos | top-10 overlap | quantize s | eval s |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, peer in PEERS.items():
        if args.only not in name:
            continue
        try:
            model, bpw, seconds = peer(reference)
        except PeerUnavailable as e:
            print(f"| {name} | not run: {e.reason} | | | | | |", flush=True)
            continue
        start = time.perf_counter()
        s = spec.evaluate(reference, model)
        print(f"| {name} | {bpw:.3f} | {s['mean_cos']:.5f} | {s['p5_cos']:.5f} | {s['top10_overlap']:.4f} "
              f"| {seconds:.1f} | {time.perf_counter() - start:.1f} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
