"""Additivity on the tiny model: a one-layer plan measures its own cell; whole plans; refinement."""

from __future__ import annotations

import pytest

from bitsfusion.allocate import check_additivity, measure_plan, pareto_from_table, refine
from bitsfusion.analysis import LOSSES, OutputProbe, default_candidates, measure_sensitivity
from bitsfusion.zoo import get_model_spec


@pytest.fixture(scope="module")
def tiny():
    spec = get_model_spec("tiny")
    model, batches = spec.build(), spec.calibration(2)
    table = measure_sensitivity(model, batches, default_candidates((1, 2, 3, 4, 8)), run=spec.run, progress=False)
    probe = OutputProbe(model, batches, list(table.layers), run=spec.run, loss=LOSSES["mse"])
    return table, probe


def test_one_layer_plan_measures_exactly_its_cell(tiny) -> None:
    table, probe = tiny
    for name in table.layers:
        scheme = table.schemes[1]
        assert measure_plan(probe, {name: scheme}) == pytest.approx(table.cell(name, scheme), rel=1e-6)


def test_whole_plans_are_measured_against_their_prediction(tiny) -> None:
    table, probe = tiny
    front = pareto_from_table(table, [1.75, 2.5, 4.0])
    points = check_additivity(probe, front)
    assert len(points) == len(front)
    for p, plan in zip(points, front):
        assert p.predicted == plan.predicted_loss and p.measured > 0
        assert p.ratio == pytest.approx(p.measured / p.predicted)
        assert 0.2 < p.ratio < 5.0  # single-layer losses roughly add up on this model
    measured = [p.measured for p in points]
    assert measured == sorted(measured, reverse=True)  # more bits, less loss


@pytest.mark.parametrize("avg_bits", [1.75, 2.5], ids=lambda b: f"{b}bits")
def test_refinement_keeps_the_budget_and_never_measures_worse(tiny, avg_bits) -> None:
    table, probe = tiny
    (plan,) = pareto_from_table(table, [avg_bits])
    start = measure_plan(probe, plan.choices)
    result = refine(probe, table, plan, rounds=2, progress=False)
    assert result.history[0] == pytest.approx(start, rel=1e-6)
    assert result.measured == min(result.history)
    assert result.measured <= start * (1 + 1e-9)
    assert result.plan.nbytes <= plan.budget["bytes"]
    assert measure_plan(probe, result.plan.choices) == pytest.approx(result.measured, rel=1e-6)
