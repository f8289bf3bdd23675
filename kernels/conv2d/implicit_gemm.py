"""conv2d, implicit_gemm and pointwise algorithms: tensor-core Triton kernels
and their launchers (``conv2d_implicit_gemm_*``, ``conv2d_pointwise_*``,
named and called like the C++/CUDA launchers).

Shapes are torch's: input x (N, C, H, W), weight w (K, C/groups, R, S),
output y (N, K, P, Q); every tensor is addressed through its four strides
(NCHW, channels_last and non-contiguous views run without a copy; channels_last
makes the channel runs the kernels load contiguous, hence fast). Each
convolution is a GEMM whose operands are gathered from the tensors as they
are loaded (no patch matrix in memory) and multiplied with ``tl.dot``: tensor
cores for fp16/bf16 (fp32 accumulation) and for fp32 as TF32 when the
launcher's ``allow_tf32`` says so (torch's rule for convolutions:
``torch.backends.cudnn.allow_tf32``), exact fp32 otherwise; fp64 runs in the
interpreter only. All kernels are deterministic: no atomics, fixed summation
order.

``_forward_kernel``: M = N*P*Q output pixels x N = K/groups output channels,
reduced over (tap r, s; channel c) with the taps outer and BLOCK_C channels
per step, so channels_last input gives contiguous loads; one flattened loop
over (tap, channel block) so Triton software-pipelines it (``num_stages``).
Tiles are visited in GROUP_M-row bands for L2 reuse of the weight tiles; the
groups of a grouped convolution are a third tile coordinate. Epilogue in one
pass over the output: + bias, + residual, the pre-activation stored when asked
for (silu's backward needs it), the activation
(``activation.store_epilogue``). POINTWISE (1x1, stride 1, no padding) drops
the gather: a plain GEMM over N*H*W pixels. Cost 2*N*K*P*Q*(C/groups)*R*S
FLOPs; bytes at least x + w + y (+ residual), each read once from DRAM when
the tiles fit L2: arithmetic intensity about 2*C_g*R*S*K / (C + K) FLOP/byte
per pixel pair, e.g. ~290 for ResNet-50's 3x3 64->64 in bf16, well above the
H100's ridge (~790 TFLOP/s / 3 TB/s ~ 260): tensor-core bound once the tiles
are large, load-issue bound for small C.

``_grad_input_kernel``: the transposed problem as an implicit GEMM over the
flipped filter: M = N*H*W input pixels x N = C/groups channels, reduced over
(tap, output-channel block). Strided convolutions are split by stride phase
(h mod stride_h, w mod stride_w): a program's pixels share a phase, so a tap
either feeds all of them or none, and the taps that feed none are skipped
(no wasted MMAs, no scatter, no atomics). The activation's derivative is
applied to grad_output as it is loaded. Same FLOPs as the forward.

``_grad_weight_kernel``: M = K/groups output channels x N = (tap, channel
block), reduced over the N*P*Q output pixels; a program owns one tap and a
channel block, so its input loads are channel runs as in the forward. The
pixel range is split over SPLITS programs (a fixed count per shape: never
autotuned, so the summation order never changes); fp32 partial sums (and
grad_bias, from the tap-0 programs' grad_output tiles) go to a workspace
reduced in split order by ``common.sum_splits``. Same FLOPs as the forward.

Configurations: the forward and grad_input kernels are autotuned on the GPU
over ``_CONFIGS`` (keyed on the GEMM sizes and the filter; the choices are
cached on disk, ``common.autotune``); the interpreter
runs one configuration picked by size. Every configuration uses 4 warps:
Inductor's conv template miscompiles at num_warps >= 8 for kernels larger
than 1x1 (pytorch issue 173068), and nothing here was run on a GPU yet.
tl.dot needs tiles of at least 16 in each dimension; channel counts below the
block are zero-padded (small C wastes tensor-core work: the router sends
convolutions with one channel per group to the direct kernels).

Limits: offsets are 32-bit (``cnnkernels._args.check_index_range``).
"""

import math

import torch
import triton
import triton.language as tl
from cnnkernels.kernels import TORCH_TO_TRITON_POINTER, compile_spec, interpreted
from cnnkernels.kernels.common import (
    acc_dtype,
    acc_type,
    autotune,
    geometry_args,
    masked_grad,
    split_reduction,
    sum_splits,
)
from cnnkernels.kernels.conv2d.activation import store_epilogue

from cnnkernels._ext import Activation
from cnnkernels.ops.conv2d import is_pointwise, tf32_allowed


@triton.jit
def _tile_coordinates(pid, tiles_m, tiles_n, GROUP_M: tl.constexpr):
    """(group, tile row, tile column) of program ``pid``: groups outermost,
    then bands of GROUP_M tile rows walked column by column, so the programs
    running together share their column (weight) tiles in L2."""
    tiles = tiles_m * tiles_n
    group = pid // tiles
    pid = pid % tiles
    band = pid // (GROUP_M * tiles_n)
    first_m = band * GROUP_M
    band_rows = tl.minimum(tiles_m - first_m, GROUP_M)
    tile_m = first_m + (pid % (GROUP_M * tiles_n)) % band_rows
    tile_n = (pid % (GROUP_M * tiles_n)) // band_rows
    return group, tile_m, tile_n


@triton.jit
def _forward_kernel(
    x_ptr, w_ptr, b_ptr, res_ptr, y_ptr, z_ptr,
    xs_n, xs_c, xs_h, xs_w,
    ws_k, ws_c, ws_r, ws_s,
    bs,
    rs_n, rs_k, rs_p, rs_q,
    ys_n, ys_k, ys_p, ys_q,
    zs_n, zs_k, zs_p, zs_q,
    N, H, W, P, Q, R, S, C_g, K_g,
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w,
    HAS_BIAS: tl.constexpr, HAS_RESIDUAL: tl.constexpr, HAS_PREACT: tl.constexpr,
    OUTPUT_STRIDES: tl.constexpr, ACTIVATION: tl.constexpr, POINTWISE: tl.constexpr,
    PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_M: tl.constexpr,
):
    M = N * P * Q
    group, tile_m, tile_n = _tile_coordinates(tl.program_id(0), tl.cdiv(M, BLOCK_M),
                                              tl.cdiv(K_g, BLOCK_N), GROUP_M)
    m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = m < M
    n = m // (P * Q)
    p = (m // Q) % P
    q = m % Q
    k_local = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    k_mask = k_local < K_g
    k = group * K_g + k_local
    c_step = tl.arange(0, BLOCK_C)

    x_pixel = x_ptr + n * xs_n + group * C_g * xs_c
    w_channel = w_ptr + k * ws_k
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    c_blocks = tl.cdiv(C_g, BLOCK_C)
    if POINTWISE:
        x_pixel += p * xs_h + q * xs_w
        for block in range(0, c_blocks):
            c = block * BLOCK_C + c_step
            c_mask = c < C_g
            a = tl.load(x_pixel[:, None] + (c * xs_c)[None, :],
                        mask=m_mask[:, None] & c_mask[None, :], other=0.0)
            b = tl.load(w_channel[None, :] + (c * ws_c)[:, None],
                        mask=c_mask[:, None] & k_mask[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)
    else:
        ih0 = p * stride_h - pad_top
        iw0 = q * stride_w - pad_left
        for step in range(0, R * S * c_blocks):
            tap = step // c_blocks
            r = tap // S
            s = tap % S
            c = (step % c_blocks) * BLOCK_C + c_step
            c_mask = c < C_g
            ih = ih0 + r * dil_h
            iw = iw0 + s * dil_w
            inside = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load((x_pixel + ih * xs_h + iw * xs_w)[:, None] + (c * xs_c)[None, :],
                        mask=inside[:, None] & c_mask[None, :], other=0.0)
            b = tl.load((w_channel + r * ws_r + s * ws_s)[None, :] + (c * ws_c)[:, None],
                        mask=c_mask[:, None] & k_mask[None, :], other=0.0)
            acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)

    store_epilogue(acc, n, p, q, k, m_mask, k_mask, b_ptr, bs, res_ptr, rs_n, rs_k, rs_p, rs_q,
                   y_ptr, ys_n, ys_k, ys_p, ys_q, z_ptr, zs_n, zs_k, zs_p, zs_q,
                   HAS_BIAS, HAS_RESIDUAL, HAS_PREACT, OUTPUT_STRIDES, ACTIVATION, ACC)


@triton.jit
def _masked_grad_tile(gy_ptr, y_ptr, gy_off, y_off, mask, ACTIVATION: tl.constexpr,
                      ACC: tl.constexpr):
    """A grad_output tile through the fused activation's derivative (read
    from y: the output, or the pre-activation for silu), in grad_output's
    dtype so that tl.dot runs on tensor cores."""
    gy = tl.load(gy_ptr + gy_off, mask=mask, other=0.0)
    if ACTIVATION != 0:
        yv = tl.load(y_ptr + y_off, mask=mask, other=0.0).to(ACC)
        gy = masked_grad(gy.to(ACC), yv, ACTIVATION).to(gy_ptr.dtype.element_ty)
    return gy


@triton.jit
def _grad_input_kernel(
    gy_ptr, y_ptr, w_ptr, gx_ptr,
    gys_n, gys_k, gys_p, gys_q,
    ys_n, ys_k, ys_p, ys_q,
    ws_k, ws_c, ws_r, ws_s,
    gxs_n, gxs_c, gxs_h, gxs_w,
    N, H, W, P, Q, R, S, C_g, K_g,
    stride_h, stride_w, pad_top, pad_left, dil_h, dil_w, row_period, col_period,
    ACTIVATION: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_C: tl.constexpr, GROUP_M: tl.constexpr,
):
    # BLOCK_N input channels per tile; BLOCK_C output channels per reduction step.
    phase = tl.program_id(1)
    phase_h = phase // stride_w
    phase_w = phase % stride_w
    rows = tl.cdiv(H - phase_h, stride_h)  # input rows h = phase_h + i * stride_h
    cols = tl.cdiv(W - phase_w, stride_w)
    M = N * rows * cols
    tiles_m = tl.cdiv(N * tl.cdiv(H, stride_h) * tl.cdiv(W, stride_w), BLOCK_M)
    group, tile_m, tile_n = _tile_coordinates(tl.program_id(0), tiles_m,
                                              tl.cdiv(C_g, BLOCK_N), GROUP_M)
    m = tile_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_mask = m < M
    n = m // (rows * cols)
    i = (m // cols) % rows
    j = m % cols
    c_local = tile_n * BLOCK_N + tl.arange(0, BLOCK_N)
    c_mask = c_local < C_g
    k_step = tl.arange(0, BLOCK_C)

    gy_pixel = n * gys_n + group * K_g * gys_k
    y_pixel = n * ys_n + group * K_g * ys_k
    w_channel = w_ptr + group * K_g * ws_k + c_local * ws_c
    # The taps that feed this phase: r * dil_h = phase_h + pad_top (mod stride_h)
    # holds for every row_period-th r from the first such r (likewise s).
    first_r = R
    for r in range(0, row_period):
        feeds = ((phase_h + pad_top - r * dil_h) % stride_h == 0) & (first_r == R)
        first_r = tl.where(feeds, r, first_r)
    first_s = S
    for s in range(0, col_period):
        feeds = ((phase_w + pad_left - s * dil_w) % stride_w == 0) & (first_s == S)
        first_s = tl.where(feeds, s, first_s)
    taps_r = tl.cdiv(R - first_r, row_period)
    taps_s = tl.cdiv(S - first_s, col_period)

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    k_blocks = tl.cdiv(K_g, BLOCK_C)
    # One flat loop over (tap, output-channel block), pipelined like the forward's.
    for step in range(0, taps_r * taps_s * k_blocks):
        tap = step // k_blocks
        r = first_r + (tap // taps_s) * row_period
        s = first_s + (tap % taps_s) * col_period
        k = (step % k_blocks) * BLOCK_C + k_step
        k_mask = k < K_g
        # Input row h = phase_h + i * stride_h is read by output row
        # p = (h + pad_top - r * dil_h) / stride_h, a whole number for these taps.
        p = i + (phase_h + pad_top - r * dil_h) // stride_h
        q = j + (phase_w + pad_left - s * dil_w) // stride_w
        inside = m_mask & (p >= 0) & (p < P) & (q >= 0) & (q < Q)
        a_mask = inside[:, None] & k_mask[None, :]
        a = _masked_grad_tile(gy_ptr, y_ptr,
                              (gy_pixel + p * gys_p + q * gys_q)[:, None] + (k * gys_k)[None, :],
                              (y_pixel + p * ys_p + q * ys_q)[:, None] + (k * ys_k)[None, :],
                              a_mask, ACTIVATION, ACC)
        b = tl.load((w_channel + r * ws_r + s * ws_s)[None, :] + (k * ws_k)[:, None],
                    mask=k_mask[:, None] & c_mask[None, :], other=0.0)
        acc = tl.dot(a, b, acc, input_precision=PRECISION, out_dtype=ACC)

    h = phase_h + i * stride_h
    w = phase_w + j * stride_w
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
    ACTIVATION: tl.constexpr, PRECISION: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # Tile (output-channel block, tap, channel block); the reduction runs over
    # BLOCK_M pixels at a time within this program's split.
    c_blocks = tl.cdiv(C_g, BLOCK_C)
    k_blocks = tl.cdiv(K_g, BLOCK_K)
    pid = tl.program_id(0)
    c_block = pid % c_blocks
    tap = (pid // c_blocks) % (R * S)
    k_block = (pid // (c_blocks * R * S)) % k_blocks
    group = pid // (c_blocks * R * S * k_blocks)
    split = tl.program_id(1)
    r = tap // S
    s = tap % S

    k_local = k_block * BLOCK_K + tl.arange(0, BLOCK_K)
    k_mask = k_local < K_g
    k = group * K_g + k_local
    c_local = c_block * BLOCK_C + tl.arange(0, BLOCK_C)
    c_mask = c_local < C_g
    x_channel = (group * C_g + c_local) * xs_c

    M = N * P * Q
    m_start = split * m_per_split
    m_end = tl.minimum(m_start + m_per_split, M)
    acc = tl.zeros((BLOCK_K, BLOCK_C), dtype=ACC)
    bias_acc = tl.zeros((BLOCK_K,), dtype=ACC)
    for m0 in range(m_start, m_end, BLOCK_M):
        m = m0 + tl.arange(0, BLOCK_M)
        m_mask = m < m_end
        n = m // (P * Q)
        p = (m // Q) % P
        q = m % Q
        gy_mask = k_mask[:, None] & m_mask[None, :]
        gy = _masked_grad_tile(gy_ptr, y_ptr,
                               (k * gys_k)[:, None] + (n * gys_n + p * gys_p + q * gys_q)[None, :],
                               (k * ys_k)[:, None] + (n * ys_n + p * ys_p + q * ys_q)[None, :],
                               gy_mask, ACTIVATION, ACC)
        ih = p * stride_h - pad_top + r * dil_h
        iw = q * stride_w - pad_left + s * dil_w
        inside = m_mask & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        xt = tl.load(x_ptr + (n * xs_n + ih * xs_h + iw * xs_w)[:, None] + x_channel[None, :],
                     mask=inside[:, None] & c_mask[None, :], other=0.0)
        acc = tl.dot(gy, xt, acc, input_precision=PRECISION, out_dtype=ACC)
        bias_acc += tl.sum(gy.to(ACC), axis=1)

    # Partial sums in the (K, C/groups, R, S) order of a contiguous weight.
    J = C_g * R * S
    out_w = split * K * J + k[:, None] * J + (c_local * (R * S) + tap)[None, :]
    tl.store(partial_w_ptr + out_w, acc, mask=k_mask[:, None] & c_mask[None, :])
    if (tap == 0) & (c_block == 0):
        tl.store(partial_b_ptr + split * K + k, bias_acc, mask=k_mask)


# (BLOCK_M, BLOCK_N, BLOCK_C, num_stages) for the forward and grad_input
# kernels, all with _NUM_WARPS warps (see the module docstring), per operand
# layout: when the channels of the gathered operand and of the weight are
# contiguous (channels_last), a tile row is one vector load (cp.async on
# sm_80) and 128x64 tiles fit in registers; any other layout gathers element
# by element and needs smaller tiles and fewer stages not to spill. 128x128
# tiles need more than 255 registers per thread at 4 warps (static check).
_CONFIGS = {
    ("forward", "channels_last"): ((128, 64, 32, 4), (64, 128, 32, 4), (64, 64, 32, 4),
                                   (64, 32, 32, 4), (32, 32, 16, 2)),
    ("forward", "strided"): ((64, 64, 32, 2), (32, 64, 32, 2), (32, 32, 16, 2)),
    # grad_input also loads the output to apply the activation's derivative.
    ("grad_input", "channels_last"): ((128, 64, 32, 3), (64, 64, 32, 4), (64, 32, 32, 4),
                                      (32, 32, 16, 2)),
    ("grad_input", "strided"): ((32, 64, 32, 2), (64, 32, 32, 1), (32, 32, 16, 2)),
}
_NUM_WARPS = 4
_GROUP_M = 8
# grad_weight: one configuration per layout (never autotuned: the summation
# order must not depend on timing): (BLOCK_M, BLOCK_K, BLOCK_C, num_stages).
_GRAD_WEIGHT_BLOCKS = {"channels_last": (64, 64, 64, 3), "strided": (32, 64, 32, 2)}
_GRAD_WEIGHT_TARGET_PROGRAMS = 528  # 4 per SM of an H100
_GRAD_WEIGHT_MIN_CHUNKS_PER_SPLIT = 4


def _precision(dtype: torch.dtype) -> str:
    """tl.dot's input precision: TF32 for fp32 only when torch allows it for
    convolutions; fp16/bf16 run on tensor cores whatever it says."""
    return "tf32" if dtype == torch.float32 and tf32_allowed() else "ieee"


def _layout(gathered: torch.Tensor, weight: torch.Tensor) -> str:
    """Which configuration table fits: channels contiguous in both operands."""
    return ("channels_last" if gathered.stride(1) == 1 and weight.stride(1) == 1
            else "strided")


def _interpreted_config(rows: int, cols: int) -> tuple:
    """The one configuration the interpreter runs: the smallest tiles that
    cover the problem (the interpreter's cost grows with the tile)."""
    return (16 if rows <= 16 else 32), (16 if cols <= 16 else 32), 16, 1


def _autotuned(kernel, configs):
    return autotune(
        configs=[triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_C": c},
                               num_warps=_NUM_WARPS, num_stages=stages)
                 for m, n, c, stages in configs],
        key=["N", "P", "Q", "C_g", "K_g", "R", "S", "stride_h", "stride_w", "H", "W"],
    )(kernel)


_KERNELS = {"forward": _forward_kernel, "grad_input": _grad_input_kernel}
_AUTOTUNED = {} if interpreted() else {
    (name, layout): _autotuned(_KERNELS[name], configs)
    for (name, layout), configs in _CONFIGS.items()}


def _launch(kernel: str, layout: str, tiles, grid_rest, rows, cols, args, constexprs):
    """Run ``kernel`` over ``tiles(BLOCK_M, BLOCK_N)`` programs (x
    ``grid_rest``): autotuned over the layout's table on the GPU, one
    size-picked configuration in the interpreter."""
    if interpreted():
        block_m, block_n, block_c, stages = _interpreted_config(rows, cols)
        _KERNELS[kernel][(tiles(block_m, block_n), *grid_rest)](
            *args, **constexprs, BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_C=block_c,
            GROUP_M=_GROUP_M, num_warps=_NUM_WARPS, num_stages=stages)
    else:
        _AUTOTUNED[kernel, layout][
            lambda meta: (tiles(meta["BLOCK_M"], meta["BLOCK_N"]), *grid_rest)](
            *args, **constexprs, GROUP_M=_GROUP_M)


_GEOMETRY_ARGS = ("N", "H", "W", "P", "Q", "R", "S", "C_g", "K_g", "stride_h", "stride_w",
                  "pad_top", "pad_left", "dil_h", "dil_w")


def _forward(g, x, w, bias, residual, y, preact, pointwise: bool) -> None:
    M = g.N * g.P * g.Q

    def tiles(block_m, block_n):
        return g.groups * triton.cdiv(M, block_m) * triton.cdiv(g.K_g, block_n)

    stand_in = y  # the pointer passed for an absent tensor (never read)
    args = [x, w, *(t if t is not None else stand_in for t in (bias, residual)), y,
            preact if preact is not None else stand_in,
            *x.stride(), *w.stride(), bias.stride(0) if bias is not None else 0]
    for t in (residual, y, preact):
        args += t.stride() if t is not None else (0, 0, 0, 0)
    args += [getattr(g, name) for name in _GEOMETRY_ARGS]
    _launch("forward", _layout(x, w), tiles, (), M, g.K_g, args, dict(
        HAS_BIAS=bias is not None, HAS_RESIDUAL=residual is not None,
        HAS_PREACT=preact is not None, ACTIVATION=int(g.activation), POINTWISE=pointwise,
        OUTPUT_STRIDES=all(t is None or t.stride() == y.stride() for t in (residual, preact)),
        PRECISION=_precision(x.dtype), ACC=acc_type(x.dtype)))


def conv2d_implicit_gemm_forward(g, x, w, bias, residual, y, preact) -> None:
    _forward(g, x, w, bias, residual, y, preact, pointwise=is_pointwise(g))


def conv2d_pointwise_forward(g, x, w, bias, residual, y, preact) -> None:
    _forward(g, x, w, bias, residual, y, preact, pointwise=True)


def conv2d_implicit_gemm_grad_input(g, grad_y, y, w, grad_x) -> None:
    y_arg = y if y is not None else grad_y
    rows = g.N * triton.cdiv(g.H, g.stride_h) * triton.cdiv(g.W, g.stride_w)

    def tiles(block_m, block_n):
        return g.groups * triton.cdiv(rows, block_m) * triton.cdiv(g.C_g, block_n)

    args = [grad_y, y_arg, w, grad_x, *grad_y.stride(), *y_arg.stride(), *w.stride(),
            *grad_x.stride(), *[getattr(g, name) for name in _GEOMETRY_ARGS],
            # The taps feeding one stride phase repeat every stride / gcd(stride, dilation).
            g.stride_h // math.gcd(g.stride_h, g.dil_h),
            g.stride_w // math.gcd(g.stride_w, g.dil_w)]
    _launch("grad_input", _layout(grad_y, w), tiles, (g.stride_h * g.stride_w,), rows, g.C_g,
            args, dict(ACTIVATION=int(g.activation), PRECISION=_precision(grad_y.dtype),
                       ACC=acc_type(grad_y.dtype)))


conv2d_pointwise_grad_input = conv2d_implicit_gemm_grad_input


def _grad_weight_blocks(layout: str) -> tuple:
    return (16, 16, 16, 1) if interpreted() else _GRAD_WEIGHT_BLOCKS[layout]


def grad_weight_splits(g, blocks: tuple) -> tuple[int, int]:
    """(splits, pixels per split) of each tile's pixel reduction (enough
    programs to fill the GPU, each over a few pixel blocks)."""
    block_m, block_k, block_c, _ = blocks
    tiles = g.groups * triton.cdiv(g.K_g, block_k) * g.R * g.S * triton.cdiv(g.C_g, block_c)
    return split_reduction(tiles, g.N * g.P * g.Q, block_m, _GRAD_WEIGHT_TARGET_PROGRAMS,
                           _GRAD_WEIGHT_MIN_CHUNKS_PER_SPLIT)


def conv2d_implicit_gemm_grad_weight(g, grad_y, y, x, grad_w, grad_bias) -> None:
    blocks = _grad_weight_blocks("channels_last" if x.stride(1) == 1 and grad_y.stride(1) == 1
                                 else "strided")
    block_m, block_k, block_c, stages = blocks
    splits, m_per_split = grad_weight_splits(g, blocks)
    J = g.C_g * g.R * g.S
    partial_w = torch.empty((splits, g.K, J), dtype=acc_dtype(x.dtype), device=x.device)
    partial_b = torch.empty((splits, g.K), dtype=acc_dtype(x.dtype), device=x.device)
    y_arg = y if y is not None else grad_y
    grid = (g.groups * triton.cdiv(g.K_g, block_k) * g.R * g.S * triton.cdiv(g.C_g, block_c),
            splits)
    _grad_weight_kernel[grid](
        grad_y, y_arg, x, partial_w, partial_b,
        *grad_y.stride(), *y_arg.stride(), *x.stride(), m_per_split,
        **geometry_args(_grad_weight_kernel, g),
        ACTIVATION=int(g.activation), PRECISION=_precision(x.dtype), ACC=acc_type(x.dtype),
        BLOCK_M=block_m, BLOCK_K=block_k, BLOCK_C=block_c, num_warps=_NUM_WARPS,
        num_stages=stages,
    )
    sum_splits(partial_w, grad_w, splits)
    sum_splits(partial_b, grad_bias, splits)


conv2d_pointwise_grad_weight = conv2d_implicit_gemm_grad_weight


# The static check compiles each configuration as Triton specialises it at a
# launch in that layout: the unit strides become constants and the pointers
# and the other strides are assumed 16-divisible (as they are for a tensor
# from torch's allocator with channel counts that are multiples of 16, the
# case the fast path is for).
_UNIT_STRIDES = {
    "forward": {"channels_last": ("xs_c", "ws_c", "rs_k", "ys_k", "zs_k", "bs"),
                "strided": ("xs_w", "ws_s", "rs_q", "ys_q", "zs_q", "bs")},
    "grad_input": {"channels_last": ("gys_k", "ys_k", "ws_c", "gxs_c"),
                   "strided": ("gys_q", "ys_q", "ws_s", "gxs_w")},
    "grad_weight": {"channels_last": ("gys_k", "ys_k", "xs_c"),
                    "strided": ("gys_q", "ys_q", "xs_w")},
}
_SCALARS_NOT_DIVISIBLE = {"N", "H", "W", "P", "Q", "R", "S", "stride_h", "stride_w", "pad_top",
                          "pad_left", "dil_h", "dil_w", "m_per_split", "K", "row_period",
                          "col_period"}


def _spec(name, kernel, direction, layout, pointers, constexprs, stages, tensor_cores):
    unit = _UNIT_STRIDES[direction][layout]
    divisible = tuple(arg for arg in kernel.arg_names
                      if arg not in constexprs and arg not in unit
                      and arg not in _SCALARS_NOT_DIVISIBLE)
    return compile_spec(name, kernel, pointers=pointers,
                        constexprs={**constexprs, **dict.fromkeys(unit, 1)},
                        divisible=divisible, num_warps=_NUM_WARPS, num_stages=stages,
                        tensor_cores=tensor_cores)


def static_check_specs():
    """Every kernel in every configuration it can run with (each autotune
    config of each layout x dtype), for the static GPU check. fp32 is
    compiled as TF32: exact fp32 runs on the direct kernels on the GPU (the
    router's rule), so every spec here is a tensor-core kernel."""
    specs = []
    for dtype in ("float16", "bfloat16", "float32"):
        ptr = TORCH_TO_TRITON_POINTER[dtype]
        common = {"ACTIVATION": int(Activation.relu6), "PRECISION": "tf32", "ACC": tl.float32}
        for (direction, layout), configs in _CONFIGS.items():
            for block_m, block_n, block_c, stages in configs:
                blocks = {"BLOCK_M": block_m, "BLOCK_N": block_n, "BLOCK_C": block_c,
                          "GROUP_M": _GROUP_M}
                tag = f"{dtype},{layout},{block_m}x{block_n}x{block_c}/s{stages}"
                if direction == "grad_input":
                    specs.append(_spec(
                        f"conv2d_implicit_gemm_grad_input[{tag}]", _grad_input_kernel,
                        "grad_input", layout,
                        dict.fromkeys(("gy_ptr", "y_ptr", "w_ptr", "gx_ptr"), ptr),
                        {**common, **blocks}, stages, True))
                    continue
                for pointwise in (False, True):
                    specs.append(_spec(
                        f"conv2d_implicit_gemm_forward[{tag}{',pointwise' * pointwise}]",
                        _forward_kernel, "forward", layout,
                        dict.fromkeys(("x_ptr", "w_ptr", "b_ptr", "res_ptr", "y_ptr", "z_ptr"),
                                      ptr),
                        {**common, **blocks, "HAS_BIAS": True, "HAS_RESIDUAL": True,
                         "HAS_PREACT": True, "OUTPUT_STRIDES": True, "POINTWISE": pointwise},
                        stages, True))
        for layout in ("channels_last", "strided"):
            block_m, block_k, block_c, stages = _GRAD_WEIGHT_BLOCKS[layout]
            specs.append(_spec(
                f"conv2d_implicit_gemm_grad_weight[{dtype},{layout},{block_k}x{block_c}x{block_m}"
                f"/s{stages}]", _grad_weight_kernel, "grad_weight", layout,
                {"gy_ptr": ptr, "y_ptr": ptr, "x_ptr": ptr, "partial_w_ptr": "*fp32",
                 "partial_b_ptr": "*fp32"},
                {**common, "BLOCK_M": block_m, "BLOCK_K": block_k, "BLOCK_C": block_c},
                stages, True))
    return specs
