"""Building blocks the reference models share."""

import torch

from cnnkernels import nn


class Conv2dNormActivation(torch.nn.Sequential):
    """torchvision.ops.Conv2dNormActivation's layout on cnnkernels'
    convolution, as the models here use it: a Sequential of 0 the
    convolution (no bias, padding that keeps the size at stride 1), 1 the
    normalisation, 2 the activation, in place (state_dict keys
    ``0.weight``, ``1.running_mean``, ... as torchvision's). The activation
    stays a module of its own: in training the batch norm sits between it
    and the convolution, so it cannot be fused into the convolution's
    epilogue."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, norm_layer=torch.nn.BatchNorm2d,
                 activation_layer=torch.nn.ReLU):
        super().__init__(nn.Conv2d(in_channels, out_channels, kernel_size, stride,
                                   (kernel_size - 1) // 2, groups=groups, bias=False),
                         norm_layer(out_channels), activation_layer(inplace=True))
        self.out_channels = out_channels


def check_no_weights(weights) -> None:
    """The builders take torchvision's ``weights`` argument so calls written
    for torchvision run unchanged, but download nothing: load torchvision's
    state dict into the model instead (the keys are the same)."""
    if weights is not None:
        raise ValueError(f"weights must be None (cnnkernels downloads no weights; load a "
                         f"torchvision state_dict with model.load_state_dict), got {weights!r}")


def check_probability(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise ValueError(f"{name} must be a probability in [0, 1], got {value!r}")
    return float(value)
