"""OffSeg in PyTorch: the T/B/L models, checkpoint loading and inference helpers."""
from runtime.errors import OffsegError

from .checkpoint import load_checkpoint, save_checkpoint
from .inference import logits_to_labels, predict
from .zoo import MODELS, ModelSpec, build_model, get_spec

__version__ = "0.1.0"
__all__ = ["OffsegError", "MODELS", "ModelSpec", "build_model", "get_spec", "load_checkpoint", "save_checkpoint",
           "predict", "logits_to_labels", "__version__"]
