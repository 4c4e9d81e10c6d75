"""Every ATen call a block of PyTorch code makes, recorded on the CPU (``TorchDispatchMode``)."""
from torch.utils._python_dispatch import TorchDispatchMode

# ATen ops that only describe memory (views, allocation, metadata): no kernel on a GPU
NO_KERNEL = {"view", "_unsafe_view", "reshape", "permute", "transpose", "t", "expand", "slice", "select", "unsqueeze",
             "squeeze", "alias", "as_strided", "detach", "split", "split_with_sizes", "chunk", "unbind", "narrow",
             "flatten", "unflatten", "unfold", "lift_fresh", "empty", "empty_like", "new_empty", "view_as",
             "_reshape_alias"}


class RecordedCalls(TorchDispatchMode):
    """Within: ``calls`` lists the ATen ops run, in order (e.g. ``aten.convolution.default``)."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.calls.append(str(func))
        return func(*args, **(kwargs or {}))
