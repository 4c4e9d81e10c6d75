"""Training with the official recipe: AdamW (lr 6e-5, weight decay 0.01, head lr x10, no decay on norms and position
biases), 1,500 linear warm-up iterations then poly decay, cross-entropy with ignore index 255, AMP on GPU,
checkpoints with resume, TensorBoard scalars, multi-GPU through ``torchrun`` (DistributedDataParallel, SyncBatchNorm
as the official configs convert BN to SyncBN).
"""
from __future__ import annotations

import json
import logging
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from runtime.errors import OffsegError
from runtime.metrics import IGNORE_INDEX
from runtime.sinks import atomic_output

from .checkpoint import extract_state_dict, load_state, read_file, read_training_state
from .data.datasets import LAYOUTS, SegmentationDataset
from .data.transforms import TrainTransform
from .evaluate import evaluate
from .zoo import build_model

log = logging.getLogger(__name__)

CLASS_DEPENDENT = ("head.offset_learning.class_embed", "head.offset_learning.mask_norm.weight",
                   "head.offset_learning.mask_norm.bias")
NO_DECAY_MODULES = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@dataclass
class TrainConfig:
    model: str = "offseg-t"
    dataset: str = "synthetic"
    data_root: str | None = None
    work_dir: str = "work_dirs/offseg"
    iters: int = 160_000
    batch_size: int = 2
    crop: tuple[int, int] | None = None  # default: the dataset's official crop
    scale: tuple[int, int] | None = None  # default: the dataset's official resize scale
    lr: float = 6e-5
    weight_decay: float = 0.01
    head_lr_mult: float = 10.0
    warmup_iters: int = 1500
    poly_power: float = 1.0
    checkpoint_interval: int = 16_000
    eval_interval: int = 16_000
    log_interval: int = 50
    workers: int = 2
    seed: int = 0
    deterministic: bool = False
    resume: bool = False
    init_checkpoint: str | None = None  # official or own weights to start from (fine-tuning)
    synthetic_size: tuple[int, int] = (256, 384)
    synthetic_length: int = 1000
    eval_images: int | None = None
    extra: dict = field(default_factory=dict)

    def validate(self) -> None:
        if self.iters < 1 or self.batch_size < 1:
            raise OffsegError("--iters and --batch-size must be at least 1")
        if self.dataset not in LAYOUTS:
            raise OffsegError(f"unknown dataset {self.dataset!r}; choose from {', '.join(LAYOUTS)}")


def lr_factor(iteration: int, warmup: int, total: int, power: float) -> float:
    """mmseg's LinearLR(start_factor=1e-6, end=warmup) then PolyLR(power, eta_min=0, begin=warmup, end=total)."""
    if iteration < warmup:
        return 1e-6 + (1 - 1e-6) * iteration / warmup
    remaining = max(total - warmup, 1)
    return max(1 - (iteration - warmup) / remaining, 0.0) ** power


def parameter_groups(model: nn.Module, config: TrainConfig) -> list[dict]:
    """Four groups: backbone / head x decay / no decay (normalization layers and attention position biases)."""
    no_decay = {id(p) for m in model.modules() if isinstance(m, NO_DECAY_MODULES) for p in m.parameters()}
    no_decay |= {id(p) for n, p in model.named_parameters() if "attention_biases" in n}
    groups: dict[tuple[bool, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((name.startswith("head."), id(param) in no_decay), []).append(param)
    return [{"params": params, "lr": config.lr * (config.head_lr_mult if head else 1.0),
             "weight_decay": 0.0 if skip_decay else config.weight_decay, "name": f"{'head' if head else 'backbone'}"
             f"{'_no_decay' if skip_decay else ''}"} for (head, skip_decay), params in sorted(groups.items())]


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


def rng_state() -> dict:
    """Python, numpy and torch generator states as tensors and numbers (what the weights-only loader reads)."""
    version, python_keys, python_gauss = random.getstate()
    _, numpy_keys, position, has_gauss, numpy_gauss = np.random.get_state()
    return {"python": torch.tensor(python_keys, dtype=torch.int64), "python_version": version,
            "python_gauss": python_gauss, "numpy": torch.from_numpy(numpy_keys.astype(np.int64)),
            "numpy_position": position, "numpy_gauss": [has_gauss, numpy_gauss], "torch": torch.get_rng_state()}


def set_rng_state(state: dict) -> None:
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_position"],
                         *state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])


def resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler) -> int:
    """Restore an offseg-train checkpoint (read weights-only) into the run; returns its iteration.

    Raises OffsegError for a file that is not an offseg-train checkpoint or does not fit this run.
    """
    state = read_training_state(path)
    load_state(model, state["state_dict"], source=f"checkpoint {path}")
    problems = (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except problems as error:
        raise OffsegError(f"{path} does not fit this training run ({type(error).__name__}: {error}); move it away "
                          "to start afresh") from None
    try:
        set_rng_state(state["rng"])
    except problems:  # written before RNG states were stored as tensors: its numpy state cannot be read safely
        log.warning("%s: random generator states not restored (older checkpoint); the data order and "
                    "augmentations still continue exactly, being seeded by position", path)
    return state["iteration"]


def _collate(batch):
    images = np.stack([np.ascontiguousarray(b[0][:, :, ::-1]) for b in batch])  # BGR -> RGB
    labels = np.stack([b[1] for b in batch])
    return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels).long()


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
        with self.path.open("a") as stream:
            stream.write(json.dumps({"iter": iteration, **values}) + "\n")
        if self.writer:
            for key, value in values.items():
                self.writer.add_scalar(key, value, iteration)

    def close(self) -> None:
        if self.writer:
            self.writer.close()


def train(config: TrainConfig, progress: bool = True) -> Path:
    """Train; returns the final checkpoint (``work_dir/latest.pth``, in our own format)."""
    config.validate()
    run = Distributed()
    try:
        return _train(config, run, progress and run.main)
    finally:
        run.close()


def _train(config: TrainConfig, run: Distributed, progress: bool) -> Path:
    from .checkpoint import FORMAT

    layout = LAYOUTS[config.dataset]
    crop = tuple(config.crop or layout.crop)
    scale = tuple(config.scale or layout.train_scale)
    seed_everything(config.seed + run.rank, config.deterministic)
    if run.device.type == "cpu":
        torch.set_flush_denormal(True)  # denormal weights/gradients make CPU training many times slower
    work_dir = Path(config.work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    dataset = SegmentationDataset(config.dataset, config.data_root, "train", length=config.synthetic_length,
                                  size=config.synthetic_size, strict_labels=True)
    model = build_model(config.model, dataset.num_classes)
    if config.init_checkpoint:
        reset = init_from_checkpoint(model, config.init_checkpoint)
        if reset and run.main:
            log.info("fine-tuning to %d classes: re-initialised %s", dataset.num_classes, ", ".join(reset))
    model.to(run.device)
    if run.world > 1:
        if run.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model = nn.parallel.DistributedDataParallel(model, device_ids=[run.device.index] if run.device.index is not
                                                    None else None)
    core = model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model
    optimizer = torch.optim.AdamW(parameter_groups(core, config), lr=config.lr, betas=(0.9, 0.999))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda i: lr_factor(i, config.warmup_iters, config.iters, config.poly_power))
    scaler = torch.amp.GradScaler("cuda", enabled=run.device.type == "cuda")
    start = 0
    latest = work_dir / "latest.pth"
    if config.resume:
        if not latest.is_file():
            raise OffsegError(f"--resume: no checkpoint at {latest}")
        start = resume(latest, core, optimizer, scheduler)
        if run.main:
            log.info("resumed from %s at iteration %d", latest, start)
    stream = AugmentedStream(dataset, TrainTransform(crop=crop, scale=scale), config.seed)
    sampler = SampleStream(len(dataset), config.seed, start * config.batch_size * run.world, run.rank, run.world)
    loader = torch.utils.data.DataLoader(stream, batch_size=config.batch_size, sampler=sampler,
                                         num_workers=config.workers, collate_fn=_collate)
    mean = torch.tensor((123.675, 116.28, 103.53), device=run.device).view(1, 3, 1, 1)
    std = torch.tensor((58.395, 57.12, 57.375), device=run.device).view(1, 3, 1, 1)
    scalars = ScalarLog(work_dir) if run.main else None

    def save(iteration: int) -> None:
        content = {"format": FORMAT, "model": config.model, "num_classes": dataset.num_classes,
                   "classes": list(dataset.classes), "state_dict": core.state_dict(),
                   "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                   "iteration": iteration, "rng": rng_state(), "config": asdict(config),
                   "meta": {"dataset": config.dataset, "iteration": iteration}}
        for path in (work_dir / f"iter_{iteration}.pth", latest):
            with atomic_output(path) as tmp:
                torch.save(content, tmp)

    model.train()
    iteration, timer = start, time.perf_counter()
    bar = tqdm(total=config.iters, initial=start, desc=f"training {config.model}", disable=not progress)
    try:
        for images, labels in loader:
            images = (images.to(run.device).float() - mean) / std
            labels = labels.to(run.device)
            with torch.autocast(run.device.type, dtype=torch.float16, enabled=run.device.type == "cuda"):
                logits = model(images)
                logits = F.interpolate(logits, size=labels.shape[-2:], mode="bilinear", align_corners=False)
                loss = F.cross_entropy(logits.float(), labels, ignore_index=IGNORE_INDEX)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            iteration += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if scalars and (iteration % config.log_interval == 0 or iteration == config.iters):
                elapsed = time.perf_counter() - timer
                scalars.add(iteration, loss=loss.item(), lr=optimizer.param_groups[0]["lr"],
                            seconds_per_iter=elapsed / config.log_interval)
                timer = time.perf_counter()
            if run.main and (iteration % config.checkpoint_interval == 0 or iteration == config.iters):
                save(iteration)
            if run.main and iteration % config.eval_interval == 0 and iteration < config.iters:
                _log_eval(core, config, scalars, iteration)
                model.train()
            if iteration >= config.iters:
                break
    except KeyboardInterrupt:
        if run.main and iteration > start:
            save(iteration)
            log.info("interrupted: saved %s at iteration %d (continue with --resume)", latest, iteration)
        raise
    finally:
        bar.close()
    if run.main:
        _log_eval(core, config, scalars, iteration)
        scalars.close()
    return latest


def _log_eval(model: nn.Module, config: TrainConfig, scalars: ScalarLog, iteration: int) -> None:
    layout = LAYOUTS[config.dataset]
    val = SegmentationDataset(config.dataset, config.data_root, "val", length=min(config.synthetic_length, 50),
                              size=config.synthetic_size)
    scores = evaluate(model, val, layout.test_mode, layout.crop, layout.stride, config.eval_images, progress=False)
    log.info("iteration %d: mIoU %.2f, aAcc %.2f", iteration, 100 * scores.miou, 100 * scores.aacc)
    scalars.add(iteration, mIoU=100 * scores.miou, aAcc=100 * scores.aacc)
