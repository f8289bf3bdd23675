"""Layer shapes derived from the reference models instead of typed by hand:
``trace_layers`` builds a model on the meta device (no memory, no compute;
on the CPU, then moved, for a builder that reads a tensor's value),
runs one forward pass on a meta input with forward hooks on its
convolutions, transposed convolutions and pooling modules, and records each
one's geometry as the benchmark's case (layers.ConvLayer,
ConvTransposeLayer, PoolLayer), in execution order, each distinct geometry
once (the first module's name).

The activation of a convolution: its own fused ``activation``
(cnnkernels.nn.Conv2d), else the ReLU, ReLU6 or SiLU module that runs next
(after a batch norm, which folds into the convolution at inference). A
residual addition is not a module and is not seen: derived layers have
``residual`` False.

``REFERENCE_MODELS`` names the builders of ``cnnkernels.models`` and the
input each is benchmarked at; ``reference_layers()`` traces every one of
them that the installed package has.
"""

from __future__ import annotations

import functools
from dataclasses import replace
from typing import NamedTuple

import torch

from cnnkernels.bench.layers import ConvLayer, ConvTransposeLayer, PoolLayer


class ReferenceModel(NamedTuple):
    """A builder of cnnkernels.models, the group name its layers get, and
    its input (C, H, W)."""

    builder: str
    group: str
    input_chw: tuple[int, int, int]


REFERENCE_MODELS = (
    ReferenceModel("lenet5", "LeNet-5", (3, 32, 32)),
    ReferenceModel("alexnet", "AlexNet", (3, 224, 224)),
    ReferenceModel("vgg16", "VGG-16", (3, 224, 224)),
    ReferenceModel("resnet18", "ResNet-18", (3, 224, 224)),
    ReferenceModel("resnet34", "ResNet-34", (3, 224, 224)),
    ReferenceModel("resnet50", "ResNet-50", (3, 224, 224)),
    ReferenceModel("googlenet", "Inception", (3, 224, 224)),
    ReferenceModel("mobilenet_v1", "MobileNet-v1", (3, 224, 224)),
    ReferenceModel("mobilenet_v2", "MobileNet-v2", (3, 224, 224)),
    ReferenceModel("unet", "U-Net", (1, 256, 256)),  # padded: H, W multiples of 16
    ReferenceModel("yolo", "YOLO", (3, 64, 64)),  # the builder's default image_size
    ReferenceModel("facenet_embedding", "FaceNet", (3, 160, 160)),
)

_ACTIVATIONS = {torch.nn.ReLU: "relu", torch.nn.ReLU6: "relu6", torch.nn.SiLU: "silu"}
_TRACED = (torch.nn.Conv2d, torch.nn.ConvTranspose2d, torch.nn.MaxPool2d, torch.nn.AvgPool2d,
           torch.nn.AdaptiveAvgPool2d)


def _pair(value) -> int:
    """A square window's size; a non-square one is not a case the tables hold."""
    first, second = (value, value) if isinstance(value, int) else tuple(value)
    if first != second:
        raise ValueError(f"non-square {value}")
    return first


class Traced(NamedTuple):
    conv: list[ConvLayer]
    conv_transpose: list[ConvTransposeLayer]
    pool: list[PoolLayer]


def _case(group: str, name: str, module, shape, activation):
    """The benchmark case of one module run on an input of ``shape`` (N, C, H, W);
    None for a module the tables have no case kind for."""
    _, channels, height, width = shape
    if isinstance(module, torch.nn.ConvTranspose2d):
        return ConvTransposeLayer(group, name, channels, height, width, module.out_channels,
                                  _pair(module.kernel_size), _pair(module.stride),
                                  _pair(module.padding), _pair(module.output_padding),
                                  module.groups, activation)
    if isinstance(module, torch.nn.Conv2d):
        if _pair(module.dilation) != 1 or isinstance(module.padding, str):
            return None
        return ConvLayer(group, name, channels, height, width, module.out_channels,
                         _pair(module.kernel_size), _pair(module.stride),
                         _pair(module.padding), module.groups, activation)
    if isinstance(module, torch.nn.AdaptiveAvgPool2d):
        return PoolLayer(group, name, "global_avg", channels, height, width) \
            if module.output_size in (1, (1, 1)) else None
    kind = "max" if isinstance(module, torch.nn.MaxPool2d) else "avg"
    if kind == "max" and _pair(module.dilation) != 1:
        return None
    stride = module.stride if module.stride is not None else module.kernel_size
    return PoolLayer(group, name, kind, channels, height, width, _pair(module.kernel_size),
                     _pair(stride), _pair(module.padding), bool(module.ceil_mode))


def trace_layers(build, input_chw: tuple[int, int, int], group: str) -> Traced:
    """The distinct layers of the model ``build()`` returns, on a batch of
    one ``input_chw`` input (module doc); ``group`` names the model."""
    try:
        with torch.device("meta"):
            model = build()
    except RuntimeError:  # a builder that reads a tensor's value (e.g. to check it)
        model = build().to("meta")
    model.eval()
    calls = []  # (name, module, input shape) of every traced module, and each activation

    def hook(name):
        def record(module, inputs):
            calls.append((name, module, tuple(inputs[0].shape) if inputs else None))

        return record

    handles = [module.register_forward_pre_hook(hook(name))
               for name, module in model.named_modules()
               if isinstance(module, (*_TRACED, *_ACTIVATIONS, torch.nn.BatchNorm2d))]
    try:
        with torch.no_grad():
            model(torch.empty((1, *input_chw), device="meta"))
    finally:
        for handle in handles:
            handle.remove()
    found: dict[tuple, object] = {}
    for index, (name, module, shape) in enumerate(calls):
        if not isinstance(module, _TRACED):
            continue
        activation = getattr(module, "activation", None)
        if activation is None and isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
            following = [m for _, m, _ in calls[index + 1:index + 3]]
            if following and isinstance(following[0], torch.nn.BatchNorm2d):
                following = following[1:]
            if following and type(following[0]) in _ACTIVATIONS:
                activation = _ACTIVATIONS[type(following[0])]
        try:
            case = _case(group, name, module, shape, activation)
        except ValueError:  # a non-square window
            continue
        if case is not None:
            geometry = tuple(getattr(case, f) for f in case.__dataclass_fields__
                             if f not in ("model", "name"))
            found.setdefault((type(case), geometry), case)
    cases = _unique_names(list(found.values()))
    return Traced([c for c in cases if type(c) is ConvLayer],
                  [c for c in cases if type(c) is ConvTransposeLayer],
                  [c for c in cases if type(c) is PoolLayer])


def _unique_names(cases: list) -> list:
    """A module run at several geometries (U-Net's one pooling module) gives
    several cases: the second and later get ``#2``, ``#3`` after the name."""
    seen: dict[tuple, int] = {}
    named = []
    for case in cases:
        key = (type(case), case.name)
        seen[key] = seen.get(key, 0) + 1
        named.append(case if seen[key] == 1 else replace(case, name=f"{case.name}#{seen[key]}"))
    return named


@functools.cache
def reference_layers() -> Traced:
    """Every reference model's traced layers."""
    from cnnkernels import models

    traced = Traced([], [], [])
    for reference in REFERENCE_MODELS:
        try:
            layers = trace_layers(getattr(models, reference.builder), reference.input_chw,
                                  reference.group)
        except Exception as error:
            raise RuntimeError(f"tracing cnnkernels.models.{reference.builder} on a "
                               f"{reference.input_chw} input failed: {error}") from error
        for whole, part in zip(traced, layers, strict=True):
            whole.extend(part)
    return traced


def cases(kind: str, extra: tuple = ()) -> tuple:
    """The benchmark cases of ``kind`` (a Traced field: conv, conv_transpose,
    pool) derived from the reference models, then ``extra``."""
    return (*getattr(reference_layers(), kind), *extra)
