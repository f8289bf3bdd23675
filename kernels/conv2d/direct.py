"""conv2d, direct algorithm: Triton kernels and their launchers
(``conv2d_direct_*``, named and called like the C++/CUDA launchers).

Shapes are torch's: input x (N, C, H, W), weight w (K, C/groups, R, S),
output y (N, K, P, Q). Every tensor is addressed through its four strides,
so NCHW, channels_last and non-contiguous views run without a copy. The
launchers take the geometry ``g`` (``cnnkernels.ops.conv2d.Conv2dGeometry``)
and pass its fields to the kernels by name (``geometry_args``); padding may
be asymmetric, so P and Q are given and anything outside the input reads as
zero.

Kernels (all deterministic: no atomics, fixed summation order):

``_forward_kernel``: a program owns BLOCK_M output pixels (flattened n, p, q)
x BLOCK_K output channels of one group and accumulates rank-1 updates x[m] *
w[k] over the filter taps (c, r, s) in registers, taps outer (bounds mask
computed once per tap) and channels inner. The epilogue (cnnk/conv2d.h: z =
acc + bias + residual, z kept in ``preact`` when asked, y = act(z);
``activation.store_epilogue``) runs on the tile in registers, so the output is
written once. Cost 2*N*K*P*Q*(C/groups)*R*S flops; each tap loads BLOCK_M +
BLOCK_K values for BLOCK_M*BLOCK_K FMAs, so it is bound by load issue and FMA
rate, not by DRAM (x is re-read R*S*K/BLOCK_K times, mostly from L1/L2; the
epilogue reads the residual and writes z once each when given).

``_grad_input_kernel``: the same structure over input pixels: each input
element gathers gy'[n, k, p, q] * w[k, c, r, s] over the taps with
h + pad - r*dil = p*stride (no scatter). gy' = gy * act'(y) is formed on
load (y: the saved tensor, the pre-activation z for silu). Same flop count
as the forward.

``_grad_weight_kernel``: a program owns BLOCK_K output channels x BLOCK_J
flattened filter taps j = (c, r, s) and reduces over a slice of the
flattened m = (n, p, q) range in BLOCK_M chunks with a dot product of the
gy' tile and the gathered x tile (fp32 FMA, no tensor cores). The m range
is split over SPLITS programs for parallelism; partial sums (and grad_bias,
summed by the j == 0 programs from the gy' tiles they already hold) go to
an fp32 workspace that ``common.sum_splits`` reduces in a fixed order.

Limits: offsets are 32-bit (``cnnkernels._args.check_index_range``);
accumulation is fp32 (fp64 for fp64 inputs, interpreter only).
"""

import torch
import triton
import triton.language as tl
from cnnkernels.kernels import TORCH_TO_TRITON_POINTER, compile_spec
from cnnkernels.kernels.common import (
    acc_dtype,
    acc_type,
    channel_block,
    channel_tile,
    geometry_args,
    masked_grad,
    split_reduction,
    sum_splits,
    sum_splits_specs,
)
from cnnkernels.kernels.conv2d.activation import store_epilogue

from cnnkernels._ext import Activation


@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, b_ptr, r_ptr, y_ptr, z_ptr,
    xs_n, xs_c, xs_h, xs_w,
    ws_k, ws_c, ws_r, ws_s,
    bs,
    rs_n, rs_k, rs_p, rs_q,
    ys_n, ys_k, ys_p, ys_q,
    zs_n, zs_k, zs_p, zs_q,
    N, H, W, P, Q, R, S, C_g, K_g,
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, KEEP_PREACT: tl.constexpr,
    ACTIVATION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    group, k_local, k_mask = channel_tile(tl.program_id(1), K_g, BLOCK_K)
    k = group * K_g + k_local

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = m < N * P * Q
    n = m // (P * Q)
    pq = m % (P * Q)
    p = pq // Q
    q = pq % Q
    ih0 = p * stride_h - pad_top
    iw0 = q * stride_w - pad_left

    x_base = x_ptr + n * xs_n + group * C_g * xs_c
    w_base = w_ptr + k * ws_k
    acc = tl.zeros((BLOCK_M, BLOCK_K), dtype=ACC)
    # Taps outer, channels inner: the bounds mask and the address of a tap are
    # computed once and reused for all C/groups channels.
    for tap in range(0, R * S):
        r = tap // S
        s = tap % S
        ih = ih0 + r * dil_h
        iw = iw0 + s * dil_w
        ok = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        x_tap = x_base + ih * xs_h + iw * xs_w
        w_tap = w_base + r * ws_r + s * ws_s
        for c in range(0, C_g):
            xv = tl.load(x_tap + c * xs_c, mask=ok, other=0.0)
            wv = tl.load(w_tap + c * ws_c, mask=k_mask, other=0.0)
            acc += xv.to(ACC)[:, None] * wv.to(ACC)[None, :]

    # Residual and pre-activation through their own strides (OUTPUT_STRIDES off).
    store_epilogue(acc, n, p, q, k, m_mask, k_mask, b_ptr, bs, r_ptr, rs_n, rs_k, rs_p, rs_q,
                   y_ptr, ys_n, ys_k, ys_p, ys_q, z_ptr, zs_n, zs_k, zs_p, zs_q,
                   HAS_BIAS, HAS_RESIDUAL, KEEP_PREACT, False, ACTIVATION, ACC)


@triton.jit
def _grad_input_kernel(
    gy_ptr, y_ptr, w_ptr, gx_ptr,
    gys_n, gys_k, gys_p, gys_q,
    ys_n, ys_k, ys_p, ys_q,
    ws_k, ws_c, ws_r, ws_s,
    gxs_n, gxs_c, gxs_h, gxs_w,
    N, H, W, P, Q, R, S, C_g, K_g,
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
    ACTIVATION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_m = tl.program_id(0)
    group, c_local, c_mask = channel_tile(tl.program_id(1), C_g, BLOCK_C)

    m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = m < N * H * W
    n = m // (H * W)
    hw = m % (H * W)
    h = hw // W
    w = hw % W

    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for tap in range(0, R * S):
        r = tap // S
        s = tap % S
        # Output (p, q) reads input (h, w) through tap (r, s) iff
        # p * stride_h = h + pad_top - r * dil_h (likewise q); clamp before
        # dividing so negative numerators never reach integer division.
        th = h + pad_top - r * dil_h
        tw = w + pad_left - s * dil_w
        th_c = tl.where(th >= 0, th, 0)
        tw_c = tl.where(tw >= 0, tw, 0)
        p = th_c // stride_h
        q = tw_c // stride_w
        ok = (m_mask & (th >= 0) & (th_c - p * stride_h == 0) & (p < P)
              & (tw >= 0) & (tw_c - q * stride_w == 0) & (q < Q))
        gy_tap = gy_ptr + n * gys_n + p * gys_p + q * gys_q
        y_tap = y_ptr + n * ys_n + p * ys_p + q * ys_q
        w_tap = w_ptr + c_local * ws_c + r * ws_r + s * ws_s
        for k_local in range(0, K_g):
            k = group * K_g + k_local
            gy = tl.load(gy_tap + k * gys_k, mask=ok, other=0.0).to(ACC)
            if ACTIVATION != 0:
                yv = tl.load(y_tap + k * ys_k, mask=ok, other=0.0).to(ACC)
                gy = masked_grad(gy, yv, ACTIVATION)
            wv = tl.load(w_tap + k * ws_k, mask=c_mask, other=0.0).to(ACC)
            acc += gy[:, None] * wv[None, :]

    c = group * C_g + c_local
    gx_off = (n * gxs_n + h * gxs_h + w * gxs_w)[:, None] + (c * gxs_c)[None, :]
    tl.store(gx_ptr + gx_off, acc.to(gx_ptr.dtype.element_ty),
             mask=m_mask[:, None] & c_mask[None, :])


@triton.jit
def _grad_weight_kernel(
    gy_ptr, y_ptr, x_ptr, partial_w_ptr, partial_b_ptr,
    gys_n, gys_k, gys_p, gys_q,
    ys_n, ys_k, ys_p, ys_q,
    xs_n, xs_c, xs_h, xs_w,
    m_per_split,
    N, H, W, P, Q, R, S, C_g, K_g, K,
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
    ACTIVATION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_J: tl.constexpr,
):
    group, k_local, k_mask = channel_tile(tl.program_id(0), K_g, BLOCK_K)
    k = group * K_g + k_local
    pid_j = tl.program_id(1)
    split = tl.program_id(2)

    J = C_g * R * S
    j = pid_j * BLOCK_J + tl.arange(0, BLOCK_J)
    j_mask = j < J
    c = j // (R * S)
    r = (j % (R * S)) // S
    s = j % S
    x_chan = (group * C_g + c) * xs_c

    M = N * P * Q
    m_start = split * m_per_split
    m_end = tl.minimum(m_start + m_per_split, M)
    acc = tl.zeros((BLOCK_K, BLOCK_J), dtype=ACC)
    bias_acc = tl.zeros((BLOCK_K,), dtype=ACC)
    for m0 in range(m_start, m_end, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        m_mask = m < m_end
        n = m // (P * Q)
        pq = m % (P * Q)
        p = pq // Q
        q = pq % Q

        gy_mask = m_mask[:, None] & k_mask[None, :]
        gy_off = (n * gys_n + p * gys_p + q * gys_q)[:, None] + (k * gys_k)[None, :]
        gy = tl.load(gy_ptr + gy_off, mask=gy_mask, other=0.0).to(ACC)
        if ACTIVATION != 0:
            y_off = (n * ys_n + p * ys_p + q * ys_q)[:, None] + (k * ys_k)[None, :]
            yv = tl.load(y_ptr + y_off, mask=gy_mask, other=0.0).to(ACC)
            gy = masked_grad(gy, yv, ACTIVATION)

        ih = (p * stride_h - pad_top)[:, None] + (r * dil_h)[None, :]
        iw = (q * stride_w - pad_left)[:, None] + (s * dil_w)[None, :]
        x_mask = (m_mask[:, None] & j_mask[None, :] & (ih >= 0) & (ih < H)
                  & (iw >= 0) & (iw < W))
        x_off = (n * xs_n)[:, None] + x_chan[None, :] + ih * xs_h + iw * xs_w
        xt = tl.load(x_ptr + x_off, mask=x_mask, other=0.0).to(ACC)

        acc += tl.dot(tl.trans(gy), xt, input_precision="ieee", out_dtype=ACC)
        bias_acc += tl.sum(gy, axis=0)

    out_w = split * K * J + k[:, None] * J + j[None, :]
    tl.store(partial_w_ptr + out_w, acc, mask=k_mask[:, None] & j_mask[None, :])
    if pid_j == 0:
        tl.store(partial_b_ptr + split * K + k, bias_acc, mask=k_mask)


# Launch configurations: each launcher picks from these tables by problem
# size, and static_check_specs() compiles every entry.
_FORWARD_BLOCK_M = 128
# Channel tiles stop at 32: a 64-wide tile needs all 255 registers and
# spills on sm_80 and sm_90 (static check), with 4 or 8 warps alike.
_FORWARD_BLOCK_K = (1, 2, 4, 8, 16, 32)
_GRAD_INPUT_BLOCK_M = 128
_GRAD_INPUT_BLOCK_C = (1, 2, 4, 8, 16, 32)
_GRAD_WEIGHT_BLOCKS = (32, 32, 32)  # BLOCK_M, BLOCK_K, BLOCK_J (tl.dot needs >= 16)
_NUM_WARPS = 4
# Enough programs in the weight-gradient reduction to fill a large GPU.
_GRAD_WEIGHT_TARGET_PROGRAMS = 512
_GRAD_WEIGHT_MIN_CHUNKS_PER_SPLIT = 8


def conv2d_direct_forward(g, x, w, bias, residual, y, preact) -> None:
    """y = act(conv(x, w) + bias + residual), z kept in preact; bias,
    residual and preact may be None (cnnk/conv2d.h's epilogue)."""
    block_k = channel_block(g.K_g, _FORWARD_BLOCK_K)
    grid = (triton.cdiv(g.N * g.P * g.Q, _FORWARD_BLOCK_M), g.groups * triton.cdiv(g.K_g, block_k))
    # An absent tensor's pointer and strides are never read: y stands in.
    _forward_kernel[grid](
        x, w, bias if bias is not None else w, residual if residual is not None else y, y,
        preact if preact is not None else y,
        *x.stride(), *w.stride(), bias.stride(0) if bias is not None else 0,
        *(residual if residual is not None else y).stride(), *y.stride(),
        *(preact if preact is not None else y).stride(),
        **geometry_args(_forward_kernel, g),
        HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        KEEP_PREACT=preact is not None, ACTIVATION=int(g.activation), ACC=acc_type(x.dtype),
        BLOCK_M=_FORWARD_BLOCK_M, BLOCK_K=block_k, num_warps=_NUM_WARPS,
    )


def conv2d_direct_grad_input(g, grad_y, y, w, grad_x) -> None:
    block_c = channel_block(g.C_g, _GRAD_INPUT_BLOCK_C)
    y_arg = y if y is not None else grad_y
    grid = (triton.cdiv(g.N * g.H * g.W, _GRAD_INPUT_BLOCK_M),
            g.groups * triton.cdiv(g.C_g, block_c))
    _grad_input_kernel[grid](
        grad_y, y_arg, w, grad_x,
        *grad_y.stride(), *y_arg.stride(), *w.stride(), *grad_x.stride(),
        **geometry_args(_grad_input_kernel, g),
        ACTIVATION=int(g.activation), ACC=acc_type(grad_y.dtype),
        BLOCK_M=_GRAD_INPUT_BLOCK_M, BLOCK_C=block_c, num_warps=_NUM_WARPS,
    )


def grad_weight_splits(g) -> tuple[int, int]:
    """(splits, pixels per split) of each tile's m = (n, p, q) reduction."""
    block_m, block_k, block_j = _GRAD_WEIGHT_BLOCKS
    tiles = g.groups * triton.cdiv(g.K_g, block_k) * triton.cdiv(g.C_g * g.R * g.S, block_j)
    return split_reduction(tiles, g.N * g.P * g.Q, block_m, _GRAD_WEIGHT_TARGET_PROGRAMS,
                           _GRAD_WEIGHT_MIN_CHUNKS_PER_SPLIT)


def conv2d_direct_grad_weight(g, grad_y, y, x, grad_w, grad_bias) -> None:
    block_m, block_k, block_j = _GRAD_WEIGHT_BLOCKS
    J = g.C_g * g.R * g.S
    splits, m_per_split = grad_weight_splits(g)
    partial_w = torch.empty((splits, g.K, J), dtype=acc_dtype(x.dtype), device=x.device)
    partial_b = torch.empty((splits, g.K), dtype=acc_dtype(x.dtype), device=x.device)
    y_arg = y if y is not None else grad_y
    grid = (g.groups * triton.cdiv(g.K_g, block_k), triton.cdiv(J, block_j), splits)
    _grad_weight_kernel[grid](
        grad_y, y_arg, x, partial_w, partial_b,
        *grad_y.stride(), *y_arg.stride(), *x.stride(), m_per_split,
        **geometry_args(_grad_weight_kernel, g),
        ACTIVATION=int(g.activation), ACC=acc_type(x.dtype),
        BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_J=block_j, num_warps=_NUM_WARPS,
    )
    sum_splits(partial_w, grad_w, splits)
    sum_splits(partial_b, grad_bias, splits)


def static_check_specs():
    """Every kernel in every launch configuration (block table entry x dtype),
    for the static GPU check; each in its heaviest epilogue (silu, and in
    the forward bias, residual and the kept pre-activation)."""
    specs = []
    block_m, block_k, block_j = _GRAD_WEIGHT_BLOCKS
    for dtype in ("float32", "float16", "bfloat16"):
        ptr = TORCH_TO_TRITON_POINTER[dtype]
        for block in _FORWARD_BLOCK_K:
            specs.append(compile_spec(
                f"conv2d_forward[{dtype},BLOCK_K={block}]", _forward_kernel,
                pointers=dict.fromkeys(("x_ptr", "w_ptr", "b_ptr", "r_ptr", "y_ptr", "z_ptr"),
                                       ptr),
                constexprs={"HAS_BIAS": True, "HAS_RESIDUAL": True, "KEEP_PREACT": True,
                            "ACTIVATION": int(Activation.silu), "ACC": tl.float32,
                            "BLOCK_M": _FORWARD_BLOCK_M, "BLOCK_K": block},
                num_warps=_NUM_WARPS))
        for block in _GRAD_INPUT_BLOCK_C:
            specs.append(compile_spec(
                f"conv2d_grad_input[{dtype},BLOCK_C={block}]", _grad_input_kernel,
                pointers=dict.fromkeys(("gy_ptr", "y_ptr", "w_ptr", "gx_ptr"), ptr),
                constexprs={"ACTIVATION": int(Activation.silu), "ACC": tl.float32,
                            "BLOCK_M": _GRAD_INPUT_BLOCK_M, "BLOCK_C": block},
                num_warps=_NUM_WARPS))
        specs.append(compile_spec(
            f"conv2d_grad_weight[{dtype}]", _grad_weight_kernel,
            pointers={"gy_ptr": ptr, "y_ptr": ptr, "x_ptr": ptr,
                      "partial_w_ptr": "*fp32", "partial_b_ptr": "*fp32"},
            constexprs={"ACTIVATION": int(Activation.silu), "ACC": tl.float32,
                        "BLOCK_M": block_m, "BLOCK_K": block_k, "BLOCK_J": block_j},
            num_warps=_NUM_WARPS))
        specs += sum_splits_specs("conv2d", dtype)
    return specs
