"""Analysis: how much a quantized model's output differs from the float one (metrics), and per layer.

``metrics`` holds the quality measures every evaluator and benchmark reports.
"""

from .metrics import cosine_stats, output_mse, row_cosine, sqnr_db, topk_overlap

__all__ = ["cosine_stats", "output_mse", "row_cosine", "sqnr_db", "topk_overlap"]
