"""The layer types of the conv2d, conv_transpose2d and pool2d benchmarks
(their cases, traced from cnnkernels.models by trace.py, plus the fused
residual rows no trace sees), the table columns that name them and show a
convolution's results, and the float64 reference the layer families share."""

from __future__ import annotations

import math
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


_L = ConvLayer
# The fused convolution + shortcut rows: a residual addition is no module, so
# the trace of the models (trace.py) cannot see it. ResNet-50's (torchvision,
# stride on the 3x3) last 1x1 of a block of each stage, its shortcut added
# before the ReLU in the epilogue.
RESIDUAL_LAYERS: tuple[ConvLayer, ...] = (
    #  model          layer          C    H    W    K  RxS str pad groups act  residual
    _L("ResNet-50",   "layer1.1x1b",64,  56,  56, 256,  1,  1,  0,   1, "relu", True),
    _L("ResNet-50",   "layer2.1x1b",128, 28,  28, 512,  1,  1,  0,   1, "relu", True),
    _L("ResNet-50",   "layer3.1x1b",256, 14,  14,1024,  1,  1,  0,   1, "relu", True),
    _L("ResNet-50",   "layer4.1x1b",512,  7,   7,2048,  1,  1,  0,   1, "relu", True),
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


def zero_grad_at_kinks(inputs: dict, activation: str | None, pre: torch.Tensor,
                       magnitude: torch.Tensor, products: int) -> None:
    """Zero ``inputs["gy"]`` where the float64 pre-activation ``pre`` lies
    within rounding distance of a kink of ``activation`` (0 for relu; 0 and
    6 for relu6; silu is smooth). There an output correct to within
    rounding may land on either side and take the other one-sided
    derivative: legitimately so, but it would read as an O(1) error in a
    whole filter's grad_weight. The distance: 4 ulps of the output dtype at
    the kink (bf16 rounds everything in [5.985, 6) to 6), plus the
    accumulation's typical error, 4 sqrt(n) ulps of the accumulator
    (float32 for the half types; TF32's where a CUDA float32 convolution
    may use it) times ``magnitude`` (sum |x| |w| + |b| ... over the
    ``products`` terms of each output)."""
    if activation not in ("relu", "relu6"):
        return
    dtype = inputs["gy"].dtype
    accumulator_eps = torch.finfo(torch.float64 if dtype == torch.float64
                                  else torch.float32).eps
    if dtype == torch.float32 and inputs["gy"].is_cuda and torch.backends.cudnn.allow_tf32:
        accumulator_eps = 2.0 ** -10  # TF32 keeps 10 mantissa bits
    window = 4 * math.sqrt(products) * accumulator_eps * magnitude
    eps = torch.finfo(dtype).eps
    near = torch.zeros_like(pre, dtype=torch.bool)
    for kink in (0.0, 6.0) if activation == "relu6" else (0.0,):
        near |= (pre - kink).abs() <= window + 4 * eps * max(1.0, kink)
    inputs["gy"] = inputs["gy"].masked_fill(near, 0)
