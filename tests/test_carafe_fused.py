"""The fused (Triton) form: its CARAFE against mmcv's semantics and the taps form, its neighbour similarity against
the readable one, run by Triton's interpreter on the CPU: the same kernel source a GPU compiles, executed program by
program. Triton reads ``TRITON_INTERPRET`` when it
decorates a kernel, its own library functions included, so the checks run in a fresh process that sets it before
anything imports triton."""
import importlib.util
import multiprocessing
import os
import sys
from pathlib import Path

import pytest
import torch

from offseg import build_model
from offseg.models.carafe import carafe, forced_form
from offseg.models.freqfusion import neighbour_similarity

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


def _gradients(form: str, x, masks, grad_out, k: int, groups: int, s: int, reference=carafe):
    x, masks = x.detach().requires_grad_(), masks.detach().requires_grad_()
    out = reference(x, masks, k, groups, s) if form == "literal" else carafe(x, masks, k, groups, s, form)
    out.backward(grad_out)
    return x.grad, masks.grad


def _mmcv_semantics_gradient_error(k: int, groups: int, s: int) -> float:
    g = torch.Generator().manual_seed(k * 10 + groups + s)
    x = torch.randn(2, 4, 3, 5, generator=g, dtype=torch.float64)
    masks = torch.randn(2, groups * k * k, 3 * s, 5 * s, generator=g, dtype=torch.float64)
    grad_out = torch.randn(2, 4, 3 * s, 5 * s, generator=g, dtype=torch.float64)
    expected = _gradients("literal", x, masks, grad_out, k, groups, s, reference=carafe_literal)
    fused = _gradients("fused", x, masks, grad_out, k, groups, s)
    return max((a - b).abs().max().item() for a, b in zip(fused, expected))


@pytest.mark.parametrize("k,groups,s", [(1, 1, 1), (3, 1, 1), (5, 1, 2), (3, 2, 2), (5, 2, 1)])
def test_fused_carafe_gradients_equal_those_of_mmcv_semantics(interpreted, k, groups, s):
    """Both gradients (features and kernels) against autograd through the loop-by-loop transcription, in FP64
    (the kernels then sum in FP64): equal to rounding."""
    assert interpreted(_mmcv_semantics_gradient_error, k, groups, s) < 1e-12


def _partial_blocks_gradient_error() -> tuple[float, float]:
    g = torch.Generator().manual_seed(11)
    x, masks = torch.randn(2, 37, 11, 9, generator=g), torch.rand(2, 25, 22, 18, generator=g)
    grad_out = torch.randn(2, 37, 22, 18, generator=g)
    expected = _gradients("taps", x, masks, grad_out, 5, 1, 2)
    fused = _gradients("fused", x, masks, grad_out, 5, 1, 2)
    return tuple(((a - b).abs().max() / b.abs().max()).item() for a, b in zip(fused, expected))


def test_fused_carafe_gradients_cover_partial_blocks(interpreted):
    """37 channels (9 loop steps of 4 and a partial one in the kernels' gradient) and 22x18 output pixels."""
    assert max(interpreted(_partial_blocks_gradient_error)) < 1e-6


def _half_precision_gradients() -> tuple[list[str], float]:
    g = torch.Generator().manual_seed(5)
    x, masks = torch.randn(1, 16, 12, 12, generator=g), torch.rand(1, 25, 24, 24, generator=g)
    grad_out = torch.randn(1, 16, 24, 24, generator=g)
    half = _gradients("fused", x.half(), masks.float(), grad_out, 5, 1, 2)  # autocast's mix: FP16 maps, FP32 kernels
    exact = _gradients("taps", x.half().float(), masks, grad_out, 5, 1, 2)
    return [str(t.dtype) for t in half], max(((a.float() - b).abs().max() / b.abs().max()).item()
                                             for a, b in zip(half, exact))


def test_fused_carafe_gradients_of_mixed_precision_inputs(interpreted):
    """Under autocast the features are FP16 and the kernels FP32: each gradient has its input's dtype, within an
    FP16 rounding of the exact one (FP32 sums)."""
    dtypes, relative = interpreted(_half_precision_gradients)
    assert dtypes == ["torch.float16", "torch.float32"] and relative < 2 ** -10


def _similarity_maps(seed: int, shape: tuple, dtype=torch.float32) -> torch.Tensor:
    """Random maps with one all-zero pixel (the clamped norm) and one tiny one (norm below eps)."""
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)
    x[0, :, 1, 2] = 0
    x[-1, :, -1, 0] = 1e-10
    return x


def _similarity_error(shape: tuple, dilation: int) -> float:
    x = _similarity_maps(1, shape)
    with forced_form("fused"):
        fused = neighbour_similarity(x, dilation)
    return (fused - neighbour_similarity(x, dilation)).abs().max().item()


@pytest.mark.parametrize("shape,dilation", [((2, 5, 7, 9), 2), ((1, 37, 23, 19), 2), ((1, 3, 2, 3), 2),
                                            ((2, 64, 16, 8), 1)])
def test_fused_neighbour_similarity_equals_the_readable_form(interpreted, shape, dilation):
    """Partial blocks of channels (37, 5, 3) and pixels, maps smaller than the window (2x3: most neighbours
    outside), zero and sub-eps pixels, both dilations."""
    assert interpreted(_similarity_error, shape, dilation) < 1e-6


def _similarity_gradient_error(shape: tuple) -> float:
    eps = float(torch.tensor(1e-8, dtype=torch.float32))  # the kernels' eps is an FP32 scalar (Triton's float)
    x = _similarity_maps(2, shape, torch.float64)
    grad = torch.randn(shape[0], 8, *shape[2:], generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    gradients = []
    for form in ("taps", "fused"):
        leaf = x.clone().requires_grad_()
        with forced_form(form):
            neighbour_similarity(leaf, eps=eps).backward(grad)
        gradients.append(leaf.grad)
    readable, fused = gradients
    return ((fused - readable).abs().max() / readable.abs().max()).item()


@pytest.mark.parametrize("shape", [(2, 5, 7, 9), (1, 37, 23, 19), (1, 3, 2, 3)])
def test_fused_neighbour_similarity_gradient_equals_autograd_of_the_readable_form(interpreted, shape):
    """FP64 (the kernel then sums in FP64): equal to rounding, at the zero and sub-eps pixels too (there the clamp
    passes no gradient to the norm: the gradient is 1e8 times the unit vectors' one). With an eps FP32 can hold:
    Triton passes a Python float to a GPU kernel as FP32 (so does 3.6's interpreter; 3.9's keeps FP64), and 1e-8
    rounded to FP32 changes those pixels' FP64 gradients by 6e-9 relative."""
    assert interpreted(_similarity_gradient_error, shape) < 1e-12


def _similarity_half_precision() -> tuple[str, float, bool]:
    x = _similarity_maps(4, (1, 64, 20, 24)).half()
    with forced_form("fused"):
        fused = neighbour_similarity(x)
    exact = neighbour_similarity(x.double())
    return str(fused.dtype), (fused.double() - exact).abs().max().item(), bool(fused.isfinite().all())


def test_fused_neighbour_similarity_of_half_precision_maps(interpreted):
    """FP16 maps give FP16 similarities within one FP16 rounding of a cosine (2^-11) of the exact ones of the
    same FP16 maps: the sums are FP32; zero pixels give 0, not NaN."""
    dtype, error, finite = interpreted(_similarity_half_precision)
    assert dtype == "torch.float16" and finite and error <= 2 ** -11


def _whole_model_error() -> float:
    model = build_model("offseg-t", num_classes=5).eval()
    x = torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x)
        with forced_form("fused"):
            return (model(x) - expected).abs().max().item()


def test_the_whole_model_with_fused_carafe_equals_the_default_form(interpreted):
    assert interpreted(_whole_model_error) < 1e-4


def _whole_model_gradient_check() -> dict:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import gpu_check
    return gpu_check.check_fused_training(Path("."), device="cpu", size=32)


def test_a_training_step_with_fused_carafe_has_the_default_forms_gradients(interpreted):
    """Every parameter's gradient of an OffSeg-T loss (train mode, batch statistics), in FP64, within 1e-9 of its
    largest entry (or of 1e-6 of the largest gradient, for the gradients that are zero but for rounding): the fused
    form trains the model the default form trains. This runs gpu_check's ``fused_training`` on the CPU, so the GPU
    run's code is tried here too. (In FP32 the forms differ by rounding as much as FP32 and FP64 of the taps form
    do: 1e-3 of those near-zero gradients.)"""
    report = interpreted(_whole_model_gradient_check)
    assert report["ok"] and report["fp64_max_relative_gradient_error"] <= 1e-9


def _operator_check_failures() -> dict[str, str]:
    import offseg.models.carafe_fused  # noqa: F401  (registers the operators)
    import offseg.models.similarity_fused  # noqa: F401
    g = torch.Generator().manual_seed(2)
    x = torch.randn(1, 6, 5, 4, generator=g, dtype=torch.float64)
    masks = torch.randn(1, 2 * 9, 10, 8, generator=g, dtype=torch.float64)
    grad_out = torch.randn(1, 6, 10, 8, generator=g, dtype=torch.float64)
    ops = torch.ops.offseg
    calls = ((ops.carafe_fused, (x.requires_grad_(), masks.requires_grad_(), 3, 2, 2)),
             (ops.carafe_fused_grad, (x.detach(), masks.detach(), grad_out, 3, 2, 2, 0)),
             (ops.carafe_fused_grad, (x.detach(), masks.detach(), grad_out, 3, 2, 2, 1)),
             (ops.neighbour_similarity_fused, (x.detach().requires_grad_(), 2, 1e-8)),
             (ops.neighbour_similarity_fused_grad, (x.detach(), torch.randn(1, 8, 5, 4, generator=g,
                                                                            dtype=torch.float64), 2, 1e-8)))
    failures = {}
    for op, args in calls:
        for test, outcome in torch.library.opcheck(op, args, raise_exception=False).items():
            if outcome != "SUCCESS":
                failures[f"{op}: {test}"] = str(outcome)[:300]
    return failures


def test_the_fused_kernels_are_operators_torch_can_trace(interpreted):
    """torch.library's own check of each operator (CARAFE's forward and both gradients, the similarity's forward
    and gradient): schema, fake (shape/dtype/stride)
    implementation against the real one, autograd registration, and AOT dispatch with dynamic shapes, which is
    what torch.compile and CUDA graph capture go through."""
    assert interpreted(_operator_check_failures) == {}


def test_the_model_with_fused_carafe_runs_forward_and_backward_on_the_meta_device():
    """Shapes and dtypes only, no kernel launched: what torch.compile's tracing needs (an autograd.Function around
    the launches failed here: it launched the kernels on the meta tensors)."""
    model = build_model("offseg-t", num_classes=5).to("meta").train()
    with forced_form("fused"):
        out = model(torch.randn(2, 3, 64, 96, device="meta"))
    out.sum().backward()
    assert out.shape == (2, 5, 16, 24) and out.device.type == "meta"
    assert all(p.grad is not None and p.grad.shape == p.shape for p in model.parameters())


POINTERS = {"forward": ("features", "masks", "out"), "features_grad": ("masks", "grad_out", "grad_features"),
            "masks_grad": ("features", "grad_out", "grad_masks")}
SIZES = ("channels", "height", "width")


def _resources(function, signature: dict, settings: dict, num_warps: int, arch: int) -> dict[str, int]:
    """Compiles the Triton ``function`` for sm_``arch`` with the wheel's ptxas, and reads its registers and stack
    from the cubin (cuobjdump)."""
    import subprocess
    import tempfile

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    signature = {**signature, **{name: "constexpr" for name in settings}}
    compiled = triton.compile(ASTSource(fn=function, signature=signature, constexprs=settings),
                              target=GPUTarget("cuda", arch, 32), options={"num_warps": num_warps})
    cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
        cubin.write(compiled.asm["cubin"])
        cubin.flush()
        usage = subprocess.run([str(cuobjdump), "-res-usage", cubin.name], capture_output=True, text=True,
                               check=True).stdout
    fields = dict(item.split(":") for item in next(line for line in usage.splitlines() if "REG:" in line).split()
                  if item.startswith(("REG:", "STACK:")))
    return {name: int(value) for name, value in fields.items()}


def _carafe_resources(kernel: str, channels: int, k: int, groups: int, s: int, arch: int) -> dict[str, int]:
    """A CARAFE kernel as launched under autocast: FP16 maps, FP32 kernels and gradients."""
    import triton.language as tl

    from offseg.models.carafe_fused import NUM_WARPS, launch_settings
    function, settings = launch_settings(kernel, channels, k, groups, s, tl.float32)
    types = {"features": "*fp16", "grad_features": "*fp16"}
    signature = {name: types.get(name, "*fp32") for name in POINTERS[kernel]}
    signature.update({name: "i32" for name in (*SIZES, "groups", "channels_per_group")})
    return _resources(function, signature, settings, NUM_WARPS, arch)


def _similarity_resources(kernel: str, arch: int) -> dict[str, int]:
    """A neighbour-similarity kernel as launched on an FP16 model (FP16 maps and gradients)."""
    import triton.language as tl

    from offseg.models.similarity_fused import NUM_WARPS, launch_settings
    function, settings = launch_settings(kernel, 2, tl.float32)
    pointers = ("x", "out") if kernel == "forward" else ("x", "grad", "grad_x")
    signature = {**{name: "*fp16" for name in pointers}, **{name: "i32" for name in SIZES}, "eps": "fp32"}
    return _resources(function, signature, settings, NUM_WARPS, arch)


def _ptxas_shipped() -> bool:
    spec = importlib.util.find_spec("triton")
    return spec is not None and (Path(spec.origin).parent / "backends" / "nvidia" / "bin" / "ptxas").is_file()


ARCHS = pytest.mark.parametrize("arch", [90, 87], ids=["sm_90 (H100/H200)", "sm_87 (Jetson Orin)"])


@pytest.mark.skipif(not _ptxas_shipped(), reason="this triton wheel has no ptxas")
@ARCHS
@pytest.mark.parametrize("kernel", list(POINTERS))
def test_the_kernels_compile_for_the_gpus_in_registers(kernel, arch):
    """Triton compiles each kernel to a cubin on the CPU (no GPU needed) for OffSeg's two CARAFE shapes (3x3 same
    size, 5x5 upsampling by 2; one group) and a grouped one: each fits in 128 registers per thread with nothing
    spilled to the stack (the first version's static 25-tap loops took 255 and spilled, a slowdown the
    interpreter cannot show)."""
    for channels, k, groups, s in ((64, 3, 1, 1), (233, 5, 1, 2), (64, 5, 2, 2)):
        resources = _carafe_resources(kernel, channels, k, groups, s, arch)
        assert resources["STACK"] == 0 and resources["REG"] <= 128, (channels, k, groups, s, resources)


@pytest.mark.skipif(not _ptxas_shipped(), reason="this triton wheel has no ptxas")
@ARCHS
@pytest.mark.parametrize("kernel", ["forward", "grad"])
def test_the_similarity_kernels_compile_for_the_gpus_in_registers(kernel, arch):
    """The same for the neighbour similarity's two kernels (channels are a run-time loop: one compilation), within
    64 registers: 8 warps of them leave room for 4 programs per SM (half occupancy) on these memory-bound
    kernels."""
    resources = _similarity_resources(kernel, arch)
    assert resources["STACK"] == 0 and resources["REG"] <= 64, resources
