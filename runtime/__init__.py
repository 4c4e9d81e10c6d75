"""Torch-free inference runtime: preprocessing, palettes and (later) backends, sources and sinks."""
from .errors import OffsegError

__all__ = ["OffsegError"]
