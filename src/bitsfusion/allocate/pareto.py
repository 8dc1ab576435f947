"""The Pareto front of loss against one resource: the best plan at each budget, in one call."""

from __future__ import annotations

from typing import Iterable, Mapping

from ..errors import BudgetInfeasible
from .knapsack import solve_dp
from .milp import solve_milp
from .problem import Allocation, AllocationProblem

__all__ = ["solve", "pareto_front"]


def solve(
    problem: AllocationProblem,
    budgets: Mapping[str, float],
    *,
    method: str = "auto",
    resolution: float | None = None,
) -> Allocation:
    """Exact allocation: DP for one integer budget (``method='dp'``), else MILP (``'milp'``)."""
    if not budgets:
        raise BudgetInfeasible("no budget given: pass at least one (e.g. {'bytes': 6e6})")
    if method == "auto":
        method = "dp" if len(budgets) == 1 else "milp"
    if method == "dp":
        if len(budgets) != 1:
            raise BudgetInfeasible("the DP solver takes exactly one budget; use method='milp' for several")
        (resource, limit), = budgets.items()
        return solve_dp(problem, resource, limit, resolution=resolution)
    if method == "milp":
        return solve_milp(problem, budgets)
    raise BudgetInfeasible(f"unknown allocation method {method!r}: use 'dp', 'milp' or 'auto'")


def pareto_front(
    problem: AllocationProblem, resource: str, budgets: Iterable[float], **kwargs: object
) -> list[Allocation]:
    """Optimal plans at each feasible budget, ascending, keeping only non-dominated points."""
    points: list[Allocation] = []
    for limit in sorted(budgets):
        try:
            alloc = solve(problem, {resource: limit}, **kwargs)  # type: ignore[arg-type]
        except BudgetInfeasible:
            continue
        if points and alloc.loss >= points[-1].loss - 1e-15:
            continue
        points.append(alloc)
    return points
