"""Exact allocation under several budgets at once, as a 0/1 integer program (HiGHS).

Variables ``x[i, j] in {0, 1}`` (layer ``i`` takes option ``j``); ``sum_j x[i, j] = 1`` per
layer; ``sum_ij cost[r][i][j] * x[i, j] <= budget[r]`` per budgeted resource; minimise
``sum_ij loss[i][j] * x[i, j]``. Solved by ``scipy.optimize.milp`` with a zero optimality gap.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np

from ..errors import BudgetInfeasible
from .problem import Allocation, AllocationProblem

__all__ = ["solve_milp"]


def solve_milp(problem: AllocationProblem, budgets: Mapping[str, float], *, time_limit: float = 60.0) -> Allocation:
    """Minimum-loss allocation satisfying every budget in ``budgets`` (resource -> limit)."""
    from scipy.optimize import Bounds, LinearConstraint, milp

    problem.check_budgets(budgets)
    sizes = [len(layer.options) for layer in problem.layers]
    offsets = np.cumsum([0, *sizes])
    n = int(offsets[-1])
    loss = np.array([o.loss for layer in problem.layers for o in layer.options], dtype=np.float64)
    one_each = np.zeros((len(sizes), n))
    for i, (lo, hi) in enumerate(zip(offsets[:-1], offsets[1:])):
        one_each[i, lo:hi] = 1.0
    constraints = [LinearConstraint(one_each, 1.0, 1.0)]
    for r, limit in budgets.items():
        row = np.array([o.costs[r] for layer in problem.layers for o in layer.options], dtype=np.float64)
        constraints.append(LinearConstraint(row[None, :], -np.inf, float(limit)))
    res = milp(
        c=loss,
        constraints=constraints,
        integrality=np.ones(n),
        bounds=Bounds(0, 1),
        options={"mip_rel_gap": 0.0, "time_limit": time_limit, "disp": False},
    )
    if res.x is None:
        raise BudgetInfeasible(f"no allocation satisfies the budgets {dict(budgets)} ({res.message})")
    x = np.round(res.x).astype(int)
    picks = [int(np.argmax(x[lo:hi])) for lo, hi in zip(offsets[:-1], offsets[1:])]
    alloc = problem.evaluate(picks)
    return Allocation(alloc.picks, alloc.loss, alloc.costs, problem, optimal=bool(res.status == 0))
