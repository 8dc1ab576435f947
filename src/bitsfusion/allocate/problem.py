"""The allocation problem: one option per layer, minimum summed loss under budgets.

This is a multiple-choice knapsack. Layer ``i`` offers options ``j`` (a scheme: bits, grid,
method...) each with a ``loss[i][j]`` (the measured sensitivity: model-output quality lost when
only this layer is quantized this way) and costs ``cost[r][i][j]`` per budgeted resource ``r``
(bytes as stored, weighted bits, latency, energy...). A solution picks exactly one option per
layer with ``sum_i cost[r][i][j_i] <= budget[r]`` for every ``r``, minimising ``sum_i loss[i][j_i]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from ..errors import BudgetInfeasible, ConfigError

__all__ = ["Option", "LayerChoices", "AllocationProblem", "Allocation"]


@dataclass(frozen=True)
class Option:
    """One way to store a layer: an opaque ``key`` (e.g. a scheme), its loss and its costs."""

    key: Any
    loss: float
    costs: Mapping[str, float]


@dataclass(frozen=True)
class LayerChoices:
    """The options of one layer (a pinned layer simply offers one option)."""

    name: str
    options: tuple[Option, ...]

    def __post_init__(self) -> None:
        if not self.options:
            raise ConfigError(f"layer {self.name!r} has no options to choose from")


@dataclass(frozen=True)
class AllocationProblem:
    """Layers with options, over named resources (every option must price every resource)."""

    layers: tuple[LayerChoices, ...]
    resources: tuple[str, ...]

    def __post_init__(self) -> None:
        if not self.layers:
            raise ConfigError("an allocation problem needs at least one layer")
        for layer in self.layers:
            for opt in layer.options:
                missing = set(self.resources) - set(opt.costs)
                if missing:
                    raise ConfigError(f"layer {layer.name!r} option {opt.key!r} has no cost for {sorted(missing)}")

    def check_budgets(self, budgets: Mapping[str, float]) -> None:
        """Raise ``BudgetInfeasible`` (with the minimum achievable) when a budget is below reach."""
        unknown = set(budgets) - set(self.resources)
        if unknown:
            raise ConfigError(f"budget on unknown resource(s) {sorted(unknown)}; known: {list(self.resources)}")
        for r, limit in budgets.items():
            least = sum(min(o.costs[r] for o in layer.options) for layer in self.layers)
            if least > limit * (1 + 1e-12):
                raise BudgetInfeasible(
                    f"the {r} budget {limit:g} is below the least any plan can reach ({least:g}): "
                    f"raise the budget or allow lower bit widths"
                )

    def evaluate(self, picks: Sequence[int]) -> "Allocation":
        """The loss and costs of choosing option ``picks[i]`` for layer ``i``."""
        loss = sum(layer.options[j].loss for layer, j in zip(self.layers, picks))
        costs = {r: sum(layer.options[j].costs[r] for layer, j in zip(self.layers, picks)) for r in self.resources}
        return Allocation(picks=tuple(int(j) for j in picks), loss=float(loss), costs=costs, problem=self)


@dataclass(frozen=True)
class Allocation:
    """A solution: the option index per layer, its summed loss and its costs."""

    picks: tuple[int, ...]
    loss: float
    costs: Mapping[str, float]
    problem: AllocationProblem = field(repr=False, compare=False)
    optimal: bool = True

    def choices(self) -> dict[str, Any]:
        """Layer name -> chosen option key."""
        return {layer.name: layer.options[j].key for layer, j in zip(self.problem.layers, self.picks)}
