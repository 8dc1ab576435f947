"""Allocation from a ``SensitivityTable``: one candidate scheme per layer, exactly optimal under a budget.

Each layer's options are the table's measured schemes (dominated ones dropped: never cheaper and
never better), with

- ``loss`` = the measured cell (model-output loss with only that layer quantized);
- ``bytes`` = ``pack.accounting.packed_nbytes``: the exact stored bytes, every overhead counted;
- ``paper_bits`` = ``log2(levels) * N * K``: the BitsFusion paper's counting (no overhead).

Budgets: ``avg_bits`` (per weight of the table's layers, in the chosen ``counting``: ``"stored"``
-> a byte budget ``floor(avg_bits * params / 8)``, ``"paper"`` -> ``avg_bits * params`` paper bits)
and/or ``max_bytes`` (always stored bytes). One integer byte budget is solved by DP, anything else
by MILP; both exact. Pins (an exact layer name or ``re:<pattern>`` -> bits or a ``QScheme``) fix
a layer, e.g. ``{"re:.*head": 8}``. The result is a ``TableAllocation``: the ``BitPlan`` (one
exact-name rule per layer), the predicted loss (sum of cells) and the bytes.

Example: ``allocate(table, avg_bits=2.0)`` on MiniLM's 36 encoder layers chooses among 7 asymmetric
candidates so that their packed bytes are at most ``2.0 * 10.6e6 / 8``.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ..analysis.table import SensitivityTable, scheme_key
from ..errors import BudgetInfeasible, ConfigError
from ..jsonfile import write_json
from ..pack.accounting import packed_nbytes
from ..plan import BitPlan
from ..types import QScheme
from .pareto import solve
from .problem import AllocationProblem, LayerChoices, Option

__all__ = ["COUNTINGS", "TableAllocation", "build_problem", "allocate", "pareto_from_table", "resolve_pins",
           "ladder", "uniform_points", "scheme_cost", "budget_limits"]

COUNTINGS = ("stored", "paper")
Pin = int | QScheme


def scheme_cost(table: SensitivityTable, layer: str, scheme: QScheme) -> dict[str, float]:
    """``{"bytes": stored bytes, "paper_bits": log2(levels) * params}`` of ``layer`` under ``scheme``."""
    info = table.layers[layer]
    return {"bytes": float(packed_nbytes(scheme, info.shape)),
            "paper_bits": scheme.grid.info_bits(scheme.bits) * info.params}


@dataclass(frozen=True)
class TableAllocation:
    """A plan chosen from a table: scheme per layer, predicted loss (sum of cells), stored bytes."""

    choices: dict[str, QScheme]
    predicted_loss: float
    nbytes: int
    params: int
    paper_bits: float
    counting: str
    method: str
    budget: dict[str, float] = field(default_factory=dict)
    pinned: tuple[str, ...] = ()
    unmeasured: tuple[str, ...] = ()

    @property
    def bits_per_weight(self) -> float:
        """Stored bits per weight, every overhead counted: ``8 * nbytes / params``."""
        return 8 * self.nbytes / self.params

    @property
    def paper_bits_per_weight(self) -> float:
        """The BitsFusion paper's counting: ``log2(levels)`` per weight, no overhead."""
        return self.paper_bits / self.params

    def avg_bits(self, counting: str | None = None) -> float:
        """Bits per weight in ``counting`` (default: the one the budget used)."""
        return self.paper_bits_per_weight if (counting or self.counting) == "paper" else self.bits_per_weight

    def plan(self) -> BitPlan:
        """The ``BitPlan``: one exact-name rule per layer, no default (other layers stay float)."""
        return BitPlan(default=None, rules=dict(self.choices))

    def summary(self) -> dict[str, Any]:
        """JSON-able numbers, each naming its counting."""
        return {
            "method": self.method, "counting": self.counting, "budget": self.budget,
            "predicted_loss": self.predicted_loss, "bytes_stored": self.nbytes, "params": self.params,
            "bits_per_weight_stored": self.bits_per_weight, "bits_per_weight_paper": self.paper_bits_per_weight,
            "pinned": list(self.pinned), "unmeasured_pins": list(self.unmeasured),
        }

    def save(self, path: str | os.PathLike[str]) -> Path:
        """A plan file ``BitPlan.load`` reads, with this summary under ``"allocation"`` (atomic write)."""
        return write_json(path, {**self.plan().to_dict(), "allocation": self.summary()})


def ladder(table: SensitivityTable, layer: str) -> list[QScheme]:
    """The layer's efficient measured schemes by ascending bytes: each costs more and loses less."""
    cells = table.loss.get(layer, {})
    ranked = sorted(
        (scheme_cost(table, layer, s)["bytes"], cells[scheme_key(s)], i, s)
        for i, s in enumerate(table.schemes) if scheme_key(s) in cells
    )
    out: list[QScheme] = []
    best = math.inf
    for _, loss, _, s in ranked:
        if loss < best:
            out.append(s)
            best = loss
    return out


def resolve_pins(table: SensitivityTable, pins: Mapping[str, Pin] | None) -> dict[str, tuple[QScheme, bool]]:
    """Layer -> (pinned scheme, measured?) for every pin rule; ConfigError for a rule matching no layer.

    A pin to ``bits`` takes the table's lowest-loss measured scheme with those bits; failing that,
    the first candidate with its bits replaced (its loss then counts as 0: not measured).
    """
    out: dict[str, tuple[QScheme, bool]] = {}
    for rule, value in (pins or {}).items():
        pattern = re.compile(rule[3:]) if rule.startswith("re:") else None
        hits = [n for n in table.layers if (pattern.fullmatch(n) if pattern else n == rule)]
        if not hits:
            raise ConfigError(f"pin {rule!r} matches no layer of the table; layers are e.g. "
                              f"{', '.join(list(table.layers)[:3])} (use an exact name or re:<pattern>)")
        for name in hits:
            if name in out and rule.startswith("re:"):
                continue  # an exact-name pin wins over a pattern
            out[name] = _pin_scheme(table, name, value)
    return out


def _pin_scheme(table: SensitivityTable, name: str, value: Pin) -> tuple[QScheme, bool]:
    if isinstance(value, QScheme):
        return value, scheme_key(value) in table.loss.get(name, {})
    measured = [s for s in table.schemes if s.bits == value and scheme_key(s) in table.loss.get(name, {})]
    if measured:
        return min(measured, key=lambda s: table.cell(name, s)), True
    try:
        return table.schemes[0].replace(bits=int(value)), False
    except ConfigError as e:
        raise ConfigError(f"pin {name}={value}: {e}") from None


def build_problem(table: SensitivityTable, pins: Mapping[str, Pin] | None = None) -> AllocationProblem:
    """Options per layer (its ``ladder``, or its pin) priced in ``bytes`` and ``paper_bits``."""
    pinned = resolve_pins(table, pins)
    layers = []
    for name in table.layers:
        if name in pinned:
            scheme, measured = pinned[name]
            schemes = [(scheme, table.cell(name, scheme) if measured else 0.0)]
        else:
            schemes = [(s, table.cell(name, s)) for s in ladder(table, name)]
        if not schemes:
            raise ConfigError(f"layer {name!r} has no measured cell; finish the table with `bitsfusion analyze`")
        layers.append(LayerChoices(name, tuple(Option(s, loss, scheme_cost(table, name, s)) for s, loss in schemes)))
    return AllocationProblem(layers=tuple(layers), resources=("bytes", "paper_bits"))


def budget_limits(
    table: SensitivityTable, avg_bits: float | None, max_bytes: float | None, counting: str
) -> dict[str, float]:
    """The budgets in problem resources: ``bytes`` and/or ``paper_bits`` (see module doc)."""
    if counting not in COUNTINGS:
        raise ConfigError(f"counting must be one of {COUNTINGS}, got {counting!r}")
    if avg_bits is None and max_bytes is None:
        raise ConfigError("give a budget: avg_bits (bits per weight) or max_bytes")
    params = sum(i.params for i in table.layers.values())
    limits: dict[str, float] = {}
    if avg_bits is not None:
        if counting == "stored":
            limits["bytes"] = float(math.floor(avg_bits * params / 8 + 1e-9))
        else:
            limits["paper_bits"] = float(avg_bits * params)
    if max_bytes is not None:
        limits["bytes"] = min(limits.get("bytes", math.inf), float(math.floor(max_bytes + 1e-9)))
    return limits


def _infeasible(problem: AllocationProblem, limits: Mapping[str, float], params: int) -> None:
    least = {r: sum(min(o.costs[r] for o in layer.options) for layer in problem.layers) for r in limits}
    for r, limit in limits.items():
        if least[r] > limit * (1 + 1e-12):
            unit = 8 if r == "bytes" else 1
            counting = "stored" if r == "bytes" else "paper"
            raise BudgetInfeasible(
                f"budget {limit:,.0f} {r} ({unit * limit / params:.3f} {counting} bits per weight) is below the "
                f"minimum achievable {least[r]:,.0f} {r} ({unit * least[r] / params:.3f} {counting} bits per "
                "weight) with these candidates and pins: raise the budget, add lower-bit candidates or unpin"
            )


def allocate(
    table: SensitivityTable,
    *,
    avg_bits: float | None = None,
    max_bytes: float | None = None,
    counting: str = "stored",
    pins: Mapping[str, Pin] | None = None,
    problem: AllocationProblem | None = None,
) -> TableAllocation:
    """The minimum predicted-loss plan under the budgets (exact); BudgetInfeasible naming the minimum."""
    limits = budget_limits(table, avg_bits, max_bytes, counting)
    problem = problem or build_problem(table, pins)
    params = sum(i.params for i in table.layers.values())
    _infeasible(problem, limits, params)
    if list(limits) == ["bytes"]:
        try:
            alloc = solve(problem, limits, method="dp")
        except ConfigError:  # DP table too large: HiGHS is exact too
            alloc = solve(problem, limits, method="milp")
    else:
        alloc = solve(problem, limits, method="milp")
    return _result(table, alloc.choices(), pins, counting, "exact", limits)


def _result(
    table: SensitivityTable, choices: Mapping[str, QScheme], pins: Mapping[str, Pin] | None, counting: str,
    method: str, limits: Mapping[str, float],
) -> TableAllocation:
    pinned = resolve_pins(table, pins)
    loss = sum(0.0 if (n in pinned and not pinned[n][1]) else table.cell(n, s) for n, s in choices.items())
    costs = [scheme_cost(table, n, s) for n, s in choices.items()]
    return TableAllocation(
        choices=dict(choices), predicted_loss=float(loss), nbytes=int(sum(c["bytes"] for c in costs)),
        params=sum(i.params for i in table.layers.values()), paper_bits=float(sum(c["paper_bits"] for c in costs)),
        counting=counting, method=method, budget=dict(limits), pinned=tuple(pinned),
        unmeasured=tuple(n for n, (_, m) in pinned.items() if not m),
    )


def pareto_from_table(
    table: SensitivityTable, avg_bits: Sequence[float], *, counting: str = "stored",
    pins: Mapping[str, Pin] | None = None,
) -> list[TableAllocation]:
    """The optimal plan at each feasible ``avg_bits`` (ascending), dominated points dropped."""
    problem = build_problem(table, pins)
    points: list[TableAllocation] = []
    for b in sorted(avg_bits):
        try:
            point = allocate(table, avg_bits=b, counting=counting, pins=pins, problem=problem)
        except BudgetInfeasible:
            continue
        if points and point.predicted_loss >= points[-1].predicted_loss - 1e-15:
            continue
        points.append(point)
    return points


def uniform_points(table: SensitivityTable, counting: str = "stored") -> list[tuple[QScheme, float, float]]:
    """``(scheme, bits per weight in counting, predicted loss)`` of every candidate given to all layers."""
    out = []
    complete = [s for s in table.schemes if all(scheme_key(s) in table.loss.get(n, {}) for n in table.layers)]
    params = sum(i.params for i in table.layers.values())
    for s in complete:
        costs = [scheme_cost(table, n, s) for n in table.layers]
        bits = 8 * sum(c["bytes"] for c in costs) if counting == "stored" else sum(c["paper_bits"] for c in costs)
        out.append((s, bits / params, table.uniform_loss(s)))
    return out
