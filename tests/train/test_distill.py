"""Distiller: loss falls, checkpoints resume exactly, early stopping, nested training, errors."""

from __future__ import annotations

import json

import pytest
import torch

import bitsfusion as bf
from bitsfusion.errors import ConfigError, FormatError
from bitsfusion.train import convert
from bitsfusion.train.distill import DistillConfig, Distiller

from tests.train import tiny_distill as tiny


def _distiller(teacher, student, config, **kw) -> Distiller:
    return Distiller(teacher, student, forward=tiny.forward, output_loss=tiny.loss, config=config, progress=False,
                     **kw)


def _trained(student) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in student.named_parameters() if p.requires_grad}


def test_distillation_recovers_quality() -> None:
    teacher, student = tiny.pair()
    before = tiny.held_out_score(teacher, student)
    cfg = DistillConfig(steps=120, lr=3e-3, scale_lr=1e-2, warmup_steps=5, log_every=10)
    result = _distiller(teacher, student, cfg, features=("block1", "block2")).fit(tiny.data())
    after = tiny.held_out_score(teacher, student)
    assert result.steps == 120 and len(result.history) == 12
    first, last = result.history[0]["loss"], result.history[-1]["loss"]
    assert last < 0.7 * first, (first, last)
    assert after > before, (before, after)
    assert "features" in result.history[0]
    convert(student)  # the packed model keeps what training reached
    assert tiny.held_out_score(teacher, student) == pytest.approx(after, abs=1e-4)


def test_a_killed_run_resumes_exactly(tmp_path) -> None:
    cfg = DistillConfig(steps=10, lr=1e-3, warmup_steps=2, checkpoint_every=3, log_every=1)
    teacher, straight = tiny.pair()
    _distiller(teacher, straight, cfg).fit(tiny.data())

    calls = {"student": 0}

    def dies_in_step_8(model, batch):
        if torch.is_grad_enabled():
            calls["student"] += 1
            if calls["student"] == 8:
                raise KeyboardInterrupt  # the process is killed mid-step
        return tiny.forward(model, batch)

    teacher, first = tiny.pair()
    killed = Distiller(teacher, first, forward=dies_in_step_8, output_loss=tiny.loss, config=cfg, progress=False,
                       checkpoint_dir=tmp_path / "ck")
    with pytest.raises(KeyboardInterrupt):
        killed.fit(tiny.data())
    assert json.loads((tmp_path / "ck" / "trainer.json").read_text())["step"] == 6
    teacher, resumed = tiny.pair()  # a fresh process: the same prepare, then the checkpoint
    result = _distiller(teacher, resumed, cfg, checkpoint_dir=tmp_path / "ck").fit(tiny.data())
    assert result.resumed_from == 6 and result.steps == 10
    want, got = _trained(straight), _trained(resumed)
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=name)
    assert [h["step"] for h in result.history] == list(range(1, 11))


def test_early_stop_keeps_the_best_state(tmp_path) -> None:
    teacher, student = tiny.pair()
    scores = iter([0.45, 0.5, 0.9, 0.4, 0.3, 0.2, 0.1])  # the first: the start, before any step
    snapshots = []

    def evaluate(model):
        snapshots.append(_trained(model))
        return {"score": next(scores)}

    cfg = DistillConfig(steps=100, lr=1e-3, eval_every=2, patience=2)
    result = _distiller(teacher, student, cfg, evaluate=evaluate, checkpoint_dir=tmp_path / "ck").fit(tiny.data())
    assert result.stopped_early and result.steps == 8
    assert result.best == {"score": 0.9} and result.best_step == 4
    assert [e["step"] for e in result.evaluations] == [0, 2, 4, 6, 8]
    for name, value in snapshots[2].items():
        assert torch.equal(_trained(student)[name], value), name
    again = _distiller(teacher, tiny.pair()[1], cfg, evaluate=evaluate, checkpoint_dir=tmp_path / "ck"
                       ).fit(tiny.data())
    assert again.stopped_early and again.steps == 8  # a stopped run stays stopped


def test_a_start_better_than_every_trained_state_is_kept() -> None:
    teacher, student = tiny.pair()
    start = {n: p.detach().clone() for n, p in student.named_parameters()}
    scores = iter([0.99, 0.5, 0.6])
    cfg = DistillConfig(steps=4, lr=1e-2, eval_every=2)
    result = _distiller(teacher, student, cfg, evaluate=lambda m: {"score": next(scores)}).fit(tiny.data())
    assert result.best_step == 0 and result.steps == 4
    for name, value in student.named_parameters():
        assert torch.equal(value.detach(), start[name]), name


def test_nested_training_sums_the_loss_over_precisions() -> None:
    teacher, student = tiny.pair(bf.QScheme(bits=4, group_size=16, grid="asymmetric", nested=(3, 2)))
    scores = {}
    for b in (4, 3, 2):
        bf.set_active_bits(student, b)
        scores[b] = tiny.held_out_score(teacher, student)
    cfg = DistillConfig(steps=60, lr=2e-3, scale_lr=1e-2, bits=(4, 3, 2), log_every=10)
    result = _distiller(teacher, student, cfg).fit(tiny.data())
    assert {"output@4", "output@3", "output@2"} <= set(result.history[-1])
    assert set(bf.active_bits_of(student).values()) == {4}
    after = {}
    for b in (4, 3, 2):
        bf.set_active_bits(student, b)
        after[b] = tiny.held_out_score(teacher, student)
    assert after[2] > scores[2] and sum(after.values()) > sum(scores.values()), (scores, after)


def test_dampening_adds_its_term_and_centres_the_latent_weights() -> None:
    teacher, plain = tiny.pair()
    _, damped = tiny.pair()
    cfg = DistillConfig(steps=40, lr=1e-3, scale_lr=1e-2, warmup_steps=2, log_every=10)
    _distiller(teacher, plain, cfg).fit(tiny.data())
    result = _distiller(teacher, damped, DistillConfig(**{**cfg.to_dict(), "dampen": 1.0})).fit(tiny.data())
    last = result.history[-1]
    assert last["loss"] == pytest.approx(last["output"] + last["dampen"], rel=1e-5)

    def off_centre(model) -> float:
        with torch.no_grad():
            return float(torch.stack([m.dampening_loss() for _, m in bf.train.fake_quant_layers(model)]).mean())

    assert off_centre(damped) < 0.7 * off_centre(plain), (off_centre(damped), off_centre(plain))  # 0.50 measured


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"steps": 0}, "steps"), ({"lr": -1.0}, "lr"), ({"bits": (4, 9)}, "bits"),
    ({"bits": (4, 2), "bit_weights": (1.0,)}, "bit_weights"), ({"train_float": "some"}, "train_float"),
    ({"steps": 2.5}, "steps"), ({"dampen": -0.1}, "dampen"),
])
def test_bad_configs_are_refused(kwargs, match) -> None:
    with pytest.raises(ConfigError, match=match):
        DistillConfig(**kwargs)


def test_misuse_is_refused(tmp_path) -> None:
    teacher, student = tiny.pair()
    with pytest.raises(ConfigError, match="no fake-quant layers"):
        _distiller(teacher, tiny.Tiny(), DistillConfig())
    with pytest.raises(ConfigError, match="evaluate"):
        _distiller(teacher, student, DistillConfig(eval_every=5))
    with pytest.raises(ConfigError, match="not in the model"):
        _distiller(teacher, student, DistillConfig(steps=1), features=("nope",)).fit(tiny.data())
    for model in (teacher, student):
        model.add_module("spare", torch.nn.Identity())  # named, never run by forward
    with pytest.raises(ConfigError, match="produced no output"):
        _distiller(teacher, student, DistillConfig(steps=1), features=("spare",)).fit(tiny.data())
    with pytest.raises(ConfigError, match="no batches"):
        _distiller(teacher, student, DistillConfig(steps=1)).fit([])


def test_damaged_or_foreign_checkpoints_are_refused(tmp_path) -> None:
    teacher, student = tiny.pair()
    _distiller(teacher, student, DistillConfig(steps=2), checkpoint_dir=tmp_path / "ck").fit(tiny.data())
    other_teacher, other = tiny.pair(bf.QScheme(bits=2, group_size=16))  # symmetric: no zeros to train
    with pytest.raises(ConfigError, match="other parameters"):
        _distiller(other_teacher, other, DistillConfig(steps=4), checkpoint_dir=tmp_path / "ck").fit(tiny.data())
    weights = tmp_path / "ck" / "params.safetensors"
    weights.write_bytes(weights.read_bytes()[:50])
    with pytest.raises(FormatError, match="damaged"):
        _distiller(teacher, tiny.pair()[1], DistillConfig(steps=4), checkpoint_dir=tmp_path / "ck").fit(tiny.data())
