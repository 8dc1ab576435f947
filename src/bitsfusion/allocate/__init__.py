"""Bit allocation: one scheme per layer, exactly optimal under budgets (multiple-choice knapsack)."""

from .knapsack import solve_dp
from .milp import solve_milp
from .pareto import pareto_front, solve
from .problem import Allocation, AllocationProblem, LayerChoices, Option

__all__ = [
    "Allocation",
    "AllocationProblem",
    "LayerChoices",
    "Option",
    "pareto_front",
    "solve",
    "solve_dp",
    "solve_milp",
]
