"""mIoU evaluation of a PyTorch model on a dataset split (whole or sliding-window inference)."""
from __future__ import annotations

import torch
from tqdm import tqdm

from runtime.metrics import ConfusionMatrix, Scores
from runtime.preprocess import normalize_bgr

from .inference import slide_logits, whole_logits


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, mode: str = "whole", crop: tuple[int, int] = (512, 512),
             stride: tuple[int, int] = (480, 480), max_images: int | None = None, progress: bool = True) -> Scores:
    """Scores of ``model`` (switched to eval) on ``dataset`` items (image, labels), untransformed."""
    model.eval()
    confusion = ConfusionMatrix(dataset.num_classes)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))
    for index in tqdm(range(count), desc=f"evaluating ({mode})", disable=not progress, leave=False):
        image, labels = dataset.load(index)
        x = torch.from_numpy(normalize_bgr(image))
        logits = whole_logits(model, x) if mode == "whole" else slide_logits(model, x, crop, stride)
        confusion.update(logits.argmax(1)[0].cpu().numpy(), labels)
    return confusion.scores()
