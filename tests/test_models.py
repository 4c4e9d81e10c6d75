"""Model parts against their definitions, and the model's behaviour as users see it."""
import itertools

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from aten_calls import NO_KERNEL, RecordedCalls

from offseg import OffsegError, build_model, logits_to_labels, predict
from offseg.models.carafe import carafe, forced_form
from offseg.models.efficientformer_v2 import attend, attention_logits, mix_heads, scaled_residual
from offseg.models.plain import plain_operators
from offseg.models.freqfusion import (LocalSimGuidedSampler, bilinear_border_sample, neighbour_similarity,
                                      normalize_kernels)
from offseg.models.head import interleave_channels


def carafe_literal(x, masks, k, groups, s):
    """mmcv's naive CARAFE kernel, transcribed loop by loop."""
    n, c, h, w = x.shape
    r = (k - 1) // 2
    out = torch.zeros(n, c, s * h, s * w, dtype=x.dtype)
    for p, q in itertools.product(range(s * h), range(s * w)):
        for ch in range(c):
            g = ch // (c // groups)
            total = 0.0
            for i, j in itertools.product(range(k), range(k)):
                y, xx = p // s + i - r, q // s + j - r
                if 0 <= y < h and 0 <= xx < w:
                    total += x[:, ch, y, xx] * masks[:, g * k * k + i * k + j, p, q]
            out[:, ch, p, q] = total
    return out


@pytest.mark.parametrize("form", ["taps", "unfold"])
@pytest.mark.parametrize("k,groups,s", [(1, 1, 1), (3, 1, 1), (5, 1, 2), (3, 2, 2), (5, 2, 1)])
def test_carafe_equals_mmcv_semantics(k, groups, s, form):
    """Both forms: taps (the default) and unfold (the opt-in GPU form)."""
    g = torch.Generator().manual_seed(k * 10 + groups + s)
    x = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    masks = torch.randn(2, groups * k * k, 3 * s, 5 * s, generator=g, dtype=torch.float64)
    assert torch.allclose(carafe(x, masks, k, groups, s, form), carafe_literal(x, masks, k, groups, s), atol=1e-12)


def compute_ops(function) -> list[str]:
    """The ATen ops ``function()`` runs, views and allocations left out (they launch nothing on a GPU)."""
    with RecordedCalls() as recorder:
        function()
    return [op for op in (call.split(".")[1] for call in recorder.calls) if op not in NO_KERNEL]


def test_the_unfold_form_launches_a_few_ops_instead_of_one_or_more_per_tap():
    """Whatever the batch: its neighbourhoods are a view gathered by one copy (F.unfold's CUDA im2col launches a
    kernel per image)."""
    x, masks = torch.randn(3, 8, 6, 6), torch.rand(3, 25, 12, 12)
    unfold = compute_ops(lambda: carafe(x, masks, 5, 1, 2, "unfold"))
    assert len(unfold) <= 6 and "im2col" not in unfold
    assert len(compute_ops(lambda: carafe(x, masks, 5, 1, 2, "taps"))) >= 25
    with forced_form("unfold"):  # what a GPU benchmark uses to compare the forms
        assert compute_ops(lambda: carafe(x, masks, 5, 1, 2)) == unfold


class TapsCarafe(torch.nn.Module):
    def forward(self, x, masks):
        return carafe(x, masks, 5, 1, 2, "taps")


def test_the_taps_form_accumulates_in_place_and_exports_as_mul_and_add():
    x, masks = torch.randn(1, 8, 6, 6), torch.rand(1, 25, 12, 12)
    with RecordedCalls() as recorder:
        carafe(x, masks, 5, 1, 2, "taps")
    ops = [call.split(".")[1] for call in recorder.calls]
    assert ops.count("addcmul_") == 24 and ops.count("mul") == 1 and "add" not in ops  # one kernel per tap
    exported = torch.export.export(TapsCarafe(), (x, masks))
    targets = [str(node.target) for node in exported.graph.nodes if node.op == "call_function"]
    assert sum(t.startswith("aten.mul") for t in targets) == 25 and sum(t.startswith("aten.add") for t in targets) == 24
    assert not any("addcmul" in t for t in targets)  # ONNX has no multiply-add: an addcmul would cost a third op


def carafe_through_autograd(x, masks, k, groups, s):
    """The taps loop with autograd's own backward (what the taps form's backward replaces)."""
    with plain_operators():  # Mul + Add per tap, no in-place update, no custom backward
        return carafe(x, masks, k, groups, s, "taps")


@pytest.mark.parametrize("k,groups,s", [(3, 1, 1), (5, 1, 2), (3, 2, 2), (5, 3, 2), (5, 1, 1)])
@pytest.mark.parametrize("size", [(3, 5), (1, 1)], ids=["3x5", "1x1"])
def test_the_taps_form_backward_equals_autograd_through_the_loop(k, groups, s, size):
    torch.manual_seed(0)
    x = torch.randn(2, 6 * groups, *size, dtype=torch.float64, requires_grad=True)
    masks = torch.randn(2, groups * k * k, s * size[0], s * size[1], dtype=torch.float64, requires_grad=True)
    ours = carafe(x, masks, k, groups, s, "taps")
    assert_same_values_and_gradients(ours, carafe_through_autograd(x, masks, k, groups, s), (x, masks))
    only_x = torch.autograd.grad(carafe(x, masks.detach(), k, groups, s, "taps").sum(), x)[0]  # masks need none
    expected = torch.autograd.grad(carafe_through_autograd(x, masks, k, groups, s).sum(), x)[0]
    torch.testing.assert_close(only_x, expected, rtol=1e-12, atol=1e-12)


def test_the_taps_form_backward_keeps_each_inputs_dtype_under_mixed_precision():
    """As autocast mixes them: low-precision features, FP32 kernels (a softmax); the output is FP32. The features'
    gradient is summed over the taps in FP32 and rounded once (autograd rounded every tap's share to bfloat16)."""
    torch.manual_seed(0)
    x = torch.randn(1, 8, 4, 6).bfloat16().requires_grad_()
    masks = torch.rand(1, 25, 8, 12, requires_grad=True)
    out = carafe(x, masks, 5, 1, 2, "taps")
    grad = torch.randn_like(out)
    ours = torch.autograd.grad(out, (x, masks), grad)
    x32 = x.detach().float().requires_grad_()
    exact = torch.autograd.grad(carafe_through_autograd(x32, masks, 5, 1, 2), (x32, masks), grad)
    assert out.dtype == torch.float32 and [g.dtype for g in ours] == [torch.bfloat16, torch.float32]
    torch.testing.assert_close(ours[0].float(), exact[0], rtol=2 ** -8, atol=1e-6)  # one bfloat16 rounding
    torch.testing.assert_close(ours[1], exact[1], rtol=1e-6, atol=1e-6)


def test_the_taps_form_backward_writes_one_padded_buffer_not_one_per_tap():
    """Autograd through the loop filled a zero tensor of the padded map (and one of the masks) for every tap."""
    x, masks = torch.randn(1, 8, 6, 6, requires_grad=True), torch.rand(1, 25, 12, 12, requires_grad=True)
    out = carafe(x, masks, 5, 1, 2, "taps")
    with RecordedCalls() as recorder:
        out.sum().backward()
    ops = [call.split(".")[1] for call in recorder.calls]
    assert "slice_backward" not in ops and ops.count("new_zeros") == 1 and ops.count("addcmul_") == 25


def test_carafe_rejects_masks_of_the_wrong_size():
    with pytest.raises(ValueError, match="do not fit"):
        carafe(torch.zeros(1, 4, 8, 8), torch.zeros(1, 25, 15, 16), 5, 1, 2)


class LargestTensor(TorchDispatchMode):
    """Records the largest tensor any op produces."""

    def __init__(self):
        super().__init__()
        self.largest = self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        self.ops += 1
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_carafe_never_materializes_the_unfolded_tensor_on_the_cpu():
    x, masks = torch.randn(1, 64, 32, 32), torch.rand(1, 25, 64, 64)
    with LargestTensor() as probe:
        out = carafe(x, masks, 5, 1, 2)  # the default: the taps form
    # the k^2-times unfolded tensor would hold 25 x out.numel(); we allow the padded upsampled copy only
    assert probe.largest <= 1.3 * out.numel()


def similarity_by_unfolding(x):
    unfolded = F.unfold(x, 3, padding=2, dilation=2).reshape(*x.shape[:2], 9, *x.shape[2:])
    sims = F.cosine_similarity(unfolded[:, :, 4:5], unfolded, dim=1)
    return torch.cat([sims[:, :4], sims[:, 5:]], dim=1)


@pytest.mark.parametrize("shape", [(2, 16, 9, 12), (1, 5, 3, 2), (1, 4, 1, 1)], ids=str)
def test_neighbour_similarity_equals_the_unfold_definition_forward_and_backward(shape):
    """Also on maps no larger than the dilation (every neighbour outside), and for the gradients: the 4 neighbours
    after the centre are read from the products of the 4 before it."""
    torch.manual_seed(0)
    x = torch.randn(*shape, dtype=torch.float64, requires_grad=True)
    assert_same_values_and_gradients(neighbour_similarity(x), similarity_by_unfolding(x), (x,))


def test_kernels_normalized_under_a_scalar_window_are_the_softmax_alone():
    """A scalar window cancels in the renormalization: one softmax, equal to the full formula; a k x k window is
    applied (the gather form's tests compare both forms under one)."""
    torch.manual_seed(0)
    logits = torch.randn(2, 2 * 25, 6, 7, dtype=torch.float64)
    softmax = logits.reshape(2, 2, 25, 6, 7).softmax(dim=2)
    for window in (torch.full((1,), 0.37, dtype=torch.float64), torch.rand(25, 1, 1, dtype=torch.float64) + 0.1):
        with RecordedCalls() as recorder:
            ours = normalize_kernels(logits, 5, window)
        expected = (softmax * window / (softmax * window).sum(dim=2, keepdim=True)).reshape(2, 50, 6, 7)
        torch.testing.assert_close(ours, expected, rtol=1e-12, atol=1e-15)
        kernels = [call for call in recorder.calls if not call.startswith(("aten.view", "aten._unsafe_view"))]
        assert (kernels == ["aten._softmax.default"]) == (window.numel() == 1)


def test_neighbour_similarity_multiplies_out_4_neighbours_not_8():
    with RecordedCalls() as recorder:
        neighbour_similarity(torch.randn(1, 8, 6, 7))
    assert [call.split(".")[1] for call in recorder.calls].count("mul") == 4
    assert [call.split(".")[1] for call in recorder.calls].count("sum") == 4


def official_sampling_grid(offsets, groups, scale):
    """The sampler's normalized grid as the official code writes it: centres from two aranges plus 0.5, offsets
    added, divided by a [w, h] normalizer, times 2 minus 1, then pixel-shuffled."""
    n, _, h, w = offsets.shape
    xs = torch.arange(w, dtype=offsets.dtype) + 0.5
    ys = torch.arange(h, dtype=offsets.dtype) + 0.5
    centres = torch.stack(torch.meshgrid(xs, ys, indexing="ij")).transpose(1, 2)[None, :, None]
    normalizer = torch.tensor([w, h], dtype=offsets.dtype).view(1, 2, 1, 1, 1)
    coords = 2 * (centres + offsets.reshape(n, 2, -1, h, w)) / normalizer - 1
    coords = F.pixel_shuffle(coords.reshape(n, -1, h, w), scale)
    return coords.reshape(n, 2, -1, scale * h, scale * w).permute(0, 2, 3, 4, 1).flatten(0, 1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16], ids=str)
def test_the_sampler_grid_is_the_official_one_bit_for_bit_from_4_ops_of_constants(dtype, monkeypatch):
    """Centres and sizes come from one (2, h + 1, w + 1) index grid: 2 aranges, a stack and the + 0.5 (there were
    8 ops: 2 aranges, 2 additions, a stack, 2 fills and a concatenation)."""
    torch.manual_seed(0)
    sampler = LocalSimGuidedSampler(16)
    offsets = (torch.randn(2, 32, 5, 7) * 3).to(dtype)
    x, grids = torch.randn(2, 16, 10, 14).to(dtype), []
    monkeypatch.setattr(F, "grid_sample", lambda x, grid, **kwargs: grids.append(grid) or x[..., :10, :14])
    ops = compute_ops(lambda: sampler.sample(x, offsets))
    assert torch.equal(grids[0], official_sampling_grid(offsets, sampler.groups, sampler.scale))
    assert ops.count("arange") == 2 and "new_full" not in ops and "cat" not in ops and ops.count("stack") == 1


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_reduced_precision_maps_past_32767_pixels_sample_right_on_the_cpu(dtype):
    """torch's CPU grid_sample offsets FP16 / BF16 maps with 16-bit integers: past 32,767 pixels (a 768x768 input's
    last sampler) it read wrong pixels or NaN and could crash; the result is within one rounding of FP64 sampling."""
    torch.manual_seed(0)
    x = torch.randn(1, 4, 192, 192).to(dtype)
    grid = (torch.rand(1, 64, 64, 2) * 2.1 - 1.05).to(dtype)
    exact = F.grid_sample(x.double(), grid.double(), mode="bilinear", padding_mode="border", align_corners=False)
    sampled = bilinear_border_sample(x, grid)
    assert sampled.dtype == dtype
    torch.testing.assert_close(sampled.double(), exact, rtol=torch.finfo(dtype).eps, atol=torch.finfo(dtype).eps)


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_talking_heads_as_a_matrix_product_equal_the_convolution_forward_and_backward(layout):
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(8, 8, 1).double().to(memory_format=layout)
    attn = torch.randn(2, 8, 12, 40, dtype=torch.float64, requires_grad=True)
    ours, theirs = mix_heads(conv, attn), conv(attn)
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(theirs)
    ours_grads = torch.autograd.grad(ours, (attn, conv.weight, conv.bias), grad)
    theirs_grads = torch.autograd.grad(theirs, (attn, conv.weight, conv.bias), grad)
    for a, b in zip(ours_grads, theirs_grads):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def assert_same_values_and_gradients(ours, theirs, inputs):
    torch.testing.assert_close(ours, theirs, rtol=1e-12, atol=1e-12)
    grad = torch.randn_like(theirs)
    for a, b in zip(torch.autograd.grad(ours, inputs, grad), torch.autograd.grad(theirs, inputs, grad)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("batch", [1, 3])
def test_attention_logits_as_one_product_equal_the_plain_form_forward_and_backward(batch):
    torch.manual_seed(0)
    heads, queries, keys, dim = 8, 12, 40, 16
    q = torch.randn(batch, heads * dim, queries, dtype=torch.float64).reshape(batch, heads, dim, queries)
    q = q.transpose(2, 3).requires_grad_()  # (B, heads, Nq, d) as the model's view of its convolution
    k = torch.randn(batch, heads, dim, keys, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(1, heads, queries, keys, dtype=torch.float64, requires_grad=True)
    assert_same_values_and_gradients(attention_logits(q, k, dim ** -0.5, bias), (q @ k) * dim ** -0.5 + bias,
                                     (q, k, bias))


@pytest.mark.parametrize("batch", [1, 3])
def test_attention_output_as_one_product_equals_the_plain_form_forward_and_backward(batch):
    torch.manual_seed(0)
    heads, dv = 8, 4
    attn = torch.randn(batch, heads, 6 * 5, 12 * 10, dtype=torch.float64).softmax(-1).requires_grad_()
    v = torch.randn(batch, heads * dv, 12, 10, dtype=torch.float64, requires_grad=True)
    v_local = torch.randn(batch, heads * dv, 6, 5, dtype=torch.float64, requires_grad=True)
    plain = (attn @ v.reshape(batch, heads, dv, -1).transpose(2, 3)).transpose(2, 3).reshape(v_local.shape) + v_local
    assert_same_values_and_gradients(attend(attn, v, v_local), plain, (attn, v, v_local))


@pytest.mark.parametrize("training", [False, True])
def test_a_layer_scaled_residual_as_one_addcmul_equals_the_plain_form_forward_and_backward(training):
    torch.manual_seed(0)
    x = torch.randn(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    scale = torch.randn(6, 1, 1, dtype=torch.float64, requires_grad=True)
    branch = torch.randn(2, 6, 5, 7, dtype=torch.float64, requires_grad=True)
    assert_same_values_and_gradients(scaled_residual(x, scale, branch, 0.0, training), x + scale * branch,
                                     (x, scale, branch))


def test_stochastic_depth_still_drops_residual_branches_in_training():
    torch.manual_seed(0)
    x, scale, branch = torch.zeros(64, 1, 1, 1), torch.ones(1, 1, 1), torch.ones(64, 1, 1, 1)
    kept = scaled_residual(x, scale, branch, 0.5, training=True).flatten()
    assert set(kept.tolist()) == {0.0, 2.0}  # dropped, or kept and rescaled by 1 / (1 - rate)
    assert torch.equal(scaled_residual(x, scale, branch, 0.5, training=False), x + 1)


def test_plain_operators_run_what_an_export_records_with_the_same_result():
    """What offseg-info counts MACs on: talking heads as convolutions, attention as matrix products, residuals as
    Mul + Add; the features equal the eager forms' within float rounding."""
    torch.manual_seed(0)
    model = build_model("offseg-t", num_classes=3).eval()
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        eager = model.backbone(x)
        with plain_operators(), RecordedCalls() as recorder:
            plain = model.backbone(x)
    assert not any(call.startswith(("aten.baddbmm", "aten.addcmul")) for call in recorder.calls)
    assert sum(call.startswith("aten.bmm") for call in recorder.calls) == 5 * 2
    for a, b in zip(eager, plain):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_the_backbone_runs_its_layer_scales_inside_the_residual_additions():
    model = build_model("offseg-t", num_classes=3).eval()
    with torch.no_grad(), RecordedCalls() as recorder:
        model.backbone(torch.randn(1, 3, 64, 64))
    assert sum(call.startswith("aten.addcmul") for call in recorder.calls) == 25  # one per residual branch
    assert not any(call.startswith("aten.mul") for call in recorder.calls)


def test_the_attention_runs_as_batched_products_and_exports_as_matmul_mul_and_add():
    """Eager: the two products of each attention module are baddbmm calls that add the bias and the local values
    (no bmm, no separate scaling); an export keeps the plain operators TensorRT and the INT8 rules see."""
    model = build_model("offseg-t", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad(), RecordedCalls() as recorder:
        model.backbone(x)
    assert sum("baddbmm" in call for call in recorder.calls) == 5 * 2 + 4 * 2  # + talking heads, 2 per Attention4D
    assert not any(call.startswith(("aten.bmm", "aten.clone")) for call in recorder.calls)
    with torch.no_grad():
        exported = torch.export.export(model, (x,))
    targets = [str(node.target) for node in exported.graph.nodes if node.op == "call_function"]
    assert not any("baddbmm" in target for target in targets)
    assert sum(target.startswith("aten.matmul") for target in targets) >= 5 * 2


def resamplings(model, x) -> tuple[torch.Tensor, int]:
    """model(x) and how many position-bias tables it resampled (bicubic)."""
    with RecordedCalls() as recorder:
        out = model(x)
    return out, sum("upsample_bicubic2d" in call for call in recorder.calls)


def test_inference_reuses_the_resampled_position_biases_until_the_table_or_the_size_changes():
    torch.manual_seed(0)
    model = build_model("offseg-t", num_classes=3).eval()
    x, wider = torch.randn(1, 3, 64, 96), torch.randn(1, 3, 64, 128)
    with torch.no_grad():
        first, resampled = resamplings(model, x)
        assert resampled == 5  # two attention blocks in each of stages 2 and 3, and the stage-3 downsampling
        again, resampled = resamplings(model, x)
        assert resampled == 0 and torch.equal(again, first)
        assert resamplings(model, wider)[1] == 5
        table = model.backbone.stages[3].blocks[-1].token_mixer.attention_biases_seg
        table.add_(torch.randn_like(table))  # in place: same tensor, new version
        changed, resampled = resamplings(model, x)
    assert resampled == 5 and not torch.equal(changed, first)
    fresh = build_model("offseg-t", num_classes=3).eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(changed, fresh(x), rtol=0, atol=0)
        model.load_state_dict(build_model("offseg-t", num_classes=3).state_dict())  # copied into the same tensors
        assert resamplings(model, x)[1] == 5


def test_traced_and_exported_graphs_resample_the_position_biases_themselves():
    model = build_model("offseg-t", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)  # biases kept for this size: a graph traced now must still compute them from the table
        exported = torch.export.export(model, (x,))
        traced = torch.jit.trace(model, x, check_trace=False)
    assert sum("upsample_bicubic2d" in str(node.target) for node in exported.graph.nodes) == 5
    assert sum("upsample_bicubic2d" in node.kind() for node in traced.inlined_graph.nodes()) == 5


def test_training_resamples_the_position_biases_every_step_and_they_get_gradients():
    torch.manual_seed(0)
    model = build_model("offseg-t", num_classes=3).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        model(x)
    model.train()
    assert all(m._kept_bias is None for m in model.modules() if hasattr(m, "position_bias"))  # memory given back
    for _ in range(2):
        out, resampled = resamplings(model, x)
        assert resampled == 5
    out.sum().backward()
    table = model.backbone.stages[3].blocks[-1].token_mixer.attention_biases_seg
    assert table.grad is not None and table.grad.abs().sum() > 0


def test_interleave_matches_official_channel_order():
    hr, lr = torch.randn(2, 8, 3, 3), torch.randn(2, 12, 3, 3)
    official = torch.cat([hr.reshape(8, -1, 3, 3), lr.reshape(8, -1, 3, 3)], dim=1).reshape(2, -1, 3, 3)
    assert torch.equal(interleave_channels(hr, lr), official)
    assert torch.equal(interleave_channels(hr, lr)[0, :5], torch.cat([hr[0, :2], lr[0, :3]]))


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("offseg-t", num_classes=7).eval()


@pytest.mark.parametrize("shape", [(1, 3, 100, 128), (1, 3, 128, 90), (1, 1, 64, 64), (3, 64, 64)])
def test_bad_input_shapes_are_explained(tiny, shape):
    with pytest.raises(OffsegError, match="multiple of 32|RGB images"):
        tiny(torch.zeros(shape))


def test_output_shape_non_square(tiny):
    with torch.no_grad():
        assert tiny(torch.randn(2, 3, 96, 160)).shape == (2, 7, 24, 40)


def test_batch_does_not_mix_images(tiny):
    x = torch.randn(2, 3, 64, 96)
    with torch.no_grad():
        batched = tiny(x)
        single = torch.cat([tiny(x[:1]), tiny(x[1:])])
    assert (batched - single).abs().max() < 1e-4


def test_predict_any_image_size(tiny):
    image = np.random.default_rng(0).integers(0, 255, (101, 77, 3), dtype=np.uint8)
    labels = predict(tiny, image)
    assert labels.shape == (101, 77) and labels.min() >= 0 and labels.max() < 7


def test_logits_to_labels_resizes_then_argmaxes():
    logits = torch.zeros(1, 3, 2, 2)
    logits[0, 2, 0, 0] = 5.0
    labels = logits_to_labels(logits, (4, 4))
    assert labels.shape == (1, 4, 4) and labels[0, 0, 0] == 2 and labels[0, 3, 3] == 0


def test_training_step_updates_all_parameters_and_bn_statistics():
    torch.manual_seed(0)
    model = build_model("offseg-t", num_classes=5).train()
    running = model.backbone.stem.bn1.running_mean.clone()
    # 128 px: the stride-32 map must be wider than the similarity distance (2) for every weight to get gradient
    logits = model(torch.randn(2, 3, 128, 128))
    F.cross_entropy(logits, torch.randint(0, 5, (2, 32, 32))).backward()
    no_grad = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad
    assert not torch.equal(running, model.backbone.stem.bn1.running_mean)  # BN trains, as in the official recipe


def test_eval_output_is_deterministic_and_train_mode_drop_path_is_not():
    torch.manual_seed(0)
    model = build_model("offseg-l", num_classes=3)
    x = torch.randn(1, 3, 64, 64)
    model.train()
    assert not torch.equal(model(x), model(x))  # stochastic depth (drop-path 0.1 for L) is active
    model.eval()
    with torch.no_grad():
        assert torch.equal(model(x), model(x))
