"""The layers of the reference models that the conv2d, conv_transpose2d and
pool2d benchmarks run (the cases of those families), the table columns that
name them and show a convolution's results, and the float64 reference the
layer families share."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from cnnkernels.bench import report

# --quick caps a layer's H and W at this size.
QUICK_MAX_SIZE = 16


@dataclass(frozen=True)
class Layer:
    """A layer of a reference model: a benchmark case grouped under its model
    (the driver's case protocol). Every layer has ``height`` and ``width``."""

    model: str
    name: str

    @property
    def group(self) -> str:
        return self.model

    def quick(self) -> Layer:
        """The layer with H and W capped at QUICK_MAX_SIZE, for a --quick smoke run."""
        return replace(self, height=min(self.height, QUICK_MAX_SIZE),
                       width=min(self.width, QUICK_MAX_SIZE))


@dataclass(frozen=True)
class _Convolution(Layer):
    """What a convolution layer's rates and shape column need of its fields
    (in_channels, height, width, out_channels, kernel, stride, groups) and of
    its ``flops`` and ``min_bytes``."""

    def work(self, batch: int, dtype: torch.dtype, direction: str) -> tuple[int, int]:
        """(flops, minimum bytes) of one direction; backward is two
        convolutions' worth of flops (grad_input and grad_weight)."""
        passes = 1 if direction == "forward" else 2
        return self.flops(batch) * passes, self.min_bytes(batch, dtype, direction)

    def describe(self) -> str:
        """e.g. ``64x56x56->64 3x3 s2 g64``: what the table's shape column shows."""
        text = (f"{self.in_channels}x{self.height}x{self.width}->{self.out_channels} "
                f"{self.kernel}x{self.kernel}")
        if self.stride != 1:
            text += f" s{self.stride}"
        if self.groups != 1:
            text += f" g{self.groups}"
        return text


@dataclass(frozen=True)
class ConvLayer(_Convolution):
    """One convolution of a reference model: input C x H x W, K filters of
    R x R, and the activation the model applies right after it (a ReLU that
    follows a batch norm counts: at inference the norm folds into the
    convolution's weight and bias); ``residual``: a shortcut tensor of the
    output's shape is added before the activation (a ResNet block's end)."""

    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    activation: str | None = None
    residual: bool = False

    def output_size(self) -> tuple[int, int]:
        def size(n: int) -> int:
            return (n + 2 * self.padding - self.kernel) // self.stride + 1

        return size(self.height), size(self.width)

    def flops(self, batch: int) -> int:
        """Multiply-adds times two of one forward pass: 2 N K P Q (C/groups) R S."""
        p, q = self.output_size()
        return (2 * batch * self.out_channels * p * q * (self.in_channels // self.groups)
                * self.kernel * self.kernel)

    def min_bytes(self, batch: int, dtype: torch.dtype, direction: str) -> int:
        """DRAM traffic if every tensor moved exactly once: forward reads x, w, b
        (and the residual) and writes y; backward reads gy (and y, for the
        activation's gradient) in each of its two passes, reads w and writes
        gx, reads x and writes gw."""
        p, q = self.output_size()
        x = batch * self.in_channels * self.height * self.width
        w = self.out_channels * (self.in_channels // self.groups) * self.kernel ** 2
        y = batch * self.out_channels * p * q
        if direction == "forward":
            elements = x + w + self.out_channels + y * (2 if self.residual else 1)
        else:
            per_pass_y = y * (2 if self.activation else 1)
            elements = 2 * per_pass_y + (w + x) + (x + w)
        return elements * dtype.itemsize


# MobileNet v1 (Howard et al. 2017, table 1): after the stem (32 channels at
# 112 x 112), each depthwise 3x3 as (channels, stride), each followed by a
# 1 x 1 to the next entry's channels (1024 for the last).
_MOBILENET_V1 = ((32, 1), (64, 2), (128, 1), (128, 2), (256, 1), (256, 2), (512, 1),
                 (512, 1), (512, 1), (512, 1), (512, 1), (512, 2), (1024, 1))
# MobileNet v2 (Sandler et al. 2018, table 2): the bottleneck stages as
# (expansion t, output channels c, repeats n, first stride s) after the stem
# (32 channels at 112 x 112); a block's depthwise 3x3 runs on its input
# channels times t.
_MOBILENET_V2 = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                 (6, 160, 3, 2), (6, 320, 1, 1))


def _mobilenet_depthwise() -> tuple[ConvLayer, ...]:
    """Every distinct depthwise 3x3 of MobileNet v1 and v2 (with its ReLU6),
    derived from the architectures' tables above: v1's ``dw<C>[.s2]``, v2's
    ``v2.dw<C>[.s2]`` with C the expanded channels."""
    layers: dict[tuple, ConvLayer] = {}

    def add(prefix: str, channels: int, size: int, stride: int) -> int:
        name = f"{prefix}dw{channels}" + (f".s{stride}" if stride > 1 else "")
        layers.setdefault((prefix, channels, size, stride), ConvLayer(
            "MobileNet", name, channels, size, size, channels, 3, stride, 1, channels, "relu6"))
        return (size - 1) // stride + 1

    size = 112
    for channels, stride in _MOBILENET_V1:
        size = add("", channels, size, stride)
    size, channels = 112, 32
    for expansion, out_channels, repeats, first_stride in _MOBILENET_V2:
        for block in range(repeats):
            size = add("v2.", channels * expansion, size, first_stride if block == 0 else 1)
            channels = out_channels
    return tuple(layers.values())


_L = ConvLayer
# Every layer gets a bias (a folded batch norm at inference). LeNet-5's tanh
# and YOLO's leaky ReLU are not fused activations, so those layers have none.
CONV_LAYERS: tuple[ConvLayer, ...] = (
    #  model          layer          C    H    W    K  RxS str pad groups act
    _L("LeNet-5",     "conv1",       1,  32,  32,   6,  5),
    _L("LeNet-5",     "conv2",       6,  14,  14,  16,  5),
    _L("AlexNet",     "conv1",       3, 224, 224,  64, 11,  4,  2,   1, "relu"),
    _L("AlexNet",     "conv2",      64,  27,  27, 192,  5,  1,  2,   1, "relu"),
    _L("AlexNet",     "conv3",     192,  13,  13, 384,  3,  1,  1,   1, "relu"),
    _L("AlexNet",     "conv4",     384,  13,  13, 256,  3,  1,  1,   1, "relu"),
    _L("AlexNet",     "conv5",     256,  13,  13, 256,  3,  1,  1,   1, "relu"),
    _L("VGG-16",      "conv1_1",     3, 224, 224,  64,  3,  1,  1,   1, "relu"),
    _L("VGG-16",      "conv1_2",    64, 224, 224,  64,  3,  1,  1,   1, "relu"),
    _L("VGG-16",      "conv2_2",   128, 112, 112, 128,  3,  1,  1,   1, "relu"),
    _L("VGG-16",      "conv3_2",   256,  56,  56, 256,  3,  1,  1,   1, "relu"),
    _L("VGG-16",      "conv4_2",   512,  28,  28, 512,  3,  1,  1,   1, "relu"),
    _L("VGG-16",      "conv5_2",   512,  14,  14, 512,  3,  1,  1,   1, "relu"),
    # ResNet-50 (torchvision, stride on the 3x3): every distinct 3x3, the 1x1s
    # of a block of each stage (1x1b: the block's end, without and with its
    # shortcut added before the ReLU, fused) and the strided 1x1 downsamples.
    _L("ResNet-50",   "conv1",       3, 224, 224,  64,  7,  2,  3,   1, "relu"),
    _L("ResNet-50",   "layer1.1x1a",64,  56,  56,  64,  1,  1,  0,   1, "relu"),
    _L("ResNet-50",   "layer1.3x3", 64,  56,  56,  64,  3,  1,  1,   1, "relu"),
    _L("ResNet-50",   "layer1.1x1b",64,  56,  56, 256,  1),
    _L("ResNet-50",   "layer1.1x1b",64,  56,  56, 256,  1,  1,  0,   1, "relu", True),
    _L("ResNet-50",   "layer2.3x3.s2",128, 56, 56, 128, 3,  2,  1,   1, "relu"),
    _L("ResNet-50",   "layer2.1x1a",512, 28,  28, 128,  1,  1,  0,   1, "relu"),
    _L("ResNet-50",   "layer2.3x3",128,  28,  28, 128,  3,  1,  1,   1, "relu"),
    _L("ResNet-50",   "layer2.1x1b",128, 28,  28, 512,  1,  1,  0,   1, "relu", True),
    _L("ResNet-50",   "layer2.down",256, 56,  56, 512,  1,  2),
    _L("ResNet-50",   "layer3.3x3.s2",256, 28, 28, 256, 3,  2,  1,   1, "relu"),
    _L("ResNet-50",   "layer3.1x1a",1024, 14, 14, 256,  1,  1,  0,   1, "relu"),
    _L("ResNet-50",   "layer3.3x3",256,  14,  14, 256,  3,  1,  1,   1, "relu"),
    _L("ResNet-50",   "layer3.1x1b",256, 14,  14,1024,  1,  1,  0,   1, "relu", True),
    _L("ResNet-50",   "layer3.down",512, 28,  28,1024,  1,  2),
    _L("ResNet-50",   "layer4.3x3.s2",512, 14, 14, 512, 3,  2,  1,   1, "relu"),
    _L("ResNet-50",   "layer4.3x3",512,   7,   7, 512,  3,  1,  1,   1, "relu"),
    _L("ResNet-50",   "layer4.1x1b",512,  7,   7,2048,  1,  1,  0,   1, "relu", True),
    _L("Inception",   "3a.1x1",    192,  28,  28,  64,  1,  1,  0,   1, "relu"),
    _L("Inception",   "3a.3x3",     96,  28,  28, 128,  3,  1,  1,   1, "relu"),
    _L("Inception",   "3a.5x5",     16,  28,  28,  32,  5,  1,  2,   1, "relu"),
    *_mobilenet_depthwise(),
    _L("MobileNet",   "pw32-64",    32, 112, 112,  64,  1,  1,  0,   1, "relu6"),
    _L("MobileNet",   "pw512",     512,  14,  14, 512,  1,  1,  0,   1, "relu6"),
    # MobileNetV2's pointwise convolutions: the expansions (ReLU6) and the linear
    # projections of the bottlenecks at 56, 14 and 7, and the last 1x1.
    _L("MobileNet",   "v2.pw24-144",24,  56,  56, 144,  1,  1,  0,   1, "relu6"),
    _L("MobileNet",   "v2.pw144-24",144, 56,  56,  24,  1),
    _L("MobileNet",   "v2.pw96-576",96,  14,  14, 576,  1,  1,  0,   1, "relu6"),
    _L("MobileNet",   "v2.pw576-96",576, 14,  14,  96,  1),
    _L("MobileNet",   "v2.pw960-160",960, 7,   7, 160,  1),
    _L("MobileNet",   "v2.pw320-1280",320, 7,  7,1280,  1,  1,  0,   1, "relu6"),
    _L("YOLO",        "conv1",       3, 416, 416,  32,  3,  1,  1),
    _L("YOLO",        "conv2.s2",   32, 416, 416,  64,  3,  2,  1),
    # Darknet-53's residual blocks (a 1x1 halving the channels, a 3x3 restoring
    # them) at 104, 26 and 13.
    _L("YOLO",        "s104.1x1",  128, 104, 104,  64,  1),
    _L("YOLO",        "s104.3x3",   64, 104, 104, 128,  3,  1,  1),
    _L("YOLO",        "s26.3x3",   256,  26,  26, 512,  3,  1,  1),
    _L("YOLO",        "s13.1x1",  1024,  13,  13, 512,  1),
    _L("YOLO",        "s13.3x3",   512,  13,  13,1024,  3,  1,  1),
    _L("YOLO",        "head",      512,  13,  13, 255,  1),
    _L("U-Net",       "enc1",       64, 256, 256,  64,  3,  1,  1,   1, "relu"),
    _L("U-Net",       "enc2",      128, 128, 128, 128,  3,  1,  1,   1, "relu"),
    _L("FaceNet",     "conv2",      64,  56,  56, 192,  3,  1,  1,   1, "relu"),
)
del _L


@dataclass(frozen=True)
class PoolLayer(Layer):
    """One pooling layer of a reference model on input C x H x W: ``kind``
    "max" or "avg" over a sliding R x R window (``kernel``, ``stride``,
    ``padding``, ``ceil_mode``: torch's arguments), or "global_avg", the
    adaptive average to 1 x 1 that ends ResNet, Inception and MobileNet
    (kernel and stride unused)."""

    kind: str
    channels: int
    height: int
    width: int
    kernel: int = 0
    stride: int = 0
    padding: int = 0
    ceil_mode: bool = False

    def output_size(self) -> tuple[int, int]:
        """torch's pooling output size: in ceil_mode the last window may hang
        over the input, but must start inside it or its left padding."""
        if self.kind == "global_avg":
            return 1, 1

        def size(n: int) -> int:
            span = n + 2 * self.padding - self.kernel
            out = (-(-span // self.stride) if self.ceil_mode else span // self.stride) + 1
            if self.ceil_mode and (out - 1) * self.stride >= n + self.padding:
                out -= 1
            return out

        return size(self.height), size(self.width)

    def min_bytes(self, batch: int, dtype: torch.dtype) -> int:
        """DRAM traffic if every tensor moved exactly once, the same in both
        directions: forward reads x and writes y, backward reads gy and
        writes gx; max pooling adds its int64 indices (written by the
        forward, which runs with a gradient, and read by the backward).
        Overlapping windows re-read x from cache, not DRAM."""
        p, q = self.output_size()
        x = batch * self.channels * self.height * self.width
        y = batch * self.channels * p * q
        indices = y * torch.int64.itemsize if self.kind == "max" else 0
        return (x + y) * dtype.itemsize + indices

    def work(self, batch: int, dtype: torch.dtype, direction: str) -> tuple[None, int]:
        """(flops, minimum bytes): no flops, pooling is bound by memory alone."""
        return None, self.min_bytes(batch, dtype)

    def describe(self) -> str:
        """e.g. ``480x28x28 max 3x3/2 ceil``, ``2048x7x7 global avg``: the
        table's shape column."""
        text = f"{self.channels}x{self.height}x{self.width} "
        if self.kind == "global_avg":
            return text + "global avg"
        text += f"{self.kind} {self.kernel}x{self.kernel}/{self.stride}"
        if self.padding:
            text += f" p{self.padding}"
        if self.ceil_mode:
            text += " ceil"
        return text


_P = PoolLayer
# U-Net: the paper's 572x572 tile, whose valid convolutions leave 568 and 280
# before the first two pools (the conv table's U-Net layers are a padded 256
# variant). Inception's 3a.pool is the pooling branch inside a block.
POOL_LAYERS: tuple[PoolLayer, ...] = (
    #  model          layer          kind           C    H    W  RxS str pad ceil
    _P("LeNet-5",     "pool1",       "avg",         6,  28,  28,  2,  2),
    _P("LeNet-5",     "pool2",       "avg",        16,  10,  10,  2,  2),
    _P("AlexNet",     "pool1",       "max",        64,  55,  55,  3,  2),
    _P("AlexNet",     "pool2",       "max",       192,  27,  27,  3,  2),
    _P("AlexNet",     "pool5",       "max",       256,  13,  13,  3,  2),
    _P("VGG-16",      "pool1",       "max",        64, 224, 224,  2,  2),
    _P("VGG-16",      "pool2",       "max",       128, 112, 112,  2,  2),
    _P("VGG-16",      "pool3",       "max",       256,  56,  56,  2,  2),
    _P("VGG-16",      "pool4",       "max",       512,  28,  28,  2,  2),
    _P("VGG-16",      "pool5",       "max",       512,  14,  14,  2,  2),
    _P("ResNet-50",   "maxpool",     "max",        64, 112, 112,  3,  2,  1),
    _P("ResNet-50",   "avgpool",     "global_avg",2048,  7,   7),
    _P("Inception",   "3a.pool",     "max",       192,  28,  28,  3,  1,  1),
    _P("Inception",   "pool3",       "max",       480,  28,  28,  3,  2,  0, True),
    _P("Inception",   "aux.avgpool", "avg",       512,  14,  14,  5,  3),
    _P("Inception",   "avgpool",     "global_avg",1024,  7,   7),
    _P("MobileNet",   "v1.avgpool",  "global_avg",1024,  7,   7),
    _P("MobileNet",   "v2.avgpool",  "global_avg",1280,  7,   7),
    _P("YOLO",        "maxpool1",    "max",        32, 416, 416,  2,  2),
    _P("U-Net",       "pool1",       "max",        64, 568, 568,  2,  2),
    _P("U-Net",       "pool2",       "max",       128, 280, 280,  2,  2),
)
del _P

@dataclass(frozen=True)
class ConvTransposeLayer(_Convolution):
    """One transposed convolution of a reference model: input C x H x W,
    weight (C, K/groups, R, R), output K x H_out x W_out."""

    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    output_padding: int = 0
    groups: int = 1
    activation: str | None = None

    def output_size(self) -> tuple[int, int]:
        def size(n: int) -> int:
            return ((n - 1) * self.stride - 2 * self.padding + self.kernel
                    + self.output_padding)

        return size(self.height), size(self.width)

    def flops(self, batch: int) -> int:
        """Multiply-adds times two of one forward pass: every input pixel
        times every tap and output channel of its group, 2 N C H W
        (K/groups) R S (the conv2d whose input gradient it is)."""
        return (2 * batch * self.in_channels * self.height * self.width
                * (self.out_channels // self.groups) * self.kernel * self.kernel)

    def min_bytes(self, batch: int, dtype: torch.dtype, direction: str) -> int:
        """Forward reads x, w, b and writes y; backward reads gy (and y for
        the activation) in each of its two passes, w and writes gx, x and
        writes gw."""
        h, w_out = self.output_size()
        x = batch * self.in_channels * self.height * self.width
        w = self.in_channels * (self.out_channels // self.groups) * self.kernel ** 2
        y = batch * self.out_channels * h * w_out
        if direction == "forward":
            elements = x + w + self.out_channels + y
        else:
            elements = 2 * y * (2 if self.activation else 1) + 2 * (w + x)
        return elements * dtype.itemsize


# U-Net's up-convolutions (2x2, stride 2, halving the channels) on the paper's
# 572x572 tile: each doubles the map its decoder block's two valid 3x3
# convolutions leave (28, 52, 100, 196). No activation follows them.
CONV_TRANSPOSE_LAYERS: tuple[ConvTransposeLayer, ...] = (
    ConvTransposeLayer("U-Net", "up1", 1024, 28, 28, 512, 2, 2),
    ConvTransposeLayer("U-Net", "up2", 512, 52, 52, 256, 2, 2),
    ConvTransposeLayer("U-Net", "up3", 256, 100, 100, 128, 2, 2),
    ConvTransposeLayer("U-Net", "up4", 128, 196, 196, 64, 2, 2),
)

# (title, width, row -> text): the columns that name a layer in a table.
LAYER_COLUMNS = (
    ("model", 10, lambda r: r["model"]),
    ("layer", 13, lambda r: r["name"]),
    ("shape", 24, lambda r: r["shape"]),
)

# What a convolution's table shows after the layer (and its activation).
CONV_RESULT_COLUMNS = (
    ("algorithm", 13, lambda r: r["algorithm"] or "-"),
    *report.CASE_COLUMNS,
    ("TFLOP/s", 8, lambda r: report.number(r["tflops"], ".3g")),
    ("roof%", 6, lambda r: report.percent(r["roofline_fraction"])),
    ("max rel err", 17, report.errors),
    report.STATUS_COLUMN,
)


def float64_reference(prepare, torch_impl, case: Layer, inputs: dict, direction: str) -> dict:
    """A family's ``reference``: torch's results (``torch_impl`` through the
    family's ``prepare``) on float64 copies of the inputs, on their device."""
    ref_inputs = {name: t.double() for name, t in inputs.items()}
    return prepare(torch_impl, case, ref_inputs, direction)[1]
