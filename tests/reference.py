"""The pinned official reference (tests/data/reference, copied from shared/reference): an official-format
checkpoint rebuilt from the key manifest with the deterministic fill rule, and the expected outputs."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

REFERENCE = Path(__file__).parent / "data" / "reference"
INPUT_512_SHA256 = "35d7292d8f61b6e99cd311fd518013719ff632fdc5e1a74cc1135be39d23b5e3"


def manifest(name: str) -> dict:
    return json.loads((REFERENCE / f"{name}.keys.json").read_text())


def expected(name: str) -> dict[str, np.ndarray]:
    with np.load(REFERENCE / f"{name}.expected.npz") as data:
        return {k: data[k] for k in data.files}


def fill(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The reference README's deterministic weight-fill rule."""
    out = {}
    for i, key in enumerate(sorted(state_dict)):
        t = state_dict[key]
        if not t.is_floating_point():
            out[key] = t.clone()
            continue
        g = torch.Generator().manual_seed(i)
        if key.endswith("running_var"):
            v = 0.5 + torch.rand(t.shape, generator=g)
        elif key.endswith("running_mean"):
            v = 0.1 * torch.randn(t.shape, generator=g)
        elif key.endswith(".weight") and t.dim() == 1:
            v = 1 + 0.1 * torch.randn(t.shape, generator=g)
        elif key.endswith(".weight"):
            v = torch.randn(t.shape, generator=g) / (t.numel() / t.shape[0]) ** 0.5
        else:
            v = 0.1 * torch.randn(t.shape, generator=g)
        out[key] = v.to(t.dtype)
    return out


def official_state_dict(name: str) -> dict[str, torch.Tensor]:
    """The full official state dict of ``name`` (keys in official order), filled by the rule."""
    data = expected(name)
    zeros = {}
    for key, shape, dtype in manifest(name)["keys"]:
        buffer = data.get(f"buffer:{key}")
        zeros[key] = torch.from_numpy(buffer) if buffer is not None else torch.zeros(shape, dtype=getattr(torch, dtype))
    filled = fill(zeros)
    return {key: filled[key] for key in zeros}


def input_512() -> np.ndarray:
    return torch.randn(1, 3, 512, 512, generator=torch.Generator().manual_seed(0)).numpy()
