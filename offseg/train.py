"""Training with the official recipe: each dataset's batch, schedule and intervals (``offseg.recipes``), AdamW
(lr 6e-5, weight decay 0.01) with mmengine's parameter rules (``offseg.optim``), 1,500 linear warm-up iterations
then poly decay, mmseg's cross-entropy (``offseg.losses``), FP32 (AMP opt-in), an optional ImageNet-pretrained
backbone, checkpoints with resume, TensorBoard scalars, multi-GPU through ``torchrun`` (DistributedDataParallel,
SyncBatchNorm as the official backbone converts its BNs to SyncBN).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import sys
import time
import traceback
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from runtime.errors import OffsegError
from runtime.interrupts import describe, ignore_stop_signals, signals_held, stop_signals_blocked, take
from runtime.limits import check_at_least
from runtime.preprocess import normalize_bgr
from runtime.progress import Progress
from runtime.sinks import DISK_FULL, disk_full_message, write_file

from .checkpoint import extract_state_dict, load_state, read_file, serialize
from .compiling import check_compile_backend
from .data import synthetic
from .data.datasets import LAYOUTS, SegmentationDataset, check_data_root
from .data.transforms import TrainTransform, pad_batch
from .evaluate import evaluate, mean_accuracy
from .head_init import init_head_like_official
from .losses import check_label_range, mmseg_cross_entropy
from .models.carafe import check_carafe_form, forced_form
from .names import CARAFE_FORMS
from .optim import lr_factor, parameter_groups
from .pretrained import load_pretrained_backbone
from .run_files import BestCheckpoint, disk_line, prune_checkpoints
from .protocol import TestProtocol
from .recipes import Recipe, accumulation_steps, recipe_line, run_line, with_recipe
from .train_state import loader_generator, resume, training_state
from .zoo import build_model

log = logging.getLogger(__name__)

CLASS_DEPENDENT = ("head.offset_learning.class_embed", "head.offset_learning.mask_norm.weight",
                   "head.offset_learning.mask_norm.bias")


@dataclass
class TrainConfig:
    model: str = "offseg-t"
    dataset: str = "synthetic"
    data_root: str | None = None
    work_dir: str = "work_dirs/offseg"
    iters: int | None = None  # None (here and below): the recipe's (offseg.recipes)
    batch_size: int | None = None  # per process; None: the recipe's total batch divided over the processes
    lr_end: int | None = None  # PolyLR's end (learning rate 0 from there); None: the recipe's, at most iters
    crop: tuple[int, int] | None = None  # default: the dataset's official crop
    scale: tuple[int, int] | None = None  # default: the dataset's official resize scale
    lr: float = Recipe.lr
    weight_decay: float = 0.01
    accumulate: int | None = 1  # micro-batches per optimizer step; None: enough to reach the recipe's batch
    amp: bool = False  # the official runs are FP32
    compile: str | None = None  # a torch.compile backend ("inductor"): compiles the training forward and backward
    carafe: str = "taps"  # CARAFE form (offseg.names.CARAFE_FORMS): the same parameters and gradients, other kernels
    warmup_iters: int = Recipe.warmup_iters
    poly_power: float = 1.0
    checkpoint_interval: int | None = None
    keep_checkpoints: int = 0  # iter_N.pth files kept besides latest.pth (resume point) and best.pth (best mIoU)
    eval_interval: int | None = None
    log_interval: int = 50
    workers: int = 2
    seed: int = 0
    deterministic: bool = False
    resume: bool = False
    init_checkpoint: str | None = None  # official or own weights to start from (fine-tuning)
    pretrained_backbone: str | None = None  # EfficientFormerV2 ImageNet release (the official starting point)
    synthetic_size: tuple[int, int] = synthetic.SCENE_SIZE
    synthetic_length: int = 1000
    eval_images: int | None = None
    resume_hint: str = "continue with --resume"  # how the caller's user continues an interrupted run
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        """Raises OffsegError for a setting no run can use (call after ``recipes.with_recipe``)."""
        check_data_root(self.dataset, self.data_root)
        check_at_least(("--iters", self.iters, 1), ("--batch-size", self.batch_size, 1), ("--lr-end", self.lr_end, 1),
                       ("--warmup-iters", self.warmup_iters, 0), ("--workers", self.workers, 0),
                       ("--checkpoint-interval", self.checkpoint_interval, 1),
                       ("--eval-interval", self.eval_interval, 1), ("--keep-checkpoints", self.keep_checkpoints, 0),
                       ("--eval-images", self.eval_images, 1))
        if not self.lr > 0:
            raise OffsegError(f"--lr must be above 0, got {self.lr:g}")
        if self.crop is not None and min(self.crop) < 32:
            raise OffsegError(f"--crop must be at least 32x32 (the model's stride), got {self.crop[0]} {self.crop[1]}")
        if not 0 <= self.seed < 2 ** 32:
            raise OffsegError(f"--seed must be from 0 to 2**32 - 1, got {self.seed}")
        if self.accumulate is not None and self.accumulate < 1:
            raise OffsegError(f"--accumulate must be at least 1 or 'auto', got {self.accumulate}")
        if self.carafe not in CARAFE_FORMS:
            raise OffsegError(f"--carafe {self.carafe}: choose from {', '.join(CARAFE_FORMS)}")
        if self.init_checkpoint and self.pretrained_backbone:
            raise OffsegError("give either --checkpoint (whole model) or --pretrained-backbone, not both")


def init_from_checkpoint(model: nn.Module, path: str) -> list[str]:
    """Load weights for fine-tuning; class-dependent tensors of another class count are re-initialised.

    Returns the names of the re-initialised tensors (empty when the class count matches).
    """
    state = extract_state_dict(read_file(path))
    current = model.state_dict()
    reset = [k for k in CLASS_DEPENDENT if k in state and state[k].shape != current[k].shape]
    for key in reset:
        state[key] = current[key]
    load_state(model, state, source=f"checkpoint {path}")
    return reset


class Distributed:
    """torchrun's environment: rank, world size, device; a no-op for single-process runs."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        self.device = torch.device(f"cuda:{local}" if torch.cuda.is_available() else "cpu")
        if self.world > 1:
            if self.device.type == "cuda":
                torch.cuda.set_device(self.device)
            dist.init_process_group("nccl" if self.device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def close(self) -> None:
        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()


def seed_everything(seed: int, deterministic: bool) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


class Collate:
    """Normalize each crop (BGR -> RGB, ImageNet mean/std), then pad to the crop size with 0 / labels 255."""

    def __init__(self, crop: tuple[int, int]):
        self.crop = crop

    def __call__(self, batch):
        images, labels = pad_batch([normalize_bgr(image)[0] for image, _ in batch], [b[1] for b in batch],
                                   self.crop)
        return torch.from_numpy(images), torch.from_numpy(labels).long()


class SampleStream(torch.utils.data.Sampler):
    """Endless (position, index) pairs: epoch permutations seeded by (seed, epoch), positions split over ranks.

    A sample's augmentation is seeded by its position, so a resumed run (starting at position ``start``) sees
    exactly the data a straight run would have seen.
    """

    def __init__(self, length: int, seed: int, start: int, rank: int = 0, world: int = 1):
        self.length, self.seed, self.start, self.rank, self.world = length, seed, start, rank, world

    def __iter__(self):
        position = self.start + self.rank
        while True:
            epoch, offset = divmod(position, self.length)
            order = np.random.default_rng([self.seed, epoch]).permutation(self.length)
            yield position, int(order[offset])
            position += self.world


def _from_worker(error: OffsegError) -> OffsegError:
    """``error`` as its sentence alone: raised in a DataLoader worker, it comes back with the worker's traceback in
    its message ("Caught OffsegError in DataLoader worker process 0. Original Traceback ... OffsegError: sentence")."""
    text = str(error)
    if not text.startswith(f"Caught {type(error).__name__} in DataLoader worker"):
        return error
    sentence = text.rstrip().splitlines()[-1].split(": ", 1)[-1]
    try:
        return type(error)(sentence)
    except TypeError:  # a subclass that takes other arguments
        return OffsegError(sentence)


class AugmentedStream(torch.utils.data.Dataset):
    """``dataset[index]`` augmented with a generator seeded by (seed, stream position)."""

    def __init__(self, dataset: SegmentationDataset, transform: TrainTransform, seed: int):
        self.dataset, self.transform, self.seed = dataset, transform, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: tuple[int, int]):
        position, index = item
        image, labels = self.dataset.load(index)
        return self.transform(image, labels, np.random.default_rng([self.seed, position, 1]))


class ScalarLog:
    """Scalars to ``scalars.jsonl`` and, when tensorboardX is installed, TensorBoard event files."""

    def __init__(self, folder: Path):
        self.path = folder / "scalars.jsonl"
        try:
            from tensorboardX import SummaryWriter
            self.writer = SummaryWriter(str(folder / "tensorboard"))
        except ImportError:
            self.writer = None

    def add(self, iteration: int, **values: float) -> None:
        line = json.dumps({"iter": iteration, **values}) + "\n"
        try:
            with self.path.open("a") as stream:
                stream.write(line)
        except OSError as error:  # a full disk is one sentence, as for the checkpoints
            message = disk_full_message(self.path, len(line), 0) if error.errno in DISK_FULL else \
                f"cannot write {self.path}: {error.strerror or error}"
            raise OffsegError(message) from error
        if self.writer:
            for key, value in values.items():
                self.writer.add_scalar(key, value, iteration)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


class StepTiming:
    """Seconds per iteration spent waiting for data (the loader) and in the step (forward, backward, optimizer),
    averaged since the last ``take()``: data time near the step time means the loader does not keep up."""

    def __init__(self):
        self.data = self.step = 0.0
        self.count = 0

    def add(self, data: float, step: float) -> None:
        self.data, self.step, self.count = self.data + data, self.step + step, self.count + 1

    def figures(self) -> dict[str, str]:
        """The progress line's ``data`` and ``step`` figures (means since the last ``take()``)."""
        count = max(self.count, 1)
        return {"data": f"{1000 * self.data / count:.0f} ms", "step": f"{1000 * self.step / count:.0f} ms"}

    def take(self) -> dict[str, float]:
        """The means as scalars (``data_seconds``, ``step_seconds``), then start a new window."""
        count = max(self.count, 1)
        means = {"data_seconds": self.data / count, "step_seconds": self.step / count}
        self.data = self.step = 0.0
        self.count = 0
        return means


def train_step(model: nn.Module, micro_batches: list, optimizer: torch.optim.Optimizer,
               scaler: torch.amp.GradScaler, device: torch.device, amp: bool) -> float:
    """One optimizer step over ``micro_batches`` of (images, labels): each loss is divided by their count, so the
    gradient is that of one batch made of all of them (mmengine's ``accumulative_counts``). Returns the loss."""
    optimizer.zero_grad(set_to_none=True)
    total = None
    for index, (images, labels) in enumerate(micro_batches):
        last = index == len(micro_batches) - 1
        with contextlib.nullcontext() if last or not hasattr(model, "no_sync") else model.no_sync():
            with torch.autocast(device.type, dtype=torch.float16, enabled=amp):
                logits = model(images.to(device, non_blocking=True))
                check_label_range(labels, logits.shape[1])  # the loader's host tensor: no GPU synchronisation
                logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
            labels = labels.to(device, non_blocking=True)
            loss = mmseg_cross_entropy(logits, labels, check_labels=False) / len(micro_batches)
            scaler.scale(loss).backward()
        total = loss.detach() if total is None else total + loss.detach()
    scaler.step(optimizer)
    scaler.update()
    return float(total)  # the step's one read back to the host


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Train; returns the final checkpoint (``work_dir/latest.pth``, in our own format).

    Under ``runtime.interrupts.stop_signals`` (every CLI) Ctrl-C and SIGTERM wait for the running step to end, then
    ``latest.pth`` is saved and the interrupt re-raised; a KeyboardInterrupt raised inside a step saves nothing.
    """
    run = Distributed()
    try:
        config = with_recipe(config, run.world)
        config.validate()
        check_carafe_form(config.carafe, run.device)
        with forced_form(config.carafe):
            return _train(config, run, progress and run.main)
    finally:
        run.close()


def _train(config: TrainConfig, run: Distributed, progress: bool) -> Path:
    from .checkpoint import FORMAT

    layout = LAYOUTS[config.dataset]
    crop = tuple(config.crop or layout.crop)
    scale = tuple(config.scale or layout.train_scale)
    seed_everything(config.seed + run.rank, config.deterministic)
    if config.compile is not None:
        check_compile_backend(config.compile, run.device)
    if run.device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal weights/gradients make CPU training many times slower
    work_dir = Path(config.work_dir)
    latest = work_dir / "latest.pth"
    if config.resume and not latest.is_file():  # before the work folder is made: a typo leaves no empty folder
        raise OffsegError(f"--resume: no checkpoint at {latest}")
    work_dir.mkdir(parents=True, exist_ok=True)
    dataset = SegmentationDataset(config.dataset, config.data_root, "train", length=config.synthetic_length,
                                  size=config.synthetic_size, strict_labels=True)
    model = build_model(config.model, dataset.num_classes)
    init_head_like_official(model.head)
    starting = config.init_checkpoint or config.pretrained_backbone
    if config.resume and starting:  # latest.pth holds the run's weights, which started from these
        if run.main:
            log.info("resuming from %s: its weights replace %s, which is not read again", latest, starting)
    elif config.init_checkpoint:
        reset = init_from_checkpoint(model, config.init_checkpoint)
        if reset and run.main:
            log.info("fine-tuning to %d classes: re-initialised %s", dataset.num_classes, ", ".join(reset))
    elif config.pretrained_backbone:
        load_pretrained_backbone(model, config.pretrained_backbone)
    steps = accumulation_steps(config, run.world)
    amp = config.amp and run.device.type == "cuda"
    if run.main:
        log.info(recipe_line(config.model, config.dataset))
        log.info(run_line(config, run.world, steps))
        if config.amp and not amp:
            log.warning("--amp needs a CUDA GPU: training in FP32")
    model.to(run.device)
    if run.world > 1:
        if run.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[run.device.index] if run.device.index is not
                                                    None else None)
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    forward = model  # what the steps run; checkpoints and validation use ``core``: the same parameters, own names
    if config.compile is not None:
        forward = torch.compile(model, backend=config.compile)
        if run.main:
            log.info("torch.compile (backend %s): the first iteration compiles the forward and backward passes, "
                     "which takes minutes", config.compile)
    optimizer = torch.optim.AdamW(parameter_groups(core, config.lr, config.weight_decay), lr=config.lr,
                                  betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: lr_factor(i, config.warmup_iters, config.lr_end, config.poly_power))
    scaler = torch.amp.GradScaler("cuda", enabled=amp)
    start = 0
    if config.resume:
        start = resume(latest, core, optimizer, scheduler, scaler)
        if run.main:
            log.info("resumed from %s at iteration %d", latest, start)
    stream = AugmentedStream(dataset, TrainTransform(crop=crop, scale=scale), config.seed)
    sampler = SampleStream(len(dataset), config.seed, start * config.batch_size * run.world * steps, run.rank,
                           run.world)
    if config.workers:
        # batches travel as shared-memory file names, not file descriptors: a descriptor is handed over through a
        # handshake with a thread in the worker, and a stop signal that cut it short in the main process made that
        # worker print a traceback (seen once in a SIGTERM to the process group); torch's shm manager removes the
        # files when the processes end, stopped or not
        torch.multiprocessing.set_sharing_strategy("file_system")
    loader = torch.utils.data.DataLoader(stream, batch_size=config.batch_size, sampler=sampler,
                                         num_workers=config.workers, collate_fn=Collate(crop),
                                         worker_init_fn=ignore_stop_signals,  # the main process stops them
                                         generator=loader_generator(config.seed + run.rank),
                                         pin_memory=run.device.type == "cuda")  # lets the copies run async
    scalars = ScalarLog(work_dir) if run.main else None

    def save(iteration: int) -> None:
        content = {"format": FORMAT, "model": config.model, "num_classes": dataset.num_classes,
                   "classes": list(dataset.classes), **training_state(core, optimizer, scheduler, scaler, iteration),
                   "config": asdict(config), "meta": {"dataset": config.dataset, "iteration": iteration}}
        kept = [work_dir / f"iter_{iteration}.pth"] if config.keep_checkpoints else []
        data = serialize(content)
        for path in (*kept, latest):
            write_file(path, data)
        prune_checkpoints(work_dir, config.keep_checkpoints)

    best = BestCheckpoint(work_dir / "best.pth", config.model, dataset.classes)
    if run.main:
        log.info(disk_line(core, config.keep_checkpoints))
    model.train()
    iteration, timer = start, time.perf_counter()
    bar = Progress(config.iters, f"training {config.model}", initial=start, enabled=progress)
    timing = StepTiming()
    stepping = False  # an interrupt that lands inside a step (not held off by the CLIs' handlers) cuts it short
    batches = None
    try:
        with stop_signals_blocked():  # workers begin life ignoring the stop signals sent to the process group
            batches = iter(loader)
        while iteration < config.iters:
            fetched = time.perf_counter()
            try:
                micro_batches = [next(batches) for _ in range(steps)]
            except OffsegError as error:  # a dataset file that cannot be used: stop at this whole iteration
                if run.main and iteration > start:
                    save(iteration)
                    log.info("saved %s at iteration %d (%s once the data is fixed)", latest, iteration,
                             config.resume_hint)
                raise _from_worker(error) from None
            began = time.perf_counter()
            with signals_held():  # a step runs whole: the checkpoint of iteration N holds nothing of step N + 1
                stepping = True
                loss = train_step(forward, micro_batches, optimizer, scaler, run.device, amp)
                with warnings.catch_warnings():  # AMP: the GradScaler skips the steps whose gradients overflowed
                    # (the first ones, while it finds its scale); the schedule still counts iterations, as mmengine's
                    warnings.filterwarnings("ignore", "Detected call of `lr_scheduler.step()` before "
                                            "`optimizer.step()`")
                    scheduler.step()
                iteration += 1
                stepping = False
                timing.add(began - fetched, time.perf_counter() - began)
                bar.update(1, loss=f"{loss:.3f}", **timing.figures())
            if scalars and (iteration % config.log_interval == 0 or iteration == config.iters):
                elapsed = time.perf_counter() - timer
                scalars.add(iteration, loss=loss, lr=optimizer.param_groups[0]["lr"],
                            seconds_per_iter=elapsed / config.log_interval, **timing.take())
                timer = time.perf_counter()
            if run.main and (iteration % config.checkpoint_interval == 0 or iteration == config.iters):
                save(iteration)
            if run.main and iteration % config.eval_interval == 0 and iteration < config.iters:
                best.offer(core, _log_eval(core, config, scalars, iteration), iteration)
                model.train()
    except KeyboardInterrupt as interrupt:
        take(interrupt)  # handled here: latest.pth is saved below, then the interrupt goes on
        bar.close()  # its last line (iterations done) before the message
        if run.main and stepping:
            log.warning("%s inside iteration %d, whose step was cut short: nothing saved (%s, if any, is the last "
                        "whole checkpoint)", describe(interrupt), iteration + 1, latest)
        elif run.main and iteration > start:
            save(iteration)
            log.info("%s: saved %s at iteration %d (%s)", describe(interrupt), latest, iteration, config.resume_hint)
        raise
    finally:
        bar.close()
        # the workers ignore SIGTERM: end them now (the iterator's last reference), not at interpreter exit, where
        # multiprocessing would terminate them with SIGTERM and wait for them forever. An error raised through the
        # loader (a worker's, re-raised here) holds it too, in the finished frames of its traceback, and so does the
        # error it was turned into (its context): all cleared
        error = sys.exc_info()[1]
        while error is not None:
            traceback.clear_frames(error.__traceback__)
            error = error.__context__
        batches = None
    if run.main:
        final = _log_eval(core, config, scalars, iteration)
        best.offer(core, final, iteration)
        scalars.close()
        log.info("final mIoU %.2f: %s, the paper-comparable weights (the official runs report the last checkpoint; "
                 "evaluate it with offseg-eval); best %.2f at iteration %s: %s, chosen on the same validation "
                 "split, so optimistic", 100 * final, latest, 100 * best.miou, best.iteration, best.path)
    return latest


def _log_eval(model: nn.Module, config: TrainConfig, scalars: ScalarLog, iteration: int) -> float:
    """Validate, log and record the scores; returns the mIoU."""
    layout = LAYOUTS[config.dataset]
    val = SegmentationDataset(config.dataset, config.data_root, "val", length=min(config.synthetic_length, 50),
                              size=config.synthetic_size)
    scores = evaluate(model, val, TestProtocol.for_layout(layout), config.eval_images, progress=False)
    macc = mean_accuracy(scores)
    log.info("iteration %d: mIoU %.2f, mAcc %.2f, aAcc %.2f", iteration, 100 * scores.miou, 100 * macc,
             100 * scores.aacc)
    scalars.add(iteration, mIoU=100 * scores.miou, mAcc=100 * macc, aAcc=100 * scores.aacc)
    return scores.miou
