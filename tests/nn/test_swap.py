"""quantize_: which modules a plan swaps, the report's rules and skip reasons, shared modules, warnings."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from bitsfusion.nn import QConv2d, QLinear, QModule, quantize_
from bitsfusion.nn.swap import SKIP_ALREADY, SKIP_FILTER, SKIP_NO_QMODULE, SKIP_PLAN
from bitsfusion.pack.accounting import bits_per_weight, packed_nbytes
from bitsfusion.plan import BitPlan
from bitsfusion.types import QScheme
from tests.nn.conftest import rel_err


class Block(nn.Module):
    def __init__(self, width: int = 16):
        super().__init__()
        self.norm = nn.LayerNorm(width)
        self.attn = nn.Linear(width, width)
        self.mlp = nn.Linear(width, width)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return t + self.mlp(torch.relu(self.attn(self.norm(t))))


class Net(nn.Module):
    """Embedding + conv stem + two blocks + head: quantizable and non-quantizable leaves, a container."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 16)
        self.stem = nn.Conv2d(3, 16, 4, stride=4)
        self.blocks = nn.ModuleList([Block(), Block()])
        self.head = nn.Linear(16, 5)
        self.act = nn.GELU()

    def forward(self, tokens: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        t = self.embed(tokens) + self.stem(image).flatten(2).mean(-1, keepdim=True).transpose(1, 2)
        for block in self.blocks:
            t = block(t)
        return self.head(self.act(t))


def _inputs() -> tuple[torch.Tensor, torch.Tensor]:
    return torch.randint(0, 10, (2, 6)), torch.randn(2, 3, 8, 8)


PLAN = BitPlan(
    default=QScheme(4, group_size=16),
    rules={"head": QScheme(8), "re:blocks\\.\\d+\\.attn": QScheme(2, group_size=None), "blocks.1.mlp": None},
)


def test_plan_rules_decide_and_the_report_says_which() -> None:
    model = Net()
    report = quantize_(model, PLAN, progress=False)
    done = {q.fqn: q for q in report.quantized}
    assert list(done) == ["stem", "blocks.0.attn", "blocks.0.mlp", "blocks.1.attn", "head"]
    assert {fqn: q.rule for fqn, q in done.items()} == {
        "stem": "default", "blocks.0.attn": "re:blocks\\.\\d+\\.attn", "blocks.0.mlp": "default",
        "blocks.1.attn": "re:blocks\\.\\d+\\.attn", "head": "head"}
    assert done["head"].scheme == QScheme(8) and done["blocks.1.attn"].scheme.group_size is None
    assert isinstance(model.stem, QConv2d) and isinstance(model.head, QLinear)
    assert type(model.blocks[1].mlp) is nn.Linear
    stem = done["stem"]
    assert stem.type == "Conv2d" and stem.shape == (16, 48)
    assert stem.nbytes == packed_nbytes(stem.scheme, (16, 48)) == model.stem.nbytes
    assert stem.bits_per_weight == bits_per_weight(stem.scheme, (16, 48))
    assert 0 < stem.weight_error < 0.05


def test_skip_reasons() -> None:
    model = Net()
    report = quantize_(model, PLAN, progress=False)
    skipped = {s.fqn: s for s in report.skipped}
    assert set(skipped) == {"embed", "blocks.0.norm", "blocks.1.norm", "blocks.1.mlp"}  # no container, no GELU
    assert skipped["blocks.1.mlp"].reason == SKIP_PLAN and skipped["blocks.1.mlp"].rule == "blocks.1.mlp"
    assert skipped["embed"].reason.startswith(SKIP_NO_QMODULE) and skipped["embed"].type == "Embedding"
    assert "Linear" in skipped["embed"].reason and skipped["embed"].rule is None
    again = quantize_(model, PLAN, progress=False)
    assert again.quantized == []
    assert {s.fqn for s in again.skipped if s.reason == SKIP_ALREADY} == {q.fqn for q in report.quantized}


def test_filter_fn_and_unsupported_layers_are_skipped_with_a_reason() -> None:
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.Linear(4, 4), nn.Linear(4, 4))
    report = quantize_(model, BitPlan(default=QScheme(4)), progress=False, filter_fn=lambda fqn, m: fqn != "2")
    skipped = {s.fqn: s.reason for s in report.skipped}
    assert skipped["0"].startswith("unsupported: Conv2d with padding_mode='reflect'")
    assert skipped["2"] == SKIP_FILTER
    assert [q.fqn for q in report.quantized] == ["1"]


def test_default_none_quantizes_only_named_layers() -> None:
    model = Net()
    report = quantize_(model, BitPlan(rules={"blocks.0.mlp": QScheme(3)}), progress=False)
    assert [q.fqn for q in report.quantized] == ["blocks.0.mlp"]
    assert sum(isinstance(m, QModule) for m in model.modules()) == 1


def test_a_rule_naming_no_module_is_a_warning() -> None:
    plan = BitPlan(default=QScheme(4), rules={"blocks.0.mpl": None, "re:nothing.*": None, "embed": None})
    report = quantize_(Net(), plan, progress=False)
    assert report.warnings == ["plan rule 'blocks.0.mpl' names no module of the model; did you mean 'blocks.0.mlp'?"]
    assert "warning: plan rule 'blocks.0.mpl'" in report.summary()


def test_summary_totals_and_json() -> None:
    report = quantize_(Net(), PLAN, progress=False)
    totals = report.totals()
    params = 16 * 48 + 3 * 16 * 16 + 5 * 16
    nbytes = sum(packed_nbytes(q.scheme, q.shape) for q in report.quantized)
    assert totals["quantized_params"] == params and totals["packed_bytes"] == nbytes
    assert totals["bits_per_weight"] == pytest.approx(8 * nbytes / params)
    assert f"{nbytes:,} bytes" in report.summary() and f"{8 * nbytes / params:.3f} bits per weight" in report.summary()
    back = json.loads(report.to_json())
    assert back["totals"] == totals and len(back["quantized"]) == 5 and back["quantized"][0]["scheme"]["bits"] == 4


def test_shared_module_is_quantized_once_and_swapped_everywhere() -> None:
    shared = nn.Linear(8, 8)
    model = nn.Sequential(shared, nn.ReLU(), shared)
    report = quantize_(model, BitPlan(default=QScheme(4)), progress=False)
    assert [q.fqn for q in report.quantized] == ["0"]
    assert isinstance(model[0], QLinear) and model[0] is model[2]


def test_quantized_model_stays_close_and_progress_bar_runs() -> None:
    model = Net().eval()
    tokens, image = _inputs()
    ref = model(tokens, image)
    report = quantize_(model, BitPlan(default=QScheme(8)), progress=True)  # 6 layers: the bar is shown
    assert len(report.quantized) == 6
    assert rel_err(model(tokens, image), ref) < 1e-4


def test_root_module_cannot_be_swapped() -> None:
    report = quantize_(nn.Linear(4, 4), BitPlan(default=QScheme(4)), progress=False)
    assert report.quantized == [] and "wrap it" in report.skipped[0].reason
