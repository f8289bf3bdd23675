"""U-Net (Ronneberger et al. 2015), the course's semantic segmentation
network: an encoder of conv-conv blocks and 2x2 max pools, a decoder of
stride-2 transposed convolutions (cnnkernels' ConvTranspose2d, without
zero insertion) whose outputs are concatenated with the encoder's
same-size maps (the skip connections) before another conv-conv block,
and a 1x1 convolution to per-pixel class logits.

Each 3x3 convolution has padding 1 (the paper's are unpadded and crop the
skips), so the output has the input's size: (N, in_channels, H, W) ->
(N, num_classes, H, W), with H and W multiples of 2^depth. Each ReLU is
fused into its convolution (exact: no normalisation sits between them,
as in the paper). Channels: base_channels at the top, doubling per level
to base_channels 2^depth at the bottom (64 -> 1024 with the defaults)."""

import torch

from cnnkernels import _args, nn

__all__ = ["DoubleConv", "UNet", "unet"]


class DoubleConv(torch.nn.Sequential):
    """Two 3x3 convolutions (padding 1) with fused ReLUs."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(nn.Conv2d(in_channels, out_channels, 3, padding=1, activation="relu"),
                         nn.Conv2d(out_channels, out_channels, 3, padding=1, activation="relu"))


class UNet(torch.nn.Module):
    """``encoder[i]`` works at level i (size / 2^i, base_channels 2^i
    channels), ``pool`` halves the size between levels; ``upsample[j]``
    and ``decoder[j]`` climb from level depth - j to depth - j - 1;
    ``head`` maps to num_classes logits per pixel."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2, base_channels: int = 64,
                 depth: int = 4):
        super().__init__()
        self.in_channels = _args.positive_int(in_channels, "in_channels")
        num_classes = _args.positive_int(num_classes, "num_classes")
        base_channels = _args.positive_int(base_channels, "base_channels")
        self.depth = _args.positive_int(depth, "depth")
        widths = [base_channels * 2**level for level in range(depth + 1)]
        self.encoder = torch.nn.ModuleList(
            [DoubleConv(in_channels, widths[0])] +
            [DoubleConv(widths[level - 1], widths[level]) for level in range(1, depth + 1)])
        self.pool = nn.MaxPool2d(kernel_size=2, stride=2)
        self.upsample = torch.nn.ModuleList(
            [nn.ConvTranspose2d(widths[level], widths[level - 1], kernel_size=2, stride=2)
             for level in range(depth, 0, -1)])
        # Input: the up-sampled map and the skip, widths[level - 1] each.
        self.decoder = torch.nn.ModuleList(
            [DoubleConv(2 * widths[level - 1], widths[level - 1])
             for level in range(depth, 0, -1)])
        self.head = nn.Conv2d(widths[0], num_classes, kernel_size=1)

    def forward(self, x):
        multiple = 2**self.depth
        if (x.dim() != 4 or x.shape[1] != self.in_channels or x.shape[2] % multiple
                or x.shape[3] % multiple):
            raise ValueError(f"input must be (N, {self.in_channels}, H, W) with H and W multiples "
                             f"of 2^depth = {multiple}, got shape {tuple(x.shape)}")
        skips = []
        for level, block in enumerate(self.encoder):
            x = block(x if level == 0 else self.pool(x))
            skips.append(x)
        skips.pop()
        for upsample, block in zip(self.upsample, self.decoder, strict=True):
            x = block(torch.cat([skips.pop(), upsample(x)], 1))
        return self.head(x)


def unet(in_channels: int = 1, num_classes: int = 2, base_channels: int = 64,
         depth: int = 4) -> UNet:
    """U-Net; the defaults are the paper's widths (31,030,658 parameters)."""
    return UNet(in_channels, num_classes, base_channels, depth)
