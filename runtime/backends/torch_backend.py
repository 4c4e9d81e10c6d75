"""PyTorch backend (only when torch is installed): a checkpoint run eagerly (BatchNorm folded), for parity work."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..errors import OffsegError
from . import ModelInfo


class TorchBackend:
    def __init__(self, path: Path, device: str = "auto"):
        try:
            import torch
        except ImportError:
            raise OffsegError("the PyTorch backend needs torch; on devices use an .onnx or .plan file") from None
        from offseg.checkpoint import build_from_checkpoint, checkpoint_labels, read_file
        from offseg.devices import describe, torch_device
        from offseg.models.fold import fold_batchnorm
        self.torch = torch
        self.device = torch_device(device)
        content = read_file(path)
        model, name = build_from_checkpoint(path, content=content)
        self.model = fold_batchnorm(model).to(self.device)
        classes, palette = checkpoint_labels(content, self.model.num_classes, f"checkpoint {path}")
        self.info = ModelInfo(name=name, num_classes=self.model.num_classes, input_size=None, input_format="normalized",
                              output_kind="logits", classes=tuple(classes or ()),
                              palette=tuple(map(tuple, palette or ())))
        self.description = f"PyTorch {torch.__version__} ({describe(self.device)})"

    def infer(self, batch: np.ndarray) -> np.ndarray:
        with self.torch.no_grad():
            return self.model(self.torch.from_numpy(batch).to(self.device)).float().cpu().numpy()

    def close(self) -> None:
        self.model = None
