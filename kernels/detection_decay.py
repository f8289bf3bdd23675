"""soft_nms and matrix_nms (cnnkernels/ops/detection_decay.py, whose
docstring has the formulas), Triton kernels and their launchers, on the box
math of kernels/detection.py (boxes.h's).

``_soft_nms_kernel``: one program. Each step scans the running scores
(global scratch, accumulator type) BLOCK at a time for the first maximum
(tl.argmax breaks ties to the lowest index), records it while it is at
least score_threshold, then decays the remaining scores BLOCK at a time;
barriers separate the stores from the next scan. Triton has no early loop
exit: the N steps all run, masked off once the selection stops. Bound:
N x N IoUs; one SM.

``_matrix_nms_kernel``: a program owns BLOCK boxes (columns p of the score
order) and walks the boxes above them BLOCK_K at a time as a BLOCK_K x
BLOCK tile of IoUs (0 across classes, or where k >= p), reducing the
tile's rows: max (the compensating IoUs, DECAY=False) or min of the decay
(DECAY=True; then the decayed scores are written in input order). Bound:
N^2 / 2 IoUs per pass.
"""

import torch
import triton
import triton.language as tl
from cnnkernels.kernels import TORCH_TO_TRITON_POINTER, compile_spec
from cnnkernels.kernels.common import acc_type
from cnnkernels.kernels.detection import _div, _load_box, _max, _min, _overlap

_BLOCK = 128
_MATRIX_TILE = (8, 32)  # BLOCK_K, BLOCK (16 x 32 spilled with Triton 3.6)
_WARPS = 4


@triton.jit
def _iou(ax1, ay1, ax2, ay2, bx1, by1, bx2, by2):
    """boxes.h's iou_value: 0 where the union is empty."""
    inter, uni = _overlap(ax1, ay1, ax2, ay2, (ax2 - ax1) * (ay2 - ay1),
                          bx1, by1, bx2, by2, (bx2 - bx1) * (by2 - by1))
    return tl.where(uni > 0, _div(inter, tl.where(uni > 0, uni, 1.0)), 0.0)


@triton.jit
def _soft_nms_kernel(boxes_ptr, scores_ptr, work_ptr, selected_ptr, selected_scores_ptr,
                     count_ptr, params_ptr, N, sbn, sbc, ss, sel_s, sel_ss,
                     GAUSSIAN: tl.constexpr, ACC: tl.constexpr, BLOCK: tl.constexpr):
    offsets = tl.arange(0, BLOCK)
    iou_threshold = tl.load(params_ptr)
    sigma = tl.load(params_ptr + 1)
    score_threshold = tl.load(params_ptr + 2)
    for c0 in range(0, N, BLOCK):
        i = c0 + offsets
        v = tl.load(scores_ptr + i * ss, mask=i < N, other=0.0).to(ACC)
        tl.store(work_ptr + i, tl.where(v != v, float("-inf"), v), mask=i < N)
    tl.debug_barrier()
    count = 0
    active = N > 0
    for _ in range(0, N):
        best = tl.full((), float("-inf"), ACC)
        best_index = tl.full((), -1, tl.int32)
        for c0 in range(0, N, BLOCK):
            i = c0 + offsets
            v = tl.load(work_ptr + i, mask=i < N, other=float("-inf"))
            chunk_best = tl.max(v, axis=0)
            take = chunk_best > best
            best = tl.where(take, chunk_best, best)
            best_index = tl.where(take, c0 + tl.argmax(v, axis=0), best_index)
        active = active & (best_index >= 0) & (best >= score_threshold)
        tl.store(selected_ptr + count * sel_s, best_index.to(tl.int64), mask=active)
        tl.store(selected_scores_ptr + count * sel_ss,
                 best.to(selected_scores_ptr.dtype.element_ty), mask=active)
        count += active.to(tl.int32)
        m = tl.maximum(best_index, 0)
        mx1, my1, mx2, my2 = _load_box(boxes_ptr, m, sbn, sbc, active, ACC)
        tl.debug_barrier()
        for c0 in range(0, N, BLOCK):
            i = c0 + offsets
            # The scalar flag as a vector (the interpreter refuses a mask
            # made of a vector and a scalar).
            live = (i < N) & ((offsets * 0 + active.to(tl.int32)) != 0)
            v = tl.load(work_ptr + i, mask=live, other=float("-inf"))
            bx1, by1, bx2, by2 = _load_box(boxes_ptr, i, sbn, sbc, live, ACC)
            iou = _iou(mx1, my1, mx2, my2, bx1, by1, bx2, by2)
            if GAUSSIAN:
                decay = tl.exp(-_div(iou * iou, tl.zeros_like(iou) + sigma))
            else:
                decay = tl.where(iou > iou_threshold, 1.0 - iou, 1.0)
            v = tl.where(i == m, float("-inf"), tl.where(v > float("-inf"), v * decay, v))
            tl.store(work_ptr + i, v, mask=live)
        tl.debug_barrier()
    tl.store(count_ptr, count.to(tl.int64))


@triton.jit
def _matrix_nms_kernel(boxes_ptr, scores_ptr, order_ptr, classes_ptr, comp_ptr, out_ptr,
                       params_ptr, N, sbn, sbc, ss, so, sc, sout,
                       HAS_CLASSES: tl.constexpr, GAUSSIAN: tl.constexpr, DECAY: tl.constexpr,
                       ACC: tl.constexpr, BLOCK_K: tl.constexpr, BLOCK: tl.constexpr):
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    p_ok = p < N
    sigma = tl.load(params_ptr)
    p_index = tl.load(order_ptr + p * so, mask=p_ok, other=0)
    bx1, by1, bx2, by2 = _load_box(boxes_ptr, p_index, sbn, sbc, p_ok, ACC)
    if HAS_CLASSES:
        p_class = tl.load(classes_ptr + p_index * sc, mask=p_ok, other=0)
    value = tl.full((BLOCK,), 1.0 if DECAY else 0.0, ACC)
    last = tl.minimum(tl.program_id(0) * BLOCK + BLOCK, N)
    for k0 in range(0, last, BLOCK_K):
        k = k0 + tl.arange(0, BLOCK_K)
        k_ok = k < N
        k_index = tl.load(order_ptr + k * so, mask=k_ok, other=0)
        ax1, ay1, ax2, ay2 = _load_box(boxes_ptr, k_index, sbn, sbc, k_ok, ACC)
        iou = _iou(ax1[:, None], ay1[:, None], ax2[:, None], ay2[:, None],
                   bx1[None, :], by1[None, :], bx2[None, :], by2[None, :])
        above = (k[:, None] < p[None, :]) & k_ok[:, None]
        if HAS_CLASSES:
            k_class = tl.load(classes_ptr + k_index * sc, mask=k_ok, other=0)
            iou = tl.where(k_class[:, None] == p_class[None, :], iou, 0.0)
        if DECAY:
            comp = tl.load(comp_ptr + k, mask=k_ok, other=0.0)[:, None]
            if GAUSSIAN:
                f = tl.exp(-sigma * (iou * iou - comp * comp))
            else:
                f = _div(1.0 - iou, 1.0 - comp + tl.zeros_like(iou))
            value = _min(value, tl.min(tl.where(above, f, 1.0), axis=0))
        else:
            value = _max(value, tl.max(tl.where(above, iou, 0.0), axis=0))
    if DECAY:
        score = tl.load(scores_ptr + p_index * ss, mask=p_ok, other=0.0).to(ACC)
        tl.store(out_ptr + p_index * sout, (score * value).to(out_ptr.dtype.element_ty),
                 mask=p_ok)
    else:
        tl.store(comp_ptr + p, value, mask=p_ok)


def _params(values, like: torch.Tensor) -> torch.Tensor:
    """Float parameters as a tensor of the accumulator type (a Python float
    argument would be rounded to fp32)."""
    dtype = torch.float64 if like.dtype == torch.float64 else torch.float32
    return torch.tensor(values, dtype=dtype, device=like.device)


def soft_nms(g, boxes, scores, workspace, selected, selected_scores, count) -> None:
    """selected[:count] = the selection order, selected_scores its scores."""
    _soft_nms_kernel[(1,)](
        boxes, scores, workspace, selected, selected_scores, count,
        _params([g.iou_threshold, g.sigma, g.score_threshold], boxes), g.N, *boxes.stride(),
        scores.stride(0), selected.stride(0), selected_scores.stride(0),
        GAUSSIAN=bool(g.gaussian), ACC=acc_type(boxes.dtype), BLOCK=_BLOCK, num_warps=_WARPS,
        enable_fp_fusion=False)  # IoUs rounded as the cpu and CUDA kernels round them


def matrix_nms(g, boxes, scores, order, classes, workspace, decayed) -> None:
    """decayed[order[p]] = scores[order[p]] x decay_p."""
    block_k, block = _MATRIX_TILE
    has_classes = classes is not None
    for decay in (False, True):
        _matrix_nms_kernel[(triton.cdiv(g.N, block),)](
            boxes, scores, order, classes if has_classes else order, workspace, decayed,
            _params([g.sigma], boxes), g.N, *boxes.stride(), scores.stride(0), order.stride(0),
            classes.stride(0) if has_classes else 0, decayed.stride(0),
            HAS_CLASSES=has_classes, GAUSSIAN=bool(g.gaussian), DECAY=decay,
            ACC=acc_type(boxes.dtype), BLOCK_K=block_k, BLOCK=block, num_warps=_WARPS,
            enable_fp_fusion=False)


def static_check_specs():
    """Every kernel in every launch configuration, for the static GPU check."""
    specs = []
    for dtype in ("float32", "float16", "bfloat16"):
        ptr = TORCH_TO_TRITON_POINTER[dtype]
        for gaussian in (False, True):
            specs.append(compile_spec(
                f"detection_soft_nms[{dtype},GAUSSIAN={gaussian}]", _soft_nms_kernel,
                pointers={"boxes_ptr": ptr, "scores_ptr": ptr, "work_ptr": "*fp32",
                          "selected_ptr": "*i64", "selected_scores_ptr": ptr,
                          "count_ptr": "*i64", "params_ptr": "*fp32"},
                constexprs={"GAUSSIAN": gaussian, "ACC": tl.float32, "BLOCK": _BLOCK},
                num_warps=_WARPS))
            for has_classes in (False, True):
                for decay in (False, True):
                    specs.append(compile_spec(
                        f"detection_matrix_nms[{dtype},GAUSSIAN={gaussian},"
                        f"CLASSES={has_classes},DECAY={decay}]", _matrix_nms_kernel,
                        pointers={"boxes_ptr": ptr, "scores_ptr": ptr, "order_ptr": "*i64",
                                  "classes_ptr": "*i64", "comp_ptr": "*fp32", "out_ptr": ptr,
                                  "params_ptr": "*fp32"},
                        constexprs={"HAS_CLASSES": has_classes, "GAUSSIAN": gaussian,
                                    "DECAY": decay, "ACC": tl.float32,
                                    "BLOCK_K": _MATRIX_TILE[0], "BLOCK": _MATRIX_TILE[1]},
                        num_warps=_WARPS))
    return specs
