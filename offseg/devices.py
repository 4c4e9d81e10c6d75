"""The torch device a PyTorch command runs on: ``--device auto|cpu|cuda|cuda:N`` (auto: the first GPU when torch
sees one), checked with one sentence instead of a CUDA traceback."""
from __future__ import annotations

import re

import torch

from runtime.errors import OffsegError


def torch_device(spec: str = "auto") -> torch.device:
    """The device ``spec`` names, after checking this torch can use it."""
    spec = spec.strip().lower()
    if spec == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    match = re.fullmatch(r"cuda(?::(\d+))?", spec)
    if match is None:
        raise OffsegError(f"--device {spec!r}: give auto, cpu, cuda or cuda:N")
    if not torch.cuda.is_available():
        build = "a CPU-only build" if torch.version.cuda is None else f"built for CUDA {torch.version.cuda}"
        raise OffsegError(f"--device {spec}: torch {torch.__version__} ({build}) sees no CUDA GPU; use --device cpu")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise OffsegError(f"--device {spec}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                          f"numbered 0-{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def describe(device: torch.device) -> str:
    """``cuda:0 (NVIDIA H200)`` or ``cpu (16 threads)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"cpu ({torch.get_num_threads()} threads)"
