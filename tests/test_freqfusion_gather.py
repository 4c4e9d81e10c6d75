"""FreqFusion's gather (export) form computes what the readable form computes, on random and reference weights."""
import copy

import numpy as np
import pytest
import torch

import reference
from offseg import build_model, load_checkpoint
from offseg.models.freqfusion import FreqFusion, neighbour_similarity
from offseg.models.freqfusion_gather import GatherFreqFusion, UnitVectors
from offseg.models.freqfusion_gather import neighbour_similarity as gather_similarity


def random_fusion(seed: int) -> FreqFusion:
    torch.manual_seed(seed)
    fusion = FreqFusion(32, 64, 24).double().eval()
    for p in fusion.parameters():
        p.data.normal_(0, 0.3)
    fusion.dysampler.init_pos.normal_(0, 3)  # offsets of several pixels: many samples clamp at the border
    return fusion


@pytest.mark.parametrize("batch, h, w", [(1, 5, 7), (2, 8, 6)])
def test_gather_form_equals_the_readable_form(batch, h, w):
    fusion = random_fusion(0)
    hr, lr = torch.randn(batch, 32, 2 * h, 2 * w).double(), torch.randn(batch, 64, h, w).double()
    with torch.no_grad():
        for readable, gathered in zip(fusion(hr, lr), GatherFreqFusion(fusion)(hr, lr)):
            assert (readable - gathered).abs().max() <= 1e-10


def test_a_window_buffer_that_is_not_a_scalar_is_applied():
    fusion = random_fusion(1)
    fusion.hamming_lowpass = torch.rand(25, 1, 1).double() + 0.1
    fusion.hamming_highpass = torch.rand(9, 1, 1).double() + 0.1
    hr, lr = torch.randn(1, 32, 12, 10).double(), torch.randn(1, 64, 6, 5).double()
    with torch.no_grad():
        readable, gathered = fusion(hr, lr)[0], GatherFreqFusion(fusion)(hr, lr)[0]
        assert (readable - gathered).abs().max() <= 1e-10
        fusion.hamming_lowpass = torch.ones(1).double()
        assert (fusion(hr, lr)[0] - readable).abs().max() > 1e-3  # the window mattered


def test_similarity_from_four_products_equals_eight_including_zero_vectors():
    x = torch.randn(2, 16, 9, 11)
    x[:, :, 3, 4] = 0  # a zero vector: similarity 0, no NaN
    expected = neighbour_similarity(x)
    assert torch.allclose(gather_similarity(UnitVectors()(x)), expected, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["offseg-t", "offseg-b", "offseg-l"])
def test_gather_form_matches_the_reference_at_every_stored_size(name, tmp_path):
    torch.save({"state_dict": reference.official_state_dict(name)}, tmp_path / "official.pth")
    model = build_model(name)
    load_checkpoint(model, tmp_path / "official.pth")
    model.head.freqfusions = torch.nn.ModuleList(GatherFreqFusion(f) for f in model.head.freqfusions)
    data = reference.expected(name)
    sizes = [key.removeprefix("logits_") for key in data if key.startswith("logits_")]
    assert sizes
    for size in sizes:
        x = data[f"input_{size}"] if f"input_{size}" in data else reference.input_512()  # recipe in reference.py
        with torch.no_grad():
            logits = model.eval()(torch.from_numpy(x)).numpy()
        assert np.abs(logits - data[f"logits_{size}"]).max() <= 1e-4, size


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_gather_form_runs_in_half_precision(dtype):
    """Sampling positions and row numbers need 24 bits: in FP16 (11) or BF16 (8) the rows of a 24x24 map (9,216 of
    them) went out of range. They are computed in FP32 whatever the activations' dtype."""
    fusion = random_fusion(1)
    fusion.dysampler.init_pos.normal_(0, 0.5)
    hr, lr = torch.randn(1, 32, 48, 48).double(), torch.randn(1, 64, 24, 24).double()
    with torch.no_grad():
        expected = fusion(hr, lr)
        half = GatherFreqFusion(copy.deepcopy(fusion).to(dtype))(hr.to(dtype), lr.to(dtype))
    for want, got in zip(expected, half):
        assert got.dtype == dtype and torch.isfinite(got).all()
        relative = (got.double() - want).norm() / want.norm()
        assert relative < (0.1 if dtype == torch.bfloat16 else 0.01), float(relative)  # 8 and 11 bits
