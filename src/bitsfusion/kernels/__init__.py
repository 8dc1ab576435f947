"""Execution of packed weights; ``reference`` (dequantise, then the float op) is the oracle."""

from .reference import conv2d, dequantized_weight, linear

__all__ = ["linear", "conv2d", "dequantized_weight"]
