"""``offseg.cuda_graphs.GraphedForward``'s bookkeeping, on the CPU with a stand-in graph (capture and replay on a
real GPU are checked by benchmarks/gpu_check.py's torch_eval): eager on a shape's first sighting, a capture on its
second, replays after, at most ``kept`` graphs, and a shape that cannot be captured runs eagerly from then on."""
import logging

import torch
from torch import nn

from offseg.cuda_graphs import GraphedForward


class StandInGraph:
    def __init__(self, model, static_input):
        self.model, self.static_input = model, static_input
        self.static_output = model(static_input)

    def replay(self):
        self.static_output.copy_(self.model(self.static_input))


class OnTheCpu(GraphedForward):
    """GraphedForward that treats CPU tensors as graphable and captures stand-in graphs."""

    def __init__(self, model, kept, fail_for=()):
        super().__init__(model, kept)
        self.captures, self.fail_for = [], fail_for

    @staticmethod
    def _graphable(x):
        return True

    def _capture(self, x):
        if tuple(x.shape) in self.fail_for:
            raise RuntimeError("operation not permitted when stream is capturing\nmore")
        self.captures.append(tuple(x.shape))
        graph = StandInGraph(self.model, x.clone())
        return graph, graph.static_input, graph.static_output


class Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.scale, self.calls = nn.Parameter(torch.tensor(2.0)), 0

    def forward(self, x):
        self.calls += 1
        return x * self.scale


def test_a_shape_is_captured_on_its_second_sighting_and_replayed_after():
    model = Counting()
    graphed = OnTheCpu(model, kept=2)
    with torch.no_grad():
        outputs = [graphed(torch.full((1, 2), float(i))) for i in range(4)]
    assert [o.tolist() for o in outputs] == [[[2.0 * i] * 2] for i in range(4)]
    assert graphed.captures == [(1, 2)]
    assert outputs[2] is not outputs[3], "a replay handed out the static output the next replay overwrites"


def test_at_most_kept_graphs_and_the_least_recent_goes():
    graphed = OnTheCpu(Counting(), kept=2)
    with torch.no_grad():
        for shape in ((1, 1), (1, 1), (1, 2), (1, 2), (1, 1), (1, 3), (1, 3)):
            graphed(torch.ones(shape))
    assert [key[0] for key in graphed.graphs] == [(1, 1), (1, 3)]


def test_a_shape_that_cannot_be_captured_runs_eagerly_with_one_warning(caplog):
    graphed = OnTheCpu(Counting(), kept=2, fail_for={(1, 2)})
    with torch.no_grad(), caplog.at_level(logging.WARNING, logger="offseg"):
        results = [graphed(torch.ones(1, 2)).tolist() for _ in range(4)]
    assert results == [[[2.0, 2.0]]] * 4 and not graphed.graphs
    assert len(caplog.records) == 1 and "running it eagerly: operation not permitted" in caplog.text


def test_cpu_tensors_run_the_model_itself():
    model = Counting()
    graphed = GraphedForward(model)
    with torch.no_grad():
        for _ in range(3):
            graphed(torch.ones(1, 2))
    assert model.calls == 3 and not graphed.graphs
    assert list(graphed.parameters()) == list(model.parameters())
