"""Exact multiple-choice knapsack by dynamic programming over an integer budget.

With one budgeted resource whose costs are integers (bytes), the optimum is found exactly:
subtract each layer's cheapest cost (so only the *extra* cost above the cheapest plan is
budgeted), divide every extra cost by their greatest common divisor, then

    best[i][c] = min_j ( best[i-1][c - extra[i][j]] + loss[i][j] )

over ``c = 0 .. slack``, with the arg-min kept per layer for backtracking. Time and memory
are ``O(layers * slack / gcd)``; the table is refused (with advice) past ``max_cells``.
Float costs (latency, energy) are rounded up onto a grid of ``resolution`` first, so the
returned plan always satisfies the true budget and is optimal on that grid.
"""

from __future__ import annotations

import math
from functools import reduce

import numpy as np

from ..errors import BudgetInfeasible, ConfigError
from .problem import Allocation, AllocationProblem

__all__ = ["solve_dp"]


def _integer_costs(problem: AllocationProblem, resource: str, resolution: float | None) -> list[np.ndarray]:
    rows = []
    for layer in problem.layers:
        c = np.array([o.costs[resource] for o in layer.options], dtype=np.float64)
        if resolution is None:
            if not np.all(c == np.round(c)):
                raise ConfigError(
                    f"resource {resource!r} has non-integer costs: pass resolution= to solve on a grid, or use MILP"
                )
            rows.append(c.astype(np.int64))
        else:
            rows.append(np.ceil(c / resolution - 1e-9).astype(np.int64))
    return rows


def solve_dp(
    problem: AllocationProblem,
    resource: str,
    budget: float,
    *,
    resolution: float | None = None,
    max_cells: int = 200_000_000,
) -> Allocation:
    """Minimum-loss allocation with ``sum cost[resource] <= budget``, exactly (see module doc)."""
    problem.check_budgets({resource: budget})
    costs = _integer_costs(problem, resource, resolution)
    # the same 1e-9 tolerance as every feasibility check: a budget a rounding error below a plan's cost admits it
    limit = math.floor((budget if resolution is None else budget / resolution) + 1e-9)
    base = sum(int(c.min()) for c in costs)
    if base > limit:
        raise BudgetInfeasible(
            f"the {resource} budget {budget:g} is below the cheapest plan on the resolution grid: "
            "use a finer resolution or a larger budget"
        )
    extras = [c - c.min() for c in costs]
    unit = reduce(math.gcd, (int(e) for row in extras for e in row if e > 0), 0) or 1
    slack = max(0, (limit - base) // unit)
    steps = [(row // unit).astype(np.int64) for row in extras]
    slack = min(slack, int(sum(int(s.max()) for s in steps)))
    n_layers = len(problem.layers)
    if (slack + 1) * n_layers > max_cells:
        raise ConfigError(
            f"the DP table would have {(slack + 1) * n_layers:,} cells (> {max_cells:,}): "
            "use method='milp' or a coarser resolution"
        )
    best = np.zeros(slack + 1, dtype=np.float64)
    arg = np.zeros((n_layers, slack + 1), dtype=np.int16)
    for i, layer in enumerate(problem.layers):
        nxt = np.full(slack + 1, np.inf)
        for j, (opt, step) in enumerate(zip(layer.options, steps[i])):
            if step > slack:
                continue
            cand = np.full(slack + 1, np.inf)
            cand[step:] = best[: slack + 1 - step] + opt.loss
            better = cand < nxt
            nxt[better] = cand[better]
            arg[i, better] = j
        best = nxt
    picks = [0] * n_layers
    c = int(np.argmin(best))
    for i in range(n_layers - 1, -1, -1):
        j = int(arg[i, c])
        picks[i] = j
        c -= int(steps[i][j])
    return problem.evaluate(picks)
