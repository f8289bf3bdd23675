"""AlexNet (Krizhevsky 2014, "One weird trick for parallelizing
convolutional neural networks", the single-tower variant torchvision
ships): five convolutions with ReLU and three max pools, a 6 x 6 adaptive
average pool, three linear layers. Parameters, state_dict keys and module
indices are torchvision's, so its weights load unchanged; each ReLU after a
convolution is fused into the convolution's epilogue (exact: the ReLU is
the convolution's only reader), its slot in ``features`` kept by an
Identity, so ``features[i]`` means what it means in torchvision."""

import torch

from cnnkernels import _args, nn
from cnnkernels.models._layers import check_no_weights, check_probability

__all__ = ["AlexNet", "alexnet"]


def conv_relu(in_channels: int, out_channels: int, kernel_size: int, **kwargs) -> list:
    """A convolution with its ReLU fused, and the Identity that keeps the
    ReLU's index."""
    return [nn.Conv2d(in_channels, out_channels, kernel_size, activation="relu", **kwargs),
            torch.nn.Identity()]


class AlexNet(torch.nn.Module):
    """Input (N, 3, H, W) with H, W >= 63 (224 x 224 on ImageNet)."""

    def __init__(self, num_classes: int = 1000, dropout: float = 0.5):
        super().__init__()
        num_classes = _args.positive_int(num_classes, "num_classes")
        dropout = check_probability(dropout, "dropout")
        self.features = torch.nn.Sequential(
            *conv_relu(3, 64, 11, stride=4, padding=2),
            nn.MaxPool2d(kernel_size=3, stride=2),
            *conv_relu(64, 192, 5, padding=2),
            nn.MaxPool2d(kernel_size=3, stride=2),
            *conv_relu(192, 384, 3, padding=1),
            *conv_relu(384, 256, 3, padding=1),
            *conv_relu(256, 256, 3, padding=1),
            nn.MaxPool2d(kernel_size=3, stride=2),
        )
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))
        self.classifier = torch.nn.Sequential(
            torch.nn.Dropout(p=dropout),
            torch.nn.Linear(256 * 6 * 6, 4096),
            torch.nn.ReLU(inplace=True),
            torch.nn.Dropout(p=dropout),
            torch.nn.Linear(4096, 4096),
            torch.nn.ReLU(inplace=True),
            torch.nn.Linear(4096, num_classes),
        )

    def forward(self, x):
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def alexnet(*, weights=None, **kwargs) -> AlexNet:
    """AlexNet, 61,100,840 parameters; ``kwargs`` are AlexNet's."""
    check_no_weights(weights)
    return AlexNet(**kwargs)
