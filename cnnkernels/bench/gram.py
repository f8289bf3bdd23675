"""gram's benchmark (the driver's family contract, see driver.py):
``cnnkernels.gram_matrix`` against torch's formulation (``bmm(F, F^T)``
divided by C * H * W, the tutorial Gram) on the style layers of VGG-16
(relu1_1 ... relu5_1 at a 224 x 224 image), forward and backward as in
style transfer (the features require grad); and the fused
``cnnkernels.style_loss`` (tutorial normalisation) against torch's
composition (``bmm``, division, ``mse_loss``) on VGG-19's style layers at a
256 x 256 image (conv1_1 ... conv5_1), forward and forward + backward (an
optimisation step's work on the layer)."""

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
    style_loss: bool = False  # the fused style loss rather than the Gram alone

    def work(self, batch: int, dtype: torch.dtype, direction: str) -> tuple[int, int]:
        """(flops, minimum bytes): a bmm's 2 * B * C^2 * H * W flops (ours
        computes about half, the upper triangle, but the rate is counted as
        the product's so it compares with torch's); forward reads F and
        writes G, backward reads dG and F and writes dF. The style loss:
        forward reads F and the target; forward + backward adds the
        backward's product (twice the flops) and reads F again, writes dF."""
        plane = self.channels * self.height * self.width
        gram = self.channels * self.channels
        flops = 2 * batch * self.channels * plane
        if self.style_loss:
            if direction == "forward":
                return flops, (batch * plane + gram) * dtype.itemsize
            return 2 * flops, (3 * batch * plane + gram) * dtype.itemsize
        elements = plane + gram if direction == "forward" else 2 * plane + gram
        return flops, batch * elements * dtype.itemsize

    def describe(self) -> str:
        kind = "style " if self.style_loss else ""
        return f"{kind}{self.channels}x{self.height}x{self.width}"


CASES = tuple(GramLayer("VGG-16", name, channels, size, size) for name, channels, size in (
    ("relu1_1", 64, 224), ("relu2_1", 128, 112), ("relu3_1", 256, 56), ("relu4_1", 512, 28),
    ("relu5_1", 512, 14))) + tuple(
    GramLayer("VGG-19", name, channels, size, size, style_loss=True)
    for name, channels, size in (("conv1_1", 64, 256), ("conv2_1", 128, 128),
                                 ("conv3_1", 256, 64), ("conv4_1", 512, 32),
                                 ("conv5_1", 512, 16)))
ALGORITHMS = {}  # one way

LEGEND = ("gram: gram_matrix(normalize='chw') vs bmm(F, F^T) / (C*H*W), forward and backward;\n"
          "style rows: style_loss(normalize='tutorial') vs mse_loss(bmm(F, F^T) / (C*H*W), "
          "target), forward and forward + backward (the 'bwd' rows);\n"
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
    inputs = {"x": x.to(dtype).contiguous(memory_format=fmt), "gg": gg.to(dtype)}
    if case.style_loss:  # a target Gram of the tutorial's scale (another image's)
        inputs["target"] = (inputs["gg"][0] / (case.height * case.width) ** 0.5).contiguous()
    return inputs


def torch_impl(case: GramLayer, x, target=None):
    """The anchor: the tutorial Gram, bmm then a division (then mse_loss
    against the target for the style loss)."""
    flat = x.flatten(2)
    gram = torch.bmm(flat, flat.transpose(1, 2)) / (flat.shape[1] * flat.shape[2])
    if case.style_loss:
        return torch.nn.functional.mse_loss(gram, target.expand(gram.shape))
    return gram


def ours_impl(case: GramLayer, x, target=None):
    if case.style_loss:
        return cnnkernels.style_loss(x, target, normalize="tutorial")
    return cnnkernels.gram_matrix(x, normalize="chw")


def prepare(impl, case: GramLayer, inputs: dict, direction: str):
    """(fn to time, {name: result}) for one implementation; the Gram's
    backward records the forward once and times grad_features; the style
    loss's times forward and backward together."""
    x = inputs["x"].detach().requires_grad_()
    if case.style_loss:
        target = inputs["target"]
        if direction == "forward":
            def loss():
                with torch.no_grad():
                    return impl(case, x, target)

            return loss, {"loss": loss()}

        def step():
            return torch.autograd.grad(impl(case, x, target), x)

        (grad_features,) = step()
        return step, {"grad_features": grad_features}
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
