"""gram's benchmark (the driver's family contract, see driver.py):
``cnnkernels.gram_matrix`` against torch's formulation (``bmm(F, F^T)``
divided by C * H * W, the tutorial Gram) on the style layers of VGG-16
(relu1_1 ... relu5_1 at a 224 x 224 image), forward and backward as in
style transfer (the features require grad)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

import cnnkernels
from cnnkernels.bench import report
from cnnkernels.bench.layers import LAYER_COLUMNS, Layer, float64_reference
from cnnkernels.bench.verify import VerifyConfig


@dataclass(frozen=True)
class GramLayer(Layer):
    """A feature map C x H x W whose Gram matrix a style loss takes."""

    channels: int
    height: int
    width: int

    def work(self, batch: int, dtype: torch.dtype, direction: str) -> tuple[int, int]:
        """(flops, minimum bytes): a bmm's 2 * B * C^2 * H * W flops (ours
        computes about half, the upper triangle, but the rate is counted as
        the product's so it compares with torch's); forward reads F and
        writes G, backward reads dG and F and writes dF."""
        plane = self.channels * self.height * self.width
        gram = self.channels * self.channels
        flops = 2 * batch * self.channels * plane
        elements = plane + gram if direction == "forward" else 2 * plane + gram
        return flops, batch * elements * dtype.itemsize

    def describe(self) -> str:
        return f"{self.channels}x{self.height}x{self.width}"


CASES = tuple(GramLayer("VGG-16", name, channels, size, size) for name, channels, size in (
    ("relu1_1", 64, 224), ("relu2_1", 128, 112), ("relu3_1", 256, 56), ("relu4_1", 512, 28),
    ("relu5_1", 512, 14)))
ALGORITHMS = {}  # one way

LEGEND = ("gram: gram_matrix(normalize='chw') vs bmm(F, F^T) / (C*H*W), forward and backward;\n"
          "TFLOP/s counts a bmm's 2*B*C^2*H*W flops (ours computes the upper triangle only)")
COLUMNS = (
    *LAYER_COLUMNS,
    *report.CASE_COLUMNS,
    ("TFLOP/s", 8, lambda r: report.number(r["tflops"], ".3g")),
    ("max rel err", 11, report.errors),
    report.STATUS_COLUMN,
)

VERIFY_CONFIGS = (VerifyConfig("gram-bfloat16", ("--dtype", "bfloat16"), 20),
                  VerifyConfig("gram-float32", ("--dtype", "float32"), 20))
VERIFY_TARGETS = ("gram targets: speedup >= 1.0 forward and backward against bmm (the summary's "
                  "\"geometric-mean speedup\" lines). Records, not pass/fail criteria.")


def make_inputs(case: GramLayer, batch: int, dtype: torch.dtype, device: torch.device,
                channels_last: bool) -> dict:
    """Fresh random features x and the Gram's gradient gg."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn((batch, case.channels, case.height, case.width), dtype=torch.float64,
                    device=device)
    gg = torch.randn((batch, case.channels, case.channels), dtype=torch.float64, device=device)
    return {"x": x.to(dtype).contiguous(memory_format=fmt), "gg": gg.to(dtype)}


def torch_impl(case: GramLayer, x):
    """The anchor: the tutorial Gram, bmm then a division."""
    flat = x.flatten(2)
    return torch.bmm(flat, flat.transpose(1, 2)) / (flat.shape[1] * flat.shape[2])


def ours_impl(case: GramLayer, x):
    return cnnkernels.gram_matrix(x, normalize="chw")


def prepare(impl, case: GramLayer, inputs: dict, direction: str):
    """(fn to time, {name: result}) for one implementation; backward records
    the forward once and times grad_features."""
    x = inputs["x"].detach().requires_grad_()
    if direction == "forward":
        def forward():
            return impl(case, x)

        return forward, {"gram": forward().detach()}
    gram = impl(case, x)

    def backward():
        return torch.autograd.grad(gram, x, inputs["gg"], retain_graph=True)

    (grad_features,) = backward()
    return backward, {"grad_features": grad_features}


def reference(case: GramLayer, inputs: dict, direction: str) -> dict:
    """torch's float64 result on the same device."""
    return float64_reference(prepare, torch_impl, case, inputs, direction)
