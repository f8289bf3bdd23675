"""GoogLeNet, Inception v1 (Szegedy et al. 2014, "Going Deeper with
Convolutions"; the course's inception blocks with 1x1 bottleneck layers)
as torchvision builds it: the same modules, attribute names, forward,
initialisation and state_dict keys, so its weights load unchanged (with
aux_logits=True, as torchvision loads them). Like torchvision, the
"5x5" branch uses a 3x3 convolution (pytorch/vision#906: the ported
weights were trained so).

The one difference: the auxiliary heads' 4 x 4 average pool is a module
(``InceptionAux.avgpool``, no parameters) where torchvision calls the
function, so it runs on cnnkernels and ``patch``-style tools see it."""

from collections import namedtuple

import torch
from torch.nn import functional as F

from cnnkernels import _args, nn
from cnnkernels.models._layers import check_no_weights, check_probability

__all__ = ["BasicConv2d", "GoogLeNet", "GoogLeNetOutputs", "Inception", "InceptionAux",
           "googlenet"]

GoogLeNetOutputs = namedtuple("GoogLeNetOutputs", ["logits", "aux_logits2", "aux_logits1"])


class BasicConv2d(torch.nn.Module):
    """Convolution without bias, batch norm (eps 1e-3, the ported
    TensorFlow weights'), ReLU."""

    def __init__(self, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, bias=False, **kwargs)
        self.bn = torch.nn.BatchNorm2d(out_channels, eps=0.001)

    def forward(self, x):
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(torch.nn.Module):
    """Four parallel branches concatenated along channels: 1x1; 1x1 -> 3x3;
    1x1 -> "5x5" (3x3, see the module's docstring); 3x3/1 max pool -> 1x1."""

    def __init__(self, in_channels: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int,
                 ch5x5: int, pool_proj: int, conv_block=None):
        super().__init__()
        conv_block = conv_block or BasicConv2d
        self.branch1 = conv_block(in_channels, ch1x1, kernel_size=1)
        self.branch2 = torch.nn.Sequential(conv_block(in_channels, ch3x3red, kernel_size=1),
                                           conv_block(ch3x3red, ch3x3, kernel_size=3, padding=1))
        self.branch3 = torch.nn.Sequential(conv_block(in_channels, ch5x5red, kernel_size=1),
                                           conv_block(ch5x5red, ch5x5, kernel_size=3, padding=1))
        self.branch4 = torch.nn.Sequential(
            nn.MaxPool2d(kernel_size=3, stride=1, padding=1, ceil_mode=True),
            conv_block(in_channels, pool_proj, kernel_size=1))

    def forward(self, x):
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], 1)


class InceptionAux(torch.nn.Module):
    """Auxiliary classifier on a 14 x 14 map: 4 x 4 average pool, 1x1
    convolution to 128 channels, two linear layers with ReLU and dropout."""

    def __init__(self, in_channels: int, num_classes: int, conv_block=None,
                 dropout: float = 0.7):
        super().__init__()
        conv_block = conv_block or BasicConv2d
        self.avgpool = nn.AdaptiveAvgPool2d((4, 4))
        self.conv = conv_block(in_channels, 128, kernel_size=1)
        self.fc1 = torch.nn.Linear(2048, 1024)
        self.fc2 = torch.nn.Linear(1024, num_classes)
        self.dropout = torch.nn.Dropout(p=dropout)

    def forward(self, x):
        x = torch.flatten(self.conv(self.avgpool(x)), 1)
        x = self.dropout(F.relu(self.fc1(x), inplace=True))
        return self.fc2(x)


class GoogLeNet(torch.nn.Module):
    """Input (N, 3, H, W), H, W >= 15 (224 x 224 on ImageNet). In training
    with ``aux_logits`` the forward returns GoogLeNetOutputs, otherwise the
    logits. ``init_weights`` None means True (torchvision's default without
    weights); ``transform_input`` maps ImageNet-normalised input to the
    [-1, 1] scaling the ported weights expect."""

    def __init__(self, num_classes: int = 1000, aux_logits: bool = True,
                 transform_input: bool = False, init_weights: bool | None = None,
                 blocks=None, dropout: float = 0.2, dropout_aux: float = 0.7):
        super().__init__()
        num_classes = _args.positive_int(num_classes, "num_classes")
        dropout = check_probability(dropout, "dropout")
        dropout_aux = check_probability(dropout_aux, "dropout_aux")
        if blocks is None:
            blocks = [BasicConv2d, Inception, InceptionAux]
        if len(blocks) != 3:
            raise ValueError(f"blocks must be 3 classes (convolution, inception, auxiliary), got "
                             f"{len(blocks)}")
        conv_block, inception_block, inception_aux_block = blocks
        self.aux_logits = aux_logits
        self.transform_input = transform_input

        self.conv1 = conv_block(3, 64, kernel_size=7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = conv_block(64, 64, kernel_size=1)
        self.conv3 = conv_block(64, 192, kernel_size=3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception3a = inception_block(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = inception_block(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)

        self.inception4a = inception_block(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = inception_block(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = inception_block(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = inception_block(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = inception_block(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)

        self.inception5a = inception_block(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = inception_block(832, 384, 192, 384, 48, 128, 128)

        if aux_logits:
            self.aux1 = inception_aux_block(512, num_classes, dropout=dropout_aux)
            self.aux2 = inception_aux_block(528, num_classes, dropout=dropout_aux)
        else:
            self.aux1 = None
            self.aux2 = None

        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.dropout = torch.nn.Dropout(p=dropout)
        self.fc = torch.nn.Linear(1024, num_classes)

        if init_weights is None or init_weights:
            for m in self.modules():
                if isinstance(m, torch.nn.Conv2d | torch.nn.Linear):
                    torch.nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
                elif isinstance(m, torch.nn.BatchNorm2d):
                    torch.nn.init.constant_(m.weight, 1)
                    torch.nn.init.constant_(m.bias, 0)

    def _transform_input(self, x):
        if not self.transform_input:
            return x
        # ImageNet (mean, std) normalisation -> (x - 0.5) / 0.5 per channel.
        return torch.cat([torch.unsqueeze(x[:, 0], 1) * (0.229 / 0.5) + (0.485 - 0.5) / 0.5,
                          torch.unsqueeze(x[:, 1], 1) * (0.224 / 0.5) + (0.456 - 0.5) / 0.5,
                          torch.unsqueeze(x[:, 2], 1) * (0.225 / 0.5) + (0.406 - 0.5) / 0.5], 1)

    def forward(self, x):
        x = self._transform_input(x)
        x = self.maxpool1(self.conv1(x))
        x = self.maxpool2(self.conv3(self.conv2(x)))
        x = self.maxpool3(self.inception3b(self.inception3a(x)))
        x = self.inception4a(x)
        with_aux = self.training and self.aux1 is not None
        aux1 = self.aux1(x) if with_aux else None
        x = self.inception4d(self.inception4c(self.inception4b(x)))
        aux2 = self.aux2(x) if with_aux else None
        x = self.maxpool4(self.inception4e(x))
        x = self.inception5b(self.inception5a(x))
        x = self.fc(self.dropout(torch.flatten(self.avgpool(x), 1)))
        if self.training and self.aux_logits:
            # torchvision's tuple: the first auxiliary head's logits in the
            # field it names aux_logits2 (its names are swapped relative to
            # the heads); kept, so code written for it gets the same tuple.
            return GoogLeNetOutputs(x, aux1, aux2)
        return x


def googlenet(*, weights=None, **kwargs) -> GoogLeNet:
    """GoogLeNet; ``kwargs`` are GoogLeNet's. 13,004,888 parameters by
    default (aux_logits=True, as torchvision's builder without weights),
    6,624,904 with aux_logits=False (torchvision's documented count)."""
    check_no_weights(weights)
    return GoogLeNet(**kwargs)
