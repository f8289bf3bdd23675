"""pool2d's benchmark (the driver's family contract, see driver.py):
``cnnkernels.max_pool2d``, ``avg_pool2d`` and ``adaptive_avg_pool2d``
against torch.nn.functional's, on the reference models' pooling layers. Both
directions run as in training: the input requires grad, so max pooling
writes the int64 indices its backward reads, and they are checked too."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import cnnkernels
from cnnkernels.bench import report, trace
from cnnkernels.bench.layers import LAYER_COLUMNS, PoolLayer, float64_reference
from cnnkernels.bench.verify import VerifyConfig

# Derived from cnnkernels.models (trace.py).
CASES = trace.cases("pool")
ALGORITHMS = {}  # one way per pooling op

LEGEND = ("pool2d: forward and backward as in training (max pooling writes, then reads, int64 "
          "indices);\nGB/s = minimum DRAM traffic / ours ms; bw% = fraction of the copy "
          "bandwidth; indices = max pooling's vs the reference's (any difference is wrong)")
COLUMNS = (  # bw%: pooling's roofline is the copy bandwidth
    *LAYER_COLUMNS,
    *report.CASE_COLUMNS,
    ("GB/s", 8, lambda r: report.number(r["gbps"], ".0f" if (r["gbps"] or 0) >= 100 else ".3g")),
    ("bw%", 6, lambda r: report.percent(r["roofline_fraction"])),
    ("max rel err", 11, report.errors),
    ("indices", 7, report.indices),
    report.STATUS_COLUMN,
)

# Every model's pooling layers in bfloat16, NCHW and channels_last, forward
# and backward.
VERIFY_CONFIGS = (
    VerifyConfig("pool2d-bfloat16-nchw", ("--dtype", "bfloat16"), 35),
    VerifyConfig("pool2d-bfloat16-channels_last", ("--dtype", "bfloat16", "--channels-last"), 35),
)
VERIFY_TARGETS = ("pool2d targets: bw% (the fraction of the copy bandwidth) >= 85 on the large "
                  "layers (the summary's \"copy bandwidth\" lines), speedup >= 1.0 forward and "
                  ">= 1.3 backward (its \"geometric-mean speedup\" lines). Records, not "
                  "pass/fail criteria.")


def make_inputs(case: PoolLayer, batch: int, dtype: torch.dtype, device: torch.device,
                channels_last: bool) -> dict:
    """Fresh random x and the output gradient gy."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format

    def randn(*shape):
        t = torch.randn(shape, dtype=torch.float64, device=device)
        return t.to(dtype).contiguous(memory_format=fmt)

    return {"x": randn(batch, case.channels, case.height, case.width),
            "gy": randn(batch, case.channels, *case.output_size())}


def _pool(functions, case: PoolLayer, x):
    """``case`` computed by ``functions``, torch.nn.functional or cnnkernels
    (same signatures); max pooling returns (y, indices)."""
    if case.kind == "global_avg":
        return functions.adaptive_avg_pool2d(x, 1)
    if case.kind == "avg":
        return functions.avg_pool2d(x, case.kernel, case.stride, case.padding, case.ceil_mode)
    return functions.max_pool2d(x, case.kernel, case.stride, case.padding, 1, case.ceil_mode,
                                return_indices=True)


def torch_impl(case: PoolLayer, x):
    """The anchor: torch.nn.functional's pooling."""
    return _pool(F, case, x)


def ours_impl(case: PoolLayer, x):
    """cnnkernels' pooling, on the current backend."""
    return _pool(cnnkernels, case, x)


def prepare(impl, case: PoolLayer, inputs: dict, direction: str):
    """(fn to time, {name: result}) for one implementation. Both directions
    run as in training, on an x that requires grad: max pooling's forward
    writes the indices (checked too) that its backward reads. Backward
    records the forward graph once; fn then computes grad_input."""
    x = inputs["x"].detach().requires_grad_()
    if direction == "forward":
        def forward():
            return impl(case, x)

        result = forward()
        if case.kind == "max":
            return forward, {"output": result[0].detach(), "indices": result[1]}
        return forward, {"output": result.detach()}
    y = impl(case, x)
    if case.kind == "max":
        y = y[0]

    def backward():
        return torch.autograd.grad(y, x, inputs["gy"], retain_graph=True)

    (grad_input,) = backward()
    return backward, {"grad_input": grad_input}


def reference(case: PoolLayer, inputs: dict, direction: str) -> dict:
    """torch's float64 result on the same device."""
    return float64_reference(prepare, torch_impl, case, inputs, direction)
