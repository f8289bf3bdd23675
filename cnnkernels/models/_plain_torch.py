"""The same model on plain torch ops: the reference the model tests and the
training-step benchmark compare against."""

import copy

import torch
from torch.nn import functional as F

from cnnkernels import nn


class _TorchConv2dWithActivation(torch.nn.Conv2d):
    """torch's convolution, then torch's function of the fused activation's
    name (``self.activation``)."""

    def forward(self, x):
        return getattr(F, self.activation)(super().forward(x))


def plain_torch_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A deep copy of ``model`` with every cnnkernels.nn module switched back
    to its torch.nn base class (the same parameter values and buffers): a
    Conv2d with a fused activation becomes torch's convolution followed by
    torch's activation function."""
    twin = copy.deepcopy(model)
    for m in twin.modules():
        if type(m).__module__ != nn.__name__:
            continue
        activation = getattr(m, "activation", None)
        if activation is None:
            m.__class__ = next(base for base in type(m).__mro__
                               if base.__module__.startswith("torch.nn."))
        elif isinstance(m, nn.Conv2d):
            m.__class__ = _TorchConv2dWithActivation
        else:
            raise NotImplementedError(f"no plain torch form of {type(m).__name__} with a fused "
                                      f"activation")
    return twin
