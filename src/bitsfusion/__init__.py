"""BitsFusion: mixed-precision low-bit quantization of pretrained PyTorch models."""

__version__ = "0.1.0"
