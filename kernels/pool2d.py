"""pool2d, max and average pooling over sliding or adaptive windows: Triton
kernels and their launchers.

Shapes are torch's: input x (N, C, H, W), output y (N, C, P, Q), indices
(int64, y's shape) = h * W + w of each window's argmax within its (n, c)
plane. Every tensor is addressed through its four strides, so NCHW,
channels_last and non-contiguous views run without a copy. The geometry
``g`` the launchers take is ``cnnkernels.ops.pool2d.Pool2dGeometry``; the
kernels get its sizes by name and the window as the derived scalars below.
The semantics are those of csrc/include/cnnk/pool2d.h, which the C++ and CUDA
kernels implement too.

Windows, one formula for both kinds (per dimension; rows shown): output p
reads rows start + i * step for i in [0, count), kept when 0 <= row < end,
with start = (p * scale + lo) // div and end = min((p * scale + hi) // div, H):
sliding: scale = stride_h, lo = -pad_h, hi = lo + (kernel_h - 1) * dil_h + 1,
div = 1, step = dil_h, count = the taps the input can hold, min(kernel_h,
(H - 1) // dil_h + 1), from the first one inside; adaptive: scale = H, lo = 0,
hi = H + P - 1, div = P (floor(p H / P), ceil((p + 1) H / P)), step = 1,
count = the largest window. The launchers compute these scalars, so window
sizes and kinds are run-time values: no recompilation per filter size.

Kernels (deterministic: no atomics, fixed summation order, the C++ kernels'):

``_max_forward_kernel`` / ``_avg_forward_kernel``: a program owns a tile of
BLOCK_P output pixels (flattened n, p, q) x BLOCK_C channels and loops over
the window taps, rows outer, columns inner, with a bounds mask per tap.
max keeps torch's rule: maxval starts at -inf and the index at the first
in-bounds tap; a tap replaces it when ``v > maxval or v != v`` (first
maximum wins a tie, the last NaN wins). avg sums in fp32 (fp64 for fp64)
and divides once by the window's divisor (divisor_override, else the window
clipped to the padded input with count_include_pad, else to the input),
IEEE-rounded (div_rn) like the C++ kernels, not Triton's approximate fp32 /.

``_gather_kernel``: max pooling's double backward, y = x at the indices
(loaded as int64, so the x offsets are 64-bit); tiles as the forward's.
Memory-bound: reads the indices and one x element per output, writes y.

``_max_backward_kernel`` / ``_avg_backward_kernel``: a gather. A program owns
a tile of BLOCK_P input pixels (n, h, w) x BLOCK_C channels; each element
sums the gradients of the windows that contain it (max: only those whose
index is h * W + w; the gradient is loaded only there) and every element is
written, 0 where no window contains it. The covering windows of row h are
p in [lo, hi): adaptive, lo = floor(h P / H), hi = ceil((h + 1) P / H),
visited ascending; sliding, lo = ceil((h + pad - (kernel - 1) dil) / stride),
hi = min(floor((h + pad) / stride) + 1, P), visited descending (i.e. by tap
ascending, the C++ order) and kept when (h + pad - p stride) % dil == 0, in
(kernel - 1) * dil // stride + 1 iterations per dimension (a 3x3 / 2
window visits 2 x 2 candidates, not 3 x 3 taps).
Numerators are clamped to >= 0 before any division. Disjoint windows (not
adaptive, stride == kernel, dil == 1; DISJOINT=True) take their one window
p = (h + pad) // stride directly, without a loop.

Tiles: the launcher picks (BLOCK_P, BLOCK_C) from ``_TILES`` (512 elements
each, 4 warps) by the layout of the big tensor (x forward, grad_x
backward): channels contiguous (channels_last) -> the smallest BLOCK_C >= C
(capped at 64), so each pixel's channels are one contiguous, vectorisable
run; otherwise (NCHW) BLOCK_C = 1 and 512 consecutive pixels, coalesced
along w, falling back to wider channel tiles when there are fewer pixels
than that (small planes such as global pooling). Every pixel-dependent
value is a per-thread register, so registers grow ~15-25 per element held:
512-element tiles keep them near 60-110 (static check) and leave room for
enough resident warps to cover DRAM latency; 1024 needed 125-213. The grid
is 1-D, pixel tiles fastest, so neighbouring programs share the
overlapping input rows in L2.

Cost: memory-bound. Forward reads x once per window tap (overlapping taps
hit L1/L2) and writes y (+ 8-byte indices); backward reads grad_y (and the
indices; max loads grad_y only where the index matches) once per covering
window and writes grad_x once. Index math is per pixel and per tap row /
column, shared by the channels of a thread.

Limits: offsets are 32-bit (``cnnkernels._args.check_index_range``);
accumulation is fp32 (fp64 for fp64 inputs, interpreter only);
float16/bfloat16/float32 on the GPU, float32/float64 under TRITON_INTERPRET=1.
"""

import torch
import triton
import triton.language as tl
from cnnkernels.kernels import TORCH_TO_TRITON_POINTER, compile_spec
from cnnkernels.kernels.common import acc_type


@triton.jit
def _window(o, scale, lo, hi, div, step, limit):
    """Window of output index o (a vector): (start, end, first), start
    unclipped, end clipped to the input, first = the first tap inside it."""
    num = o * scale
    start = (num + lo) // div
    end = tl.minimum((num + hi) // div, limit)
    first = start + ((tl.maximum(-start, 0) + step - 1) // step) * step
    return start, end, first


@triton.jit
def _window_size(start, end, first, kernel, padded_limit, count_include_pad):
    """One dimension of the average divisor (csrc/include/cnnk/pool2d.h)."""
    padded = tl.minimum(start + kernel, padded_limit) - start
    return tl.where(count_include_pad != 0, padded, end - first)


@triton.jit
def _divide(num, den):
    """num / den correctly rounded, as in C++: Triton's fp32 ``/`` is PTX
    div.full.f32 (not IEEE-rounded), so fp32 uses div_rn."""
    if num.dtype == tl.float32:
        return tl.math.div_rn(num, den)
    return num / den


@triton.jit
def _covering(i, scale, lo, hi, div, limit):
    """Output range [first, last) of the windows containing input index i (a
    vector), before the dilation test."""
    num = i * scale
    first = tl.maximum(num + lo, 0) // div
    last = tl.minimum((num + hi) // div, limit)
    return first, last


@triton.jit
def _pixel_tile(M, C, ROWS, COLS, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr):
    """This program's pixels (flattened (n, row, col) of a ROWS x COLS plane,
    < M) and channels, pixel tiles fastest: (n, row, col, pixel mask, c,
    channel mask)."""
    pid = tl.program_id(0)
    p_tiles = tl.cdiv(M, BLOCK_P)
    m = (pid % p_tiles) * BLOCK_P + tl.arange(0, BLOCK_P)
    c = (pid // p_tiles) * BLOCK_C + tl.arange(0, BLOCK_C)
    plane = m % (ROWS * COLS)
    return m // (ROWS * COLS), plane // COLS, plane % COLS, m < M, c, c < C


@triton.jit
def _max_forward_kernel(
    x_ptr, y_ptr, idx_ptr,
    M,
    h_scale, h_lo, h_hi, h_div, h_step, h_count,
    w_scale, w_lo, w_hi, w_div, w_step, w_count,
    xs_n, xs_c, xs_h, xs_w,
    ys_n, ys_c, ys_p, ys_q,
    is_n, is_c, is_p, is_q,
    C, H, W, P, Q,
    WRITE_INDICES: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, p, q, m_mask, c, c_mask = _pixel_tile(M, C, P, Q, BLOCK_P, BLOCK_C)
    h_start, h_end, h_first = _window(p, h_scale, h_lo, h_hi, h_div, h_step, H)
    w_start, w_end, w_first = _window(q, w_scale, w_lo, w_hi, w_div, w_step, W)
    # The taps outside the input before the first inside one, skipped.
    h_skip = (h_first - h_start) // h_step
    w_skip = (w_first - w_start) // w_step

    x_chan = (c * xs_c)[None, :]
    c_ok = c_mask[None, :]
    maxval = tl.full((BLOCK_P, BLOCK_C), float("-inf"), dtype=ACC)
    maxidx = tl.zeros((BLOCK_P, BLOCK_C), dtype=tl.int32) + (h_first * W + w_first)[:, None]
    for i in range(0, h_count):
        # Written from the window's start, and with the row, col >= 0 that
        # always hold: other equivalent forms spill on sm_80/sm_90 with
        # Triton 3.6 or 3.9 (static check).
        row = h_start + (i + h_skip) * h_step
        row_ok = m_mask & (row >= 0) & (row < h_end)
        x_row = n * xs_n + row * xs_h
        for j in range(0, w_count):
            col = w_start + (j + w_skip) * w_step
            ok = row_ok & (col >= 0) & (col < w_end)
            v = tl.load(x_ptr + (x_row + col * xs_w)[:, None] + x_chan,
                        mask=ok[:, None] & c_ok, other=float("-inf")).to(ACC)
            # torch's rule: the first maximum wins, a NaN always takes over.
            take = (v > maxval) | (v != v)
            maxval = tl.where(take, v, maxval)
            maxidx = tl.where(take, (row * W + col)[:, None], maxidx)

    out_mask = m_mask[:, None] & c_ok
    y_off = (n * ys_n + p * ys_p + q * ys_q)[:, None] + (c * ys_c)[None, :]
    tl.store(y_ptr + y_off, maxval.to(y_ptr.dtype.element_ty), mask=out_mask)
    if WRITE_INDICES:
        i_off = (n * is_n + p * is_p + q * is_q)[:, None] + (c * is_c)[None, :]
        tl.store(idx_ptr + i_off, maxidx.to(tl.int64), mask=out_mask)


@triton.jit
def _avg_forward_kernel(
    x_ptr, y_ptr,
    M,
    h_scale, h_lo, h_hi, h_div, h_step, h_count,
    w_scale, w_lo, w_hi, w_div, w_step, w_count,
    kernel_h, kernel_w, pad_h, pad_w, count_include_pad, divisor_override,
    xs_n, xs_c, xs_h, xs_w,
    ys_n, ys_c, ys_p, ys_q,
    C, H, W, P, Q,
    ACC: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, p, q, m_mask, c, c_mask = _pixel_tile(M, C, P, Q, BLOCK_P, BLOCK_C)
    h_start, h_end, h_first = _window(p, h_scale, h_lo, h_hi, h_div, h_step, H)
    w_start, w_end, w_first = _window(q, w_scale, w_lo, w_hi, w_div, w_step, W)

    x_chan = (c * xs_c)[None, :]
    c_ok = c_mask[None, :]
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    for i in range(0, h_count):
        row = h_first + i * h_step
        row_ok = m_mask & (row < h_end)
        x_row = n * xs_n + row * xs_h
        for j in range(0, w_count):
            col = w_first + j * w_step
            ok = row_ok & (col < w_end)
            acc += tl.load(x_ptr + (x_row + col * xs_w)[:, None] + x_chan,
                           mask=ok[:, None] & c_ok, other=0.0).to(ACC)

    divisor = (_window_size(h_start, h_end, h_first, kernel_h, H + pad_h, count_include_pad)
               * _window_size(w_start, w_end, w_first, kernel_w, W + pad_w, count_include_pad))
    divisor = tl.where(m_mask, divisor, 1)
    divisor = tl.where(divisor_override != 0, divisor_override, divisor)
    out = _divide(acc, divisor.to(ACC)[:, None])
    y_off = (n * ys_n + p * ys_p + q * ys_q)[:, None] + (c * ys_c)[None, :]
    tl.store(y_ptr + y_off, out.to(y_ptr.dtype.element_ty), mask=m_mask[:, None] & c_ok)


@triton.jit
def _max_backward_kernel(
    gy_ptr, idx_ptr, gx_ptr,
    M,
    ch_scale, ch_lo, ch_hi, ch_div, ch_dir, ch_count, stride_h, pad_h, dil_h,
    cw_scale, cw_lo, cw_hi, cw_div, cw_dir, cw_count, stride_w, pad_w, dil_w,
    gys_n, gys_c, gys_p, gys_q,
    is_n, is_c, is_p, is_q,
    gxs_n, gxs_c, gxs_h, gxs_w,
    C, H, W, P, Q,
    DISJOINT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, h, w, m_mask, c, c_mask = _pixel_tile(M, C, H, W, BLOCK_P, BLOCK_C)
    hw = h * W + w  # the index this element has in its plane
    p_lo, p_hi = _covering(h, ch_scale, ch_lo, ch_hi, ch_div, P)
    q_lo, q_hi = _covering(w, cw_scale, cw_lo, cw_hi, cw_div, Q)

    gy_chan = (c * gys_c)[None, :]
    i_chan = (c * is_c)[None, :]
    c_ok = c_mask[None, :]
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    if DISJOINT:
        ok = m_mask & (p_lo < P) & (q_lo < Q)
        mask = ok[:, None] & c_ok
        idx = tl.load(idx_ptr + (n * is_n + p_lo * is_p + q_lo * is_q)[:, None] + i_chan,
                      mask=mask, other=-1)
        hit = mask & (idx == hw[:, None])
        acc += tl.load(gy_ptr + (n * gys_n + p_lo * gys_p + q_lo * gys_q)[:, None] + gy_chan,
                       mask=hit, other=0.0).to(ACC)
    else:
        # Iteration i visits p_base + i * dir, a covering window iff i < p_n.
        p_base = tl.where(ch_dir > 0, p_lo, p_hi - 1)
        q_base = tl.where(cw_dir > 0, q_lo, q_hi - 1)
        p_n = p_hi - p_lo
        q_n = q_hi - q_lo
        for i in range(0, ch_count):
            p = p_base + i * ch_dir
            p_ok = m_mask & (i < p_n) & ((h + pad_h - p * stride_h) % dil_h == 0)
            gy_row = n * gys_n + p * gys_p
            i_row = n * is_n + p * is_p
            for j in range(0, cw_count):
                q = q_base + j * cw_dir
                ok = p_ok & (j < q_n) & ((w + pad_w - q * stride_w) % dil_w == 0)
                mask = ok[:, None] & c_ok
                idx = tl.load(idx_ptr + (i_row + q * is_q)[:, None] + i_chan,
                              mask=mask, other=-1)
                hit = mask & (idx == hw[:, None])
                acc += tl.load(gy_ptr + (gy_row + q * gys_q)[:, None] + gy_chan,
                               mask=hit, other=0.0).to(ACC)

    gx_off = (n * gxs_n + h * gxs_h + w * gxs_w)[:, None] + (c * gxs_c)[None, :]
    tl.store(gx_ptr + gx_off, acc.to(gx_ptr.dtype.element_ty), mask=m_mask[:, None] & c_ok)


@triton.jit
def _avg_backward_kernel(
    gy_ptr, gx_ptr,
    M,
    ch_scale, ch_lo, ch_hi, ch_div, ch_dir, ch_count, stride_h, pad_h, dil_h,
    cw_scale, cw_lo, cw_hi, cw_div, cw_dir, cw_count, stride_w, pad_w, dil_w,
    h_scale, h_lo, h_hi, h_div, h_step,
    w_scale, w_lo, w_hi, w_div, w_step,
    kernel_h, kernel_w, count_include_pad, divisor_override,
    gys_n, gys_c, gys_p, gys_q,
    gxs_n, gxs_c, gxs_h, gxs_w,
    C, H, W, P, Q,
    DISJOINT: tl.constexpr, ACC: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, h, w, m_mask, c, c_mask = _pixel_tile(M, C, H, W, BLOCK_P, BLOCK_C)
    p_lo, p_hi = _covering(h, ch_scale, ch_lo, ch_hi, ch_div, P)
    q_lo, q_hi = _covering(w, cw_scale, cw_lo, cw_hi, cw_div, Q)

    gy_chan = (c * gys_c)[None, :]
    c_ok = c_mask[None, :]
    acc = tl.zeros((BLOCK_P, BLOCK_C), dtype=ACC)
    if DISJOINT:
        ok = m_mask & (p_lo < P) & (q_lo < Q)
        h_start, h_end, h_first = _window(p_lo, h_scale, h_lo, h_hi, h_div, h_step, H)
        w_start, w_end, w_first = _window(q_lo, w_scale, w_lo, w_hi, w_div, w_step, W)
        divisor = (
            _window_size(h_start, h_end, h_first, kernel_h, H + pad_h, count_include_pad)
            * _window_size(w_start, w_end, w_first, kernel_w, W + pad_w, count_include_pad))
        # Masked lanes (no window) have size <= 0: any non-zero divisor keeps
        # their g = 0 at 0.
        divisor = tl.maximum(divisor, 1)
        divisor = tl.where(divisor_override != 0, divisor_override, divisor)
        g = tl.load(gy_ptr + (n * gys_n + p_lo * gys_p + q_lo * gys_q)[:, None] + gy_chan,
                    mask=ok[:, None] & c_ok, other=0.0).to(ACC)
        acc += _divide(g, divisor.to(ACC)[:, None])
    else:
        # Iteration i visits p_base + i * dir, a covering window iff i < p_n.
        p_base = tl.where(ch_dir > 0, p_lo, p_hi - 1)
        q_base = tl.where(cw_dir > 0, q_lo, q_hi - 1)
        p_n = p_hi - p_lo
        q_n = q_hi - q_lo
        for i in range(0, ch_count):
            p = p_base + i * ch_dir
            p_ok = m_mask & (i < p_n) & ((h + pad_h - p * stride_h) % dil_h == 0)
            h_start, h_end, h_first = _window(p, h_scale, h_lo, h_hi, h_div, h_step, H)
            h_size = _window_size(h_start, h_end, h_first, kernel_h, H + pad_h,
                                  count_include_pad)
            gy_row = n * gys_n + p * gys_p
            for j in range(0, cw_count):
                q = q_base + j * cw_dir
                ok = p_ok & (j < q_n) & ((w + pad_w - q * stride_w) % dil_w == 0)
                w_start, w_end, w_first = _window(q, w_scale, w_lo, w_hi, w_div, w_step, W)
                divisor = h_size * _window_size(w_start, w_end, w_first, kernel_w, W + pad_w,
                                                count_include_pad)
                # Masked lanes load g = 0; any non-zero divisor keeps them 0.
                # (tl.where(ok, ...) here hits a layout-conversion bug of
                # Triton 3.6's compiler for the 64x8 and 32x16 tiles.)
                divisor = tl.maximum(divisor, 1)
                divisor = tl.where(divisor_override != 0, divisor_override, divisor)
                g = tl.load(gy_ptr + (gy_row + q * gys_q)[:, None] + gy_chan,
                            mask=ok[:, None] & c_ok, other=0.0).to(ACC)
                acc += _divide(g, divisor.to(ACC)[:, None])

    gx_off = (n * gxs_n + h * gxs_h + w * gxs_w)[:, None] + (c * gxs_c)[None, :]
    tl.store(gx_ptr + gx_off, acc.to(gx_ptr.dtype.element_ty), mask=m_mask[:, None] & c_ok)


@triton.jit
def _gather_kernel(
    x_ptr, idx_ptr, y_ptr,
    M,
    xs_n, xs_c, xs_h, xs_w,
    is_n, is_c, is_p, is_q,
    ys_n, ys_c, ys_p, ys_q,
    C, H, W, P, Q,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    n, p, q, m_mask, c, c_mask = _pixel_tile(M, C, P, Q, BLOCK_P, BLOCK_C)
    mask = m_mask[:, None] & c_mask[None, :]
    idx = tl.load(idx_ptr + (n * is_n + p * is_p + q * is_q)[:, None] + (c * is_c)[None, :],
                  mask=mask, other=0)
    inside = (idx >= 0) & (idx < H * W)
    x_off = (n * xs_n)[:, None] + (c * xs_c)[None, :] + (idx // W) * xs_h + (idx % W) * xs_w
    v = tl.load(x_ptr + x_off, mask=mask & inside, other=float("nan"))
    y_off = (n * ys_n + p * ys_p + q * ys_q)[:, None] + (c * ys_c)[None, :]
    tl.store(y_ptr + y_off, v, mask=mask)


# Launch configurations (BLOCK_P, BLOCK_C): 512 elements, 4 warps each. The
# launchers pick from this table (``_tile``); static_check_specs() compiles
# every entry.
_TILES = ((512, 1), (128, 4), (64, 8), (32, 16), (16, 32), (8, 64))
_NUM_WARPS = 4
# The gathers hold more state per element (window bounds and divisor of each
# covering window): 8 warps halve the elements per thread, and 4 left the
# averaging backward spilling on sm_80.
_BACKWARD_WARPS = 8


def _tile(t: torch.Tensor, channels: int, pixels: int) -> tuple[int, int]:
    """Tile for a launch whose big tensor is ``t`` with ``pixels`` (n, h, w)
    positions: channel-wide tiles when the channels are contiguous
    (channels_last), else the longest pixel run there are pixels for."""
    if channels > 1 and t.stride(1) <= t.stride(3):
        for block_p, block_c in _TILES[1:]:
            if block_c >= channels:
                return block_p, block_c
        return _TILES[-1]
    for block_p, block_c in _TILES:
        if block_p <= pixels:
            return block_p, block_c
    return _TILES[-1]


def _adaptive_extent(in_size: int, out_size: int) -> int:
    """A bound on the largest adaptive window, ceil(I / O) + 1 (capped at I):
    ceil((o + 1) I / O) - floor(o I / O) < I / O + 2. With the roles swapped,
    a bound on the windows covering one input index. The loops mask what
    lies past a window, so a bound serves as well as the maximum."""
    return min(in_size, -(-in_size // out_size) + 1)


def _window_params(in_size, out_size, kernel, stride, pad, dil, adaptive):
    """(scale, lo, hi, div, step, count) of the forward windows of one dimension
    (see the module docstring)."""
    if adaptive:
        return (in_size, 0, in_size + out_size - 1, out_size, 1,
                _adaptive_extent(in_size, out_size))
    # The loop visits the taps from the first one inside the input; no more
    # of them than the input holds, however large the window.
    return (stride, -pad, -pad + (kernel - 1) * dil + 1, 1, dil,
            min(kernel, (in_size - 1) // dil + 1))


def _covering_params(in_size, out_size, kernel, stride, pad, dil, adaptive):
    """(scale, lo, hi, div, direction, count, stride, pad, dil) of the windows
    covering one input index, for the backward kernels: p in
    [max(i scale + lo, 0) // div, min((i scale + hi) // div, out_size)),
    visited from the low end (direction 1) or the high end (-1), and kept
    when (i + pad - p stride) % dil == 0."""
    if adaptive:
        return (out_size, 0, out_size + in_size - 1, in_size, 1,
                _adaptive_extent(out_size, in_size), 0, 0, 1)
    # No more candidates than outputs, however large the window.
    return (1, pad - (kernel - 1) * dil + stride - 1, pad + stride, stride, -1,
            min((kernel - 1) * dil // stride + 1, out_size), stride, pad, dil)


def _geometry_params(g):
    rows = _window_params(g.H, g.P, g.kernel_h, g.stride_h, g.pad_h, g.dil_h, g.adaptive)
    cols = _window_params(g.W, g.Q, g.kernel_w, g.stride_w, g.pad_w, g.dil_w, g.adaptive)
    return rows, cols


def _disjoint(g) -> bool:
    return (not g.adaptive and g.stride_h == g.kernel_h and g.stride_w == g.kernel_w
            and g.dil_h == 1 and g.dil_w == 1)


def _avg_params(g) -> tuple[int, int, int, int, int, int]:
    """kernel_h, kernel_w, pad_h, pad_w, count_include_pad, divisor_override."""
    cip = int(bool(g.count_include_pad) and not g.adaptive)
    return (g.kernel_h, g.kernel_w, g.pad_h, g.pad_w, cip, int(g.divisor_override))


def _grid(pixels: int, channels: int, tile: tuple[int, int]) -> tuple[int]:
    return (triton.cdiv(pixels, tile[0]) * triton.cdiv(channels, tile[1]),)


def _launch(kernel, g, tiled, pixels: int, pointers: tuple, scalars: tuple, num_warps: int,
            **constexprs) -> None:
    """Launch ``kernel`` over ``pixels`` x channels of its output, tiled for
    the layout of ``tiled`` (the big tensor), with the geometry's sizes by
    name after its ``scalars``."""
    tile = _tile(tiled, g.C, pixels)
    kernel[_grid(pixels, g.C, tile)](
        *pointers, pixels, *scalars, C=g.C, H=g.H, W=g.W, P=g.P, Q=g.Q,
        BLOCK_P=tile[0], BLOCK_C=tile[1], num_warps=num_warps, **constexprs)


def max_pool2d_forward(g, x, y, indices) -> None:
    """y = max over each window; indices (int64, y's shape) = h * W + w of the
    argmax, written only when ``indices`` is not None."""
    rows, cols = _geometry_params(g)
    idx_strides = indices.stride() if indices is not None else (0, 0, 0, 0)
    _launch(_max_forward_kernel, g, x, g.N * g.P * g.Q,
            (x, y, indices if indices is not None else y),
            (*rows, *cols, *x.stride(), *y.stride(), *idx_strides), _NUM_WARPS,
            WRITE_INDICES=indices is not None, ACC=acc_type(x.dtype))


def avg_pool2d_forward(g, x, y) -> None:
    """y = sum over each window / its divisor."""
    rows, cols = _geometry_params(g)
    _launch(_avg_forward_kernel, g, x, g.N * g.P * g.Q, (x, y),
            (*rows, *cols, *_avg_params(g), *x.stride(), *y.stride()), _NUM_WARPS,
            ACC=acc_type(x.dtype))


def _covering_all(g):
    rows = _covering_params(g.H, g.P, g.kernel_h, g.stride_h, g.pad_h, g.dil_h, g.adaptive)
    cols = _covering_params(g.W, g.Q, g.kernel_w, g.stride_w, g.pad_w, g.dil_w, g.adaptive)
    return rows, cols


def max_pool2d_backward(g, grad_y, indices, grad_x) -> None:
    """grad_x[n, c, h, w] = sum of grad_y over the windows whose index is h * W + w."""
    rows, cols = _covering_all(g)
    _launch(_max_backward_kernel, g, grad_x, g.N * g.H * g.W, (grad_y, indices, grad_x),
            (*rows, *cols, *grad_y.stride(), *indices.stride(), *grad_x.stride()),
            _BACKWARD_WARPS, DISJOINT=_disjoint(g), ACC=acc_type(grad_x.dtype))


def avg_pool2d_backward(g, grad_y, grad_x) -> None:
    """grad_x[n, c, h, w] = sum of grad_y / divisor over the windows containing (h, w)."""
    cover_rows, cover_cols = _covering_all(g)
    rows, cols = _geometry_params(g)
    kernel_h, kernel_w, _, _, cip, divisor_override = _avg_params(g)
    _launch(_avg_backward_kernel, g, grad_x, g.N * g.H * g.W, (grad_y, grad_x),
            (*cover_rows, *cover_cols, *rows[:5], *cols[:5], kernel_h, kernel_w, cip,
             divisor_override, *grad_y.stride(), *grad_x.stride()),
            _BACKWARD_WARPS, DISJOINT=_disjoint(g), ACC=acc_type(grad_x.dtype))


def max_pool2d_gather(g, x, indices, y) -> None:
    """y[n, c, p, q] = x[n, c, h, w] at h * W + w = indices[n, c, p, q] (NaN
    for an index outside the plane)."""
    _launch(_gather_kernel, g, y, g.N * g.P * g.Q, (x, indices, y),
            (*x.stride(), *indices.stride(), *y.stride()), _NUM_WARPS)


def static_check_specs():
    """Every kernel in every launch configuration (tile table entry x variant
    x dtype), for the static GPU check."""
    specs = []
    for dtype in ("float32", "float16", "bfloat16"):
        ptr = TORCH_TO_TRITON_POINTER[dtype]
        for block_p, block_c in _TILES:
            tile = f"BLOCK_P={block_p},BLOCK_C={block_c}"
            blocks = {"ACC": tl.float32, "BLOCK_P": block_p, "BLOCK_C": block_c}
            for write_indices in (True, False):
                specs.append(compile_spec(
                    f"pool2d_max_forward[{dtype},{tile},INDICES={write_indices}]",
                    _max_forward_kernel,
                    pointers={"x_ptr": ptr, "y_ptr": ptr, "idx_ptr": "*i64"},
                    constexprs={"WRITE_INDICES": write_indices, **blocks},
                    num_warps=_NUM_WARPS))
            specs.append(compile_spec(
                f"pool2d_avg_forward[{dtype},{tile}]", _avg_forward_kernel,
                pointers={"x_ptr": ptr, "y_ptr": ptr}, constexprs=blocks,
                num_warps=_NUM_WARPS))
            for disjoint in (False, True):
                specs.append(compile_spec(
                    f"pool2d_max_backward[{dtype},{tile},DISJOINT={disjoint}]",
                    _max_backward_kernel,
                    pointers={"gy_ptr": ptr, "idx_ptr": "*i64", "gx_ptr": ptr},
                    constexprs={"DISJOINT": disjoint, **blocks}, num_warps=_BACKWARD_WARPS))
                specs.append(compile_spec(
                    f"pool2d_avg_backward[{dtype},{tile},DISJOINT={disjoint}]",
                    _avg_backward_kernel,
                    pointers={"gy_ptr": ptr, "gx_ptr": ptr},
                    constexprs={"DISJOINT": disjoint, **blocks}, num_warps=_BACKWARD_WARPS))
            specs.append(compile_spec(
                f"pool2d_max_gather[{dtype},{tile}]", _gather_kernel,
                pointers={"x_ptr": ptr, "idx_ptr": "*i64", "y_ptr": ptr},
                constexprs={"BLOCK_P": block_p, "BLOCK_C": block_c}, num_warps=_NUM_WARPS))
    return specs
