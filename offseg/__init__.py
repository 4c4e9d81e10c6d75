"""OffSeg in PyTorch: the T/B/L models, checkpoint loading and inference helpers.

The package imports torch only when one of its PyTorch names is first used, so ``offseg.names`` (and the command
lines' ``--help``) work without it.
"""
from importlib import import_module

from runtime.errors import OffsegError

from .names import MODEL_NAMES

__version__ = "0.1.0"
_LAZY = {"load_checkpoint": "checkpoint", "save_checkpoint": "checkpoint", "predict": "inference",
         "logits_to_labels": "inference", "MODELS": "zoo", "ModelSpec": "zoo", "build_model": "zoo",
         "get_spec": "zoo"}
__all__ = ["OffsegError", "MODEL_NAMES", *_LAZY, "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
