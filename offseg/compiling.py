"""``torch.compile`` for the CLIs: the backend named by the user, checked up front with one sentence instead of a
traceback from the first compiled step (an unknown backend, no Triton for a GPU, no C++ compiler for the CPU)."""
from __future__ import annotations

import importlib.util
import os
import shutil

import torch

from runtime.errors import OffsegError


def check_compile_backend(backend: str, device: torch.device) -> None:
    """Raises OffsegError when ``torch.compile(backend=backend)`` cannot run on ``device`` here."""
    import torch._dynamo

    known = torch._dynamo.list_backends(exclude_tags=())
    if backend not in known:
        raise OffsegError(f"--compile {backend}: torch {torch.__version__} has no such backend; it has "
                          f"{', '.join(sorted(known))}")
    if backend != "inductor":
        return
    if device.type == "cuda" and importlib.util.find_spec("triton") is None:
        raise OffsegError("--compile inductor on a GPU needs Triton (pip install triton, the version your torch "
                          "names), or give --compile aot_eager")
    if device.type == "cpu" and not any(shutil.which(name) for name in (os.environ.get("CXX", "g++"), "c++",
                                                                        "clang++")):
        raise OffsegError("--compile inductor on the CPU needs a C++ compiler (apt install g++); none was found")
