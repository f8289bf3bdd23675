"""YOLO head decoding (cnnkernels/ops/detection_yolo.py has the formulas),
Triton kernel and launcher.

``_yolo_decode_kernel``: a program owns BLOCK predictions (image, cell,
anchor), reads their four box logits and objectness through the head's
strides and writes the xyxy boxes, then the class scores BLOCK_C classes
at a time as a BLOCK x BLOCK_C tile. Bound: memory, the head read once and
the boxes and scores written once.
"""

import triton
import triton.language as tl
from cnnkernels.kernels import TORCH_TO_TRITON_POINTER, compile_spec
from cnnkernels.kernels.common import acc_dtype, acc_type

_BLOCK = 64
_BLOCK_C = 32
_WARPS = 4


@triton.jit
def _sigmoid(v):
    return 1.0 / (1.0 + tl.exp(-v))


@triton.jit
def _yolo_decode_kernel(head_ptr, anchors_ptr, boxes_ptr, scores_ptr, stride_ptr,
                        TOTAL, H, W, A, C, shb, shy, shx, shd, san, sac, sbb, sbr, sbc,
                        ssb, ssr, ssc, ACC: tl.constexpr, BLOCK: tl.constexpr,
                        BLOCK_C: tl.constexpr):
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    ok = e < TOTAL
    a = e % A
    cell = e // A
    x = cell % W
    y = (cell // W) % H
    b = cell // (W * H)
    row = e - b * (H * W * A)
    base = head_ptr + b * shb + y * shy + x * shx + (a * (5 + C)) * shd
    tx = tl.load(base, mask=ok, other=0.0).to(ACC)
    ty = tl.load(base + shd, mask=ok, other=0.0).to(ACC)
    tw = tl.load(base + 2 * shd, mask=ok, other=0.0).to(ACC)
    th = tl.load(base + 3 * shd, mask=ok, other=0.0).to(ACC)
    objectness = _sigmoid(tl.load(base + 4 * shd, mask=ok, other=0.0).to(ACC))
    stride = tl.load(stride_ptr)
    anchor_w = tl.load(anchors_ptr + a * san, mask=ok, other=0.0).to(ACC)
    anchor_h = tl.load(anchors_ptr + a * san + sac, mask=ok, other=0.0).to(ACC)
    cx = (_sigmoid(tx) + x.to(ACC)) * stride
    cy = (_sigmoid(ty) + y.to(ACC)) * stride
    half_w = anchor_w * tl.exp(tw) / 2
    half_h = anchor_h * tl.exp(th) / 2
    out = boxes_ptr + b * sbb + row * sbr
    ty_out = boxes_ptr.dtype.element_ty
    tl.store(out, (cx - half_w).to(ty_out), mask=ok)
    tl.store(out + sbc, (cy - half_h).to(ty_out), mask=ok)
    tl.store(out + 2 * sbc, (cx + half_w).to(ty_out), mask=ok)
    tl.store(out + 3 * sbc, (cy + half_h).to(ty_out), mask=ok)
    for c0 in range(0, C, BLOCK_C):
        c = c0 + tl.arange(0, BLOCK_C)
        tile = ok[:, None] & (c < C)[None, :]
        logits = tl.load(base[:, None] + ((5 + c) * shd)[None, :], mask=tile, other=0.0)
        score = objectness[:, None] * _sigmoid(logits.to(ACC))
        tl.store(scores_ptr + (b * ssb + row * ssr)[:, None] + (c * ssc)[None, :],
                 score.to(scores_ptr.dtype.element_ty), mask=tile)


def yolo_decode(g, head, anchors, boxes, scores) -> None:
    total = g.B * g.H * g.W * g.A
    stride = boxes.new_full((1,), g.stride, dtype=acc_dtype(head.dtype))
    _yolo_decode_kernel[(triton.cdiv(total, _BLOCK),)](
        head, anchors, boxes, scores, stride, total, g.H, g.W, g.A, g.C, *head.stride(),
        *anchors.stride(), *boxes.stride(), *scores.stride(), ACC=acc_type(head.dtype),
        BLOCK=_BLOCK, BLOCK_C=_BLOCK_C, num_warps=_WARPS)


def static_check_specs():
    """The kernel for each dtype, for the static GPU check."""
    return [compile_spec(f"detection_yolo_decode[{dtype}]", _yolo_decode_kernel,
                         pointers={"head_ptr": TORCH_TO_TRITON_POINTER[dtype],
                                   "anchors_ptr": TORCH_TO_TRITON_POINTER[dtype],
                                   "boxes_ptr": TORCH_TO_TRITON_POINTER[dtype],
                                   "scores_ptr": TORCH_TO_TRITON_POINTER[dtype],
                                   "stride_ptr": "*fp32"},
                         constexprs={"ACC": tl.float32, "BLOCK": _BLOCK, "BLOCK_C": _BLOCK_C},
                         num_warps=_WARPS)
            for dtype in ("float32", "float16", "bfloat16")]
