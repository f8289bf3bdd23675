"""VGG-16 (Simonyan and Zisserman 2014; the course's 13 convolutions and 3
linear layers, filters doubling 64 -> 512) as torchvision builds it:
configuration "D" without batch norm, a 7 x 7 adaptive average pool,
torchvision's initialisation and state_dict keys, so its weights load
unchanged. Each ReLU after a convolution is fused into the convolution's
epilogue (exact: the ReLU is its only reader), its slot in ``features``
kept by an Identity: ``features[i]`` is the layer torchvision's index i
names (style transfer's relu1_1 is ``features[1]``, its output the ReLU's)."""

import torch

from cnnkernels import _args, nn
from cnnkernels.models._layers import check_no_weights, check_probability

__all__ = ["VGG", "make_layers", "vgg16"]

# Output channels of each 3x3 convolution, "M" a 2x2 max pool.
VGG16_LAYERS = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M",
                512, 512, 512, "M")


def make_layers(layers) -> torch.nn.Sequential:
    """3x3 convolutions (padding 1, ReLU fused, an Identity in the ReLU's
    slot) and 2x2 max pools as ``layers`` lists them."""
    modules = []
    in_channels = 3
    for v in layers:
        if v == "M":
            modules.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            modules += [nn.Conv2d(in_channels, v, kernel_size=3, padding=1, activation="relu"),
                        torch.nn.Identity()]
            in_channels = v
    return torch.nn.Sequential(*modules)


class VGG(torch.nn.Module):
    """``features``, a 7 x 7 adaptive average pool, three linear layers
    with ReLU and dropout. Input (N, 3, H, W), H, W >= 32 for VGG-16's five
    pools (224 x 224 on ImageNet)."""

    def __init__(self, features: torch.nn.Module, num_classes: int = 1000,
                 init_weights: bool = True, dropout: float = 0.5):
        super().__init__()
        num_classes = _args.positive_int(num_classes, "num_classes")
        dropout = check_probability(dropout, "dropout")
        self.features = features
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
        self.classifier = torch.nn.Sequential(
            torch.nn.Linear(512 * 7 * 7, 4096),
            torch.nn.ReLU(True),
            torch.nn.Dropout(p=dropout),
            torch.nn.Linear(4096, 4096),
            torch.nn.ReLU(True),
            torch.nn.Dropout(p=dropout),
            torch.nn.Linear(4096, num_classes),
        )
        if init_weights:
            for m in self.modules():
                if isinstance(m, torch.nn.Conv2d):
                    torch.nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    if m.bias is not None:
                        torch.nn.init.constant_(m.bias, 0)
                elif isinstance(m, torch.nn.BatchNorm2d):
                    torch.nn.init.constant_(m.weight, 1)
                    torch.nn.init.constant_(m.bias, 0)
                elif isinstance(m, torch.nn.Linear):
                    torch.nn.init.normal_(m.weight, 0, 0.01)
                    torch.nn.init.constant_(m.bias, 0)

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def vgg16(*, weights=None, **kwargs) -> VGG:
    """VGG-16, 138,357,544 parameters; ``kwargs`` are VGG's."""
    check_no_weights(weights)
    return VGG(make_layers(VGG16_LAYERS), **kwargs)
