"""Each dataset's official training recipe (the OffSeg configs, HVision-NKU/OffSeg ``local_configs/offseg``), the
defaults of ``offseg-train``.

The test side (resize scale, whole or slide, windows) is the dataset's ``datasets.Layout``. Where the configs and
the paper's text differ, the configs win (parity with the released checkpoints): the COCO-Stuff T and L configs keep
``max_iters=160000`` but end PolyLR at 80,000, so from 80k on the learning rate is 0 and only the BatchNorm
statistics move; the B config trains 80k. Pascal Context has no OffSeg config (the paper reports no OffSeg row for
it): its recipe is the one the repository ships for SegNeXt + offset learning.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

from runtime.errors import OffsegError
from runtime.progress import counted

from .names import DATASET_NAMES, MODEL_NAMES

VARIANT_FOLDER = {"offseg-t": "Tiny", "offseg-b": "Base", "offseg-l": "Large"}
# SegNeXt's S and B Pascal Context configs inherit the Tiny one's schedule, batch and test settings
SEGNEXT_PASCAL_CONTEXT = ("local_configs/segnext_offset_learning/Tiny/"
                          "segnext_mscan-t_offset_learning_80k_pascal-context-59-480x480.py")


@dataclass(frozen=True)
class Recipe:
    """One (model, dataset) recipe: the official config's batch, schedule and intervals."""

    dataset: str
    config: str  # the official config it comes from
    gpus: int  # GPUs of the official run
    per_gpu_batch: int  # train_dataloader batch_size
    iters: int  # train_cfg max_iters
    lr_end: int  # PolyLR's end: the learning rate is 0 from here on
    interval: int  # checkpoint and validation interval
    warmup_iters: int = 1500  # LinearLR's end
    note: str = ""
    lr: float = 6e-5  # AdamW's (the head's parameters x10)

    @property
    def batch(self) -> int:
        """The official total batch (GPUs x per-GPU batch)."""
        return self.gpus * self.per_gpu_batch


def _offseg_config(model: str, stem: str) -> str:
    return f"local_configs/offseg/{VARIANT_FOLDER[model]}/{model}_{stem}.py"


def recipe(model: str, dataset: str) -> Recipe:
    """The official recipe of ``model`` on ``dataset``; ``folder`` and ``synthetic`` take ADE20K's."""
    if model not in MODEL_NAMES:
        raise OffsegError(f"unknown model {model!r}; choose from {', '.join(MODEL_NAMES)}")
    if dataset not in DATASET_NAMES:
        raise OffsegError(f"unknown dataset {dataset!r}; choose from {', '.join(DATASET_NAMES)}")
    if dataset == "cityscapes":
        return Recipe(dataset, _offseg_config(model, "cityscapes_160k-1024x1024"), 8, 1, 160_000, 160_000, 16_000)
    if dataset == "coco-stuff164k":
        if model == "offseg-b":
            return Recipe(dataset, _offseg_config(model, "stuff164k_80k-512x512"), 8, 2, 80_000, 80_000, 8_000)
        return Recipe(dataset, _offseg_config(model, "stuff164k_160k-512x512"), 8, 2, 160_000, 80_000, 16_000,
                      note="the config keeps max_iters 160000 but ends PolyLR at 80000 (the paper: 80k)")
    if dataset == "pascal-context-59":
        return Recipe(dataset, SEGNEXT_PASCAL_CONTEXT, 8, 2, 80_000, 80_000, 8_000,
                      note="no OffSeg config: SegNeXt + offset learning's recipe")
    recipe_ade = Recipe(dataset, _offseg_config(model, "ade20k_160k-512x512"), 8, 2, 160_000, 160_000, 16_000)
    if dataset == "ade20k":
        return recipe_ade
    return Recipe(dataset, recipe_ade.config, 8, 2, 160_000, 160_000, 16_000, note="no official recipe: ADE20K's")


def with_recipe(config, world: int):
    """``config`` (a ``train.TrainConfig``) with its unset (None) fields taken from its recipe for ``world``
    processes: the official total batch divided over them, the iterations, the PolyLR end (at most the
    iterations), the checkpoint and validation interval; the warm-up is capped at the iterations."""
    official = recipe(config.model, config.dataset)
    iters = official.iters if config.iters is None else config.iters
    return replace(
        config, iters=iters,
        batch_size=max(1, official.batch // world) if config.batch_size is None else config.batch_size,
        lr_end=min(official.lr_end, iters) if config.lr_end is None else config.lr_end,
        checkpoint_interval=official.interval if config.checkpoint_interval is None else config.checkpoint_interval,
        eval_interval=official.interval if config.eval_interval is None else config.eval_interval,
        warmup_iters=min(config.warmup_iters, iters))


def accumulation_steps(config, world: int) -> int:
    """Micro-batches per optimizer step: as configured, or the fewest that reach the recipe's total batch."""
    if config.accumulate is not None:
        return config.accumulate
    return max(1, -(-recipe(config.model, config.dataset).batch // (config.batch_size * world)))


def recipe_line(model: str, dataset: str) -> str:
    """The official recipe of ``model`` on ``dataset``, in one log line."""
    from .data.datasets import LAYOUTS
    from .protocol import TestProtocol
    official, layout = recipe(model, dataset), LAYOUTS[dataset]
    line = (f"recipe for {model} on {dataset} ({official.config}): batch {official.batch} ({official.gpus} GPUs x "
            f"{official.per_gpu_batch}), {official.iters} iterations, PolyLR to 0 at {official.lr_end}, crop "
            f"{layout.crop[0]} {layout.crop[1]}, test: {TestProtocol.for_layout(layout).describe()}")
    return f"{line}; {official.note}" if official.note else line


def run_line(config, world: int, steps: int) -> str:
    """What this run does (after ``with_recipe``), naming what differs from the recipe."""
    official = recipe(config.model, config.dataset)
    total = config.batch_size * world * steps
    line = (f"effective batch {total} = {config.batch_size} per step x {world} process(es) x {steps} accumulated "
            f"step(s), {'AMP (float16)' if config.amp else 'FP32'}, {counted(config.iters, 'iteration')}, PolyLR end "
            f"{config.lr_end}")
    if config.carafe != "taps":
        line += f", CARAFE {config.carafe} form"
    from .data.datasets import LAYOUTS
    crop = " ".join(map(str, config.crop or LAYOUTS[config.dataset].crop))
    differs = [f"{name} {ours} (recipe {theirs})" for name, ours, theirs in (
        ("batch", total, official.batch), ("iterations", config.iters, official.iters),
        ("PolyLR end", config.lr_end, official.lr_end),
        ("crop", crop, " ".join(map(str, LAYOUTS[config.dataset].crop))), ("lr", f"{config.lr:g}", f"{official.lr:g}"),
        ("warm-up", config.warmup_iters, official.warmup_iters)) if ours != theirs]
    if differs:
        line += "; differs from the recipe: " + ", ".join(differs)
    if steps > 1:
        line += (f"; with accumulation each BatchNorm step sees {config.batch_size} image(s) per process, not the "
                 "whole batch (README: single-GPU BatchNorm)")
    return line
