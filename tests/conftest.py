import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # the `reference` helper module


def _has_gpu() -> bool:
    from runtime.device import cuda_device
    return cuda_device() is not None


def pytest_collection_modifyitems(config, items):
    if _has_gpu():
        return
    skip = pytest.mark.skip(reason="needs an NVIDIA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
