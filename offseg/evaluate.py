"""mIoU evaluation of a PyTorch model on a dataset split, by the dataset's test protocol (``offseg.protocol``)."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import numpy as np
import torch

from runtime.metrics import Scores
from runtime.progress import progress as report_progress

from .cuda_graphs import GraphedForward
from .device_protocol import DeviceConfusion, protocol_logits, to_device
from .models.fold import fold_batchnorm
from .names import WINDOW_BATCH
from .protocol import TestProtocol, test_resize

T, R = TypeVar("T"), TypeVar("R")
PREFETCH_WORKERS = 4  # threads preparing the next images (a 512x683 JPEG and PNG: 4.7 ms on one CPU thread)


def mean_accuracy(scores: Scores) -> float:
    """mmseg's mAcc: the mean over classes present in the ground truth of their pixel accuracy."""
    return float(np.nanmean(scores.accuracy)) if np.isfinite(scores.accuracy).any() else float("nan")


def prefetched(function: Callable[[T], R], items: Iterable[T], workers: int = PREFETCH_WORKERS,
               depth: int | None = None) -> Iterator[R]:
    """``function(item)`` for each item in order, computed up to ``depth`` (default 2 x ``workers``) items ahead on
    ``workers`` background threads (image decoding and OpenCV release the GIL, so the host prepares the next
    images while the model runs; a GPU evaluates an image faster than one thread decodes it)."""
    depth = 2 * workers if depth is None else depth
    items, pending = iter(items), []
    with ThreadPoolExecutor(workers, thread_name_prefix="offseg-prefetch") as pool:
        try:
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) > depth:
                    yield pending.pop(0).result()
            while pending:
                yield pending.pop(0).result()
        finally:
            for future in pending:
                future.cancel()


@torch.no_grad()
def evaluate(model: torch.nn.Module, dataset, protocol: TestProtocol, max_images: int | None = None,
             progress: bool = True, cuda_graphs: bool = False, window_batch: int = WINDOW_BATCH) -> Scores:
    """Scores of ``model`` on ``dataset`` items (image, labels), untransformed, on the model's device; run as an
    eval-mode copy with its BatchNorms folded into the convolutions (``model`` itself is left as it is).

    ``cuda_graphs``: on a GPU, replay the forward of every input shape met twice from a CUDA graph
    (``offseg.cuda_graphs``); the same scores, less host work. ``window_batch``: slide windows per forward."""
    model = fold_batchnorm(model)
    if cuda_graphs:
        model = GraphedForward(model)
    device = next(model.parameters()).device
    confusion = DeviceConfusion(dataset.num_classes, device)
    count = len(dataset) if max_images is None else min(max_images, len(dataset))

    def prepared(index: int) -> tuple[np.ndarray, tuple[int, int], np.ndarray]:
        image, labels = dataset.load(index)
        return test_resize(image, protocol.scale), image.shape[:2], labels

    items = prefetched(prepared, range(count))
    for resized, size, labels in report_progress(items, f"evaluating ({protocol.mode})", total=count,
                                                 unit="image", enabled=progress):
        logits = protocol_logits(to_device(resized, device), size, model, protocol, window_batch)
        confusion.update(logits.argmax(dim=1)[0], to_device(labels, device))
    return confusion.to_host().scores()
