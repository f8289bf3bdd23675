"""Comparison against an independent float64 reference (DESIGN.md,
correctness method): torch's own op on float64 CPU copies of the inputs,
tolerance by dtype scaled with the reduction length, NaN never passes; and
the random inputs the tests draw (never zeros), with the convolution
families' layouts and output gradients."""

import math

import torch

# Relative error allowed per dtype for a reduction of length 1; grows with
# sqrt(length), the typical growth of rounding error in a long sum.
BASE_RTOL = {
    torch.float64: 1e-13,
    torch.float32: 2e-6,
    torch.float16: 1e-3,
    torch.bfloat16: 8e-3,
}


def float64_cpu(t):
    return None if t is None else t.detach().to(device="cpu", dtype=torch.float64)


def tolerance(dtype: torch.dtype, reduction: int) -> float:
    return BASE_RTOL[dtype] * math.sqrt(max(reduction, 1))


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype,
                 reduction: int, what: str) -> None:
    """max |actual - expected| <= tol * max |expected| (norm-wise relative
    error), shapes equal, no NaN or Inf in actual."""
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != " \
                                           f"{tuple(expected.shape)}"
    actual = float64_cpu(actual)
    assert torch.isfinite(actual).all(), f"{what}: non-finite values (unwritten output?)"
    scale = expected.abs().max().item() if expected.numel() else 0.0
    error = (actual - expected).abs().max().item() if expected.numel() else 0.0
    tol = tolerance(dtype, reduction)
    assert error <= tol * max(scale, 1e-30), (
        f"{what}: max abs error {error:.3e} > {tol:.1e} * max|ref| {scale:.3e} "
        f"(dtype {dtype}, reduction length {reduction})")


def random_tensor(shape, dtype, device, *, generator=None) -> torch.Tensor:
    """Standard normal values, never zeros (a zero input hides unwritten or
    mis-indexed outputs)."""
    return torch.randn(shape, generator=generator, dtype=torch.float64).to(device=device,
                                                                           dtype=dtype)


def conv_inputs(case: dict, weight_shape: tuple, dtype, device, generator):
    """A convolution's input (N, C, H, W), weight of ``weight_shape`` and
    bias (K) in the case's layout (the values are what matter; the layout
    only changes the strides the kernels see): contiguous, channels_last
    input or weight, or non-contiguous views."""
    shape_x = (case["N"], case["C"], case["H"], case["W"])
    x = random_tensor(shape_x, dtype, device, generator=generator)
    w = random_tensor(weight_shape, dtype, device, generator=generator)
    b = random_tensor((case["K"],), dtype, device, generator=generator) if case["bias"] else None
    layout = case["layout"]
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "weight_channels_last":
        w = w.to(memory_format=torch.channels_last)
    elif layout == "noncontiguous":
        # Every other column of a wider tensor, and a weight transposed twice.
        wide = random_tensor((*shape_x[:3], 2 * shape_x[3]), dtype, device, generator=generator)
        x = wide[..., ::2]
        w = w.transpose(2, 3).contiguous().transpose(2, 3)
        if b is not None:
            b = random_tensor((2 * case["K"],), dtype, device, generator=generator)[::2]
    return x, w, b


def output_gradient(case, pre, dtype, device, generator, tol):
    """Random grad_y, zero where the reference pre-activation lies within the
    output tolerance of a kink of the case's activation (0 for relu, 0 and 6
    for relu6): there a result that is correct to within rounding (a bf16
    5.99 stored as 6.0) may legitimately take the other branch of the
    derivative. silu's derivative is smooth: nothing to zero."""
    grad_y = random_tensor(pre.shape, dtype, device, generator=generator)
    if case["activation"] not in ("relu", "relu6"):
        return grad_y
    margin = tol * pre.abs().max().item()
    near = pre.detach().abs() <= margin
    if case["activation"] == "relu6":
        near |= (pre.detach() - 6).abs() <= margin
    return grad_y.masked_fill(near.to(device), 0)
