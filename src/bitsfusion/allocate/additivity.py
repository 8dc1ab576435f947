"""Does the sum of single-layer losses predict a whole plan's loss? Measure it, and refine where it does not.

``check_additivity``: for each plan (e.g. each Pareto point), the predicted loss (sum of the table's
cells) against the measured loss of the whole plan: every layer of the plan quantize-dequantized at
once, the calibration batches run, the same loss against the float outputs (an ``OutputProbe``
built with the table's batches, run function and loss). ``ratio = measured / predicted``.

``refine``: a measured local search within the same budget. Each round re-measures the plan, then
for every layer the measured loss of moving it one rung up (``from_table.ladder``: the next scheme
that costs more and loses less) and one rung down, *with the rest of the plan in place*; upgrades
are taken greedily by measured gain per byte, each paid for by the cheapest downgrades (measured
penalty per byte) when the budget has no slack, and only when the gain beats the penalties. The
new plan is measured; the best measured plan over all rounds is kept. A round costs about
``2 * layers`` partial passes (the replay skips each changed layer's prefix).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..analysis.probe import OutputProbe
from ..analysis.progress import cell_progress
from ..analysis.table import SensitivityTable
from ..types import QScheme
from .from_table import TableAllocation, _result, ladder, scheme_cost

__all__ = ["AdditivityPoint", "measure_plan", "check_additivity", "refine", "Refinement"]


@dataclass(frozen=True)
class AdditivityPoint:
    """One plan: stored bits per weight, predicted (sum of cells) and measured loss, and their ratio."""

    bits_per_weight: float
    predicted: float
    measured: float

    @property
    def ratio(self) -> float:
        """``measured / predicted`` (1 = perfectly additive; > 1: interactions make it worse)."""
        return self.measured / self.predicted if self.predicted > 0 else float("inf")

    @property
    def relative_error(self) -> float:
        """``(predicted - measured) / measured``: how far the sum of cells is off."""
        return (self.predicted - self.measured) / self.measured if self.measured > 0 else 0.0


def measure_plan(probe: OutputProbe, choices: dict[str, QScheme]) -> float:
    """Measured loss of the model with every layer of ``choices`` quantize-dequantized at once."""
    return probe.loss({n: probe.image(n, s, cache=True) for n, s in choices.items()})


def check_additivity(probe: OutputProbe, plans: list[TableAllocation]) -> list[AdditivityPoint]:
    """Predicted against measured loss for each plan."""
    return [AdditivityPoint(p.bits_per_weight, p.predicted_loss, measure_plan(probe, p.choices)) for p in plans]


@dataclass(frozen=True)
class Refinement:
    """The best measured plan found, and the measured loss of each round's plan (round 0 = the start)."""

    plan: TableAllocation
    measured: float
    history: tuple[float, ...]


def _cost(table: SensitivityTable, name: str, scheme: QScheme, resource: str) -> float:
    return scheme_cost(table, name, scheme)[resource]


def _moves(probe: OutputProbe, table: SensitivityTable, choices: dict[str, QScheme], resource: str,
           base: float, fixed: tuple[str, ...], advance: Callable[[str], None]) -> tuple[list, list]:
    """Measured ``(gain per unit, gain, extra cost, layer, scheme)`` of upgrades; penalties of downgrades."""
    ups, downs = [], []
    for name, scheme in choices.items():
        if name in fixed:
            continue
        rungs = ladder(table, name)
        i = next((j for j, s in enumerate(rungs) if s == scheme), None)
        if i is None:
            continue  # a pinned or unmeasured scheme stays
        now = _cost(table, name, scheme, resource)
        for j, bucket in ((i + 1, ups), (i - 1, downs)):
            if 0 <= j < len(rungs):
                loss = probe.loss({name: probe.image(name, rungs[j], cache=True)})
                delta = abs(_cost(table, name, rungs[j], resource) - now)
                change = base - loss if bucket is ups else loss - base
                bucket.append((change / max(delta, 1e-12), change, delta, name, rungs[j]))
                advance(f"{name} -> {rungs[j]}")
    return ups, downs


def _greedy_swaps(ups: list, downs: list, slack: float) -> dict[str, QScheme]:
    changes: dict[str, QScheme] = {}
    downs = sorted(downs, key=lambda d: d[0])  # cheapest penalty per unit saved first
    for _, gain, extra, name, scheme in sorted(ups, key=lambda u: -u[0]):
        if gain <= 0 or name in changes:
            continue
        funding, saved, penalty = [], 0.0, 0.0
        for d in downs:
            if saved >= extra - slack:
                break
            if d[3] != name and d[3] not in changes:
                funding.append(d)
                saved, penalty = saved + d[2], penalty + d[1]
        if saved >= extra - slack and gain > penalty:
            changes[name] = scheme
            changes.update({d[3]: d[4] for d in funding})
            downs = [d for d in downs if d[3] not in changes]
            slack += saved - extra
    return changes


def refine(
    probe: OutputProbe, table: SensitivityTable, plan: TableAllocation, *, rounds: int = 3, progress: bool = True
) -> Refinement:
    """Measured greedy swaps within ``plan``'s budget (module doc); the best measured plan is kept."""
    resource = "bytes" if "bytes" in plan.budget or not plan.budget else "paper_bits"
    limit = plan.budget.get(resource, plan.nbytes if resource == "bytes" else plan.paper_bits)
    choices = dict(plan.choices)
    measured = probe.rebase({n: probe.image(n, s, cache=True) for n, s in choices.items()})
    best, best_choices, history = measured, dict(choices), [measured]
    for r in range(rounds):
        with cell_progress(progress, 2 * len(choices), f"refine round {r + 1}") as advance:
            ups, downs = _moves(probe, table, choices, resource, measured, plan.pinned, advance)
        used = sum(_cost(table, n, s, resource) for n, s in choices.items())
        changes = _greedy_swaps(ups, downs, limit - used)
        if not changes:
            break
        choices.update(changes)
        measured = probe.rebase({n: probe.image(n, s, cache=True) for n, s in choices.items()})
        history.append(measured)
        if measured < best:
            best, best_choices = measured, dict(choices)
        else:
            break
    probe.rebase({})
    probe.clear_cache()
    pins = {n: best_choices[n] for n in plan.pinned}
    result = _result(table, best_choices, pins, plan.counting, f"{plan.method}+refined", plan.budget)
    return Refinement(result, best, tuple(history))
