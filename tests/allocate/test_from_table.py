"""Allocation from a table: optimal against brute force, exact byte accounting, pins, budgets, the front."""

from __future__ import annotations

import itertools
import json
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsfusion.allocate import allocate, pareto_from_table, uniform_points
from bitsfusion.allocate.from_table import ladder
from bitsfusion.errors import BudgetInfeasible, ConfigError
from bitsfusion.pack.accounting import packed_nbytes
from bitsfusion.plan import BitPlan
from bitsfusion.types import QScheme


def brute_force(table, resource: str, limit: float) -> float:
    names = list(table.layers)
    best = math.inf
    for combo in itertools.product(table.schemes, repeat=len(names)):
        if resource == "bytes":
            cost = sum(packed_nbytes(s, table.layers[n].shape) for n, s in zip(names, combo))
        else:
            cost = sum(s.grid.info_bits(s.bits) * table.layers[n].params for n, s in zip(names, combo))
        if cost <= limit * (1 + 1e-12):
            best = min(best, sum(table.cell(n, s) for n, s in zip(names, combo)))
    return best


def _avg_range(table, counting: str) -> tuple[float, float]:
    params = sum(i.params for i in table.layers.values())
    lo = sum(min(packed_nbytes(s, i.shape) for s in table.schemes) for i in table.layers.values()) * 8 / params
    hi = sum(max(packed_nbytes(s, i.shape) for s in table.schemes) for i in table.layers.values()) * 8 / params
    return (lo, hi) if counting == "stored" else (1.0, 4.0)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n_layers=st.integers(1, 4), frac=st.floats(0, 1),
       counting=st.sampled_from(["stored", "paper"]))
def test_allocation_is_optimal_against_brute_force(seed, n_layers, frac, counting, make_table) -> None:
    table = make_table(seed, n_layers)
    lo, hi = _avg_range(table, counting)
    avg = lo + frac * (hi - lo)
    result = allocate(table, avg_bits=avg, counting=counting)
    params = sum(i.params for i in table.layers.values())
    resource, limit = ("bytes", math.floor(avg * params / 8 + 1e-9)) if counting == "stored" else \
        ("paper_bits", avg * params)
    assert result.predicted_loss == pytest.approx(brute_force(table, resource, limit), rel=1e-9)
    assert result.nbytes == sum(packed_nbytes(s, table.layers[n].shape) for n, s in result.choices.items())
    assert result.avg_bits(counting) <= avg + 1e-9
    assert result.counting == counting


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), frac=st.floats(0, 1))
def test_max_bytes_budget_is_optimal(seed, frac, make_table) -> None:
    table = make_table(seed, 3)
    lo, hi = _avg_range(table, "stored")
    params = sum(i.params for i in table.layers.values())
    limit = (lo + frac * (hi - lo)) * params / 8
    result = allocate(table, max_bytes=limit)
    assert result.nbytes <= limit + 1e-9
    assert result.predicted_loss == pytest.approx(brute_force(table, "bytes", math.floor(limit + 1e-9)), rel=1e-9)


def test_ladder_drops_dominated_schemes(make_table) -> None:
    table = make_table(3, 2)
    for name in table.layers:
        rungs = ladder(table, name)
        costs = [packed_nbytes(s, table.layers[name].shape) for s in rungs]
        losses = [table.cell(name, s) for s in rungs]
        assert costs == sorted(costs) and losses == sorted(losses, reverse=True)


def test_pins_fix_layers_by_name_and_pattern(make_table) -> None:
    table = make_table(5, 4)
    result = allocate(table, avg_bits=6.0, pins={"block.0.a": 4, "re:block\\.1\\..*": 1})
    assert result.choices["block.0.a"].bits == 4
    assert result.choices["block.1.a"].bits == result.choices["block.1.b"].bits == 1
    assert set(result.pinned) == {"block.0.a", "block.1.a", "block.1.b"} and not result.unmeasured
    unmeasured = allocate(table, avg_bits=9.0, pins={"block.0.a": 8})
    assert unmeasured.choices["block.0.a"] == QScheme(8, grid="asymmetric")
    assert unmeasured.unmeasured == ("block.0.a",)
    with pytest.raises(ConfigError, match="matches no layer"):
        allocate(table, avg_bits=3.0, pins={"block.9.a": 4})


def test_infeasible_budget_names_the_minimum(make_table) -> None:
    table = make_table(1, 3)
    lo, _ = _avg_range(table, "stored")
    with pytest.raises(BudgetInfeasible, match=f"minimum achievable .* \\({lo:.3f} stored bits per weight\\)"):
        allocate(table, avg_bits=lo - 0.01)
    with pytest.raises(ConfigError, match="give a budget"):
        allocate(table)
    with pytest.raises(ConfigError, match="counting"):
        allocate(table, avg_bits=2, counting="bogus")


def test_plan_file_round_trips_through_bitplan(tmp_path, make_table) -> None:
    table = make_table(2, 3)
    result = allocate(table, avg_bits=2.5)
    path = result.save(tmp_path / "plan.json")
    plan = BitPlan.load(path)
    assert {n: plan.resolve(n) for n in table.layers} == result.choices
    assert plan.resolve("elsewhere") is None
    summary = json.loads(path.read_text())["allocation"]
    assert summary["counting"] == "stored" and summary["bytes_stored"] == result.nbytes


def test_pareto_front_is_monotone_and_matches_single_solves(make_table) -> None:
    table = make_table(4, 4)
    budgets = [1.0, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 8.0]
    front = pareto_from_table(table, budgets)
    assert front
    bits = [p.bits_per_weight for p in front]
    losses = [p.predicted_loss for p in front]
    assert bits == sorted(bits) and losses == sorted(losses, reverse=True) and len(set(losses)) == len(losses)
    for p in front:
        assert allocate(table, avg_bits=p.budget["bytes"] * 8 / p.params + 1e-9).predicted_loss == \
            pytest.approx(p.predicted_loss)
    uni = uniform_points(table)
    assert len(uni) == len(table.schemes)
    for scheme, _, loss in uni:
        assert loss == pytest.approx(sum(table.cell(n, scheme) for n in table.layers))
