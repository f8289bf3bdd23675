"""detection, Triton kernels and their launchers: IoU matrices, the IoU
losses (forward and gradient) and NMS.

The box math mirrors csrc/include/cnnk/boxes.h operation for operation
(torchvision's formulas, in its order; min / max as selects, fp32 quotients
IEEE-rounded with div_rn), in fp32 (fp64 for fp64 boxes, interpreter only).
The NMS mask kernel is launched with ``enable_fp_fusion=False``: no
multiply-add is fused, so its IoUs round as the cpu's and torchvision's
and the kept boxes are the same.
The launchers take the geometries of cnnkernels/ops/detection.py and have
the C++ launchers' names and arguments.

``_box_iou_kernel``: a program owns a BLOCK_N x BLOCK_M tile of one image's
IoU matrix; the tile's boxes are loaded once as vectors, the IoUs computed
as a 2-D tile and stored. Bound: the output write (B N M elements).

``_loss_kernel`` / ``_loss_grad_kernel``: BLOCK pairs per program, one per
lane. atan (ciou) has no Triton builtin that the interpreter runs: it is
computed by ``_atan``, Newton's method on tan with sin and cos (three steps
from a 4e-3 start, below fp64 rounding).

NMS over the boxes in visiting order (``order``):
``_nms_mask_kernel``: program (column tile, row tile, half) of 32 rows x
64 columns (a 64 x 64 tile held whole spills at 4 warps) computes the upper
triangle's suppression bits (IoU > threshold, same class) as a 2-D tile
and packs each row into one int64 word (a sum of distinct powers of two);
tiles below the diagonal return. Bound: N^2 / 2
IoU tests, N^2 / 8 bytes written. ``_nms_reduce_kernel``: the greedy pass,
one program: per row tile b, the 64 rows in order (a row not removed is
kept and ORs its diagonal word into the running removed word), then the
kept rows' words past b OR-ed into the removed bits BLOCK_W words at a
time, with a barrier between the stores and the next tile's load. The
threshold arrives as a one-element tensor of the accumulator type (a Python
float argument would be rounded to fp32): the largest fp32 at most the
threshold for fp32 boxes, which decides as the double does.

Limits: offsets are 32-bit (the ops check N x words); NMS tiles are 64.
"""

import torch
import triton
import triton.language as tl
from cnnkernels.kernels import TORCH_TO_TRITON_POINTER, compile_spec
from cnnkernels.kernels.common import acc_type

_IOU_TILE = (32, 32)  # BLOCK_N, BLOCK_M
_IOU_WARPS = 4
_GRID_Z_MAX = 65535  # CUDA's limit on grid axes 1 and 2
_LOSS_BLOCK = 128
_LOSS_WARPS = 4
_NMS_BLOCK = 64
_NMS_ROWS = 32  # rows per mask program
_NMS_WARPS = 4
_REDUCE_BLOCK_W = 128
_FOUR_OVER_PI_SQUARED = tl.constexpr(0.40528473456935108577551785283891)


@triton.jit
def _min(a, b):
    return tl.where(b < a, b, a)


@triton.jit
def _max(a, b):
    return tl.where(a < b, b, a)


@triton.jit
def _div(num, den):
    """num / den, IEEE-rounded in fp32 (Triton's fp32 / is approximate)."""
    if num.dtype == tl.float32:
        return tl.math.div_rn(num, den)
    return num / den


@triton.jit
def _load_box(ptr, row, stride_row, stride_coord, mask, ACC: tl.constexpr):
    base = ptr + row * stride_row
    return (tl.load(base, mask=mask, other=0.0).to(ACC),
            tl.load(base + stride_coord, mask=mask, other=0.0).to(ACC),
            tl.load(base + 2 * stride_coord, mask=mask, other=0.0).to(ACC),
            tl.load(base + 3 * stride_coord, mask=mask, other=0.0).to(ACC))


@triton.jit
def _overlap(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b):
    """(inter, union) as boxes.h's box_overlap."""
    w = _max(_min(ax2, bx2) - _max(ax1, bx1), 0.0)
    h = _max(_min(ay2, by2) - _max(ay1, by1), 0.0)
    inter = w * h
    return inter, (area_a + area_b) - inter


@triton.jit
def _box_iou_kernel(b1_ptr, b2_ptr, out_ptr, N, M,
                    s1b, s1n, s1c, s2b, s2m, s2c, sob, son, som,
                    GENERALIZED: tl.constexpr, ACC: tl.constexpr,
                    BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    b = tl.program_id(2)
    n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    n_ok, m_ok = n < N, m < M
    ax1, ay1, ax2, ay2 = _load_box(b1_ptr + b * s1b, n, s1n, s1c, n_ok, ACC)
    bx1, by1, bx2, by2 = _load_box(b2_ptr + b * s2b, m, s2m, s2c, m_ok, ACC)
    area_a = ((ax2 - ax1) * (ay2 - ay1))[:, None]
    area_b = ((bx2 - bx1) * (by2 - by1))[None, :]
    ax1, ay1, ax2, ay2 = ax1[:, None], ay1[:, None], ax2[:, None], ay2[:, None]
    bx1, by1, bx2, by2 = bx1[None, :], by1[None, :], bx2[None, :], by2[None, :]
    inter, uni = _overlap(ax1, ay1, ax2, ay2, area_a, bx1, by1, bx2, by2, area_b)
    iou = tl.where(uni > 0, _div(inter, tl.where(uni > 0, uni, 1.0)), 0.0)
    if GENERALIZED:
        cw = _max(_max(ax2, bx2) - _min(ax1, bx1), 0.0)
        ch = _max(_max(ay2, by2) - _min(ay1, by1), 0.0)
        enclosing = cw * ch
        safe = tl.where(enclosing > 0, enclosing, 1.0)
        iou = tl.where(enclosing > 0, iou - _div(enclosing - uni, safe), iou)
    tl.store(out_ptr + b * sob + n[:, None] * son + m[None, :] * som,
             iou.to(out_ptr.dtype.element_ty), mask=n_ok[:, None] & m_ok[None, :])


@triton.jit
def _atan(r):
    """atan(r): reduce |r| > 1 to 1 / |r| (atan = pi / 2 - atan(1 / |r|)),
    then Newton on sin(t) - x cos(t) = 0 from t = x (pi / 4 + 0.273 (1 - x))."""
    a = tl.abs(r)
    big = a > 1.0
    x = tl.where(big, _div(tl.full(a.shape, 1.0, a.dtype), tl.where(big, a, 1.0)), a)
    t = x * (0.7853981633974483 + 0.273 * (1.0 - x))
    for _ in tl.static_range(3):
        s = tl.sin(t)
        c = tl.cos(t)
        t = t - _div(s - x * c, c + x * s)
    t = tl.where(big, 1.5707963267948966 - t, t)
    return tl.where(r < 0, -t, tl.where(r != r, r, t))


@triton.jit
def _loss_terms(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2, eps, KIND: tl.constexpr):
    """boxes.h's loss_terms: (ix1, iy1, ix2, iy2, overlaps, inter, union,
    iou, cw, ch, dx, dy, atan_a, atan_b)."""
    ix1, iy1 = _max(ax1, bx1), _max(ay1, by1)
    ix2, iy2 = _min(ax2, bx2), _min(ay2, by2)
    overlaps = (iy2 > iy1) & (ix2 > ix1)
    inter = tl.where(overlaps, (ix2 - ix1) * (iy2 - iy1), 0.0)
    uni = ((ax2 - ax1) * (ay2 - ay1) + (bx2 - bx1) * (by2 - by1)) - inter
    iou = _div(inter, uni + eps)
    cw = _max(ax2, bx2) - _min(ax1, bx1)
    ch = _max(ay2, by2) - _min(ay1, by1)
    dx = (ax2 + ax1) / 2 - (bx1 + bx2) / 2
    dy = (ay2 + ay1) / 2 - (by1 + by2) / 2
    atan_a = tl.zeros_like(ax1)
    atan_b = tl.zeros_like(ax1)
    if KIND == 2:
        atan_a = _atan(_div(ax2 - ax1, ay2 - ay1))
        atan_b = _atan(_div(bx2 - bx1, by2 - by1))
    return ix1, iy1, ix2, iy2, overlaps, inter, uni, iou, cw, ch, dx, dy, atan_a, atan_b


@triton.jit
def _loss_kernel(b1_ptr, b2_ptr, loss_ptr, P, s1p, s1c, s2p, s2c, sl, eps_ptr,
                 KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = p < P
    eps = tl.load(eps_ptr)
    ax1, ay1, ax2, ay2 = _load_box(b1_ptr, p, s1p, s1c, ok, ACC)
    bx1, by1, bx2, by2 = _load_box(b2_ptr, p, s2p, s2c, ok, ACC)
    _, _, _, _, _, _, uni, iou, cw, ch, dx, dy, atan_a, atan_b = _loss_terms(
        ax1, ay1, ax2, ay2, bx1, by1, bx2, by2, eps, KIND)
    if KIND == 0:
        enclosing = cw * ch
        loss = 1.0 - (iou - _div(enclosing - uni, enclosing + eps))
    else:
        diagonal = (cw * cw + ch * ch) + eps
        loss = (1.0 - iou) + _div(dx * dx + dy * dy, diagonal)
        if KIND == 2:
            d = atan_b - atan_a
            v = _FOUR_OVER_PI_SQUARED * (d * d)
            loss = loss + _div(v, ((1.0 - iou) + v) + eps) * v
    tl.store(loss_ptr + p * sl, loss.to(loss_ptr.dtype.element_ty), mask=ok)


@triton.jit
def _extremum_grad(u, w, g, IS_MAX: tl.constexpr):
    """(gu, gw) of max(u, w) (min) as torch's maximum (minimum): all to the
    larger (smaller), half each on a tie."""
    first = u > w if IS_MAX else u < w
    tie = u == w
    return tl.where(tie, g / 2, tl.where(first, g, 0.0)), tl.where(tie, g / 2,
                                                                   tl.where(first, 0.0, g))


@triton.jit
def _store_box(ptr, p, sp, sc, x1, y1, x2, y2, ok):
    ty = ptr.dtype.element_ty
    tl.store(ptr + p * sp, x1.to(ty), mask=ok)
    tl.store(ptr + p * sp + sc, y1.to(ty), mask=ok)
    tl.store(ptr + p * sp + 2 * sc, x2.to(ty), mask=ok)
    tl.store(ptr + p * sp + 3 * sc, y2.to(ty), mask=ok)


@triton.jit
def _loss_grad_kernel(grad_ptr, b1_ptr, b2_ptr, g1_ptr, g2_ptr, P, sg, s1p, s1c, s2p, s2c,
                      sg1p, sg1c, sg2p, sg2c, eps_ptr,
                      KIND: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    """boxes.h's box_loss_grad, lane by lane."""
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = p < P
    eps = tl.load(eps_ptr)
    g = tl.load(grad_ptr + p * sg, mask=ok, other=0.0).to(ACC)
    ax1, ay1, ax2, ay2 = _load_box(b1_ptr, p, s1p, s1c, ok, ACC)
    bx1, by1, bx2, by2 = _load_box(b2_ptr, p, s2p, s2c, ok, ACC)
    ix1, iy1, ix2, iy2, overlaps, inter, uni, iou, cw, ch, dx, dy, atan_a, atan_b = \
        _loss_terms(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2, eps, KIND)
    den = uni + eps
    g_inter = -g / den
    g_uni = g * inter / (den * den)
    zero = tl.zeros_like(g)
    gax1, gay1, gax2, gay2 = zero, zero, zero, zero
    gbx1, gby1, gbx2, gby2 = zero, zero, zero, zero
    if KIND == 0:
        enclosing = cw * ch
        den_c = enclosing + eps
        g_num = g / den_c
        g_enclosing = g_num - g * (enclosing - uni) / (den_c * den_c)
        g_uni = g_uni - g_num
        g_cw = g_enclosing * ch
        g_ch = g_enclosing * cw
    else:
        diagonal = cw * cw + ch * ch + eps
        distance = dx * dx + dy * dy
        g_distance = g / diagonal
        g_diagonal = -g * distance / (diagonal * diagonal)
        g_cw = g_diagonal * 2 * cw
        g_ch = g_diagonal * 2 * ch
        g_dx = g_distance * 2 * dx / 2
        g_dy = g_distance * 2 * dy / 2
        gax1, gax2, gbx1, gbx2 = gax1 + g_dx, gax2 + g_dx, gbx1 - g_dx, gbx2 - g_dx
        gay1, gay2, gby1, gby2 = gay1 + g_dy, gay2 + g_dy, gby1 - g_dy, gby2 - g_dy
        if KIND == 2:
            d = atan_b - atan_a
            v = _FOUR_OVER_PI_SQUARED * (d * d)
            alpha = v / (1.0 - iou + v + eps)
            g_d = g * alpha * _FOUR_OVER_PI_SQUARED * 2 * d
            wa, ha, wb, hb = ax2 - ax1, ay2 - ay1, bx2 - bx1, by2 - by1
            ra, rb = wa / ha, wb / hb
            g_ra = -g_d / (1.0 + ra * ra)
            g_rb = g_d / (1.0 + rb * rb)
            g_wa, g_ha = g_ra / ha, -g_ra * wa / (ha * ha)
            g_wb, g_hb = g_rb / hb, -g_rb * wb / (hb * hb)
            gax2, gax1, gay2, gay1 = gax2 + g_wa, gax1 - g_wa, gay2 + g_ha, gay1 - g_ha
            gbx2, gbx1, gby2, gby1 = gbx2 + g_wb, gbx1 - g_wb, gby2 + g_hb, gby1 - g_hb
    g_inter = g_inter - g_uni
    gax2, gax1 = gax2 + g_uni * (ay2 - ay1), gax1 - g_uni * (ay2 - ay1)
    gay2, gay1 = gay2 + g_uni * (ax2 - ax1), gay1 - g_uni * (ax2 - ax1)
    gbx2, gbx1 = gbx2 + g_uni * (by2 - by1), gbx1 - g_uni * (by2 - by1)
    gby2, gby1 = gby2 + g_uni * (bx2 - bx1), gby1 - g_uni * (bx2 - bx1)
    g_w = tl.where(overlaps, g_inter * (iy2 - iy1), 0.0)
    g_h = tl.where(overlaps, g_inter * (ix2 - ix1), 0.0)
    # The intersection's corners (min of the x2s, max of the x1s), then the
    # enclosing box's (max of the x2s, min of the x1s).
    for_a, for_b = _extremum_grad(ax2, bx2, g_w, False)
    gax2, gbx2 = gax2 + for_a, gbx2 + for_b
    for_a, for_b = _extremum_grad(ax1, bx1, -g_w, True)
    gax1, gbx1 = gax1 + for_a, gbx1 + for_b
    for_a, for_b = _extremum_grad(ay2, by2, g_h, False)
    gay2, gby2 = gay2 + for_a, gby2 + for_b
    for_a, for_b = _extremum_grad(ay1, by1, -g_h, True)
    gay1, gby1 = gay1 + for_a, gby1 + for_b
    for_a, for_b = _extremum_grad(ax2, bx2, g_cw, True)
    gax2, gbx2 = gax2 + for_a, gbx2 + for_b
    for_a, for_b = _extremum_grad(ax1, bx1, -g_cw, False)
    gax1, gbx1 = gax1 + for_a, gbx1 + for_b
    for_a, for_b = _extremum_grad(ay2, by2, g_ch, True)
    gay2, gby2 = gay2 + for_a, gby2 + for_b
    for_a, for_b = _extremum_grad(ay1, by1, -g_ch, False)
    gay1, gby1 = gay1 + for_a, gby1 + for_b
    _store_box(g1_ptr, p, sg1p, sg1c, gax1, gay1, gax2, gay2, ok)
    _store_box(g2_ptr, p, sg2p, sg2c, gbx1, gby1, gbx2, gby2, ok)


@triton.jit
def _nms_mask_kernel(boxes_ptr, order_ptr, classes_ptr, mask_ptr, threshold_ptr,
                     N, WORDS, sbn, sbc, so, sc,
                     HAS_CLASSES: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr,
                     BLOCK_R: tl.constexpr):
    col_tile = tl.program_id(0)
    row_tile = tl.program_id(1)
    if col_tile >= row_tile:
        lane = tl.arange(0, BLOCK)
        rows = row_tile * BLOCK + tl.program_id(2) * BLOCK_R + tl.arange(0, BLOCK_R)
        cols = col_tile * BLOCK + lane
        row_ok, col_ok = rows < N, cols < N
        row_index = tl.load(order_ptr + rows * so, mask=row_ok, other=0)
        col_index = tl.load(order_ptr + cols * so, mask=col_ok, other=0)
        ax1, ay1, ax2, ay2 = _load_box(boxes_ptr, row_index, sbn, sbc, row_ok, ACC)
        bx1, by1, bx2, by2 = _load_box(boxes_ptr, col_index, sbn, sbc, col_ok, ACC)
        area_a = ((ax2 - ax1) * (ay2 - ay1))[:, None]
        area_b = ((bx2 - bx1) * (by2 - by1))[None, :]
        inter, uni = _overlap(ax1[:, None], ay1[:, None], ax2[:, None], ay2[:, None], area_a,
                              bx1[None, :], by1[None, :], bx2[None, :], by2[None, :], area_b)
        threshold = tl.load(threshold_ptr)
        suppress = (_div(inter, uni) > threshold) & (cols[None, :] > rows[:, None]) \
            & col_ok[None, :]
        if HAS_CLASSES:
            row_class = tl.load(classes_ptr + row_index * sc, mask=row_ok, other=0)
            col_class = tl.load(classes_ptr + col_index * sc, mask=col_ok, other=0)
            suppress = suppress & (row_class[:, None] == col_class[None, :])
        bit = tl.full((BLOCK,), 1, tl.int64) << lane.to(tl.int64)
        words = tl.sum(tl.where(suppress, bit[None, :], 0), axis=1)
        tl.store(mask_ptr + rows * WORDS + col_tile, words, mask=row_ok)


@triton.jit
def _nms_reduce_kernel(mask_ptr, removed_ptr, kept_ptr, N, WORDS, sk,
                       BLOCK: tl.constexpr, BLOCK_W: tl.constexpr):
    offsets = tl.arange(0, BLOCK_W)
    for w0 in range(0, WORDS, BLOCK_W):
        tl.store(removed_ptr + w0 + offsets, tl.zeros((BLOCK_W,), tl.int64),
                 mask=w0 + offsets < WORDS)
    tl.debug_barrier()
    for b in range(0, WORDS):
        removed = tl.load(removed_ptr + b)
        kept_bits = removed * 0
        for k in range(0, BLOCK):
            row = b * BLOCK + k
            keep = (row < N) & (((removed >> k) & 1) == 0)
            removed = removed | tl.load(mask_ptr + row * WORDS + b, mask=keep, other=0)
            kept_bits = kept_bits | (keep.to(tl.int64) << k)
            tl.store(kept_ptr + row * sk, keep.to(tl.uint8), mask=row < N)
        for w0 in range(b + 1, WORDS, BLOCK_W):
            words = w0 + offsets
            ok = words < WORDS
            bits = tl.zeros((BLOCK_W,), tl.int64)
            for k in range(0, BLOCK):
                take = (bits * 0 + ((kept_bits >> k) & 1)) != 0  # the bit, as a vector
                bits = bits | tl.load(mask_ptr + (b * BLOCK + k) * WORDS + words,
                                      mask=ok & take, other=0)
            old = tl.load(removed_ptr + words, mask=ok, other=0)
            tl.store(removed_ptr + words, old | bits, mask=ok)
        tl.debug_barrier()


def _scalar(value: float, boxes: torch.Tensor) -> torch.Tensor:
    """A one-element tensor of the accumulator type on boxes' device."""
    dtype = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    return torch.full((1,), value, dtype=dtype, device=boxes.device)


def box_iou(g, boxes1, boxes2, out) -> None:
    """out[b, n, m] = IoU (GIoU) of boxes1[b, n] and boxes2[b, m]."""
    block_n, block_m = _IOU_TILE
    # The batch is grid axis 2, at most 65535 programs a launch: larger
    # batches launch in slices.
    for b0 in range(0, g.B, _GRID_Z_MAX):
        b1 = min(g.B, b0 + _GRID_Z_MAX)
        grid = (triton.cdiv(g.M, block_m), triton.cdiv(g.N, block_n), b1 - b0)
        _box_iou_kernel[grid](boxes1[b0:b1], boxes2[b0:b1], out[b0:b1], g.N, g.M,
                              *boxes1.stride(), *boxes2.stride(), *out.stride(),
                              GENERALIZED=bool(g.generalized), ACC=acc_type(boxes1.dtype),
                              BLOCK_N=block_n, BLOCK_M=block_m, num_warps=_IOU_WARPS)


def box_iou_loss_forward(g, boxes1, boxes2, loss) -> None:
    _loss_kernel[(triton.cdiv(g.P, _LOSS_BLOCK),)](
        boxes1, boxes2, loss, g.P, *boxes1.stride(), *boxes2.stride(), loss.stride(0),
        _scalar(g.eps, boxes1), KIND=g.kind, ACC=acc_type(boxes1.dtype), BLOCK=_LOSS_BLOCK,
        num_warps=_LOSS_WARPS)


def box_iou_loss_backward(g, grad_loss, boxes1, boxes2, grad1, grad2) -> None:
    _loss_grad_kernel[(triton.cdiv(g.P, _LOSS_BLOCK),)](
        grad_loss, boxes1, boxes2, grad1, grad2, g.P, grad_loss.stride(0), *boxes1.stride(),
        *boxes2.stride(), *grad1.stride(), *grad2.stride(), _scalar(g.eps, boxes1),
        KIND=g.kind, ACC=acc_type(boxes1.dtype), BLOCK=_LOSS_BLOCK, num_warps=_LOSS_WARPS)


def nms(g, boxes, order, classes, workspace, kept) -> None:
    """kept[p] = whether NMS keeps box order[p] (see the module docstring);
    workspace: at least (N + 1) x words int64."""
    mask, removed = workspace[:g.N * g.words], workspace[g.N * g.words:]
    threshold = g.iou_threshold if boxes.dtype == torch.float64 else g.iou_threshold_f32
    has_classes = classes is not None
    _nms_mask_kernel[(g.words, g.words, _NMS_BLOCK // _NMS_ROWS)](
        boxes, order, classes if has_classes else order, mask, _scalar(threshold, boxes),
        g.N, g.words, *boxes.stride(), order.stride(0),
        classes.stride(0) if has_classes else 0, HAS_CLASSES=has_classes,
        ACC=acc_type(boxes.dtype), BLOCK=_NMS_BLOCK, BLOCK_R=_NMS_ROWS, num_warps=_NMS_WARPS,
        enable_fp_fusion=False)
    _nms_reduce_kernel[(1,)](mask, removed, kept, g.N, g.words, kept.stride(0),
                             BLOCK=_NMS_BLOCK, BLOCK_W=_REDUCE_BLOCK_W, num_warps=_NMS_WARPS)


def static_check_specs():
    """Every kernel in every launch configuration, for the static GPU check."""
    specs = []
    for dtype in ("float32", "float16", "bfloat16"):
        ptr = TORCH_TO_TRITON_POINTER[dtype]
        acc = {"ACC": tl.float32}
        for generalized in (False, True):
            specs.append(compile_spec(
                f"detection_box_iou[{dtype},GENERALIZED={generalized}]", _box_iou_kernel,
                pointers={"b1_ptr": ptr, "b2_ptr": ptr, "out_ptr": ptr},
                constexprs={"GENERALIZED": generalized, "BLOCK_N": _IOU_TILE[0],
                            "BLOCK_M": _IOU_TILE[1], **acc}, num_warps=_IOU_WARPS))
        for kind in (0, 1, 2):
            loss = {"KIND": kind, "BLOCK": _LOSS_BLOCK, **acc}
            specs.append(compile_spec(
                f"detection_loss[{dtype},KIND={kind}]", _loss_kernel,
                pointers={"b1_ptr": ptr, "b2_ptr": ptr, "loss_ptr": ptr, "eps_ptr": "*fp32"},
                constexprs=loss, num_warps=_LOSS_WARPS))
            specs.append(compile_spec(
                f"detection_loss_grad[{dtype},KIND={kind}]", _loss_grad_kernel,
                pointers={"grad_ptr": ptr, "b1_ptr": ptr, "b2_ptr": ptr, "g1_ptr": ptr,
                          "g2_ptr": ptr, "eps_ptr": "*fp32"},
                constexprs=loss, num_warps=_LOSS_WARPS))
        for has_classes in (False, True):
            specs.append(compile_spec(
                f"detection_nms_mask[{dtype},CLASSES={has_classes}]", _nms_mask_kernel,
                pointers={"boxes_ptr": ptr, "order_ptr": "*i64", "classes_ptr": "*i64",
                          "mask_ptr": "*i64", "threshold_ptr": "*fp32"},
                constexprs={"HAS_CLASSES": has_classes, "BLOCK": _NMS_BLOCK,
                            "BLOCK_R": _NMS_ROWS, **acc},
                num_warps=_NMS_WARPS))
    specs.append(compile_spec(
        "detection_nms_reduce", _nms_reduce_kernel,
        pointers={"mask_ptr": "*i64", "removed_ptr": "*i64", "kept_ptr": "*u8"},
        constexprs={"BLOCK": _NMS_BLOCK, "BLOCK_W": _REDUCE_BLOCK_W}, num_warps=_NMS_WARPS))
    return specs
