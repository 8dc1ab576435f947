"""Replaying cached prefixes gives bit-identical outputs to a full run, and is refused when it would not."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from bitsfusion.analysis import Replayer, quantizable_layers


class Blocks(nn.Module):
    """Residual MLP blocks in a ModuleList; the residual add is in place (a cache must not alias it)."""

    def __init__(self, width: int = 16, depth: int = 3):
        super().__init__()
        self.inp = nn.Linear(8, width)
        self.blocks = nn.ModuleList(nn.Sequential(nn.Linear(width, width), nn.GELU()) for _ in range(depth))
        self.out = nn.Linear(width, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.inp(x)
        for block in self.blocks:
            h += block(h)
        return self.out(h)


class Branchy(nn.Module):
    """Data-dependent control flow: which layer runs depends on the batch."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.a(x)
        return self.b(h) if float(x.sum()) > 0 else h * 2


def _model(kind: str, tiny_spec) -> tuple[nn.Module, list]:
    torch.manual_seed(0)
    if kind == "tiny":
        return tiny_spec.build(), tiny_spec.calibration(2)
    return Blocks().eval(), [torch.randn(5, 8) for _ in range(2)]


@pytest.mark.parametrize("kind", ["tiny", "blocks"])
def test_replayed_pass_equals_full_pass_for_every_target(kind: str, tiny_spec) -> None:
    model, batches = _model(kind, tiny_spec)
    targets = [i.name for i in quantizable_layers(model)]
    replay = Replayer(model, targets)
    refs = replay.record(model, batches)
    assert replay.verify(model, batches, refs)
    skipped_any = False
    with torch.no_grad():
        for t in targets:
            for i, batch in enumerate(batches):
                with replay.replaying(t, i) as skipped:
                    out = model(batch)
                skipped_any |= bool(skipped)
                assert torch.equal(out, refs[i]), (t, i)
    assert skipped_any


def test_replay_skips_only_modules_that_finished_before_the_target(tiny_spec) -> None:
    model, batches = _model("blocks", tiny_spec)
    replay = Replayer(model, ["blocks.2.0", "inp"])
    replay.record(model, batches)
    with replay.replaying("blocks.2.0", 0) as skipped:
        assert skipped == ["inp", "blocks.0", "blocks.1"]
    with replay.replaying("inp", 0) as skipped:
        assert skipped == []


def test_replay_of_a_changed_layer_sees_the_change(tiny_spec) -> None:
    model, batches = _model("blocks", tiny_spec)
    replay = Replayer(model, ["blocks.1.0"])
    refs = replay.record(model, batches)
    with torch.no_grad():
        model.blocks[1][0].weight.mul_(0.5)
        with replay.replaying("blocks.1.0", 0):
            fast = model(batches[0])
        replay.enabled = False
        with replay.replaying("blocks.1.0", 0):
            full = model(batches[0])
    assert torch.equal(fast, full) and not torch.equal(fast, refs[0])


def test_verify_disables_replay_on_data_dependent_control_flow() -> None:
    torch.manual_seed(0)
    model = Branchy().eval()
    batches = [torch.ones(2, 4), -torch.ones(2, 4)]
    replay = Replayer(model, ["b"])
    refs = replay.record(model, batches)
    # batch 0 runs a then b; poison a's cache so replay from b disagrees with a full pass
    replay.trace.calls[0]["a"] = [(s, e, out + 1) for s, e, out in replay.trace.calls[0]["a"]]
    assert not replay.verify(model, batches, refs)
    assert not replay.enabled
    with replay.replaying("b", 0) as skipped:
        assert skipped == []
