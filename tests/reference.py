"""Comparison against an independent float64 reference (DESIGN.md,
correctness method): torch's own op on float64 CPU copies of the inputs,
tolerance by dtype scaled with the reduction length, NaN never passes."""

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
