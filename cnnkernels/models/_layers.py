"""Building blocks the reference models share."""

import torch

from cnnkernels import nn


class Conv2dNormActivation(torch.nn.Sequential):
    """torchvision.ops.Conv2dNormActivation's layout on cnnkernels'
    convolution: a Sequential of 0 the convolution, 1 the normalisation,
    2 the activation (state_dict keys ``0.weight``, ``1.running_mean``, ...
    as torchvision's). ``padding`` None keeps the spatial size at stride 1;
    ``bias`` None means a bias only without a normalisation. The activation
    stays a module of its own: in training the batch norm sits between it
    and the convolution, so it cannot be fused into the convolution's
    epilogue."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3, stride: int = 1,
                 padding: int | None = None, groups: int = 1,
                 norm_layer=torch.nn.BatchNorm2d, activation_layer=torch.nn.ReLU,
                 dilation: int = 1, inplace: bool | None = True, bias: bool | None = None):
        if padding is None:
            padding = (kernel_size - 1) // 2 * dilation
        if bias is None:
            bias = norm_layer is None
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding,
                            dilation=dilation, groups=groups, bias=bias)]
        if norm_layer is not None:
            layers.append(norm_layer(out_channels))
        if activation_layer is not None:
            layers.append(activation_layer(**({} if inplace is None else {"inplace": inplace})))
        super().__init__(*layers)
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
