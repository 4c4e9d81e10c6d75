"""The test protocol on the model's device (``offseg.device_protocol``, what ``offseg-eval`` runs): the same logits
as the numpy protocol that exported models are validated with, the same confusion counts, and nothing that makes
the host wait for a GPU once per image."""
import threading

import numpy as np
import pytest
import torch

from aten_calls import RecordedCalls
from offseg import build_model
from offseg.data import synthetic
from offseg.data.datasets import SegmentationDataset
from offseg.device_protocol import DeviceConfusion, protocol_logits, to_device
from offseg.evaluate import evaluate, prefetched
from offseg.inference import torch_infer
from offseg.models.fold import fold_batchnorm
from offseg import protocol as numpy_protocol
from offseg.protocol import TestProtocol
from runtime.metrics import ConfusionMatrix

# Waits for the GPU on CUDA: a value read back, or an output size that depends on the data.
HOST_WAITS = {"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.item.default",
              "aten.nonzero.default", "aten.masked_select.default", "aten.bincount.default", "boolean index"}


class HostWaits(RecordedCalls):
    """Records ATen calls, and indexing with a boolean mask as "boolean index" (its size depends on the data)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) == "aten.index.Tensor" and any(i is not None and i.dtype == torch.bool for i in args[1]):
            self.calls.append("boolean index")
        return super().__torch_dispatch__(func, types, args, kwargs)
PROTOCOLS = {
    "whole, odd size padded": TestProtocol("whole"),
    "whole, keep-ratio resize": TestProtocol("whole", scale=(160, 72)),
    "slide, windows padded": TestProtocol("slide", crop=(64, 64), stride=(40, 48)),
    "slide, size divisor": TestProtocol("slide", crop=(64, 96), stride=(48, 64), size_divisor=32),
}


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return fold_batchnorm(build_model("offseg-t", num_classes=9))


@pytest.mark.parametrize("protocol", PROTOCOLS.values(), ids=PROTOCOLS.keys())
def test_the_device_protocol_gives_the_numpy_protocols_logits(model, protocol):
    image, _ = synthetic.render_scene(3, 90, 150)
    expected = numpy_protocol.protocol_logits(image, torch_infer(model), protocol)
    with torch.no_grad():
        logits = protocol_logits(to_device(numpy_protocol.test_resize(image, protocol.scale), torch.device("cpu")), (90, 150),
                                 model, protocol)
    assert logits.shape == (1, 9, 90, 150)
    assert np.abs(logits[0].permute(1, 2, 0).numpy() - expected).max() < 1e-4


class Recorded(torch.nn.Module):
    """``model`` recording the shape of each input it is called with."""

    def __init__(self, model):
        super().__init__()
        self.model, self.shapes = model, []

    def forward(self, x):
        self.shapes.append(tuple(x.shape))
        return self.model(x)


def test_slide_windows_run_batched_with_the_logits_of_one_by_one(model):
    protocol = PROTOCOLS["slide, windows padded"]
    image, _ = synthetic.render_scene(5, 90, 150)  # 2 x 3 windows of 64x64
    logits = {}
    for batch in (1, 4):
        recorded = Recorded(model)
        with torch.no_grad():
            logits[batch] = protocol_logits(to_device(image, torch.device("cpu")), (90, 150), recorded, protocol,
                                            window_batch=batch)
        assert recorded.shapes == ([(1, 3, 64, 64)] * 6 if batch == 1 else [(4, 3, 64, 64), (2, 3, 64, 64)])
    assert (logits[1] - logits[4]).abs().max() < 1e-4  # kernels' rounding at another batch size


def test_device_confusion_counts_as_the_confusion_matrix():
    rng = np.random.default_rng(0)
    expected, counted = ConfusionMatrix(5), DeviceConfusion(5, torch.device("cpu"))
    for _ in range(3):
        truth = rng.integers(0, 7, (20, 30)).astype(np.uint8)  # 5 and 6 are above the classes: left out
        truth[rng.random(truth.shape) < 0.2] = 255
        prediction = rng.integers(-1, 6, (20, 30))  # -1 and 5 are no class: misses
        expected.update(prediction, truth)
        counted.update(torch.from_numpy(prediction), torch.from_numpy(truth))
    host = counted.to_host()
    assert np.array_equal(host.matrix, expected.matrix) and expected.matrix.sum() > 0
    assert np.array_equal(host.missed, expected.missed) and expected.missed.sum() > 0
    with pytest.raises(ValueError, match="differ in shape"):
        counted.update(torch.zeros(2, 3, dtype=torch.int64), torch.zeros(3, 2, dtype=torch.uint8))


def test_an_evaluated_image_makes_the_host_wait_for_nothing(model):
    protocol = PROTOCOLS["slide, size divisor"]
    image, labels = synthetic.render_scene(4, 90, 150)
    confusion = DeviceConfusion(9, torch.device("cpu"))

    def one_image():
        logits = protocol_logits(to_device(image, torch.device("cpu")), (90, 150), model, protocol)
        confusion.update(logits.argmax(dim=1)[0], to_device(labels, torch.device("cpu")))

    with torch.no_grad():
        one_image()  # the first one copies the normalization constants to the device
        with HostWaits() as recorded:
            one_image()
    assert "aten.convolution.default" in recorded.calls, "the recorder saw no forward"
    with HostWaits() as control:
        torch.arange(3).bincount(), torch.arange(3)[torch.arange(3) > 0]
    assert {"aten.bincount.default", "boolean index"} <= set(control.calls), "the recorder misses host waits"
    assert not HOST_WAITS & set(recorded.calls), f"host waits: {HOST_WAITS & set(recorded.calls)}"


def test_evaluation_scores_as_the_numpy_protocol_on_the_same_images(model):
    dataset = SegmentationDataset("synthetic", None, "val", length=4, size=(70, 110))
    protocol = TestProtocol("slide", crop=(64, 64), stride=(48, 48))
    expected = ConfusionMatrix(dataset.num_classes)
    for index in range(len(dataset)):
        image, labels = dataset.load(index)
        expected.update(numpy_protocol.protocol_logits(image, torch_infer(model), protocol).argmax(axis=2), labels)
    scores = evaluate(model, dataset, protocol, progress=False)
    assert abs(scores.as_dict(dataset.classes)["mIoU"] - expected.scores().as_dict(dataset.classes)["mIoU"]) < 0.01


def test_prefetched_keeps_the_order_and_stops_with_its_consumer():
    calls, lock = [], threading.Lock()

    def square(x):
        with lock:
            calls.append(x)
        return x * x

    assert list(prefetched(square, range(7))) == [x * x for x in range(7)]
    for workers, depth in ((1, 2), (4, 8)):
        calls.clear()
        for value in prefetched(square, range(1000), workers):
            if value == 4:
                break
        assert 3 <= len(calls) <= 3 + depth, "work was started far ahead of the consumer"


def test_prefetched_raises_the_items_error_in_the_consumer():
    def load(x):
        if x == 2:
            raise ValueError("image 2 is unreadable")
        return x

    seen = []
    with pytest.raises(ValueError, match="image 2"):
        for value in prefetched(load, range(5)):
            seen.append(value)
    assert seen == [0, 1]
