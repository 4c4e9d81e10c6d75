"""The fused (Triton) CARAFE form against mmcv's semantics and the taps form, run by Triton's interpreter on the CPU:
the same kernel source a GPU compiles, executed program by program. Triton reads ``TRITON_INTERPRET`` when it
decorates a kernel, its own library functions included, so the checks run in a fresh process that sets it before
anything imports triton."""
import importlib.util
import multiprocessing
import os

import pytest
import torch

from offseg import build_model
from offseg.models.carafe import carafe, forced_form

from test_models import carafe_literal

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (it comes with CUDA builds of torch; dev extra here)")


def _interpret():
    os.environ["TRITON_INTERPRET"] = "1"


@pytest.fixture(scope="module")
def interpreted():
    """Runs ``function(*args)`` in a process whose Triton kernels are interpreted on the CPU."""
    with multiprocessing.get_context("spawn").Pool(1, initializer=_interpret) as pool:
        yield lambda function, *args: pool.apply(function, args)


def _mmcv_semantics_error(k: int, groups: int, s: int) -> float:
    g = torch.Generator().manual_seed(k * 10 + groups + s)
    x = torch.randn(2, 4, 3, 5, generator=g)
    masks = torch.randn(2, groups * k * k, 3 * s, 5 * s, generator=g)
    expected = carafe_literal(x.double(), masks.double(), k, groups, s).float()
    return (carafe(x, masks, k, groups, s, "fused") - expected).abs().max().item()


@pytest.mark.parametrize("k,groups,s", [(1, 1, 1), (3, 1, 1), (5, 1, 2), (3, 2, 2), (5, 2, 1)])
def test_fused_carafe_equals_mmcv_semantics(interpreted, k, groups, s):
    assert interpreted(_mmcv_semantics_error, k, groups, s) < 1e-5


def _partial_blocks_error() -> float:
    g = torch.Generator().manual_seed(7)
    x, masks = torch.randn(1, 37, 23, 19, generator=g), torch.rand(1, 25, 46, 38, generator=g)
    return (carafe(x, masks, 5, 1, 2, "fused") - carafe(x, masks, 5, 1, 2, "taps")).abs().max().item()


def test_fused_carafe_covers_partial_blocks_of_channels_and_pixels(interpreted):
    """37 channels and 23x19 low-resolution pixels: neither is a multiple of the kernel's blocks."""
    assert interpreted(_partial_blocks_error) < 1e-5


def _half_precision() -> tuple[str, float, float]:
    g = torch.Generator().manual_seed(3)
    x, masks = torch.randn(1, 16, 12, 12, generator=g), torch.rand(1, 25, 24, 24, generator=g)
    fused = carafe(x.half(), masks.half(), 5, 1, 2, "fused")
    inputs_rounded = carafe(x.half().float(), masks.half().float(), 5, 1, 2, "taps")
    relative = ((fused.float() - inputs_rounded).abs() / inputs_rounded.abs().clamp(min=1e-2)).max().item()
    return str(fused.dtype), relative, (fused.float() - carafe(x, masks, 5, 1, 2, "taps")).abs().max().item()


def test_fused_carafe_accumulates_half_precision_in_fp32(interpreted):
    """FP16 activations give FP16, within one FP16 rounding of the output (2^-11 relative) of the exact sum of the
    FP16 inputs: the partial sums are FP32."""
    dtype, relative, vs_fp32 = interpreted(_half_precision)
    assert dtype == "torch.float16" and relative <= 2 ** -11 + 1e-6 and vs_fp32 < 0.05


def test_fused_carafe_refuses_a_gradient():
    x = torch.randn(1, 4, 4, 4, requires_grad=True)
    with pytest.raises(ValueError, match="no backward"):
        carafe(x, torch.rand(1, 9, 4, 4), 3, 1, 1, "fused")


def _whole_model_error() -> float:
    model = build_model("offseg-t", num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        with forced_form("fused"):
            return (model(x) - expected).abs().max().item()


def test_the_whole_model_with_fused_carafe_equals_the_default_form(interpreted):
    assert interpreted(_whole_model_error) < 1e-4
