"""LeNet-5 as the course notes' table gives it (LeCun et al. 1998):

    layer            activation    parameters
    input            32 x 32 x 3   0
    conv1  5x5/1, 6  28 x 28 x 6   456
    pool1  2x2/2     14 x 14 x 6   0
    conv2  5x5/1, 16 10 x 10 x 16  2,416
    pool2  2x2/2     5 x 5 x 16    0
    fc3              120           48,120
    fc4              84            10,164
    fc5 (softmax)    10            850

The pools are average pools (the notes: "two average pooling layers").
The activation is a squashing function, as LeNet-5's (the notes: AlexNet
"used ReLU instead of sigmoid"): "tanh" by default (LeCun's was a scaled
tanh; it trains in a hundred steps where the sigmoid sits on a plateau
first), or "sigmoid", or "relu", which the convolutions fuse into their
epilogue. fc5 returns the logits: the softmax belongs to the loss
(cross-entropy). ``in_channels`` 1 takes grey images (conv1 then has 156
parameters)."""

import torch

from cnnkernels import _args, nn

__all__ = ["LeNet5", "lenet5"]

ACTIVATIONS = {"sigmoid": torch.nn.Sigmoid, "tanh": torch.nn.Tanh, "relu": torch.nn.ReLU}


class LeNet5(torch.nn.Module):
    """Input (N, in_channels, 32, 32); output (N, num_classes) logits."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, activation: str = "tanh"):
        super().__init__()
        num_classes = _args.positive_int(num_classes, "num_classes")
        self.in_channels = _args.positive_int(in_channels, "in_channels")
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got "
                             f"{activation!r}")
        fused = "relu" if activation == "relu" else None
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, activation=fused)
        self.pool1 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5, activation=fused)
        self.pool2 = nn.AvgPool2d(kernel_size=2, stride=2)
        self.fc3 = torch.nn.Linear(16 * 5 * 5, 120)
        self.fc4 = torch.nn.Linear(120, 84)
        self.fc5 = torch.nn.Linear(84, num_classes)
        self.activation = ACTIVATIONS[activation]()

    def _conv(self, conv: nn.Conv2d, x):
        x = conv(x)
        return x if conv.activation is not None else self.activation(x)

    def forward(self, x):
        if x.dim() != 4 or tuple(x.shape[1:]) != (self.in_channels, 32, 32):
            raise ValueError(f"input must be (N, {self.in_channels}, 32, 32), got shape "
                             f"{tuple(x.shape)}")
        x = self.pool1(self._conv(self.conv1, x))
        x = self.pool2(self._conv(self.conv2, x))
        x = self.activation(self.fc3(torch.flatten(x, 1)))
        return self.fc5(self.activation(self.fc4(x)))


def lenet5(num_classes: int = 10, in_channels: int = 3, activation: str = "tanh") -> LeNet5:
    """LeNet-5 of the course notes' table: 62,006 parameters with 3 input
    channels and 10 classes."""
    return LeNet5(num_classes, in_channels, activation)
