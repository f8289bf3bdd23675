"""conv2d, im2col algorithm: the patch-matrix kernels (launchers
``conv2d_im2col``, ``conv2d_col2im``); the GEMM is the pointwise algorithm's
(cnnkernels/ops/conv2d.py, ``_Im2col``).

The patch matrix of a convolution with geometry ``g`` is a tensor
``patches`` (N, groups*J, P, Q), J = C/groups*R*S, any strides (the launcher
allocates it channels_last, so a pixel's patch is one contiguous row):
patches[n, group*J + j, p, q] = x[n, group*C/groups + c, p*stride_h - pad_top
+ r*dil_h, q*stride_w - pad_left + s*dil_w], or 0 outside the input, where
j = c*R*S + r*S + s (TAPS_CHANNELS_LAST false: the order of a contiguous
weight) or j = (r*S + s)*C/groups + c (true: a channels_last weight's).

``_im2col_kernel``: a program fills BLOCK_M pixels x BLOCK_J patch columns.
``_col2im_kernel``: the adjoint as a gather: a program owns BLOCK_M input
pixels x BLOCK_C channels and sums, tap by tap, the patch entries that read
them (the output pixel p = (h + pad_top - r*dil_h) / stride_h when whole and
in range): no atomics, a fixed order.
Both are memory-bound: im2col reads x about R*S/(stride_h*stride_w) times
(from L2) and writes N*P*Q*C*R*S elements; col2im reads those and writes x
once. Offsets are 32-bit (checked by the op).
"""

import triton
import triton.language as tl
from cnnkernels.kernels import TORCH_TO_TRITON_POINTER, compile_spec
from cnnkernels.kernels.common import acc_type, geometry_args


@triton.jit
def _patch_column(j, C_g, R, S, TAPS_CHANNELS_LAST: tl.constexpr):
    """(c, r, s) of patch column j within a group."""
    if TAPS_CHANNELS_LAST:
        c = j % C_g
        tap = j // C_g
    else:
        c = j // (R * S)
        tap = j % (R * S)
    return c, tap // S, tap % S


@triton.jit
def _im2col_kernel(
    x_ptr, patches_ptr,
    xs_n, xs_c, xs_h, xs_w,
    ps_n, ps_j, ps_p, ps_q,
    N, H, W, P, Q, R, S, C_g, groups,
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
    TAPS_CHANNELS_LAST: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_J: tl.constexpr,
):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = m < N * P * Q
    n = m // (P * Q)
    p = (m // Q) % P
    q = m % Q
    J = C_g * R * S
    column = tl.program_id(1) * BLOCK_J + tl.arange(0, BLOCK_J)
    column_mask = column < groups * J
    group = column // J
    c, r, s = _patch_column(column % J, C_g, R, S, TAPS_CHANNELS_LAST)
    ih = (p * stride_h - pad_top)[:, None] + (r * dil_h)[None, :]
    iw = (q * stride_w - pad_left)[:, None] + (s * dil_w)[None, :]
    mask = m_mask[:, None] & column_mask[None, :]
    inside = mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    x_off = (n * xs_n)[:, None] + ((group * C_g + c) * xs_c)[None, :] + ih * xs_h + iw * xs_w
    values = tl.load(x_ptr + x_off, mask=inside, other=0.0)
    out_off = (n * ps_n + p * ps_p + q * ps_q)[:, None] + (column * ps_j)[None, :]
    tl.store(patches_ptr + out_off, values, mask=mask)


@triton.jit
def _col2im_kernel(
    patches_ptr, gx_ptr,
    ps_n, ps_j, ps_p, ps_q,
    gxs_n, gxs_c, gxs_h, gxs_w,
    N, H, W, P, Q, R, S, C_g, C,
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
    TAPS_CHANNELS_LAST: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = m < N * H * W
    n = m // (H * W)
    h = (m // W) % H
    w = m % W
    channel = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = channel < C
    group = channel // C_g
    c = channel % C_g
    J = C_g * R * S
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for tap in range(0, R * S):
        r = tap // S
        s = tap % S
        # Clamp before dividing so negative numerators never reach integer division.
        th = h + pad_top - r * dil_h
        tw = w + pad_left - s * dil_w
        th_c = tl.where(th >= 0, th, 0)
        tw_c = tl.where(tw >= 0, tw, 0)
        p = th_c // stride_h
        q = tw_c // stride_w
        ok = (m_mask & (th >= 0) & (th_c == p * stride_h) & (p < P)
              & (tw >= 0) & (tw_c == q * stride_w) & (q < Q))
        j = tap * C_g + c if TAPS_CHANNELS_LAST else c * (R * S) + tap
        off = (n * ps_n + p * ps_p + q * ps_q)[:, None] + ((group * J + j) * ps_j)[None, :]
        acc += tl.load(patches_ptr + off, mask=ok[:, None] & c_mask[None, :], other=0.0).to(ACC)
    gx_off = (n * gxs_n + h * gxs_h + w * gxs_w)[:, None] + (channel * gxs_c)[None, :]
    tl.store(gx_ptr + gx_off, acc.to(gx_ptr.dtype.element_ty),
             mask=m_mask[:, None] & c_mask[None, :])


_BLOCK_M = 64
_BLOCK_J = 32
_BLOCK_C = 32
_NUM_WARPS = 4


def conv2d_im2col(g, x, patches, taps_channels_last: bool) -> None:
    columns = patches.shape[1]
    grid = (triton.cdiv(g.N * g.P * g.Q, _BLOCK_M), triton.cdiv(columns, _BLOCK_J))
    _im2col_kernel[grid](
        x, patches, *x.stride(), *patches.stride(),
        **geometry_args(_im2col_kernel, g),
        TAPS_CHANNELS_LAST=taps_channels_last, BLOCK_M=_BLOCK_M, BLOCK_J=_BLOCK_J,
        num_warps=_NUM_WARPS)


def conv2d_col2im(g, grad_patches, grad_x, taps_channels_last: bool) -> None:
    grid = (triton.cdiv(g.N * g.H * g.W, _BLOCK_M), triton.cdiv(g.C, _BLOCK_C))
    _col2im_kernel[grid](
        grad_patches, grad_x, *grad_patches.stride(), *grad_x.stride(),
        **geometry_args(_col2im_kernel, g),
        TAPS_CHANNELS_LAST=taps_channels_last, ACC=acc_type(grad_x.dtype),
        BLOCK_M=_BLOCK_M, BLOCK_C=_BLOCK_C, num_warps=_NUM_WARPS)


def static_check_specs():
    """Both kernels for each dtype and tap order, for the static GPU check."""
    specs = []
    for dtype in ("float32", "float16", "bfloat16"):
        ptr = TORCH_TO_TRITON_POINTER[dtype]
        for taps_channels_last in (False, True):
            order = "rsc" if taps_channels_last else "crs"
            specs.append(compile_spec(
                f"conv2d_im2col[{dtype},{order}]", _im2col_kernel,
                pointers={"x_ptr": ptr, "patches_ptr": ptr},
                constexprs={"TAPS_CHANNELS_LAST": taps_channels_last, "BLOCK_M": _BLOCK_M,
                            "BLOCK_J": _BLOCK_J},
                num_warps=_NUM_WARPS))
            specs.append(compile_spec(
                f"conv2d_col2im[{dtype},{order}]", _col2im_kernel,
                pointers={"patches_ptr": ptr, "gx_ptr": ptr},
                constexprs={"TAPS_CHANNELS_LAST": taps_channels_last, "ACC": tl.float32,
                            "BLOCK_M": _BLOCK_M, "BLOCK_C": _BLOCK_C},
                num_warps=_NUM_WARPS))
    return specs
