"""The training state a checkpoint holds besides the weights, so that a resumed run continues bit for bit.

Saved: optimizer, schedule, GradScaler and every random generator (Python, numpy, torch, CUDA when present), as
tensors, numbers and plain containers (what the weights-only loader reads). The data order needs no state of its
own: the sampler restarts at the stream position of the iteration, each sample's augmentation is seeded by its
position, and DataLoader workers take their seeds from ``loader_generator``, never from torch's global generator.
"""
from __future__ import annotations

import logging
import random
from pathlib import Path

import numpy as np
import torch
from torch import nn

from runtime.errors import OffsegError

from .checkpoint import load_state, read_training_state

log = logging.getLogger(__name__)


def rng_state() -> dict:
    """Python, numpy, torch and (when present) CUDA generator states."""
    version, python_keys, python_gauss = random.getstate()
    _, numpy_keys, position, has_gauss, numpy_gauss = np.random.get_state()
    return {"python": torch.tensor(python_keys, dtype=torch.int64), "python_version": version,
            "python_gauss": python_gauss, "numpy": torch.from_numpy(numpy_keys.astype(np.int64)),
            "numpy_position": position, "numpy_gauss": [has_gauss, numpy_gauss], "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore ``rng_state()``'s generators; CUDA's only when this machine has as many GPUs as the saving one."""
    random.setstate((state["python_version"], tuple(state["python"].tolist()), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_position"],
                         *state["numpy_gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda", [])
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    elif cuda:
        log.warning("CUDA generator states of %d GPU(s) not restored on this machine: dropout and drop-path masks "
                    "will differ from an uninterrupted run", len(cuda))


def loader_generator(seed: int) -> torch.Generator:
    """The DataLoader's own generator: its worker seeds then depend on ``seed`` only, and starting the loader
    draws nothing from torch's global generator (which a checkpoint restores)."""
    return torch.Generator().manual_seed(seed)


def training_state(model: nn.Module, optimizer: torch.optim.Optimizer, scheduler, scaler: torch.amp.GradScaler,
                   iteration: int) -> dict:
    """Everything ``resume`` restores, taken now: call it only between two steps."""
    return {"state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(), "iteration": iteration,
            "rng": rng_state()}


def resume(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler,
           scaler: torch.amp.GradScaler) -> int:
    """Restore an offseg-train checkpoint (read weights-only) into the run; returns its iteration.

    Raises OffsegError for a file that is not an offseg-train checkpoint or does not fit this run.
    """
    state = read_training_state(path)
    load_state(model, state["state_dict"], source=f"checkpoint {path}")
    problems = (KeyError, TypeError, ValueError, IndexError, AttributeError, RuntimeError)
    try:
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if scaler.is_enabled() and state.get("scaler"):  # empty when saved without --amp: a fresh scale then
            scaler.load_state_dict(state["scaler"])
    except problems as error:
        raise OffsegError(f"{path} does not fit this training run ({type(error).__name__}: {error}); move it away "
                          "to start afresh") from None
    try:
        set_rng_state(state["rng"])
    except problems:  # written before RNG states were stored as tensors: its numpy state cannot be read safely
        log.warning("%s: random generator states not restored (older checkpoint); the data order and "
                    "augmentations still continue exactly, being seeded by position", path)
    return state["iteration"]
