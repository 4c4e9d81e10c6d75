"""OffSeg network parts: one file per part."""
from .segmentor import OffSeg

__all__ = ["OffSeg"]
