"""benchmarks/peers.py: byte counting, layer selection and the unavailable-peer path on a tiny model.

The torch dynamic int8 peer needs only torch, so it always runs; the HQQ, quanto and bnb peers
are checked against their storage formulas only where those packages are installed.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "peers.py"
_SPEC = importlib.util.spec_from_file_location("bitsfusion_benchmark_peers", _PATH)
peers = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = peers
_SPEC.loader.exec_module(peers)

SHAPES = [pytest.param((256, 128), id="256x128"), pytest.param((128, 384), id="128x384")]


class TinyEncoder(nn.Module):
    """``encoder.layer.{0,1}.{up,down}`` Linear layers like BERT's, plus a ``pooler`` peers must leave alone."""

    def __init__(self, hidden: int, inner: int):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.layer = nn.ModuleList(
            nn.ModuleDict({"up": nn.Linear(hidden, inner), "down": nn.Linear(inner, hidden)}) for _ in range(2)
        )
        self.pooler = nn.Linear(hidden, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.encoder.layer:
            x = x + block["down"](F.gelu(block["up"](x)))
        return self.pooler(x)


def _model(shape: tuple[int, int]) -> nn.Module:
    inner, hidden = shape
    return TinyEncoder(hidden, inner).eval()


def _cos(reference: nn.Module, candidate: nn.Module, hidden: int) -> float:
    x = torch.randn(32, hidden)
    with torch.inference_mode():
        return F.cosine_similarity(reference(x), candidate(x), dim=1).mean().item()


def test_encoder_linears_selects_only_encoder_layers() -> None:
    names = list(peers.encoder_linears(_model((256, 128))))
    assert names == [f"encoder.layer.{i}.{p}" for i in range(2) for p in ("up", "down")]


def test_stored_bytes_counts_weight_not_bias() -> None:
    assert peers._stored_bytes("plain", nn.Linear(128, 64)) == 64 * 128 * 4


@pytest.mark.parametrize("per_channel", [False, True], ids=["per-tensor", "per-channel"])
@pytest.mark.parametrize("shape", SHAPES)
def test_torch_dynamic_int8(shape: tuple[int, int], per_channel: bool) -> None:
    reference = _model(shape)
    model, bpw, seconds = peers.torch_dynamic_int8(reference, per_channel=per_channel)
    layers = peers.encoder_linears(reference).values()
    weights = sum(m.weight.numel() for m in layers)
    rows = sum(m.out_features for m in layers) if per_channel else len(layers)
    assert bpw == pytest.approx(8 + rows * 16 * 8 / weights)  # float64 scale + int64 zero point each
    assert seconds >= 0
    assert isinstance(model.pooler, nn.Linear), "the pooler is outside encoder.layer.* and must stay float"
    assert isinstance(reference.encoder.layer[0]["up"], nn.Linear), "the reference must not be modified"
    assert _cos(reference, model, shape[1]) > 0.995


def test_missing_package_is_unavailable() -> None:
    with pytest.raises(peers.PeerUnavailable, match="not installed") as info:
        peers._import("ghost", "no_such_quantizer_package", "no-such-quantizer")
    assert info.value.name == "ghost"


def test_model_without_encoder_layers_is_unavailable() -> None:
    with pytest.raises(peers.PeerUnavailable, match="encoder.layer"):
        peers.torch_dynamic_int8(nn.Sequential(nn.Linear(8, 8)))


def test_quanto_rejects_three_bits() -> None:
    pytest.importorskip("optimum.quanto")
    with pytest.raises(peers.PeerUnavailable, match="not 3-bit"):
        peers.quanto(_model((256, 128)), bits=3)


META_BYTES_PER_LAYER = 1500  # encoded meta, code books (bnb's nested one is 256 float32), quant_state json

# (peer call, its storage formula in bits/weight before per-layer metadata, min cosine on the tiny model)
INSTALLED = [
    pytest.param("hqq.core.quantize", lambda m: peers.hqq(m, bits=4), 4 + 2 * 32 / 64, 0.99, id="hqq-4bit"),
    pytest.param("hqq.core.quantize", lambda m: peers.hqq(m, bits=3), 3.2 + 2 * 32 / 64, 0.97, id="hqq-3bit"),
    pytest.param("optimum.quanto", lambda m: peers.quanto(m, bits=4, group_size=64), 4 + 2 * 32 / 64, 0.99,
                 id="quanto-int4-g64"),
    pytest.param("optimum.quanto", lambda m: peers.quanto(m, bits=2, group_size=None), 2 + 2 * 32 / 128, 0.8,
                 id="quanto-int2-g128"),
    pytest.param("bitsandbytes", lambda m: peers.bnb_4bit(m, "nf4"), 4 + 32 / 64, 0.98, id="bnb-nf4"),
    pytest.param("bitsandbytes", lambda m: peers.bnb_4bit(m, "nf4", double_quant=True), 4 + 8 / 64 + 32 / 64 / 256,
                 0.98, id="bnb-nf4-dq"),
]


@pytest.mark.parametrize(("module", "peer", "formula", "min_cos"), INSTALLED)
def test_installed_peer_matches_its_storage_formula(module: str, peer, formula: float, min_cos: float) -> None:
    pytest.importorskip(module)
    reference = _model((256, 128))
    model, bpw, _ = peer(reference)
    weights = sum(m.weight.numel() for m in peers.encoder_linears(reference).values())
    meta = 8 * 4 * META_BYTES_PER_LAYER / weights  # 4 layers
    assert formula <= bpw <= formula + meta
    assert isinstance(model.pooler, nn.Linear)
    assert _cos(reference, model, 128) > min_cos
