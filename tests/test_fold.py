"""BatchNorm folding for inference (``offseg.models.fold``): every BN of T/B/L goes, the forward loses its BN ops and
nothing else, the model passed in is untouched, and evaluation scores equal the unfolded model's."""
import numpy as np
import pytest
import torch
from torch import nn

from aten_calls import RecordedCalls
from offseg import build_model
from offseg.data.datasets import SegmentationDataset
from offseg.evaluate import evaluate
from offseg.inference import torch_infer
from offseg.models.fold import fold_batchnorm
from offseg.protocol import TestProtocol, protocol_logits
from runtime.metrics import ConfusionMatrix


def with_trained_statistics(model: nn.Module) -> nn.Module:
    """BN statistics and affine parameters far from their initial values, so a wrong fold shows."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            for tensor, low, high in ((module.running_mean, -1, 1), (module.running_var, 0.3, 3),
                                      (module.weight.data, 0.5, 1.5), (module.bias.data, -0.5, 0.5)):
                tensor.copy_(low + (high - low) * torch.rand(tensor.shape, generator=generator))
    return model.eval()


def forward_ops(model: nn.Module, x: torch.Tensor) -> list[str]:
    with torch.no_grad(), RecordedCalls() as recorded:
        model(x)
    return recorded.calls


@pytest.mark.parametrize("name", ["offseg-t", "offseg-b", "offseg-l"])
def test_every_batchnorm_is_folded_and_the_forward_loses_its_batchnorm_ops_only(name):
    model = with_trained_statistics(build_model(name, num_classes=19))
    before = {key: value.clone() for key, value in model.state_dict().items()}
    folded = fold_batchnorm(model)
    batchnorms = sum(isinstance(module, nn.BatchNorm2d) for module in model.modules())
    assert batchnorms > 90 and not any(isinstance(module, nn.BatchNorm2d) for module in folded.modules())
    x = torch.randn(1, 3, 64, 96)
    ops, folded_ops = forward_ops(model, x), forward_ops(folded, x)
    assert sum("batch_norm" in op for op in ops) == batchnorms
    assert not any("batch_norm" in op for op in folded_ops)
    without_batchnorm = [op for op, following in zip(ops, ops[1:] + [""])
                         if "batch_norm" not in op and "batch_norm" not in following]  # and its output's empty
    assert folded_ops == without_batchnorm
    with torch.no_grad():
        assert (model(x) - folded(x)).abs().max() <= 1e-4
    assert all(torch.equal(before[key], value) for key, value in model.state_dict().items()), "model changed"


def test_a_batchnorm_after_anything_but_a_convolution_is_refused():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="follow no known convolution: 2"):
        fold_batchnorm(model)


def test_evaluation_runs_the_folded_copy_and_scores_as_the_unfolded_model():
    model = with_trained_statistics(build_model("offseg-t", num_classes=150))
    model.train()
    dataset = SegmentationDataset("synthetic", None, "val", length=3, size=(64, 96))
    protocol = TestProtocol("whole", (64, 96), (64, 96), None)
    unfolded = ConfusionMatrix(dataset.num_classes)
    for index in range(len(dataset)):
        image, labels = dataset.load(index)
        unfolded.update(protocol_logits(image, torch_infer(model.eval()), protocol).argmax(axis=2), labels)
    model.train()
    scores = evaluate(model, dataset, protocol, progress=False)
    assert model.training, "evaluate switched the caller's model to eval"
    assert np.allclose(scores.miou, unfolded.scores().miou, atol=1e-4)


def test_folding_a_folded_model_changes_nothing():
    folded = fold_batchnorm(with_trained_statistics(build_model("offseg-t", num_classes=19)))
    again = fold_batchnorm(folded)
    assert all(torch.equal(value, again.state_dict()[key]) for key, value in folded.state_dict().items())
