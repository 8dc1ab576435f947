"""Analysis: how much a quantized model's output differs from the float one (metrics), and per layer.

- ``metrics``: the quality measures every evaluator and benchmark reports;
- ``measure_sensitivity`` -> ``SensitivityTable``: the output loss of quantizing one layer at a time,
  for every candidate scheme (resumable JSON), with cheap ``proxies`` and their rank correlation;
- ``OutputProbe``: the loss of any set of substituted weights, replaying what they cannot change.
"""

from .metrics import cosine_stats, output_mse, row_cosine, sqnr_db, topk_overlap
from .probe import OutputProbe, substituted, weight_view
from .proxies import PROXIES, InputMoments, hawq_error, input_weighted_error, proxy_correlation, spearman
from .replay import Replayer
from .sensitivity import (
    DEFAULT_BITS,
    LOSSES,
    default_candidates,
    default_run,
    measure_sensitivity,
    quantizable_layers,
    resolve_loss,
)
from .table import LayerInfo, SensitivityTable, scheme_key

__all__ = [
    "cosine_stats", "output_mse", "row_cosine", "sqnr_db", "topk_overlap",
    "OutputProbe", "substituted", "weight_view",
    "PROXIES", "InputMoments", "hawq_error", "input_weighted_error", "proxy_correlation", "spearman",
    "Replayer",
    "DEFAULT_BITS", "LOSSES", "default_candidates", "default_run", "measure_sensitivity", "quantizable_layers",
    "resolve_loss",
    "LayerInfo", "SensitivityTable", "scheme_key",
]
