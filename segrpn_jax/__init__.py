"""SegRPN in JAX: joint detection and semantic segmentation with a class-agnostic RPN."""

__version__ = "0.1.0"
