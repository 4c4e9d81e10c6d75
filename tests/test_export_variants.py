"""Output and input variants of an export (labels dtype and layout, probabilities, float RGB 0-255 input): recorded
in the metadata, read back by offseg-run's backends, equal to PyTorch, and parsed and built by NVIDIA's real
TensorRT-RTX builder."""
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

from exported import export_small_model
from export.cli import main as export_main
from offseg.checkpoint import build_from_checkpoint
from runtime.backends import open_backend
from runtime.preprocess import MEAN_RGB, STD_RGB

# one worker builds the exports (xdist ran the module-scoped fixture in both: a minute of duplicated CPU)
pytestmark = pytest.mark.xdist_group("export-variants")
SIZE = (64, 96)
VARIANTS = {  # name -> options; each is one real export of a small OffSeg-T (about a minute each on 2 cores)
    "int32-nhwc-labels": ["--output-kind", "labels", "--label-dtype", "int32", "--layout", "nhwc",
                          "--input-format", "float-rgb-0-255"],
    "nhwc-probs": ["--output-kind", "probs", "--layout", "nhwc", "--input-format", "uint8-rgb"],
}


@pytest.fixture(scope="module")
def variants(tmp_path_factory):
    """(checkpoint, {variant name: ONNX path}) of one seeded 9-class model."""
    folder = tmp_path_factory.mktemp("variants")
    checkpoint, _ = export_small_model(folder, input_size=SIZE)
    paths = {}
    for name, options in VARIANTS.items():
        paths[name] = folder / f"{name}.onnx"
        assert export_main(["--checkpoint", str(checkpoint), "--input-size", *map(str, SIZE), "--no-check",
                            "--output", str(paths[name]), *options]) == 0
    return checkpoint, paths


def _pixels() -> np.ndarray:
    return np.random.default_rng(3).integers(0, 256, (1, 3, *SIZE)).astype(np.float32)


def _torch_logits(checkpoint, pixels: np.ndarray) -> torch.Tensor:
    """PyTorch on the same pixels, normalized the training way (the reference the folded graphs must equal)."""
    model, _ = build_from_checkpoint(checkpoint)
    mean, std = torch.tensor(MEAN_RGB).reshape(1, 3, 1, 1), torch.tensor(STD_RGB).reshape(1, 3, 1, 1)
    with torch.no_grad():
        return model((torch.from_numpy(pixels) - mean) / std)


@pytest.mark.slow
def test_int32_nhwc_labels_from_float_pixels_equal_the_pytorch_argmax(variants):
    checkpoint, paths = variants
    pixels = _pixels()
    session = ort.InferenceSession(str(paths["int32-nhwc-labels"]), providers=["CPUExecutionProvider"])
    labels = session.run(None, {"images": pixels})[0]
    assert labels.dtype == np.int32 and labels.shape == (1, *SIZE, 1)
    logits = F.interpolate(_torch_logits(checkpoint, pixels), size=SIZE, mode="bilinear", align_corners=False)
    assert np.array_equal(labels[..., 0], logits.argmax(1).numpy())
    meta = session.get_modelmeta().custom_metadata_map
    assert (meta["offseg.label_dtype"], meta["offseg.output_layout"]) == ("int32", "nhwc")
    assert meta["offseg.input_format"] == "float32 RGB 0-255 NCHW"


@pytest.mark.slow
def test_nhwc_probabilities_are_the_softmax_of_the_pytorch_logits(variants):
    checkpoint, paths = variants
    pixels = _pixels()
    session = ort.InferenceSession(str(paths["nhwc-probs"]), providers=["CPUExecutionProvider"])
    probs = session.run(None, {"images": pixels.astype(np.uint8)})[0]
    expected = _torch_logits(checkpoint, pixels).softmax(1).permute(0, 2, 3, 1).numpy()
    assert probs.shape == expected.shape == (1, SIZE[0] // 4, SIZE[1] // 4, 9)
    assert np.abs(probs - expected).max() < 1e-4


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_the_runtime_reads_each_variant_back(variants, variant):
    _, paths = variants
    backend = open_backend(paths[variant])
    info = backend.info
    batch = np.zeros((1, 3, *SIZE), np.float32 if info.input_format == "float-rgb-0-255" else np.uint8)
    planar = info.planar(backend.infer(batch))
    assert planar.shape == ((1, *SIZE) if info.output_kind == "labels" else (1, 9, SIZE[0] // 4, SIZE[1] // 4))
    assert info.output_layout == "nhwc" and info.input_format != "normalized"


@pytest.mark.slow
@pytest.mark.parametrize("variant", VARIANTS)
def test_tensorrt_rtx_builds_each_variant(variants, variant, capsys):
    pytest.importorskip("tensorrt_rtx")
    _, paths = variants
    assert export_main(["--onnx", str(paths[variant]), "--format", "engine", "--trt-module", "tensorrt_rtx"]) == 0
    engine = paths[variant].with_name(f"{variant}.fp32.plan")
    sidecar = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert engine.stat().st_size > 100_000 and sidecar["onnx"]["output_layout"] == "nhwc"
    assert sidecar["onnx"]["output_kind"] == ("labels" if "labels" in variant else "probs")
