"""conv_transpose2d's benchmark (the driver's family contract, see
driver.py): ``cnnkernels.conv_transpose2d`` against torch's
conv_transpose2d, on U-Net's up-convolutions, with each conv2d algorithm
its grad_input / forward / grad_weight launchers come from."""

from __future__ import annotations

import functools
import importlib

import torch
import torch.nn.functional as F

import cnnkernels
from cnnkernels.bench import trace
from cnnkernels.bench.layers import (
    CONV_RESULT_COLUMNS,
    LAYER_COLUMNS,
    ConvTransposeLayer,
    float64_reference,
    zero_grad_at_kinks,
)
from cnnkernels.bench.verify import VerifyConfig

# Derived from cnnkernels.models (trace.py).
CASES = trace.cases("conv_transpose")
# The conv2d algorithms whose launchers compute it (auto: conv2d's router,
# by direction); im2col and pointwise are left to conv2d's own table.
ALGORITHMS = {name: functools.partial(cnnkernels.use, conv_algorithm=name)
              for name in importlib.import_module("cnnkernels.ops.conv2d").ALGORITHMS
              if name in ("direct", "implicit_gemm")}

LEGEND = ("conv_transpose2d: forward = conv2d's grad_input (no zero insertion) + bias; "
          "backward = grad_input + grad_weight (conv2d's forward and grad_weight);\n"
          "roof% = time at the roofline (compute or memory bound) / ours ms")
COLUMNS = (
    *LAYER_COLUMNS,
    *CONV_RESULT_COLUMNS,
)

VERIFY_CONFIGS = (
    VerifyConfig("conv_transpose2d-bfloat16-channels_last",
                 ("--dtype", "bfloat16", "--channels-last"), 10),
    VerifyConfig("conv_transpose2d-bfloat16-nchw", ("--dtype", "bfloat16"), 10),
)
VERIFY_TARGETS = (
    "conv_transpose2d targets (issue 10): >= 1.5x torch geomean on U-Net's up-convolutions "
    "(bfloat16), none below 0.9x; cpu >= 1.0x. Records, not test assertions.")


def make_inputs(case: ConvTransposeLayer, batch: int, dtype: torch.dtype,
                device: torch.device, channels_last: bool) -> dict:
    """Fresh random x, w (scaled by 1/sqrt(fan-in)), b and the output
    gradient gy."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    fan_in = case.in_channels // case.groups * case.kernel ** 2

    def randn(*shape, scale=1.0):
        return (torch.randn(shape, dtype=torch.float64, device=device) * scale).to(dtype)

    x = randn(batch, case.in_channels, case.height, case.width)
    w = randn(case.in_channels, case.out_channels // case.groups, case.kernel, case.kernel,
              scale=fan_in ** -0.5)
    return {"x": x.contiguous(memory_format=fmt), "w": w.contiguous(memory_format=fmt),
            "b": randn(case.out_channels, scale=0.5),
            "gy": randn(batch, case.out_channels, *case.output_size())
            .contiguous(memory_format=fmt)}


def _arguments(case: ConvTransposeLayer) -> tuple:
    return case.stride, case.padding, case.output_padding, case.groups


def torch_impl(case: ConvTransposeLayer, x, w, b):
    y = F.conv_transpose2d(x, w, b, *_arguments(case))
    return F.relu(y) if case.activation == "relu" else y


def ours_impl(case: ConvTransposeLayer, x, w, b):
    return cnnkernels.conv_transpose2d(x, w, b, *_arguments(case), activation=case.activation)


def prepare(impl, case: ConvTransposeLayer, inputs: dict, direction: str):
    """(fn to time, {name: result}); backward records the forward graph once
    and fn computes grad_input, grad_weight and grad_bias."""
    x, w, b = inputs["x"], inputs["w"], inputs["b"]
    if direction == "forward":
        def forward():
            return impl(case, x, w, b)

        return forward, {"output": forward()}
    x, w, b = (t.detach().requires_grad_() for t in (x, w, b))
    y = impl(case, x, w, b)

    def backward():
        return torch.autograd.grad(y, (x, w, b), inputs["gy"], retain_graph=True)

    grad_input, grad_weight, grad_bias = backward()
    return backward, {"grad_input": grad_input, "grad_weight": grad_weight,
                      "grad_bias": grad_bias}


def reference(case: ConvTransposeLayer, inputs: dict, direction: str) -> dict:
    """torch's float64 result on the same device; for the backward of a fused
    ReLU, gy is first zeroed at its kink (``zero_grad_at_kinks``)."""
    if direction == "backward" and case.activation:
        x, w, b = (inputs[k].double() for k in ("x", "w", "b"))
        pre = F.conv_transpose2d(x, w, b, *_arguments(case))
        magnitude = F.conv_transpose2d(x.abs(), w.abs(), b.abs(), *_arguments(case))
        zero_grad_at_kinks(inputs, case.activation, pre, magnitude,
                           case.in_channels // case.groups * case.kernel ** 2)
    return float64_reference(prepare, torch_impl, case, inputs, direction)
