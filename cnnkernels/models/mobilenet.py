"""MobileNets: the course's depthwise separable convolutions.

MobileNetV1 (Howard et al. 2017): a 3x3/2 convolution, then 13 depthwise
separable blocks (3x3 depthwise, 1x1 pointwise, each with batch norm and
ReLU), global average pool, one linear layer; the paper's 224 x 224 layout
(4,231,976 parameters at width 1). No torchvision twin.

MobileNetV2 (Sandler et al. 2018): inverted residual blocks (1x1
expansion, 3x3 depthwise, linear 1x1 projection, a residual where shapes
allow) as torchvision builds it: the same modules, attribute names,
initialisation and state_dict keys, so its weights load unchanged. The
one difference: the global average pool is a module (``avgpool``, no
parameters) where torchvision calls the function, so it runs on cnnkernels
and ``patch``-style tools see it.

Convolutions and pooling run on cnnkernels (the depthwise ones on its
depthwise algorithm); batch norm, ReLU/ReLU6 and the classifiers are
torch's."""

import torch

from cnnkernels import _args, nn
from cnnkernels.models._layers import check_no_weights, check_probability
from cnnkernels.nn import Conv2dNormActivation

__all__ = ["InvertedResidual", "MobileNetV1", "MobileNetV2", "mobilenet_v1", "mobilenet_v2"]


def _positive_number(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return float(value)


def _make_divisible(v: float, divisor: int) -> int:
    """v rounded to the nearest multiple of divisor, at least divisor and
    never more than 10% below v (TensorFlow's MobileNet rule, torchvision's)."""
    new_v = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new_v + divisor if new_v < 0.9 * v else new_v


# (output channels, stride) of MobileNetV1's depthwise separable blocks.
MOBILENET_V1_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                       (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


class MobileNetV1(torch.nn.Module):
    """``features``: the stem Conv2dNormActivation then, per block, a
    depthwise Conv2dNormActivation (groups = channels) and a pointwise one;
    ``classifier``: dropout and a linear layer. Channel counts are
    int(c * width_mult) (the paper's width multiplier alpha), at least 1.
    Input (N, 3, H, W), 224 x 224 on ImageNet (7 x 7 before the pool)."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.0):
        super().__init__()
        num_classes = _args.positive_int(num_classes, "num_classes")
        width_mult = _positive_number(width_mult, "width_mult")
        dropout = check_probability(dropout, "dropout")

        def width(c: int) -> int:
            return max(1, int(c * width_mult))

        channels = width(32)
        layers = [Conv2dNormActivation(3, channels, stride=2)]
        for out_channels, stride in MOBILENET_V1_BLOCKS:
            layers += [Conv2dNormActivation(channels, channels, stride=stride, groups=channels),
                       Conv2dNormActivation(channels, width(out_channels), kernel_size=1)]
            channels = width(out_channels)
        self.features = torch.nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = torch.nn.Sequential(torch.nn.Dropout(p=dropout),
                                              torch.nn.Linear(channels, num_classes))
        _init_like_torchvision_mobilenet(self)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class InvertedResidual(torch.nn.Module):
    """x + project(depthwise(expand(x))) where stride is 1 and the channels
    match, else without the residual: ``conv`` is the Sequential of the 1x1
    expansion Conv2dNormActivation (omitted at expand_ratio 1), the 3x3
    depthwise one, the 1x1 projection convolution and its batch norm (no
    activation: the linear bottleneck)."""

    def __init__(self, inp: int, oup: int, stride: int, expand_ratio: int, norm_layer=None):
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride!r}")
        norm_layer = norm_layer or torch.nn.BatchNorm2d
        self.stride = stride
        hidden_dim = round(inp * expand_ratio)
        self.use_res_connect = stride == 1 and inp == oup
        layers = []
        if expand_ratio != 1:
            layers.append(Conv2dNormActivation(inp, hidden_dim, kernel_size=1,
                                               norm_layer=norm_layer,
                                               activation_layer=torch.nn.ReLU6))
        layers += [Conv2dNormActivation(hidden_dim, hidden_dim, stride=stride, groups=hidden_dim,
                                        norm_layer=norm_layer, activation_layer=torch.nn.ReLU6),
                   nn.Conv2d(hidden_dim, oup, 1, 1, 0, bias=False),
                   norm_layer(oup)]
        self.conv = torch.nn.Sequential(*layers)
        self.out_channels = oup
        self._is_cn = stride > 1

    def forward(self, x):
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


# t (expansion), c (output channels), n (blocks), s (first block's stride).
MOBILENET_V2_SETTING = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                        (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))


class MobileNetV2(torch.nn.Module):
    """``features``: a 3x3/2 Conv2dNormActivation (ReLU6), the inverted
    residual blocks of ``inverted_residual_setting`` (t, c, n, s rows),
    a 1x1 Conv2dNormActivation to ``last_channel`` (1280, times width_mult
    above 1); global average pool; ``classifier``: dropout and a linear
    layer. Channels scale by width_mult, rounded to multiples of
    round_nearest. Input (N, 3, H, W), 224 x 224 on ImageNet."""

    def __init__(self, num_classes: int = 1000, width_mult: float = 1.0,
                 inverted_residual_setting=None, round_nearest: int = 8, block=None,
                 norm_layer=None, dropout: float = 0.2):
        super().__init__()
        num_classes = _args.positive_int(num_classes, "num_classes")
        width_mult = _positive_number(width_mult, "width_mult")
        round_nearest = _args.positive_int(round_nearest, "round_nearest")
        dropout = check_probability(dropout, "dropout")
        block = block or InvertedResidual
        norm_layer = norm_layer or torch.nn.BatchNorm2d
        if inverted_residual_setting is None:
            inverted_residual_setting = MOBILENET_V2_SETTING
        if len(inverted_residual_setting) == 0 or len(inverted_residual_setting[0]) != 4:
            raise ValueError(f"inverted_residual_setting must be a non-empty list of (t, c, n, s) "
                             f"rows, got {inverted_residual_setting!r}")

        input_channel = _make_divisible(32 * width_mult, round_nearest)
        self.last_channel = _make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features = [Conv2dNormActivation(3, input_channel, stride=2, norm_layer=norm_layer,
                                         activation_layer=torch.nn.ReLU6)]
        for t, c, n, s in inverted_residual_setting:
            output_channel = _make_divisible(c * width_mult, round_nearest)
            for i in range(n):
                features.append(block(input_channel, output_channel, s if i == 0 else 1,
                                      expand_ratio=t, norm_layer=norm_layer))
                input_channel = output_channel
        features.append(Conv2dNormActivation(input_channel, self.last_channel, kernel_size=1,
                                             norm_layer=norm_layer,
                                             activation_layer=torch.nn.ReLU6))
        self.features = torch.nn.Sequential(*features)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.classifier = torch.nn.Sequential(torch.nn.Dropout(p=dropout),
                                              torch.nn.Linear(self.last_channel, num_classes))
        _init_like_torchvision_mobilenet(self)

    def forward(self, x):
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


def _init_like_torchvision_mobilenet(model: torch.nn.Module) -> None:
    """Convolutions Kaiming-normal (fan out), norms 1 and 0, linear layers
    N(0, 0.01), biases 0: torchvision's MobileNetV2 initialisation."""
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            torch.nn.init.kaiming_normal_(m.weight, mode="fan_out")
            if m.bias is not None:
                torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.BatchNorm2d | torch.nn.GroupNorm):
            torch.nn.init.ones_(m.weight)
            torch.nn.init.zeros_(m.bias)
        elif isinstance(m, torch.nn.Linear):
            torch.nn.init.normal_(m.weight, 0, 0.01)
            torch.nn.init.zeros_(m.bias)


def mobilenet_v1(num_classes: int = 1000, width_mult: float = 1.0,
                 dropout: float = 0.0) -> MobileNetV1:
    """MobileNetV1, 4,231,976 parameters at width_mult 1."""
    return MobileNetV1(num_classes, width_mult, dropout)


def mobilenet_v2(*, weights=None, **kwargs) -> MobileNetV2:
    """MobileNetV2, 3,504,872 parameters; ``kwargs`` are MobileNetV2's
    (num_classes, width_mult, dropout, ...)."""
    check_no_weights(weights)
    return MobileNetV2(**kwargs)
