"""The eager PyTorch forward is ready for CUDA graphs and ``torch.compile(mode="reduce-overhead")``: it builds no
tensor from host data (``torch.tensor`` in a forward is a host-to-device copy, which graph capture refuses) and
reads no value back to the host (a synchronisation). Checked on the CPU by recording every ATen call."""
import pytest
import torch

from aten_calls import RecordedCalls
from offseg import build_model
from offseg.models.carafe import forced_form

HOST_DATA = {"aten.lift_fresh.default", "aten.lift_fresh_copy.default"}  # a tensor made from Python data
HOST_READS = {"aten._local_scalar_dense.default", "aten.is_nonzero.default", "aten.item.default"}


def test_the_recorder_sees_host_data_and_host_reads():
    with RecordedCalls() as recorded:
        x = torch.ones(2) / torch.tensor([2.0, 4.0])
        bool(x.sum() > 0)
    assert HOST_DATA & set(recorded.calls) and HOST_READS & set(recorded.calls)


@pytest.mark.parametrize("form", ["taps", "unfold"])  # unfold: the opt-in GPU form of CARAFE
@pytest.mark.parametrize("name", ["offseg-t", "offseg-b"])
def test_the_forward_has_no_host_data_and_no_host_reads(name, form):
    model = build_model(name).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad(), forced_form(form), RecordedCalls() as recorded:
        model(x)
    calls = set(recorded.calls)
    assert len(recorded.calls) > 300, "the recorder saw the forward"
    assert not calls & HOST_DATA, "a tensor is built from host data in the forward"
    assert not calls & HOST_READS, "the forward reads a value back to the host"


@pytest.mark.parametrize("form", ["taps", "fused"])  # fused: the Triton kernels as torch.library operators
def test_torch_compile_traces_the_training_forward_as_one_graph(form):
    """Dynamo (torch.compile's tracer) on the meta device, in train mode: one graph, no graph break, so
    ``offseg-train --compile`` compiles the whole step; with the fused form too, whose kernels never run here."""
    if form == "fused":
        pytest.importorskip("triton")
    model = build_model("offseg-t", num_classes=5).to("meta").train()
    with forced_form(form):
        explained = torch._dynamo.explain(model)(torch.randn(2, 3, 64, 96, device="meta"))
    assert (explained.graph_count, explained.graph_break_count) == (1, 0), explained.break_reasons
