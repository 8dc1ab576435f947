"""The solvers are exact: they match brute force on every small random problem."""

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bitsfusion.allocate import AllocationProblem, LayerChoices, Option, pareto_front, solve, solve_dp, solve_milp
from bitsfusion.errors import BudgetInfeasible, ConfigError


def random_problem(seed: int, n_layers: int, n_opts: int) -> AllocationProblem:
    rng = np.random.default_rng(seed)
    layers = []
    for i in range(n_layers):
        params = int(rng.integers(8, 200)) * 16
        bits = sorted(rng.choice(np.arange(1, 9), size=n_opts, replace=False))
        sens = float(rng.lognormal())
        opts = tuple(
            Option(key=int(b), loss=sens * 4.0 ** (-b) * float(rng.uniform(0.5, 1.5)),
                   costs={"bytes": params * int(b) // 8 + 32, "latency": float(rng.uniform(0.1, 2.0)) * b})
            for b in bits
        )
        layers.append(LayerChoices(name=f"l{i}", options=opts))
    return AllocationProblem(layers=tuple(layers), resources=("bytes", "latency"))


def brute_force(problem: AllocationProblem, budgets: dict) -> float:
    best = np.inf
    for picks in itertools.product(*(range(len(layer.options)) for layer in problem.layers)):
        a = problem.evaluate(picks)
        if all(a.costs[r] <= b + 1e-9 for r, b in budgets.items()):
            best = min(best, a.loss)
    return best


def budget_between(problem: AllocationProblem, r: str, frac: float) -> float:
    lo = sum(min(o.costs[r] for o in layer.options) for layer in problem.layers)
    hi = sum(max(o.costs[r] for o in layer.options) for layer in problem.layers)
    return lo + frac * (hi - lo)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), n_layers=st.integers(1, 5), n_opts=st.integers(1, 4), frac=st.floats(0, 1))
def test_dp_and_milp_match_brute_force_on_bytes(seed, n_layers, n_opts, frac) -> None:
    problem = random_problem(seed, n_layers, n_opts)
    budget = budget_between(problem, "bytes", frac)
    expected = brute_force(problem, {"bytes": budget})
    dp = solve_dp(problem, "bytes", budget)
    assert dp.costs["bytes"] <= budget + 1e-9  # the tolerance of every feasibility check
    assert dp.loss == pytest.approx(expected, rel=1e-12)
    milp = solve_milp(problem, {"bytes": budget})
    assert milp.loss == pytest.approx(expected, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), fb=st.floats(0, 1), fl=st.floats(0, 1))
def test_milp_matches_brute_force_with_two_budgets(seed, fb, fl) -> None:
    problem = random_problem(seed, 4, 3)
    budgets = {"bytes": budget_between(problem, "bytes", fb), "latency": budget_between(problem, "latency", fl)}
    expected = brute_force(problem, budgets)
    if not np.isfinite(expected):
        with pytest.raises(BudgetInfeasible):
            solve(problem, budgets)
        return
    got = solve(problem, budgets)
    assert got.loss == pytest.approx(expected, rel=1e-9)
    assert all(got.costs[r] <= b + 1e-6 for r, b in budgets.items())


def test_dp_on_a_float_resource_respects_the_true_budget() -> None:
    problem = random_problem(3, 5, 4)
    budget = budget_between(problem, "latency", 0.4)
    got = solve_dp(problem, "latency", budget, resolution=1e-3)
    assert got.costs["latency"] <= budget
    assert got.loss <= brute_force(problem, {"latency": budget - 5 * 1e-3}) + 1e-12


def test_infeasible_budget_names_the_minimum() -> None:
    problem = random_problem(1, 3, 2)
    with pytest.raises(BudgetInfeasible, match="below the least any plan can reach"):
        solve(problem, {"bytes": 1})


def test_float_costs_need_a_resolution() -> None:
    problem = random_problem(1, 3, 2)
    with pytest.raises(ConfigError, match="non-integer costs"):
        solve_dp(problem, "latency", 1e9)


def test_pareto_front_is_monotone() -> None:
    problem = random_problem(7, 6, 4)
    budgets = np.linspace(budget_between(problem, "bytes", 0), budget_between(problem, "bytes", 1), 25)
    front = pareto_front(problem, "bytes", budgets)
    assert len(front) >= 3
    costs = [a.costs["bytes"] for a in front]
    losses = [a.loss for a in front]
    assert costs == sorted(costs) and losses == sorted(losses, reverse=True)
