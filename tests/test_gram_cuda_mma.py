"""The CUDA Gram kernels on tensor cores (csrc/cuda/gram.cu: gram_mma_kernel,
style_loss_mma_kernel, gram_backward_mma_kernel), through the operators on
the cuda backend, against the float64 torch reference: f16, bf16 and f32 as
TF32 (``torch.backends.cuda.matmul.allow_tf32``), and f32 with TF32 off (the
CUDA-core kernels, exact fp32); every operand path (NCHW and channels_last
16-byte copies, strided and misaligned element loads), channel counts and
plane lengths off the 64-wide tiles and the k-tiles, the symmetrised
product, the backward, the fused style loss's partials and residual, the
forwards split over L (few tiles, long planes), and bitwise determinism.
CUDA only."""

import pytest
import torch
from reference import assert_close, float64_cpu, random_tensor

import cnnkernels.ops.gram as gram_ops
from cnnkernels.ops.gram import gram_matrix_backward_op, gram_matrix_op, style_loss_op

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# (B, C, H, W): C below, at and past the 64-row tiles; L = H * W odd, a
# multiple of 4 but not 8 (f16's chunk), whole k-tiles, and long.
SHAPES = [
    (2, 13, 5, 7),
    (1, 64, 8, 8),
    (2, 65, 4, 9),
    (1, 130, 6, 6),
    (1, 8, 4, 4),
    (1, 200, 16, 16),
    (1, 64, 64, 64),
]
# Shapes the plan splits over L (few upper tiles, long planes; (1, 64, 64,
# 64) above is one too): C off the tiles, slices of whole k-tiles with a
# shorter last one, an odd plane, several images.
SPLIT_SHAPES = [
    (1, 64, 256, 256),
    (2, 40, 48, 50),
    (1, 130, 33, 35),
    (3, 8, 37, 41),
]
# (dtype, allow_tf32): tensor cores for the first three, the CUDA cores for
# exact fp32.
PRECISIONS = [(torch.float16, True), (torch.bfloat16, True), (torch.float32, True),
              (torch.float32, False)]
LAYOUTS = ("nchw", "channels_last", "strided", "misaligned")


def precision_id(p):
    return f"{str(p[0]).removeprefix('torch.')}-{'tf32' if p[1] else 'exact'}"


@pytest.fixture(params=PRECISIONS, ids=precision_id)
def precision(request):
    """(dtype, the dtype whose tolerance applies), with torch's matmul TF32
    switch set as the case says for the test."""
    dtype, allow_tf32 = request.param
    saved = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = allow_tf32
    yield dtype, torch.float16 if dtype == torch.float32 and allow_tf32 else dtype
    torch.backends.cuda.matmul.allow_tf32 = saved


def features(shape, layout, dtype, generator):
    """(B, C, L) features flattened from a (B, C, H, W) map in ``layout``:
    l stride 1 (NCHW), c stride 1 (channels_last), every other element of a
    wider map (no stride 1), or NCHW one element past a 16-byte boundary."""
    x = random_tensor(shape, dtype, "cuda", generator=generator)
    if layout == "channels_last":
        x = x.to(memory_format=torch.channels_last)
    elif layout == "strided":
        wide = torch.empty((*shape[:3], 2 * shape[3]), dtype=dtype, device="cuda")
        wide[..., ::2] = x
        x = wide[..., ::2]
    elif layout == "misaligned":
        storage = torch.empty(x.numel() + 1, dtype=dtype, device="cuda")
        storage[1:] = x.reshape(-1)
        x = storage[1:].view(shape)
    return x.flatten(2)


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gram_and_symmetrised_product(precision, shape, layout):
    dtype, tol_dtype = precision
    generator = torch.Generator().manual_seed(sum(shape))
    x = features(shape, layout, dtype, generator)
    other = features(shape, "nchw", dtype, generator)
    L = x.shape[2]
    gram = gram_matrix_op(x, None, 0.5, "cuda")
    cross = gram_matrix_op(x, other, 0.5, "cuda")
    x64, o64 = float64_cpu(x), float64_cpu(other)
    assert torch.equal(gram, gram.transpose(1, 2)), "the Gram is not exactly symmetric"
    assert_close(gram, 0.5 * x64 @ x64.transpose(1, 2), tol_dtype, L, "gram")
    assert_close(cross, 0.5 * (x64 @ o64.transpose(1, 2) + o64 @ x64.transpose(1, 2)),
                 tol_dtype, 2 * L, "symmetrised product")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_gram_backward(precision, shape, layout):
    dtype, tol_dtype = precision
    generator = torch.Generator().manual_seed(sum(shape) + 1)
    x = features(shape, layout, dtype, generator)
    B, C, _ = x.shape
    grad_gram = random_tensor((B, C, C), dtype, "cuda", generator=generator)
    grad_x = gram_matrix_backward_op(grad_gram, x, 0.25, "cuda")
    d64, x64 = float64_cpu(grad_gram), float64_cpu(x)
    assert_close(grad_x, 0.25 * (d64 + d64.transpose(1, 2)) @ x64, tol_dtype, 2 * C,
                 "grad_features")


@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("layout", ("nchw", "channels_last", "strided"))
def test_fused_style_loss(precision, shape, layout):
    """The loss and the residual (both triangles of a non-symmetric target,
    shared across the batch through a zero batch stride), and the loss
    bitwise equal on a second run (fixed-order partials, no atomics)."""
    dtype, tol_dtype = precision
    generator = torch.Generator().manual_seed(sum(shape) + 2)
    x = features(shape, layout, dtype, generator)
    B, C, L = x.shape
    # The Gram over L (off the diagonal ~ L^-1/2) and a target of that size,
    # the loss a mean: every value well inside float16's range.
    gram_scale, loss_scale = 1.0 / L, 1.0 / (B * C * C)
    target = random_tensor((C, C), dtype, "cuda", generator=generator).mul(L ** -0.5)
    target = target.expand(B, C, C)
    loss, residual = style_loss_op(x, target, gram_scale, loss_scale, True, "cuda")
    again, _ = style_loss_op(x, target, gram_scale, loss_scale, False, "cuda")
    x64, t64 = float64_cpu(x), float64_cpu(target)
    expected = gram_scale * x64 @ x64.transpose(1, 2) - t64
    assert_close(residual, expected, tol_dtype, L, "residual")
    assert_close(loss, loss_scale * expected.square().sum(), tol_dtype, C * C * L, "loss")
    assert torch.equal(loss, again), "the style loss is not deterministic"


@pytest.mark.parametrize("shape", SPLIT_SHAPES, ids=str)
@pytest.mark.parametrize("layout", LAYOUTS)
def test_split_forward(precision, shape, layout):
    """The split reduction (phase 1 on tensor cores or the CUDA cores, phase
    2 adding the slices in order): the Gram, the symmetrised product and the
    fused style loss with its residual against float64, each bitwise equal
    on a second run."""
    dtype, tol_dtype = precision
    generator = torch.Generator().manual_seed(sum(shape) + 3)
    x = features(shape, layout, dtype, generator)
    other = features(shape, "nchw", dtype, generator)
    B, C, L = x.shape
    assert gram_ops._split("cuda", x)[0] > 1, "the case does not exercise the split"
    x64, o64 = float64_cpu(x), float64_cpu(other)
    gram = gram_matrix_op(x, None, 1.0 / L, "cuda")
    cross = gram_matrix_op(x, other, 1.0 / L, "cuda")
    assert torch.equal(gram, gram.transpose(1, 2)), "the Gram is not exactly symmetric"
    assert torch.equal(gram, gram_matrix_op(x, None, 1.0 / L, "cuda")), "not deterministic"
    assert torch.equal(cross, gram_matrix_op(x, other, 1.0 / L, "cuda")), "not deterministic"
    assert_close(gram, x64 @ x64.transpose(1, 2) / L, tol_dtype, L, "gram")
    assert_close(cross, (x64 @ o64.transpose(1, 2) + o64 @ x64.transpose(1, 2)) / L, tol_dtype,
                 2 * L, "symmetrised product")
    target = random_tensor((B, C, C), dtype, "cuda", generator=generator).mul(L ** -0.5)
    loss, residual = style_loss_op(x, target, 1.0 / L, 1.0 / (B * C * C), True, "cuda")
    unkept, _ = style_loss_op(x, target, 1.0 / L, 1.0 / (B * C * C), False, "cuda")
    again, again_residual = style_loss_op(x, target, 1.0 / L, 1.0 / (B * C * C), True, "cuda")
    expected = x64 @ x64.transpose(1, 2) / L - float64_cpu(target)
    assert_close(residual, expected, tol_dtype, L, "residual")
    assert_close(loss, expected.square().sum() / (B * C * C), tol_dtype, C * C * L, "loss")
    assert torch.equal(loss, unkept) and torch.equal(loss, again), "not deterministic"
    assert torch.equal(residual, again_residual), "the residual is not deterministic"
