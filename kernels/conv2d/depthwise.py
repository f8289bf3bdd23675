"""conv2d, depthwise algorithm: Triton kernels and their launchers
(``conv2d_depthwise_*``, named and called like the C++/CUDA launchers), for
one input channel per group (groups == C) and any channel multiplier
K_g = K/groups: output channel k reads input channel c = k // K_g.

Shapes are torch's: input x (N, C, H, W), weight w (K, 1, R, S), output y
(N, K, P, Q); every tensor is addressed through its four strides, so NCHW,
channels_last and non-contiguous views run without a copy. Each kernel works
on a tile of BLOCK_M flattened pixels x BLOCK_C channels, laid out for the
input's memory format (``_BLOCKS``): NCHW takes long pixel runs of one channel
(adjacent pixels adjacent in memory), channels_last takes runs of BLOCK_C
channels of a few pixels (one contiguous, vectorised load per pixel). The
filter taps are compile-time constants for 3x3 and 5x5 filters at stride 1
and 2 without dilation (``_SPECIALISED``: the tap loops unroll, the index
arithmetic folds); every other geometry (dilation, any padding, non-square,
other sizes and strides) takes the general path with run-time loops. No
GEMM, no tensor cores, no atomics: every result is summed in a fixed order.

``_forward_kernel``: acc[m, k] = sum over taps of x[n, c, ih, iw] * w[k, tap],
taps outer (a weight vector per tap, loaded once per program: the taps stay in
registers), then the epilogue (cnnk/conv2d.h: z = acc + bias + residual, z
kept in ``preact`` when asked, y = act(z); ``activation.store_epilogue``) on
the tile, one pass over the output. Bound: memory. Per output element 2*R*S
FLOPs against one output write and (once x is cached) 1/K_g of an input read:
2*R*S*K_g / (1 + K_g) FLOP per element moved, 9 FLOP/element (4.5 FLOP/byte in
bf16) for 3x3 at multiplier 1, far below the H100's ridge (~260 FLOP/byte in
bf16, ~20 for fp32 FMA); bytes x + y + w (+ residual, + z when kept).

``_grad_input_kernel``: the gather over the flipped filter (no scatter):
grad_x[n, c, h, w] = sum over j < K_g and taps (r, s) of gy'[n, c*K_g + j,
p, q] * w[c*K_g + j, r, s] for the taps whose p = (h + pad_top - r*dil_h) /
stride_h (likewise q) is exact and inside the output; gy' = gy * act'(y) is
formed on load (y: the saved tensor, the pre-activation for silu). Bound:
memory, as the forward; bytes gy (+ y) + grad_x + w.

``_grad_weight_kernel``: grad_w[k, r, s] = sum over n, p, q of gy'[n, k, p,
q] * x[n, c, ih, iw], a per-channel reduction over N*P*Q. A program owns
BLOCK_C channels and BLOCK_T taps (a 3-D [tap, pixel, channel] tile: every
tap's input values for a pixel chunk are loaded at once against one gy'
tile) and one split of the pixel range; it reduces its chunks in order and
the tile's pixel axis at the end. grad_bias (the sum of gy') comes from the
tap-block-0 programs' gy' tiles. Partial sums go to an fp32 workspace that
``common.sum_splits`` adds in split order; the split count is a function of
the shape (``common.split_reduction``), so results are bit-identical run to
run. Bound: memory; bytes gy (+ y) + x, re-read once per tap block.

Configurations: one per kernel, layout and filter specialisation (never
autotuned), all at 4 warps (Inductor's conv template miscompiles at
num_warps >= 8, pytorch issue 173068); the interpreter runs smaller tiles.
Accumulation is fp32 (fp64 for fp64 inputs, interpreter only).

Limits: offsets are 32-bit (``cnnkernels._args.check_index_range`` and the
geometry's ``index_extent``); one input channel per group (the op layer
routes and checks it).
"""

import torch
import triton
import triton.language as tl
from cnnkernels.kernels import TORCH_TO_TRITON_POINTER, compile_spec, interpreted
from cnnkernels.kernels.common import (
    acc_dtype,
    acc_type,
    geometry_args,
    masked_grad,
    split_reduction,
    sum_splits,
)
from cnnkernels.kernels.conv2d.activation import store_epilogue

from cnnkernels._ext import Activation


@triton.jit
def _pixels(pid, BLOCK_M: tl.constexpr, N, P, Q):
    """Pixel tile ``pid`` of the flattened (n, p, q) range: (n, p, q, mask)."""
    m = pid * BLOCK_M + tl.arange(0, BLOCK_M)
    return m // (P * Q), (m // Q) % P, m % Q, m < N * P * Q


@triton.jit
def _forward_tap(acc, x_ptr, x_offset, w_tap, ih, iw, m_mask, k_mask, H, W, xs_h, xs_w,
                 ACC: tl.constexpr):
    """acc + x at input pixel (ih, iw) (zero outside) times one tap's weights."""
    inside = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
    xv = tl.load(x_ptr + x_offset + (ih * xs_h + iw * xs_w)[:, None],
                 mask=inside[:, None] & k_mask[None, :], other=0.0)
    wv = tl.load(w_tap, mask=k_mask, other=0.0)
    return acc + xv.to(ACC) * wv.to(ACC)[None, :]


@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, b_ptr, res_ptr, y_ptr, z_ptr,
    xs_n, xs_c, xs_h, xs_w,
    ws_k, ws_r, ws_s,
    bs,
    rs_n, rs_k, rs_p, rs_q,
    ys_n, ys_k, ys_p, ys_q,
    zs_n, zs_k, zs_p, zs_q,
    N, H, W, P, Q, K, K_g, R, S,
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_PREACT: tl.constexpr,
    OUTPUT_STRIDES: tl.constexpr, ACTIVATION: tl.constexpr, ACC: tl.constexpr,
    TAPS_R: tl.constexpr, TAPS_S: tl.constexpr, STRIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, p, q, m_mask = _pixels(tl.program_id(0), BLOCK_M, N, P, Q)
    k = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    k_mask = k < K
    x_offset = (n * xs_n)[:, None] + ((k // K_g) * xs_c)[None, :]
    w_k = w_ptr + k * ws_k
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    if TAPS_R != 0:  # specialised: filter and stride constant, no dilation
        ih0 = p * STRIDE - pad_top
        iw0 = q * STRIDE - pad_left
        # Filter rows in a loop, each row's taps unrolled: unrolling all of
        # them puts every tap's tile in flight at once and spills.
        for r in tl.range(0, TAPS_R, loop_unroll_factor=1):
            for s in tl.static_range(TAPS_S):
                acc = _forward_tap(acc, x_ptr, x_offset, w_k + r * ws_r + s * ws_s, ih0 + r,
                                   iw0 + s, m_mask, k_mask, H, W, xs_h, xs_w, ACC)
    else:
        ih0 = p * stride_h - pad_top
        iw0 = q * stride_w - pad_left
        for r in range(0, R):
            for s in range(0, S):
                acc = _forward_tap(acc, x_ptr, x_offset, w_k + r * ws_r + s * ws_s,
                                   ih0 + r * dil_h, iw0 + s * dil_w, m_mask, k_mask, H, W,
                                   xs_h, xs_w, ACC)

    store_epilogue(acc, n, p, q, k, m_mask, k_mask, b_ptr, bs, res_ptr, rs_n, rs_k, rs_p, rs_q,
                   y_ptr, ys_n, ys_k, ys_p, ys_q, z_ptr, zs_n, zs_k, zs_p, zs_q,
                   HAS_BIAS, HAS_RESIDUAL, HAS_PREACT, OUTPUT_STRIDES, ACTIVATION, ACC)


@triton.jit
def _grad_input_tap(acc, gy_ptr, y_ptr, gy_offset, y_offset, w_tap, th, tw, stride_h, stride_w,
                    m_mask, c_mask, P, Q, gys_p, gys_q, ys_p, ys_q,
                    ACTIVATION: tl.constexpr, ACC: tl.constexpr):
    """acc + gy' at the output pixel that reads the tile's input pixels
    through this tap (th = p * stride_h when it exists) times its weights.
    th and tw are clamped before dividing: negative numerators never reach
    integer division."""
    th_c = tl.where(th >= 0, th, 0)
    tw_c = tl.where(tw >= 0, tw, 0)
    p = th_c // stride_h
    q = tw_c // stride_w
    exact = (m_mask & (th >= 0) & (th_c == p * stride_h) & (p < P)
             & (tw >= 0) & (tw_c == q * stride_w) & (q < Q))
    mask = exact[:, None] & c_mask[None, :]
    gy = tl.load(gy_ptr + gy_offset + (p * gys_p + q * gys_q)[:, None], mask=mask,
                 other=0.0).to(ACC)
    if ACTIVATION != 0:
        saved = tl.load(y_ptr + y_offset + (p * ys_p + q * ys_q)[:, None], mask=mask,
                        other=0.0).to(ACC)
        gy = masked_grad(gy, saved, ACTIVATION)
    wv = tl.load(w_tap, mask=c_mask, other=0.0).to(ACC)
    return acc + gy * wv[None, :]


@triton.jit
def _grad_input_kernel(
    gy_ptr, y_ptr, w_ptr, gx_ptr,
    gys_n, gys_k, gys_p, gys_q,
    ys_n, ys_k, ys_p, ys_q,
    ws_k, ws_r, ws_s,
    gxs_n, gxs_c, gxs_h, gxs_w,
    N, C, H, W, P, Q, K_g, R, S,
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
    ACTIVATION: tl.constexpr, ACC: tl.constexpr,
    TAPS_R: tl.constexpr, TAPS_S: tl.constexpr, STRIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, h, w, m_mask = _pixels(tl.program_id(0), BLOCK_M, N, H, W)
    c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c < C
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for j in range(0, K_g):
        k = c * K_g + j
        gy_offset = (n * gys_n)[:, None] + (k * gys_k)[None, :]
        y_offset = (n * ys_n)[:, None] + (k * ys_k)[None, :]
        w_k = w_ptr + k * ws_k
        if TAPS_R != 0:
            th0 = h + pad_top
            tw0 = w + pad_left
            for r in tl.range(0, TAPS_R, loop_unroll_factor=1):  # rows as in the forward
                for s in tl.static_range(TAPS_S):
                    acc = _grad_input_tap(acc, gy_ptr, y_ptr, gy_offset, y_offset,
                                          w_k + r * ws_r + s * ws_s, th0 - r, tw0 - s, STRIDE,
                                          STRIDE, m_mask, c_mask, P, Q, gys_p, gys_q, ys_p,
                                          ys_q, ACTIVATION, ACC)
        else:
            th0 = h + pad_top
            tw0 = w + pad_left
            for r in range(0, R):
                for s in range(0, S):
                    acc = _grad_input_tap(acc, gy_ptr, y_ptr, gy_offset, y_offset,
                                          w_k + r * ws_r + s * ws_s, th0 - r * dil_h,
                                          tw0 - s * dil_w, stride_h, stride_w, m_mask, c_mask,
                                          P, Q, gys_p, gys_q, ys_p, ys_q, ACTIVATION, ACC)
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
    N, H, W, P, Q, K, K_g, R, S,
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
    ACTIVATION: tl.constexpr, ACC: tl.constexpr,
    TAPS_R: tl.constexpr, TAPS_S: tl.constexpr, STRIDE: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_T: tl.constexpr,
):
    k = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    k_mask = k < K
    tap_block = tl.program_id(1)
    split = tl.program_id(2)
    tap = tap_block * BLOCK_T + tl.arange(0, BLOCK_T)
    if TAPS_R != 0:
        tap_mask = tap < TAPS_R * TAPS_S
        row = tap // TAPS_S
        col = tap % TAPS_S
        row_stride = STRIDE
        col_stride = STRIDE
    else:
        tap_mask = tap < R * S
        row = (tap // S) * dil_h
        col = (tap % S) * dil_w
        row_stride = stride_h
        col_stride = stride_w
    x_chan = ((k // K_g) * xs_c)[None, None, :]

    M = N * P * Q
    m_start = split * m_per_split
    m_end = tl.minimum(m_start + m_per_split, M)
    acc = tl.zeros((BLOCK_T, BLOCK_M, BLOCK_C), dtype=ACC)
    bias_acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=ACC)
    for m0 in range(m_start, m_end, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        m_mask = m < m_end
        n = m // (P * Q)
        p = (m // Q) % P
        q = m % Q
        gy_mask = m_mask[:, None] & k_mask[None, :]
        gy = tl.load(gy_ptr + (n * gys_n + p * gys_p + q * gys_q)[:, None] + (k * gys_k)[None, :],
                     mask=gy_mask, other=0.0).to(ACC)
        if ACTIVATION != 0:
            saved = tl.load(y_ptr + (n * ys_n + p * ys_p + q * ys_q)[:, None]
                            + (k * ys_k)[None, :], mask=gy_mask, other=0.0).to(ACC)
            gy = masked_grad(gy, saved, ACTIVATION)
        ih = (p * row_stride - pad_top)[None, :, None] + row[:, None, None]
        iw = (q * col_stride - pad_left)[None, :, None] + col[:, None, None]
        inside = (tap_mask[:, None, None] & gy_mask[None, :, :] & (ih >= 0) & (ih < H)
                  & (iw >= 0) & (iw < W))
        xt = tl.load(x_ptr + (n * xs_n)[None, :, None] + ih * xs_h + iw * xs_w + x_chan,
                     mask=inside, other=0.0).to(ACC)
        acc += xt * gy[None, :, :]
        bias_acc += gy

    taps = R * S
    out_w = split * K * taps + k[None, :] * taps + tap[:, None]
    tl.store(partial_w_ptr + out_w, tl.sum(acc, axis=1), mask=tap_mask[:, None] & k_mask[None, :])
    if tap_block == 0:
        tl.store(partial_b_ptr + split * K + k, tl.sum(bias_acc, axis=0), mask=k_mask)


# The filters compiled with constant taps and stride: (R, S, stride), no dilation.
_SPECIALISED = ((3, 3, 1), (3, 3, 2), (5, 5, 1), (5, 5, 2))
_GENERAL = (0, 0, 0)
# (BLOCK_M, BLOCK_C) of the forward and grad_input kernels per layout: NCHW
# takes pixel runs (of one or two channels), channels_last channel runs of a
# few pixels. grad_input holds gy' and the saved tensor per tap, hence its
# smaller tiles; _FILTER_BLOCKS are the exceptions for one filter (each
# table entry is the largest that compiles without spills on sm_80 and
# sm_90, static check).
_BLOCKS = {"forward": {"nchw": (256, 1), "channels_last": (16, 32)},
           "grad_input": {"nchw": (128, 2), "channels_last": (16, 16)}}
_FILTER_BLOCKS = {("grad_input", "channels_last", (3, 3, 2)): (8, 16),
                  ("grad_input", "channels_last", _GENERAL): (8, 16)}  # 16 x 16: Triton 3.6 spilled
# grad_weight's (BLOCK_M, BLOCK_C) per layout for 16 taps a program; BLOCK_T
# taps per program: a specialised filter's taps in one block (16 for 3x3, 32
# for 5x5, with BLOCK_M halved so the [tap, pixel, channel] tile keeps its
# size: 5x5 at 4 x 32 took 245 registers), 16 a block on the general path.
_GRAD_WEIGHT_BLOCKS = {"nchw": (64, 1), "channels_last": (4, 32)}
_GENERAL_BLOCK_T = 16
# The interpreter's tiles: small, its cost grows with the tile.
_INTERPRETED_BLOCKS = {"nchw": (64, 2), "channels_last": (32, 4)}  # both directions
_INTERPRETED_GRAD_WEIGHT_BLOCKS = {"nchw": (16, 1), "channels_last": (4, 4)}
_NUM_WARPS = 4
_GRAD_WEIGHT_TARGET_PROGRAMS = 528  # 4 per SM of an H100
_GRAD_WEIGHT_MIN_CHUNKS_PER_SPLIT = 8


def _filter(g) -> tuple[int, int, int]:
    """(TAPS_R, TAPS_S, STRIDE) of the specialised kernel that takes ``g``,
    or zeros for the general path."""
    key = (g.R, g.S, g.stride_h)
    if key in _SPECIALISED and g.stride_w == g.stride_h and g.dil_h == 1 and g.dil_w == 1:
        return key
    return _GENERAL


def _layout(t: torch.Tensor) -> str:
    """channels_last when the tensor's channels are contiguous."""
    return "channels_last" if t.stride(1) == 1 and t.shape[1] > 1 else "nchw"


def _tile(direction: str, layout: str, filter_key: tuple[int, int, int]) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_C) of the forward or grad_input kernel on the GPU."""
    return _FILTER_BLOCKS.get((direction, layout, filter_key), _BLOCKS[direction][layout])


def _blocks(direction: str, g, t: torch.Tensor) -> tuple[int, int]:
    if interpreted():
        return _INTERPRETED_BLOCKS[_layout(t)]
    return _tile(direction, _layout(t), _filter(g))


def _grad_weight_tile(layout: str, filter_key: tuple[int, int, int],
                      table: dict) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_C, BLOCK_T) of grad_weight from a block table."""
    taps_r, taps_s, _ = filter_key
    block_t = triton.next_power_of_2(taps_r * taps_s) if taps_r else _GENERAL_BLOCK_T
    block_m, block_c = table[layout]
    return max(1, block_m * _GENERAL_BLOCK_T // block_t), block_c, block_t


def _grad_weight_blocks(g, x: torch.Tensor) -> tuple[int, int, int]:
    """(BLOCK_M, BLOCK_C, BLOCK_T) of grad_weight for ``g`` and its input."""
    return _grad_weight_tile(_layout(x), _filter(g), _INTERPRETED_GRAD_WEIGHT_BLOCKS
                             if interpreted() else _GRAD_WEIGHT_BLOCKS)


def _filter_constexprs(g) -> dict:
    taps_r, taps_s, stride = _filter(g)
    return {"TAPS_R": taps_r, "TAPS_S": taps_s, "STRIDE": stride}


def conv2d_depthwise_forward(g, x, w, bias, residual, y, preact) -> None:
    """y = act(conv(x, w) + bias + residual), z kept in preact; bias,
    residual and preact may be None (cnnk/conv2d.h's epilogue)."""
    block_m, block_c = _blocks("forward", g, x)
    grid = (triton.cdiv(g.N * g.P * g.Q, block_m), triton.cdiv(g.K, block_c))
    stand_in = y  # the pointer passed for an absent tensor (never read)
    strides = [t.stride() if t is not None else (0, 0, 0, 0) for t in (residual, y, preact)]
    _forward_kernel[grid](
        x, w, *(t if t is not None else stand_in for t in (bias, residual)), y,
        preact if preact is not None else stand_in,
        *x.stride(), w.stride(0), w.stride(2), w.stride(3),
        bias.stride(0) if bias is not None else 0, *strides[0], *strides[1], *strides[2],
        **geometry_args(_forward_kernel, g),
        HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        HAS_PREACT=preact is not None,
        OUTPUT_STRIDES=all(t is None or t.stride() == y.stride() for t in (residual, preact)),
        ACTIVATION=int(g.activation), ACC=acc_type(x.dtype), **_filter_constexprs(g),
        BLOCK_M=block_m, BLOCK_C=block_c, num_warps=_NUM_WARPS,
    )


def conv2d_depthwise_grad_input(g, grad_y, y, w, grad_x) -> None:
    """grad_x from grad_y, masked by the activation's derivative at y."""
    block_m, block_c = _blocks("grad_input", g, grad_x)
    y_arg = y if y is not None else grad_y
    grid = (triton.cdiv(g.N * g.H * g.W, block_m), triton.cdiv(g.C, block_c))
    _grad_input_kernel[grid](
        grad_y, y_arg, w, grad_x,
        *grad_y.stride(), *y_arg.stride(), w.stride(0), w.stride(2), w.stride(3),
        *grad_x.stride(),
        **geometry_args(_grad_input_kernel, g),
        ACTIVATION=int(g.activation), ACC=acc_type(grad_y.dtype), **_filter_constexprs(g),
        BLOCK_M=block_m, BLOCK_C=block_c, num_warps=_NUM_WARPS,
    )


def grad_weight_splits(g, blocks: tuple[int, int, int]) -> tuple[int, int]:
    """(splits, pixels per split) of each program's pixel reduction."""
    block_m, block_c, block_t = blocks
    tiles = triton.cdiv(g.K, block_c) * triton.cdiv(g.R * g.S, block_t)
    return split_reduction(tiles, g.N * g.P * g.Q, block_m, _GRAD_WEIGHT_TARGET_PROGRAMS,
                           _GRAD_WEIGHT_MIN_CHUNKS_PER_SPLIT)


def conv2d_depthwise_grad_weight(g, grad_y, y, x, grad_w, grad_bias) -> None:
    """grad_w and grad_bias (the sum of gy') in one pass over gy'."""
    blocks = _grad_weight_blocks(g, x)
    block_m, block_c, block_t = blocks
    splits, m_per_split = grad_weight_splits(g, blocks)
    partial_w = torch.empty((splits, g.K, g.R * g.S), dtype=acc_dtype(x.dtype), device=x.device)
    partial_b = torch.empty((splits, g.K), dtype=acc_dtype(x.dtype), device=x.device)
    y_arg = y if y is not None else grad_y
    grid = (triton.cdiv(g.K, block_c), triton.cdiv(g.R * g.S, block_t), splits)
    _grad_weight_kernel[grid](
        grad_y, y_arg, x, partial_w, partial_b,
        *grad_y.stride(), *y_arg.stride(), *x.stride(), m_per_split,
        **geometry_args(_grad_weight_kernel, g),
        ACTIVATION=int(g.activation), ACC=acc_type(x.dtype), **_filter_constexprs(g),
        BLOCK_M=block_m, BLOCK_C=block_c, BLOCK_T=block_t, num_warps=_NUM_WARPS,
    )
    sum_splits(partial_w, grad_w, splits)
    sum_splits(partial_b, grad_bias, splits)


# The static check compiles each configuration as Triton specialises it at a
# launch in that layout: the unit strides become constants (the channel
# stride for channels_last, the column stride for NCHW) and the pointers and
# the other strides but the weight's are assumed 16-divisible (tensors from
# torch's allocator with channel counts and row lengths that are multiples
# of 16).
_UNIT_STRIDES = {
    "forward": {"channels_last": ("xs_c", "rs_k", "ys_k", "zs_k", "bs", "ws_s"),
                "nchw": ("xs_w", "rs_q", "ys_q", "zs_q", "bs", "ws_s")},
    "grad_input": {"channels_last": ("gys_k", "ys_k", "gxs_c", "ws_s"),
                   "nchw": ("gys_q", "ys_q", "gxs_w", "ws_s")},
    "grad_weight": {"channels_last": ("gys_k", "ys_k", "xs_c"),
                    "nchw": ("gys_q", "ys_q", "xs_w")},
}
_KERNELS = {"forward": _forward_kernel, "grad_input": _grad_input_kernel,
            "grad_weight": _grad_weight_kernel}
_POINTERS = {"forward": ("x_ptr", "w_ptr", "b_ptr", "res_ptr", "y_ptr", "z_ptr"),
             "grad_input": ("gy_ptr", "y_ptr", "w_ptr", "gx_ptr"),
             "grad_weight": ("gy_ptr", "y_ptr", "x_ptr")}


def static_check_specs():
    """Every kernel in every configuration its launchers use (direction x
    layout x filter specialisation x dtype), in its heaviest epilogue (silu;
    in the forward bias, a residual and the kept pre-activation)."""
    specs = []
    for dtype in ("float32", "float16", "bfloat16"):
        ptr = TORCH_TO_TRITON_POINTER[dtype]
        for direction, kernel in _KERNELS.items():
            for layout in ("nchw", "channels_last"):
                for taps_r, taps_s, stride in (*_SPECIALISED, _GENERAL):
                    pointers = dict.fromkeys(_POINTERS[direction], ptr)
                    constexprs = {"ACTIVATION": int(Activation.silu), "ACC": tl.float32,
                                  "TAPS_R": taps_r, "TAPS_S": taps_s, "STRIDE": stride}
                    if direction == "grad_weight":
                        block_m, block_c, block_t = _grad_weight_tile(
                            layout, (taps_r, taps_s, stride), _GRAD_WEIGHT_BLOCKS)
                        pointers.update(partial_w_ptr="*fp32", partial_b_ptr="*fp32")
                        constexprs.update(BLOCK_T=block_t)
                    else:
                        block_m, block_c = _tile(direction, layout, (taps_r, taps_s, stride))
                    if direction == "forward":
                        constexprs.update(HAS_BIAS=True, HAS_RESIDUAL=True, HAS_PREACT=True,
                                          OUTPUT_STRIDES=True)
                    constexprs.update(dict.fromkeys(_UNIT_STRIDES[direction][layout], 1),
                                      BLOCK_M=block_m, BLOCK_C=block_c)
                    # Pointers and strides: the arguments before the sizes; the
                    # weight's strides are R*S and S, odd for these filters.
                    tensor_args = kernel.arg_names[:kernel.arg_names.index("N")]
                    divisible = tuple(arg for arg in tensor_args if arg not in constexprs
                                      and arg != "m_per_split" and not arg.startswith("ws_"))
                    shape = f"{taps_r}x{taps_s}/s{stride}" if taps_r else "general"
                    specs.append(compile_spec(
                        f"conv2d_depthwise_{direction}[{dtype},{layout},{shape},"
                        f"{block_m}x{block_c}]", kernel, pointers=pointers,
                        constexprs=constexprs, divisible=divisible, num_warps=_NUM_WARPS))
    return specs
