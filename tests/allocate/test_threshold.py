"""BitsFusion's threshold rule: S = MSE * N^-0.3, +1 rung above a percentile, threshold bisected to a budget."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsfusion.allocate import allocate, threshold_allocate, threshold_choices
from bitsfusion.allocate.from_table import ladder
from bitsfusion.errors import BudgetInfeasible


def test_rule_picks_smallest_rung_under_threshold_and_bumps_top_layers(make_table) -> None:
    table = make_table(7, 6)
    second = {n: float(i) for i, n in enumerate(table.layers)}  # the last layer is above the 90th percentile
    t = 1e-2
    choices = threshold_choices(table, t, percentile=90, second=second)
    for i, (name, info) in enumerate(table.layers.items()):
        rungs = ladder(table, name)
        scores = [table.cell(name, s) * info.params ** -0.3 for s in rungs]
        base = next((j for j, s in enumerate(scores) if s <= t), len(rungs) - 1)
        expect = min(base + 1, len(rungs) - 1) if i == len(table.layers) - 1 else base
        assert choices[name] == rungs[expect]


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 10_000), avg=st.floats(1.6, 5.0), pct=st.sampled_from([90.0, 95.0, 98.0]))
def test_bisection_fits_the_budget_and_is_never_better_than_exact(seed, avg, pct, make_table) -> None:
    table = make_table(seed, 5)
    try:
        rule = threshold_allocate(table, avg_bits=avg, percentile=pct)
    except BudgetInfeasible:
        return
    assert rule.bits_per_weight <= avg + 1e-9
    assert allocate(table, avg_bits=avg).predicted_loss <= rule.predicted_loss * (1 + 1e-12)
    assert rule.method == f"threshold(p{pct:g})"


def test_threshold_rule_infeasible_names_the_percentile(make_table) -> None:
    table = make_table(2, 4)
    with pytest.raises(BudgetInfeasible, match="90th percentile"):
        threshold_allocate(table, avg_bits=0.5)
