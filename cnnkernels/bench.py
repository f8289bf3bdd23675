"""Benchmark driver: times cnnkernels' ops against torch's on the layers of
the reference models, and checks every result against a float64 torch
reference computed on the same device. One table per op family (``--op``):

- conv2d: ``cnnkernels.conv2d`` against ``torch.nn.functional.conv2d`` plus
  the same activation; TFLOP/s and the fraction of the roofline (the compute
  or the memory bound, whichever takes longer).
- pool2d: ``cnnkernels.max_pool2d``, ``avg_pool2d`` and
  ``adaptive_avg_pool2d`` against torch.nn.functional's. Pooling is memory
  bound: GB/s and the fraction of the device's copy bandwidth (its roofline).
  Both directions run as in training: the input requires grad, so max pooling
  writes the int64 indices its backward reads. Bytes are the minimum DRAM
  traffic: forward reads x once and writes y (+ the indices, max pooling
  only); backward reads grad_y (+ the indices) and writes grad_x. Max
  pooling's indices must equal the float64 reference's exactly (the first
  maximum wins a tie, as in torch): any difference is a wrong result.

    cnnkernels bench                        # every layer, every backend that runs here
    cnnkernels bench --quick                # a smoke run: small layers, batch 1
    cnnkernels bench --op pool2d --model vgg unet --dtype bfloat16 --channels-last
    cnnkernels bench --model resnet --dtype bfloat16 --channels-last --json out.json

Timing: on CUDA ``triton.testing.do_bench`` (median after warm-up, L2
flushed between runs); on the CPU the median of repeated ``perf_counter``
runs after one warm-up run. Backward times the autograd backward alone (one
``torch.autograd.grad`` call on a recorded forward graph: conv grad_input +
grad_weight, pooling grad_input), not the forward. Inputs are random and
fresh per case; for the backward of a fused activation the output gradient
is zeroed within a few ulps of the activation's kinks, where the derivative
legitimately depends on rounding.

A case that raises is an error row; a result whose error exceeds the dtype's
tolerance is flagged wrong. Either makes the command exit with status 1 once
every case has run. A dtype the backend does not compute in is listed as
unsupported and is not a failure. A timing is never a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import importlib.util
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F

import cnnkernels
from cnnkernels import _backend


@dataclass(frozen=True)
class ConvLayer:
    """One convolution of a reference model: input C x H x W, K filters of
    R x R, and the activation the model applies right after it (a ReLU that
    follows a batch norm counts: at inference the norm folds into the
    convolution's weight and bias)."""

    model: str
    name: str
    in_channels: int
    height: int
    width: int
    out_channels: int
    kernel: int
    stride: int = 1
    padding: int = 0
    groups: int = 1
    activation: str | None = None

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
        and writes y; backward reads gy (and y, for the activation's gradient)
        in each of its two passes, reads w and writes gx, reads x and writes gw."""
        p, q = self.output_size()
        x = batch * self.in_channels * self.height * self.width
        w = self.out_channels * (self.in_channels // self.groups) * self.kernel ** 2
        y = batch * self.out_channels * p * q
        if direction == "forward":
            elements = x + w + self.out_channels + y
        else:
            per_pass_y = y * (2 if self.activation else 1)
            elements = 2 * per_pass_y + (w + x) + (x + w)
        return elements * dtype.itemsize

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
    _L("ResNet-50",   "conv1",       3, 224, 224,  64,  7,  2,  3,   1, "relu"),
    _L("ResNet-50",   "layer1.1x1a",64,  56,  56,  64,  1,  1,  0,   1, "relu"),
    _L("ResNet-50",   "layer1.3x3", 64,  56,  56,  64,  3,  1,  1,   1, "relu"),
    _L("ResNet-50",   "layer1.1x1b",64,  56,  56, 256,  1),  # the residual add follows
    _L("ResNet-50",   "layer2.3x3",128,  56,  56, 128,  3,  2,  1,   1, "relu"),
    _L("ResNet-50",   "layer3.3x3",256,  14,  14, 256,  3,  1,  1,   1, "relu"),
    _L("ResNet-50",   "layer4.3x3",512,   7,   7, 512,  3,  1,  1,   1, "relu"),
    _L("Inception",   "3a.1x1",    192,  28,  28,  64,  1,  1,  0,   1, "relu"),
    _L("Inception",   "3a.3x3",     96,  28,  28, 128,  3,  1,  1,   1, "relu"),
    _L("Inception",   "3a.5x5",     16,  28,  28,  32,  5,  1,  2,   1, "relu"),
    _L("MobileNet",   "dw32",       32, 112, 112,  32,  3,  1,  1,  32, "relu6"),
    _L("MobileNet",   "dw64.s2",    64, 112, 112,  64,  3,  2,  1,  64, "relu6"),
    _L("MobileNet",   "dw512",     512,  14,  14, 512,  3,  1,  1, 512, "relu6"),
    _L("MobileNet",   "pw32-64",    32, 112, 112,  64,  1,  1,  0,   1, "relu6"),
    _L("MobileNet",   "pw512",     512,  14,  14, 512,  1,  1,  0,   1, "relu6"),
    _L("YOLO",        "conv1",       3, 416, 416,  32,  3,  1,  1),
    _L("YOLO",        "conv2.s2",   32, 416, 416,  64,  3,  2,  1),
    _L("YOLO",        "head",      512,  13,  13, 255,  1),
    _L("U-Net",       "enc1",       64, 256, 256,  64,  3,  1,  1,   1, "relu"),
    _L("U-Net",       "enc2",      128, 128, 128, 128,  3,  1,  1,   1, "relu"),
    _L("FaceNet",     "conv2",      64,  56,  56, 192,  3,  1,  1,   1, "relu"),
)
del _L


@dataclass(frozen=True)
class PoolLayer:
    """One pooling layer of a reference model on input C x H x W: ``kind``
    "max" or "avg" over a sliding R x R window (``kernel``, ``stride``,
    ``padding``, ``ceil_mode``: torch's arguments), or "global_avg", the
    adaptive average to 1 x 1 that ends ResNet, Inception and MobileNet
    (kernel and stride unused)."""

    model: str
    name: str
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

# --quick: the first layers of each model, spatial size capped, batch 1.
QUICK_LAYERS_PER_MODEL = 2
QUICK_MAX_SIZE = 16

# The summary's copy-bandwidth lines cover the memory-bound (flop-free)
# layers that move at least this many bytes: twice an H100's 50 MB L2, so
# their traffic streams from DRAM rather than cache.
LARGE_LAYER_BYTES = 100e6

# Max |ours - ref| / max |ref| allowed per dtype. Loose on purpose: this flags
# broken kernels; tests/ holds the tight, reduction-length-scaled tolerances.
TOLERANCES = {torch.float16: 5e-2, torch.bfloat16: 5e-2, torch.float32: 1e-3,
              torch.float64: 1e-9}

DTYPE_NAMES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
               "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
               "float64": torch.float64, "fp64": torch.float64, "double": torch.float64}

DIRECTIONS = ("forward", "backward")


@dataclass(frozen=True)
class Roofline:
    """Peak DRAM bandwidth (bytes/s) and compute (flop/s) by dtype."""

    bandwidth: float
    flops: dict


# Matched as a substring of torch.cuda.get_device_name(). H100: measured on
# the lent machines (DESIGN.md); fp32 is the CUDA-core rate (nominal), since
# the kernels compute fp32 with IEEE FMAs, not TF32 tensor cores. A GPU not
# listed gets no roofline column rather than a guessed one.
ROOFLINES = {
    "H100": Roofline(bandwidth=3.0e12, flops={torch.bfloat16: 790e12, torch.float16: 790e12,
                                              torch.float32: 67e12}),
}


def roofline_for(device: torch.device) -> Roofline | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((roof for key, roof in ROOFLINES.items() if key in name), None)


def _model_key(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def select_layers(table: tuple, models: list[str] | None = None, quick: bool = False) -> list:
    """The layers of ``table`` (CONV_LAYERS, POOL_LAYERS) of the models whose
    name starts with one of ``models``, ignoring case and punctuation ("vgg",
    "resnet", "unet"; all when None); with ``quick``, the first
    QUICK_LAYERS_PER_MODEL of each model with H and W capped at QUICK_MAX_SIZE."""
    wanted = [_model_key(m) for m in models] if models else None
    layers, per_model = [], {}
    for layer in table:
        if wanted and not any(_model_key(layer.model).startswith(m) for m in wanted):
            continue
        if quick:
            per_model[layer.model] = per_model.get(layer.model, 0) + 1
            if per_model[layer.model] > QUICK_LAYERS_PER_MODEL:
                continue
            layer = replace(layer, height=min(layer.height, QUICK_MAX_SIZE),
                            width=min(layer.width, QUICK_MAX_SIZE))
        layers.append(layer)
    return layers


def default_backends(device: torch.device) -> list[str]:
    """Every concrete backend that can run tensors on ``device``; never the
    Triton interpreter on the CPU, which is thousands of times slower."""
    return [b for b in ("cpu", "cuda", "triton")
            if _backend.backend_problem(b, device) is None
            and not (b == "triton" and device.type == "cpu")]


# ---------------------------------------------------------------------------
# Timing


def _time_cpu(fn, rep_ms: float, min_runs: int = 3, max_runs: int = 100) -> float:
    """Median wall time of ``fn`` in ms over runs until ``rep_ms`` have passed
    (at least ``min_runs``, at most ``max_runs``). No warm-up run of its own:
    every caller has already run ``fn`` once to get the result it checks."""
    times: list[float] = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _timer_settings(device: torch.device, quick: bool) -> dict:
    """do_bench's warm-up and repetition times (ms) on CUDA, shorter for a
    --quick smoke run; the repetition time of the perf_counter loop on the CPU."""
    if device.type == "cuda":
        return {"warmup": 5, "rep": 20} if quick else {"warmup": 25, "rep": 100}
    return {"rep_ms": 30 if quick else 200}


def make_timer(device: torch.device, quick: bool):
    """ms = timer(fn), fn already run once: triton.testing.do_bench (median) on
    CUDA, a perf_counter median on the CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return functools.partial(do_bench, return_mode="median",
                                 **_timer_settings(device, quick))
    return functools.partial(_time_cpu, **_timer_settings(device, quick))


# ---------------------------------------------------------------------------
# One case: a layer, a dtype and a direction, timed for torch and each backend


def make_inputs(layer: ConvLayer, batch: int, dtype: torch.dtype, device: torch.device,
                 channels_last: bool) -> dict:
    """Fresh random x, w, b and the output gradient gy. w is scaled by
    1/sqrt(fan-in) so outputs are O(1) and relu6 clips some of them."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    fan_in = layer.in_channels // layer.groups * layer.kernel ** 2
    p, q = layer.output_size()

    def randn(*shape, scale=1.0):
        t = torch.randn(shape, dtype=torch.float64, device=device) * scale
        return t.to(dtype)

    x = randn(batch, layer.in_channels, layer.height, layer.width)
    w = randn(layer.out_channels, layer.in_channels // layer.groups, layer.kernel,
              layer.kernel, scale=fan_in ** -0.5)
    return {"x": x.contiguous(memory_format=fmt), "w": w.contiguous(memory_format=fmt),
            "b": randn(layer.out_channels, scale=0.5),
            "gy": randn(batch, layer.out_channels, p, q).contiguous(memory_format=fmt)}


def torch_conv(layer: ConvLayer, x, w, b):
    """The anchor: torch's conv2d followed by torch's activation."""
    y = F.conv2d(x, w, b, layer.stride, layer.padding, 1, layer.groups)
    if layer.activation == "relu":
        return F.relu(y)
    if layer.activation == "relu6":
        return F.relu6(y)
    return y


def ours_conv(layer: ConvLayer, x, w, b):
    """cnnkernels' conv2d with the activation fused, on the current backend."""
    return cnnkernels.conv2d(x, w, b, layer.stride, layer.padding, 1, layer.groups,
                             activation=layer.activation)


def prepare(conv, layer: ConvLayer, inputs: dict, direction: str):
    """(fn to time, {name: result}) for one implementation. Backward records
    the forward graph once; fn then computes grad_input and grad_weight."""
    x, w, b = inputs["x"], inputs["w"], inputs["b"]
    if direction == "forward":
        def forward():
            return conv(layer, x, w, b)

        return forward, {"output": forward()}
    x = x.detach().requires_grad_()
    w = w.detach().requires_grad_()
    y = conv(layer, x, w, b)

    def backward():
        return torch.autograd.grad(y, (x, w), inputs["gy"], retain_graph=True)

    grad_input, grad_weight = backward()
    return backward, {"grad_input": grad_input, "grad_weight": grad_weight}


@contextlib.contextmanager
def _cudnn_autotuning_off():
    """With cudnn.benchmark on, cuDNN would try every algorithm on each new
    float64 reference shape, which costs far more than computing it."""
    saved = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = False
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def _conv_reference(layer: ConvLayer, inputs: dict, direction: str) -> dict:
    """torch's float64 result on the same device. For the backward of a fused
    activation, gy is first zeroed at the activation's kinks, in ``inputs``,
    so every implementation then gets the same gy."""
    if direction == "backward" and layer.activation:
        _zero_grad_at_kinks(layer, inputs)
    ref_inputs = {name: t.double() for name, t in inputs.items()}
    return prepare(torch_conv, layer, ref_inputs, direction)[1]


def _zero_grad_at_kinks(layer: ConvLayer, inputs: dict) -> None:
    """Zero gy where the pre-activation lies within 4 ulps (of the dtype) of
    a kink of the activation (0; and 6 for relu6). There an implementation's
    rounded output may land on either side and take the other one-sided
    derivative: legitimately so, but it would read as an O(1) error, e.g.
    bf16 rounds everything in [5.985, 6) to 6."""
    x, w, b = (inputs[k].double() for k in ("x", "w", "b"))
    z = F.conv2d(x, w, b, layer.stride, layer.padding, 1, layer.groups)
    eps = torch.finfo(inputs["gy"].dtype).eps
    near = torch.zeros_like(z, dtype=torch.bool)
    for kink in (0.0, 6.0) if layer.activation == "relu6" else (0.0,):
        near |= (z - kink).abs() <= 4 * eps * max(1.0, kink)
    inputs["gy"] = inputs["gy"].masked_fill(near, 0)


def make_pool_inputs(layer: PoolLayer, batch: int, dtype: torch.dtype, device: torch.device,
                     channels_last: bool) -> dict:
    """Fresh random x and the output gradient gy."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def randn(*shape):
        t = torch.randn(shape, dtype=torch.float64, device=device)
        return t.to(dtype).contiguous(memory_format=fmt)

    return {"x": randn(batch, layer.channels, layer.height, layer.width),
            "gy": randn(batch, layer.channels, *layer.output_size())}


def _pool(functions, layer: PoolLayer, x):
    """``layer`` computed by ``functions``, torch.nn.functional or cnnkernels
    (same signatures); max pooling returns (y, indices)."""
    if layer.kind == "global_avg":
        return functions.adaptive_avg_pool2d(x, 1)
    if layer.kind == "avg":
        return functions.avg_pool2d(x, layer.kernel, layer.stride, layer.padding,
                                    layer.ceil_mode)
    return functions.max_pool2d(x, layer.kernel, layer.stride, layer.padding, 1,
                                layer.ceil_mode, return_indices=True)


def torch_pool(layer: PoolLayer, x):
    """The anchor: torch.nn.functional's pooling."""
    return _pool(F, layer, x)


def ours_pool(layer: PoolLayer, x):
    """cnnkernels' pooling, on the current backend."""
    return _pool(cnnkernels, layer, x)


def prepare_pool(pool, layer: PoolLayer, inputs: dict, direction: str):
    """(fn to time, {name: result}) for one implementation. Both directions
    run as in training, on an x that requires grad: max pooling's forward
    writes the indices (checked too) that its backward reads. Backward
    records the forward graph once; fn then computes grad_input."""
    x = inputs["x"].detach().requires_grad_()
    if direction == "forward":
        def forward():
            return pool(layer, x)

        result = forward()
        if layer.kind == "max":
            return forward, {"output": result[0].detach(), "indices": result[1]}
        return forward, {"output": result.detach()}
    y = pool(layer, x)
    if layer.kind == "max":
        y = y[0]

    def backward():
        return torch.autograd.grad(y, x, inputs["gy"], retain_graph=True)

    (grad_input,) = backward()
    return backward, {"grad_input": grad_input}


def _pool_reference(layer: PoolLayer, inputs: dict, direction: str) -> dict:
    """torch's float64 result on the same device."""
    ref_inputs = {name: t.double() for name, t in inputs.items()}
    return prepare_pool(torch_pool, layer, ref_inputs, direction)[1]


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    """max |result - reference| / max |reference|; NaN or inf stays non-finite."""
    diff = (result.double() - reference).abs().max().item()
    if not math.isfinite(diff):
        return diff
    return diff / max(reference.abs().max().item(), torch.finfo(torch.float64).tiny)


def compare(results: dict, reference: dict) -> tuple[dict, int | None]:
    """({name: relative error} of the floating-point results, how many
    elements of the integer ones (max pooling's indices) differ from the
    reference's: None without any). A result shaped unlike the reference
    raises."""
    errors, mismatches = {}, None
    for name, result in results.items():
        expected = reference[name]
        if result.shape != expected.shape:
            raise ValueError(f"{name} has shape {tuple(result.shape)}, the reference "
                             f"{tuple(expected.shape)}")
        if result.is_floating_point():
            errors[name] = relative_error(result, expected)
        else:
            mismatches = (mismatches or 0) + int((result != expected).sum())
    return errors, mismatches


def _roofline_fraction(flops: int | None, nbytes: int, dtype: torch.dtype,
                       roofline: Roofline | None, seconds: float) -> float | None:
    """The time at the roofline over the time taken: the memory bound, or the
    compute bound where that takes longer (an op with flops). None without a
    roofline for the device, or with flops but no compute peak for dtype."""
    if roofline is None or (flops is not None and dtype not in roofline.flops):
        return None
    bound_s = nbytes / roofline.bandwidth
    if flops is not None:
        bound_s = max(bound_s, flops / roofline.flops[dtype])
    return bound_s / seconds


def _run_case(family: Family, layer, dtype: torch.dtype, direction: str, backends: list[str],
              settings: dict, timer, roofline: Roofline | None) -> list[dict]:
    """One row per backend for this layer, dtype and direction."""
    device, batch = settings["device"], settings["batch"]
    inputs = family.make_inputs(layer, batch, dtype, device, settings["channels_last"])
    with _cudnn_autotuning_off():
        reference = family.reference(layer, inputs, direction)
    flops, nbytes = layer.work(batch, dtype, direction)
    base = {"op": family.name, **asdict(layer), "shape": layer.describe(), "batch": batch,
            "dtype": _dtype_name(dtype),
            "layout": "channels_last" if settings["channels_last"] else "nchw",
            "direction": direction, "flops": flops, "bytes": nbytes,
            "tolerance": TOLERANCES[dtype]}
    try:
        torch_fn, torch_results = family.prepare(family.anchor, layer, inputs, direction)
        torch_errors, torch_mismatches = compare(torch_results, reference)
        del torch_results
        torch_ms = timer(torch_fn)
    except Exception as error:  # e.g. a dtype torch lacks on this device: ours still runs
        torch_ms, torch_errors, torch_mismatches = None, {"message": _one_line(error)}, None

    rows = []
    for backend in backends:
        row = {**base, "backend": backend, "ours_ms": None, "torch_ms": torch_ms,
               "speedup": None, "tflops": None, "gbps": None, "roofline_fraction": None,
               "errors": {}, "index_mismatches": None, "torch_errors": torch_errors,
               "torch_index_mismatches": torch_mismatches, "status": "ok", "message": ""}
        supported = _backend.SUPPORTED_DTYPES.get((backend, device.type))
        if supported is not None and dtype not in supported:
            row.update(status="unsupported",
                       message=f"backend {backend!r} does not compute {_dtype_name(dtype)} "
                               f"on {device.type}")
            rows.append(row)
            continue
        try:
            with cnnkernels.use(backend=backend):
                fn, results = family.prepare(family.ours, layer, inputs, direction)
                row["errors"], row["index_mismatches"] = compare(results, reference)
                del results
                ours_ms = timer(fn)
                del fn
        except Exception as error:
            row.update(status="error", message=_one_line(error))
            rows.append(row)
            continue
        seconds = ours_ms * 1e-3
        row.update(ours_ms=ours_ms, gbps=nbytes / seconds / 1e9,
                   roofline_fraction=_roofline_fraction(flops, nbytes, dtype, roofline, seconds))
        if flops is not None:
            row["tflops"] = flops / seconds / 1e12
        if torch_ms is not None:
            row["speedup"] = torch_ms / ours_ms
        problems = []
        if not all(e <= row["tolerance"] for e in row["errors"].values()):  # NaN fails too
            problems.append(f"error above {row['tolerance']:g}")
        if row["index_mismatches"]:
            problems.append(f"{row['index_mismatches']} of the indices differ from the "
                            "reference's")
        if problems:
            row.update(status="wrong", message="; ".join(problems))
        rows.append(row)
    return rows


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"


# ---------------------------------------------------------------------------
# Output


def _num(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def _percent(fraction: float | None) -> str:
    return _num(None if fraction is None else 100 * fraction, ".1f")


def _errors(row: dict) -> str:
    return "/".join(f"{e:.1e}" for e in row["errors"].values()) or "-"


def _indices(row: dict) -> str:
    mismatches = row["index_mismatches"]
    return "-" if mismatches is None else f"{mismatches} off" if mismatches else "exact"


# (title, width, row -> text). Each table: the layer, the case, the timings,
# then its family's rate and roofline fraction, errors and the status.
_LAYER_COLUMNS = (
    ("model", 10, lambda r: r["model"]),
    ("layer", 11, lambda r: r["name"]),
    ("shape", 24, lambda r: r["shape"]),
)
_CASE_COLUMNS = (
    ("dir", 4, lambda r: {"forward": "fwd", "backward": "bwd"}[r["direction"]]),
    ("dtype", 8, lambda r: r["dtype"]),
    ("backend", 7, lambda r: r["backend"]),
    ("ours ms", 9, lambda r: _num(r["ours_ms"], ".3f")),
    ("torch ms", 9, lambda r: _num(r["torch_ms"], ".3f")),
    ("speedup", 7, lambda r: _num(r["speedup"], ".2f")),
)
_STATUS_COLUMN = ("status", 0,
                  lambda r: r["status"].upper() if r["status"] == "wrong" else r["status"])
CONV_COLUMNS = (
    *_LAYER_COLUMNS,
    ("act", 5, lambda r: r["activation"] or "-"),
    *_CASE_COLUMNS,
    ("TFLOP/s", 8, lambda r: _num(r["tflops"], ".3g")),
    ("roof%", 6, lambda r: _percent(r["roofline_fraction"])),
    ("max rel err", 17, _errors),
    _STATUS_COLUMN,
)
POOL_COLUMNS = (  # bw%: pooling's roofline is the copy bandwidth
    *_LAYER_COLUMNS,
    *_CASE_COLUMNS,
    ("GB/s", 8, lambda r: _num(r["gbps"], ".0f" if (r["gbps"] or 0) >= 100 else ".3g")),
    ("bw%", 6, lambda r: _percent(r["roofline_fraction"])),
    ("max rel err", 11, _errors),
    ("indices", 7, _indices),
    _STATUS_COLUMN,
)


def _table_line(cells, columns: tuple) -> str:
    return " ".join(f"{c:<{w}}" if w else c
                    for c, (_, w, _) in zip(cells, columns, strict=True)).rstrip()


def table_header(columns: tuple) -> str:
    line = _table_line((title for title, _, _ in columns), columns)
    return f"{line}\n{'-' * len(line)}"


def table_row(row: dict, columns: tuple) -> str:
    """One fixed-width line; errors are listed after the table, not inline."""
    return _table_line((format_cell(row) for _, _, format_cell in columns), columns)


def _git_commit() -> str:
    """$CNNK_COMMIT if set (machines without the .git folder), else HEAD of
    the checkout the package lives in, marked +dirty with uncommitted changes."""
    if os.environ.get("CNNK_COMMIT"):
        return os.environ["CNNK_COMMIT"]
    root = Path(__file__).resolve().parent.parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty.strip() else "")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(settings: dict) -> dict:
    """The header every result carries: where, with what, and on which commit."""
    device = settings["device"]
    cuda = device.type == "cuda"
    triton_version = None
    if importlib.util.find_spec("triton") is not None:
        import triton

        triton_version = triton.__version__
    return {
        "device": torch.cuda.get_device_name(device) if cuda else _cpu_name(),
        "device_type": device.type,
        "cpu_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark if cuda else None,
        "cudnn_allow_tf32": torch.backends.cudnn.allow_tf32 if cuda else None,
        "python": platform.python_version(),
        "cnnkernels": cnnkernels.__version__,
        "commit": _git_commit(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "ops": settings["ops"],
        "dtypes": [_dtype_name(d) for d in settings["dtypes"]],
        "layout": "channels_last" if settings["channels_last"] else "nchw",
        "batch": settings["batch"],
        "directions": settings["directions"],
        "backends": settings["backends"],
        "quick": settings["quick"],
        "timer": {"function": ("triton.testing.do_bench, median" if cuda else
                               "perf_counter median after one warm-up run"),
                  **_timer_settings(device, settings["quick"])},
    }


# ---------------------------------------------------------------------------
# Op families


@dataclass(frozen=True)
class Family:
    """What the driver needs of one op family (one table, ``--op NAME``): its
    layers, a case's inputs and float64 reference, the anchor (torch's
    implementation) and ours for ``prepare``, the table's columns and the
    legend printed above it."""

    name: str
    layers: tuple
    make_inputs: Callable[..., dict]  # (layer, batch, dtype, device, channels_last)
    reference: Callable[..., dict]  # (layer, inputs, direction) -> float64 results
    anchor: Callable
    ours: Callable
    prepare: Callable[..., tuple]  # (implementation, layer, inputs, direction) -> (fn, results)
    columns: tuple
    legend: str


FAMILIES = {family.name: family for family in (
    Family("conv2d", CONV_LAYERS, make_inputs, _conv_reference, torch_conv, ours_conv, prepare,
           CONV_COLUMNS, "conv2d: backward = grad_input + grad_weight (max rel err of each); "
                         "roof% = time at the roofline (compute or memory bound) / ours ms"),
    Family("pool2d", POOL_LAYERS, make_pool_inputs, _pool_reference, torch_pool, ours_pool,
           prepare_pool, POOL_COLUMNS,
           "pool2d: forward and backward as in training (max pooling writes, then reads, int64 "
           "indices);\nGB/s = minimum DRAM traffic / ours ms; bw% = fraction of the copy "
           "bandwidth; indices = max pooling's vs the reference's (any difference is wrong)"),
)}


# ---------------------------------------------------------------------------
# The run


def run(tables: list[tuple[Family, list]], settings: dict, out=sys.stdout) -> list[dict]:
    """Every case of each (family, layers) x dtypes x directions, one table
    per family, printing rows as they complete; cases not started within
    ``settings["budget_s"]`` of the start are skipped (one row each with
    status "skipped", no backend run)."""
    device = settings["device"]
    timer = make_timer(device, settings["quick"])
    roofline = roofline_for(device)
    start = time.perf_counter()
    rows: list[dict] = []
    for index, (family, layers) in enumerate(tables):
        if index:
            print(file=out)
        print(f"{family.legend}\n{table_header(family.columns)}", file=out, flush=True)
        for layer in layers:
            for dtype in settings["dtypes"]:
                for direction in settings["directions"]:
                    budget = settings.get("budget_s")
                    if budget is not None and time.perf_counter() - start > budget:
                        rows.append({"op": family.name, **asdict(layer),
                                     "dtype": _dtype_name(dtype), "direction": direction,
                                     "status": "skipped",
                                     "message": f"time budget of {budget:g} s spent"})
                        continue
                    case_rows = _run_case(family, layer, dtype, direction, settings["backends"],
                                          settings, timer, roofline)
                    for row in case_rows:
                        print(table_row(row, family.columns), file=out, flush=True)
                    rows += case_rows
    return rows


def summary(rows: list[dict], elapsed_s: float) -> tuple[str, bool]:
    """(text to print after the tables, whether every case passed): status
    counts, geometric-mean speedups, for memory-bound ops the fraction of the
    copy bandwidth reached on the layers of at least LARGE_LAYER_BYTES, and
    the failures."""
    counts = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    lines = [f"{len(rows)} rows in {elapsed_s:.1f} s: "
             + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))]
    speedups: dict[tuple, list[float]] = {}
    bandwidth: dict[tuple, list[dict]] = {}
    for row in rows:
        key = (row["op"], row.get("backend"), row["dtype"], row["direction"])
        if row.get("speedup"):
            speedups.setdefault(key, []).append(row["speedup"])
        if (row.get("roofline_fraction") is not None and row["flops"] is None
                and row["bytes"] >= LARGE_LAYER_BYTES):
            bandwidth.setdefault(key, []).append(row)
    for (op, backend, dtype, direction), values in sorted(speedups.items()):
        lines.append(f"geometric-mean speedup {op} {backend} {dtype} {direction}: "
                     f"{statistics.geometric_mean(values):.2f}x over {len(values)} layers")
    for (op, backend, dtype, direction), large in sorted(bandwidth.items()):
        fractions = [r["roofline_fraction"] for r in large]
        lowest = min(large, key=lambda r: r["roofline_fraction"])
        lines.append(f"copy bandwidth {op} {backend} {dtype} {direction}: median "
                     f"{statistics.median(fractions):.0%}, lowest {min(fractions):.0%} "
                     f"({lowest['model']} {lowest['name']}) over the {len(large)} layers "
                     f"moving >= {LARGE_LAYER_BYTES / 1e6:g} MB")
    for row in rows:
        if row["status"] in ("error", "wrong"):
            lines.append(f"{row['status'].upper()} {row['op']} {row['model']} {row['name']} "
                         f"{row['dtype']} {row['direction']} {row['backend']}: {row['message']}")
    ok = not any(r["status"] in ("error", "wrong") for r in rows)
    return "\n".join(lines), ok


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options."""
    parser.add_argument("--op", choices=(*FAMILIES, "all"), default="all",
                        help="the op family to time (default: all, one table each)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_LAYERS_PER_MODEL} layers per model and op, H and W capped "
                             f"at {QUICK_MAX_SIZE}, batch 1 (a smoke run: under a minute on a "
                             f"CPU)")
    parser.add_argument("--model", nargs="+", metavar="NAME",
                        help="only models whose name starts with NAME, ignoring case and "
                             "punctuation (lenet, vgg, resnet, unet, ...)")
    parser.add_argument("--device", choices=("cuda", "cpu"),
                        help="default: cuda when available, else cpu")
    parser.add_argument("--backend", nargs="+", choices=_backend.BACKENDS,
                        help="default: every backend that runs on the device (the Triton "
                             "interpreter on the CPU only when named)")
    parser.add_argument("--dtype", nargs="+", metavar="DTYPE",
                        help="float32, bfloat16, float16, float64 (or fp32, bf16, ...); "
                             "default: float32 and bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--batch", type=int, help="default: 32 on CUDA, 1 on the CPU and "
                                                  "with --quick")
    parser.add_argument("--direction", nargs="+", choices=DIRECTIONS, default=list(DIRECTIONS))
    parser.add_argument("--channels-last", action="store_true",
                        help="inputs, weights and gradients in channels_last memory format")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="start no new case after this many seconds (the rest are "
                             "listed as skipped)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the header and every row as JSON")


def _settings_from_args(args: argparse.Namespace) -> dict:
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device_type)
    if args.dtype:
        names = [n for item in args.dtype for n in item.split(",") if n]
        unknown = [n for n in names if n.lower() not in DTYPE_NAMES]
        if unknown:
            raise SystemExit(f"unknown dtype {unknown[0]!r}; choose from {sorted(DTYPE_NAMES)}")
        dtypes = list(dict.fromkeys(DTYPE_NAMES[n.lower()] for n in names))
    elif device_type == "cuda":
        dtypes = [torch.float32, torch.bfloat16]
    else:
        dtypes = [torch.float32]
    if args.batch is not None and args.batch < 1:
        raise SystemExit(f"--batch must be >= 1, got {args.batch}")
    batch = args.batch or (32 if device_type == "cuda" and not args.quick else 1)
    backends = args.backend or default_backends(device)
    if not backends:
        reasons = "; ".join(f"{b}: {_backend.backend_problem(b, device)}"
                            for b in ("cpu", "cuda", "triton"))
        raise SystemExit(f"no cnnkernels backend runs on {device_type} here ({reasons})")
    ops = list(FAMILIES) if args.op == "all" else [args.op]
    return {"device": device, "ops": ops, "dtypes": dtypes, "batch": batch, "backends": backends,
            "directions": list(dict.fromkeys(args.direction)),
            "channels_last": args.channels_last, "quick": args.quick, "budget_s": args.budget}


def main(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed options describe; 1 if a case failed."""
    settings = _settings_from_args(args)
    if settings["device"].type == "cuda":
        torch.backends.cudnn.benchmark = True  # torch at its best: cuDNN picks its algorithm
    families = [FAMILIES[op] for op in settings["ops"]]
    tables = [(family, select_layers(family.layers, args.model, args.quick))
              for family in families]
    tables = [(family, layers) for family, layers in tables if layers]
    if not tables:
        models = dict.fromkeys(layer.model for family in families for layer in family.layers)
        raise SystemExit(f"no {' or '.join(settings['ops'])} layer matches --model "
                         f"{' '.join(args.model)}; models: {', '.join(models)}")
    torch.manual_seed(0)
    header = environment(settings)
    if "triton" in settings["backends"] and settings["device"].type == "cpu":
        print("note: Triton runs CPU tensors in its interpreter, thousands of times slower "
              "than a GPU: keep such runs to a tiny smoke case (--quick --model lenet)")
    print(f"cnnkernels bench: {header['device']} | torch {header['torch']} | triton "
          f"{header['triton']} | CUDA {header['cuda']} | commit {header['commit']}\n"
          f"layout {header['layout']}, batch {header['batch']}, backends "
          f"{', '.join(header['backends'])}; speedup = torch ms / ours ms; max rel err = "
          f"max|ours - ref| / max|ref| vs float64\n", flush=True)
    start = time.perf_counter()
    rows = run(tables, settings)
    text, ok = summary(rows, time.perf_counter() - start)
    print(f"\n{text}", flush=True)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
    return 0 if ok else 1
