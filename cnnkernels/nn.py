"""Drop-in modules: ``cnnkernels.nn.Conv2d``, ``ConvTranspose2d``, ``MaxPool2d``, ``AvgPool2d``,
``AdaptiveAvgPool2d`` and ``AdaptiveMaxPool2d`` are the torch.nn modules of
the same name (subclasses: same constructor, parameters, state dict)
computed by cnnkernels' ops; Conv2d and ConvTranspose2d take an optional
fused ``activation``.
``patch(model)`` switches every such torch.nn module of an existing model to
its cnnkernels twin in place."""

import torch as _torch
from torch.nn import functional as _F

from cnnkernels import _args
from cnnkernels import ops as _ops

__all__ = ["AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "AvgPool2d", "Conv2d", "ConvTranspose2d",
           "MaxPool2d", "TripletMarginLoss", "patch"]


class Conv2d(_torch.nn.Conv2d):
    """``torch.nn.Conv2d`` on cnnkernels' kernels. ``activation`` (None,
    "relu", "relu6", "silu") is applied in the convolution's epilogue."""

    def __init__(self, *args, activation: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        _args.activation(activation)
        self.activation = activation

    def _conv_forward(self, input, weight, bias):
        padding = self.padding
        if self.padding_mode != "zeros":
            # torch pads reflect/replicate/circular explicitly too.
            input = _F.pad(input, self._reversed_padding_repeated_twice, mode=self.padding_mode)
            padding = 0
        return _ops.conv2d(input, weight, bias, self.stride, padding, self.dilation, self.groups,
                           activation=self.activation)

    def extra_repr(self) -> str:
        extra = f", activation={self.activation!r}" if self.activation is not None else ""
        return super().extra_repr() + extra


class ConvTranspose2d(_torch.nn.ConvTranspose2d):
    """``torch.nn.ConvTranspose2d`` on cnnkernels' kernels (forward's
    ``output_size`` chooses the output_padding as torch does). ``activation``
    (None, "relu", "relu6", "silu") is applied after the bias, fused."""

    def __init__(self, *args, activation: str | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        _args.activation(activation)
        self.activation = activation

    def forward(self, input, output_size: list[int] | None = None):
        if self.padding_mode != "zeros":
            raise ValueError("Only `zeros` padding mode is supported for ConvTranspose2d")
        output_padding = self._output_padding(input, output_size, self.stride, self.padding,
                                              self.kernel_size, 2, self.dilation)
        return _ops.conv_transpose2d(input, self.weight, self.bias, self.stride, self.padding,
                                     output_padding, self.groups, self.dilation,
                                     activation=self.activation)

    def extra_repr(self) -> str:
        extra = f", activation={self.activation!r}" if self.activation is not None else ""
        return super().extra_repr() + extra


class MaxPool2d(_torch.nn.MaxPool2d):
    def forward(self, input):
        return _ops.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                               self.ceil_mode, self.return_indices)


class AvgPool2d(_torch.nn.AvgPool2d):
    def forward(self, input):
        return _ops.avg_pool2d(input, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                               self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(_torch.nn.AdaptiveAvgPool2d):
    def forward(self, input):
        return _ops.adaptive_avg_pool2d(input, self.output_size)


class AdaptiveMaxPool2d(_torch.nn.AdaptiveMaxPool2d):
    def forward(self, input):
        return _ops.adaptive_max_pool2d(input, self.output_size, self.return_indices)


class TripletMarginLoss(_torch.nn.TripletMarginLoss):
    """``torch.nn.TripletMarginLoss`` on cnnkernels' fused triplet kernel."""

    def forward(self, anchor, positive, negative):
        return _ops.triplet_margin_loss(anchor, positive, negative, margin=self.margin,
                                        p=self.p, eps=self.eps, swap=self.swap,
                                        reduction=self.reduction)


# torch.nn module -> its cnnkernels twin (a subclass with no state of its own
# beyond the convolutions' activation, so patch can swap the class in place).
_TWINS = {twin.__mro__[1]: twin
          for twin in (Conv2d, ConvTranspose2d, MaxPool2d, AvgPool2d, AdaptiveAvgPool2d,
                       AdaptiveMaxPool2d)}


def patch(model: _torch.nn.Module) -> _torch.nn.Module:
    """Make every torch.nn Conv2d, ConvTranspose2d and 2-D pooling module in
    ``model`` run on cnnkernels, in place: parameters, buffers, hooks and the
    state dict stay as they are. A ConvTranspose2d with a padding_mode other
    than zeros (which torch itself refuses to run) is left alone. Returns
    the model."""
    for module in model.modules():
        twin = _TWINS.get(type(module))
        if twin is ConvTranspose2d and module.padding_mode != "zeros":
            continue
        if twin is not None:
            module.__class__ = twin
            if twin in (Conv2d, ConvTranspose2d):
                module.activation = None
    return model
