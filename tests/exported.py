"""Small OffSeg models on disk for tests: a checkpoint of fresh weights and its ONNX export."""
import torch

from export.cli import main as export_main
from offseg import build_model, save_checkpoint


def export_small_model(folder, num_classes: int = 9, input_size: tuple[int, int] = (64, 96)):
    """(checkpoint, ONNX) of a seeded OffSeg-T with ``num_classes`` classes at a fixed ``input_size``."""
    torch.manual_seed(0)
    checkpoint = save_checkpoint(build_model("offseg-t", num_classes).eval(), folder / "t.pth", "offseg-t")
    onnx_path = folder / "t.onnx"
    assert export_main(["--checkpoint", str(checkpoint), "--input-size", *map(str, input_size), "--output",
                        str(onnx_path), "--no-check"]) == 0
    return checkpoint, onnx_path
