"""Bit allocation: one scheme per layer, exactly optimal under budgets (multiple-choice knapsack).

- ``AllocationProblem`` / ``solve_dp`` / ``solve_milp`` / ``pareto_front``: the exact solvers;
- ``allocate`` / ``pareto_from_table``: options from a ``SensitivityTable`` priced in exact bytes;
- ``threshold_allocate``: BitsFusion's own rule (``S = MSE * N^-0.3``), for comparison;
- ``check_additivity`` / ``refine``: measured loss of whole plans, and a measured refinement pass.
"""

from .additivity import AdditivityPoint, Refinement, check_additivity, measure_plan, refine
from .from_table import (
    COUNTINGS,
    TableAllocation,
    allocate,
    build_problem,
    ladder,
    pareto_from_table,
    resolve_pins,
    uniform_points,
)
from .knapsack import solve_dp
from .milp import solve_milp
from .pareto import pareto_front, solve
from .problem import Allocation, AllocationProblem, LayerChoices, Option
from .threshold import PERCENTILES, threshold_allocate, threshold_choices

__all__ = [
    "Allocation",
    "AllocationProblem",
    "LayerChoices",
    "Option",
    "pareto_front",
    "solve",
    "solve_dp",
    "solve_milp",
    "COUNTINGS",
    "TableAllocation",
    "allocate",
    "build_problem",
    "ladder",
    "pareto_from_table",
    "resolve_pins",
    "uniform_points",
    "PERCENTILES",
    "threshold_allocate",
    "threshold_choices",
    "AdditivityPoint",
    "Refinement",
    "check_additivity",
    "measure_plan",
    "refine",
]
