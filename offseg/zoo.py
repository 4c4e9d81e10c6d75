"""The model registry: names -> architecture configs, plus the paper's figures as metadata."""
from __future__ import annotations

from dataclasses import dataclass, field

from runtime.errors import OffsegError

from .models.efficientformer_v2 import VARIANTS, BackboneConfig
from .models.segmentor import OffSeg


@dataclass(frozen=True)
class PaperResult:
    """One dataset's figures for one model in the paper's Table 2."""

    miou: float  # single-scale val mIoU
    gflops: float  # at ``flops_size``: the convolution multiply-adds (see ``offseg-info`` for how close)
    flops_size: tuple[int, int]  # H W


@dataclass(frozen=True)
class ModelSpec:
    """One OffSeg variant: its architecture and what the paper reports for it.

    ``paper_params_m`` counts the unused ``conv_seg`` too (as the paper does). ``paper`` maps dataset -> the
    paper's figures (``PAPER_SOURCE``): ADE20K, Cityscapes and COCO-Stuff-164k; the paper has no OffSeg row for
    Pascal Context.
    """

    name: str
    backbone: BackboneConfig
    head_channels: tuple[int, int, int, int]
    paper_params_m: float
    paper: dict[str, PaperResult] = field(default_factory=dict)


PAPER_SOURCE = ("the OffSeg paper (ICCV 2025, arXiv 2508.08811), Table 2: single-scale val mIoU, GFLOPs at 512 512 "
                "(ADE20K, COCO-Stuff) and 1024 2048 (Cityscapes); the official repository ships the paper under "
                "resources/")
SMALL, CITYSCAPES = (512, 512), (1024, 2048)


def _paper(ade20k: float, cityscapes: float, coco_stuff: float, gflops: float, cityscapes_gflops: float):
    return {"ade20k": PaperResult(ade20k, gflops, SMALL),
            "cityscapes": PaperResult(cityscapes, cityscapes_gflops, CITYSCAPES),
            "coco-stuff164k": PaperResult(coco_stuff, gflops, SMALL)}


MODELS = {
    spec.name: spec for spec in (
        ModelSpec("offseg-t", VARIANTS["s1"], (32, 32, 64, 128), paper_params_m=6.2,
                  paper=_paper(44.2, 78.9, 41.9, gflops=5.3, cityscapes_gflops=44.8)),
        ModelSpec("offseg-b", VARIANTS["s2"], (32, 64, 128, 256), paper_params_m=13.0,
                  paper=_paper(45.9, 80.5, 44.3, gflops=10.3, cityscapes_gflops=86.5)),
        ModelSpec("offseg-l", VARIANTS["l"], (32, 64, 128, 256), paper_params_m=26.4,
                  paper=_paper(48.5, 81.6, 46.0, gflops=17.1, cityscapes_gflops=143.4)),
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
