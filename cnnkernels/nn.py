"""Drop-in modules: ``cnnkernels.nn.Conv2d`` is ``torch.nn.Conv2d`` (same
constructor, parameters, state dict) computed by cnnkernels' ops, with an
optional fused ``activation``; ``patch(model)`` switches every
``torch.nn.Conv2d`` of an existing model to it in place."""


import torch
import torch.nn.functional as F

from cnnkernels import _args
from cnnkernels.ops.conv2d import conv2d


class Conv2d(torch.nn.Conv2d):
    """``torch.nn.Conv2d`` on cnnkernels' kernels. ``activation`` (None,
    "relu", "relu6") is applied in the convolution's epilogue."""

    def __init__(self, *args, activation: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        _args.activation_code(activation)
        self.activation = activation

    def _conv_forward(self, input, weight, bias):
        padding = self.padding
        if self.padding_mode != "zeros":
            # torch pads reflect/replicate/circular explicitly too.
            input = F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                      activation=self.activation)

    def extra_repr(self) -> str:
        extra = f", activation={self.activation!r}" if self.activation is not None else ""
        return super().extra_repr() + extra


def patch(model: torch.nn.Module) -> torch.nn.Module:
    """Make every ``torch.nn.Conv2d`` in ``model`` run on cnnkernels, in
    place: parameters, buffers, hooks and the state dict stay as they are.
    Returns the model."""
    for module in model.modules():
        if type(module) is torch.nn.Conv2d:
            module.__class__ = Conv2d
            module.activation = None
    return model
