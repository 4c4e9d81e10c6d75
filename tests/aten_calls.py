"""Every ATen call a block of PyTorch code makes, recorded on the CPU (``TorchDispatchMode``)."""
from torch.utils._python_dispatch import TorchDispatchMode


class RecordedCalls(TorchDispatchMode):
    """Within: ``calls`` lists the ATen ops run, in order (e.g. ``aten.convolution.default``)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append(str(func))
        return func(*args, **(kwargs or {}))
