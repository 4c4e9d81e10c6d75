"""The model registry: names -> architecture configs, plus the paper's figures as metadata."""
from __future__ import annotations

from dataclasses import dataclass, field

from runtime.errors import OffsegError

from .models.efficientformer_v2 import VARIANTS, BackboneConfig
from .models.segmentor import OffSeg


@dataclass(frozen=True)
class ModelSpec:
    """One OffSeg variant: its architecture and what the paper reports for it.

    ``paper_params_m`` counts the unused ``conv_seg`` too (as the paper does); ``paper_gflops`` are at 512x512
    and equal the convolution multiply-adds alone (see ``offseg-info``). ``paper_miou`` maps dataset -> single-scale
    val mIoU (see ``PAPER_MIOU_SOURCE``); a dataset is absent where no figure could be traced.
    """

    name: str
    backbone: BackboneConfig
    head_channels: tuple[int, int, int, int]
    paper_params_m: float
    paper_gflops: float
    paper_miou: dict[str, float] = field(default_factory=dict)


PAPER_MIOU_SOURCE = (
    "arXiv 2508.08811, as quoted (labelled 'paper', beside the same params and FLOPs) by a third-party public "
    "results ledger; no traceable source gives the Cityscapes and Pascal Context figures, so they are not listed")

MODELS = {
    spec.name: spec for spec in (
        ModelSpec("offseg-t", VARIANTS["s1"], (32, 32, 64, 128), paper_params_m=6.2, paper_gflops=5.3,
                  paper_miou={"ade20k": 44.2, "coco-stuff164k": 41.9}),
        ModelSpec("offseg-b", VARIANTS["s2"], (32, 64, 128, 256), paper_params_m=13.0, paper_gflops=10.3,
                  paper_miou={"ade20k": 45.9, "coco-stuff164k": 44.3}),
        ModelSpec("offseg-l", VARIANTS["l"], (32, 64, 128, 256), paper_params_m=26.4, paper_gflops=17.1,
                  paper_miou={"ade20k": 48.5}),
    )
}


def get_spec(name: str) -> ModelSpec:
    """The registry entry for ``name``; raises OffsegError listing the known names."""
    try:
        return MODELS[name.lower()]
    except KeyError:
        raise OffsegError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}") from None


def build_model(name: str, num_classes: int = 150) -> OffSeg:
    """A freshly initialised OffSeg model (train mode). Load weights with ``load_checkpoint`` then call ``eval()``."""
    if num_classes < 1:
        raise OffsegError(f"num_classes must be at least 1, got {num_classes}")
    spec = get_spec(name)
    return OffSeg(spec.backbone, spec.head_channels, num_classes)
