"""nanokern: Nanotron <-> HuggingFace LLaMA checkpoint conversion with fused kernels."""

__version__ = "0.1.0"
