"""The CUDA tensor-core implicit GEMM and the im2col patch kernels
(csrc/cuda/conv2d/implicit_gemm.cu), called through their launchers
(``_C.cuda``) against the float64 torch reference: every layout path
(channels_last 16-byte copies, NCHW and strided element gathers), odd and
grouped channel counts, stride, dilation, asymmetric padding, both tile
sizes, every epilogue, the activation derivatives on load, the split
weight-gradient reduction and its determinism. CUDA only."""

import dataclasses

import pytest
import torch
import torch.nn.functional as F
from reference import assert_close, float64_cpu, random_tensor

from cnnkernels import _ext
from cnnkernels.ops.conv2d import _geometry

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]

# N, C, H, W, K, R, S, stride, padding (top, bottom, left, right), dilation, groups
CASES = [
    (2, 16, 9, 11, 24, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (1, 13, 7, 7, 5, 3, 2, (2, 1), (0, 2, 1, 0), (1, 2), 1),       # odd channels
    (2, 32, 12, 10, 64, 1, 1, (2, 2), (0, 0, 0, 0), (1, 1), 1),    # strided 1x1
    (1, 48, 8, 8, 96, 3, 3, (1, 1), (2, 2, 2, 2), (2, 2), 3),      # grouped, dilated
    (3, 16, 15, 17, 136, 5, 5, (1, 2), (2, 1, 2, 2), (1, 1), 1),   # K_g past 128
    (2, 8, 6, 6, 8, 7, 7, (1, 1), (3, 3, 3, 3), (1, 1), 8),        # depthwise-like
]
# Shapes that take the 128 x 128 tiles (forward and grad_weight; grad_input):
# run in fewer combinations, their float64 reference is slow.
BIG_CASES = [
    (8, 16, 64, 64, 192, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
    (16, 96, 48, 48, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1),
]
DTYPES = (torch.float16, torch.bfloat16, torch.float32)
LAYOUTS = ("nchw", "channels_last", "strided")


def combinations(modes):
    """(case, dtype, layout, mode): every combination of the small cases; the
    big ones channels_last (16-byte path) and NCHW, bf16 and TF32, first and
    last mode."""
    small = [(c, d, lay, m) for c in CASES for d in DTYPES for lay in LAYOUTS for m in modes]
    big = [(c, d, lay, m) for c in BIG_CASES for d in (torch.bfloat16, torch.float32)
           for lay in ("channels_last", "nchw") for m in (modes[0], modes[-1])]
    return small + big
SILU = 3


def tolerance_dtype(dtype):
    # fp32 runs as TF32: fp16's 10-bit mantissa.
    return torch.float16 if dtype == torch.float32 else dtype


def laid_out(t, layout):
    if layout == "channels_last":
        return t.contiguous(memory_format=torch.channels_last)
    if layout == "strided":
        wide = torch.empty(*t.shape[:3], t.shape[3] + 3, dtype=t.dtype, device=t.device)
        wide[..., 1:t.shape[3] + 1] = t
        return wide[..., 1:t.shape[3] + 1]
    return t.contiguous()


def make_case(case, dtype, layout, seed):
    N, C, H, W, K, R, S, stride, padding, dilation, groups = case
    gen = torch.Generator().manual_seed(seed)
    x = laid_out(random_tensor((N, C, H, W), dtype, "cuda", generator=gen), layout)
    w = laid_out(random_tensor((K, C // groups, R, S), dtype, "cuda", generator=gen), layout)
    b = random_tensor((K,), dtype, "cuda", generator=gen)
    g = _geometry(x, w, b, stride, padding, dilation, groups, "none", "auto")
    return g, x, w, b


def reference_conv(g, x, w, b, padding):
    t, bo, left, right = padding
    x64 = F.pad(float64_cpu(x), (left, right, t, bo))
    return F.conv2d(x64, float64_cpu(w), None if b is None else float64_cpu(b),
                    (g.stride_h, g.stride_w), 0, (g.dil_h, g.dil_w), g.groups)


def activation_grad64(grad, saved, act):
    if act == "relu":
        return grad * (saved > 0)
    if act == "silu":
        s = torch.sigmoid(saved)
        return grad * s * (1 + saved * (1 - s))
    return grad


def stream():
    return torch.cuda.current_stream().cuda_stream


@pytest.mark.parametrize(("case", "dtype", "layout", "epilogue"),
                         combinations(("none", "bias_relu", "bias_residual_silu")))
def test_forward(case, dtype, layout, epilogue):
    g, x, w, b = make_case(case, dtype, layout, seed=1)
    padding = case[8]
    bias = None if epilogue == "none" else b
    ref = reference_conv(g, x, w, bias, padding)
    y = torch.full(ref.shape, float("nan"), dtype=dtype, device="cuda")
    residual = preact = None
    act = {"none": 0, "bias_relu": 1, "bias_residual_silu": SILU}[epilogue]
    if epilogue == "bias_residual_silu":
        residual = laid_out(random_tensor(ref.shape, dtype, "cuda"), layout)
        preact = torch.full_like(y, float("nan"))
        ref = ref + float64_cpu(residual)
    g = dataclasses.replace(g, activation=act)
    _ext.cuda_kernels().conv2d_implicit_gemm_forward(
        _ext.dtype_code(dtype), g, x, w, bias, residual, y, preact, True, stream())
    reduction = g.C_g * g.R * g.S
    if preact is not None:
        assert_close(preact, ref, tolerance_dtype(dtype), reduction, "preact")
    expected = {0: ref, 1: ref.clamp_min(0), SILU: F.silu(ref)}[act]
    assert_close(y, expected, tolerance_dtype(dtype), reduction, "y")


@pytest.mark.parametrize(("case", "dtype", "layout", "act"),
                         combinations(("none", "relu", "silu")))
def test_backward(case, dtype, layout, act):
    g, x, w, b = make_case(case, dtype, layout, seed=2)
    padding = case[8]
    out_shape = (g.N, g.K, g.P, g.Q)
    gy = laid_out(random_tensor(out_shape, dtype, "cuda"), layout)
    saved = laid_out(random_tensor(out_shape, dtype, "cuda"), layout) if act != "none" else None
    g = dataclasses.replace(g, activation={"none": 0, "relu": 1, "silu": SILU}[act])
    gy64 = activation_grad64(float64_cpu(gy), float64_cpu(saved), act)

    x64 = float64_cpu(x).requires_grad_()
    w64 = float64_cpu(w).requires_grad_()
    t, bo, left, right = padding
    y64 = F.conv2d(F.pad(x64, (left, right, t, bo)), w64, None, (g.stride_h, g.stride_w), 0,
                   (g.dil_h, g.dil_w), g.groups)
    y64.backward(gy64)

    cuda = _ext.cuda_kernels()
    code = _ext.dtype_code(dtype)
    grad_x = torch.full_like(x, float("nan"))
    cuda.conv2d_implicit_gemm_grad_input(code, g, gy, saved, w, grad_x, True, stream())
    assert_close(grad_x, x64.grad, tolerance_dtype(dtype), g.K_g * g.R * g.S, "grad_x")

    grad_w = torch.full_like(w, float("nan"))
    grad_b = torch.full_like(b, float("nan"))
    nbytes = cuda.conv2d_implicit_gemm_grad_weight_workspace_bytes(code, g)
    workspace = torch.empty(max(nbytes, 1), dtype=torch.uint8, device="cuda")
    cuda.conv2d_implicit_gemm_grad_weight(code, g, gy, saved, x, grad_w, grad_b, workspace, True,
                                          stream())
    reduction = g.N * g.P * g.Q
    assert_close(grad_w, w64.grad, tolerance_dtype(dtype), reduction, "grad_w")
    assert_close(grad_b, gy64.sum((0, 2, 3)), tolerance_dtype(dtype), reduction, "grad_bias")

    again = torch.full_like(w, float("nan"))
    cuda.conv2d_implicit_gemm_grad_weight(code, g, gy, saved, x, again, None, workspace, True,
                                          stream())
    assert torch.equal(again, grad_w), "grad_weight is not bitwise reproducible"


def test_split_reduction_and_empty_batch():
    case = (64, 16, 16, 16, 32, 3, 3, (1, 1), (1, 1, 1, 1), (1, 1), 1)
    g, _, w, _ = make_case(case, torch.bfloat16, "channels_last", seed=3)
    code = _ext.dtype_code(torch.bfloat16)
    cuda = _ext.cuda_kernels()
    assert cuda.conv2d_implicit_gemm_grad_weight_workspace_bytes(code, g) > 0  # several splits
    empty = dataclasses.replace(g, N=0)
    grad_w = torch.full_like(w, float("nan"))
    cuda.conv2d_implicit_gemm_grad_weight(code, empty, None, None, None, grad_w, None,
                                          torch.empty(1, dtype=torch.uint8, device="cuda"), True,
                                          stream())
    assert (grad_w == 0).all()


def test_unsupported_dtypes_are_refused():
    case = CASES[0]
    cuda = _ext.cuda_kernels()
    for dtype, allow_tf32 in ((torch.float32, False), (torch.float64, True)):
        g, x, w, b = make_case(case, dtype, "nchw", seed=4)
        y = torch.empty(g.N, g.K, g.P, g.Q, dtype=dtype, device="cuda")
        with pytest.raises(RuntimeError, match="dtype"):
            cuda.conv2d_implicit_gemm_forward(_ext.dtype_code(dtype), g, x, w, b, None, y, None,
                                              allow_tf32, stream())


def _column_order(patches, g, taps_channels_last: bool, to_taps_channels_last: bool):
    """Patch columns (N, G*J, P, Q) from one column order to the other:
    (c, r, s) within a group, or (r, s, c)."""
    if taps_channels_last == to_taps_channels_last:
        return patches
    inner = (g.R * g.S, g.C_g) if taps_channels_last else (g.C_g, g.R * g.S)
    return (patches.reshape(g.N, g.groups, *inner, g.P, g.Q).transpose(2, 3)
            .reshape(patches.shape))


@pytest.mark.parametrize("taps_channels_last", (False, True))
@pytest.mark.parametrize("dtype", (torch.float16, torch.bfloat16, torch.float32, torch.float64))
@pytest.mark.parametrize("case", CASES)
def test_im2col_col2im(case, dtype, taps_channels_last):
    g, x, _, _ = make_case(case, dtype, "strided", seed=5)
    padding = case[8]
    t, bo, left, right = padding
    cuda = _ext.cuda_kernels()
    code = _ext.dtype_code(dtype)
    J = g.C_g * g.R * g.S
    patches = torch.full((g.N, g.groups * J, g.P, g.Q), float("nan"), dtype=dtype, device="cuda")
    cuda.conv2d_im2col(code, g, x, patches, taps_channels_last, stream())
    x64 = F.pad(float64_cpu(x), (left, right, t, bo))
    unfolded = F.unfold(x64, (g.R, g.S), dilation=(g.dil_h, g.dil_w),
                        stride=(g.stride_h, g.stride_w))  # (N, C*R*S, P*Q), (c, r, s) order
    expected = _column_order(unfolded.reshape(g.N, g.groups * J, g.P, g.Q), g, False,
                             taps_channels_last)
    assert torch.equal(float64_cpu(patches), expected)

    grad_patches = random_tensor(patches.shape, dtype, "cuda").transpose(2, 3).contiguous()
    grad_patches = grad_patches.transpose(2, 3)  # non-contiguous
    grad_x = torch.full_like(x, float("nan"))
    cuda.conv2d_col2im(code, g, grad_patches, grad_x, taps_channels_last, stream())
    crs = _column_order(float64_cpu(grad_patches), g, taps_channels_last, False)
    folded = F.fold(crs.reshape(g.N, g.groups * J, g.P * g.Q),
                    (g.H + t + bo, g.W + left + right), (g.R, g.S),
                    dilation=(g.dil_h, g.dil_w), stride=(g.stride_h, g.stride_w))
    expected = folded[..., t:t + g.H, left:left + g.W]
    assert_close(grad_x, expected, dtype, g.R * g.S, "grad_x")
