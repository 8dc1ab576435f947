"""BitsFusion's own allocation rule, for comparison with the exact allocator.

From the paper (Sui et al., 2024, "BitsFusion"): each layer's sensitivity at ``b`` bits is scored
``S = MSE * N^-0.3`` (``N`` its parameter count: large layers are penalised less per unit of
loss, since they buy more bytes); a layer gets the *smallest* bits whose score is under a
threshold ``t``; then layers above the ``percentile``-th percentile (90, 95 or 98) of a second
sensitivity metric get one bit more. Here ``MSE`` is the table's measured cell, the rungs of
a layer are its efficient schemes (``from_table.ladder``), and "one bit more" is the next rung.

The threshold is chosen by bisection to hit a budget: cost falls as ``t`` rises, and only
changes at the layers' scores, so a binary search over the sorted scores finds the smallest
``t`` (the most bits) whose plan fits. The second metric defaults to the table's
``input_weighted`` proxy at the layer's lowest rung (the layer's own relative output error: a
view of sensitivity that does not go through the model output), else its raw lowest-rung loss.
"""

from __future__ import annotations

import math
from typing import Mapping

import numpy as np

from ..analysis.table import SensitivityTable, scheme_key
from ..errors import BudgetInfeasible, ConfigError
from ..types import QScheme
from .from_table import Pin, TableAllocation, _result, budget_limits, ladder, resolve_pins, scheme_cost

__all__ = ["PERCENTILES", "threshold_choices", "threshold_allocate", "second_metric"]

PERCENTILES = (90.0, 95.0, 98.0)
EXPONENT = -0.3


def second_metric(table: SensitivityTable, name: str = "auto") -> dict[str, float]:
    """Per layer: ``name`` (a proxy of the table, ``"loss"`` or ``"weight_error"``) at its lowest rung."""
    if name == "auto":
        name = "input_weighted" if "input_weighted" in table.proxies else "loss"
    source = {"loss": table.loss, "weight_error": table.weight_error}.get(name) or table.proxies.get(name)
    if source is None:
        raise ConfigError(f"unknown second metric {name!r}: use loss, weight_error or one of {sorted(table.proxies)}")
    return {n: source[n][scheme_key(ladder(table, n)[0])] for n in table.layers}


def threshold_choices(
    table: SensitivityTable,
    threshold: float,
    *,
    percentile: float = 90.0,
    second: Mapping[str, float] | None = None,
    pins: Mapping[str, Pin] | None = None,
) -> dict[str, QScheme]:
    """The rule at one threshold: smallest rung with ``S <= threshold``, +1 rung above the percentile."""
    second = second_metric(table) if second is None else second
    pinned = resolve_pins(table, pins)
    free = [n for n in table.layers if n not in pinned]
    cut = float(np.percentile([second[n] for n in free], percentile)) if free else math.inf
    out: dict[str, QScheme] = {}
    for name, info in table.layers.items():
        if name in pinned:
            out[name] = pinned[name][0]
            continue
        rungs = ladder(table, name)
        scores = [table.cell(name, s) * info.params ** EXPONENT for s in rungs]
        i = next((j for j, s in enumerate(scores) if s <= threshold), len(rungs) - 1)
        if second[name] > cut:
            i = min(i + 1, len(rungs) - 1)
        out[name] = rungs[i]
    return out


def threshold_allocate(
    table: SensitivityTable,
    *,
    avg_bits: float | None = None,
    max_bytes: float | None = None,
    counting: str = "stored",
    percentile: float = 90.0,
    second: Mapping[str, float] | None = None,
    pins: Mapping[str, Pin] | None = None,
) -> TableAllocation:
    """The rule with the smallest threshold whose plan fits the budgets (bisection over the scores)."""
    limits = budget_limits(table, avg_bits, max_bytes, counting)
    second = second_metric(table) if second is None else second

    def fits(t: float) -> bool:
        choices = threshold_choices(table, t, percentile=percentile, second=second, pins=pins)
        totals = {r: sum(scheme_cost(table, n, s)[r] for n, s in choices.items()) for r in limits}
        return all(totals[r] <= limits[r] * (1 + 1e-12) for r in limits)

    scores = sorted({table.cell(n, s) * i.params ** EXPONENT for n, i in table.layers.items()
                     for s in ladder(table, n)} | {math.inf})
    if not fits(scores[-1]):
        raise BudgetInfeasible(
            f"the threshold rule cannot meet the budget {limits} even at the lowest bits "
            f"(the +1 bit for layers above the {percentile:g}th percentile costs too much): "
            "raise the budget, lower the percentile's share or use the exact method"
        )
    lo, hi = 0, len(scores) - 1  # fits(scores[hi]) holds; find the smallest index that fits
    while lo < hi:
        mid = (lo + hi) // 2
        if fits(scores[mid]):
            hi = mid
        else:
            lo = mid + 1
    choices = threshold_choices(table, scores[hi], percentile=percentile, second=second, pins=pins)
    result = _result(table, choices, pins, counting, f"threshold(p{percentile:g})", limits)
    return result
