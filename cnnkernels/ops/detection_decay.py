"""soft_nms and matrix_nms, the detection family's score-decaying NMS
(beyond torchvision), on the geometries of cnnkernels/ops/detection.py.

Soft-NMS (Bodla et al., 2017): repeatedly select the box of highest score
(the lowest index on a tie; NaN scores never), then decay every other
remaining score s_i by its IoU with the selected box M:
    linear    s_i <- s_i (1 - IoU(M, b_i))  where IoU(M, b_i) > iou_threshold
    Gaussian  s_i <- s_i exp(-IoU(M, b_i)^2 / sigma)
until the best score left is below score_threshold. Returns the selected
indices in selection order and their decayed scores (a data-dependent
size: an unbacked size in the fake). Sequential by nature: the cpu runs it
serially, cuda in one block (a block-wide argmax per step), Triton in one
program.

Matrix NMS (SOLOv2, Wang et al., 2020), parallel: with the boxes in score
order (stable, descending) and IoU_ij of boxes i above j of one class (0
across classes), compensate_i = max_{k < i} IoU_ki and
    decay_j = min(1, min_{i < j} f(IoU_ij, compensate_i)),
    f = exp(-sigma (IoU^2 - compensate^2))  (Gaussian)
      = (1 - IoU) / (1 - compensate)         (linear);
returns every box's score times its decay, in the input order (the caller
thresholds and ranks them). Two O(N^2) passes, one box per thread / lane.
"""

import math
from typing import Optional

import torch
from torch import Tensor

from cnnkernels import _args, _backend, _ext
from cnnkernels.ops._define import Launch, define_op
from cnnkernels.ops.detection import (
    MatrixNmsGeometry,
    SoftNmsGeometry,
    _nms_geometry,
    float32_at_most,
)

METHODS = ("linear", "gaussian")


def _triton():
    from cnnkernels.kernels import detection_decay

    return detection_decay


def _check_scores(boxes: Tensor, scores: Tensor) -> int:
    n = _nms_geometry(boxes, scores, 0.0, False).N
    _args.check_same(boxes, "boxes", {"scores": scores})
    return n


def _accumulators(boxes: Tensor, backend: str) -> Tensor:
    """The kernels' scratch of N accumulators (none on the cpu)."""
    dtype = torch.float64 if boxes.dtype == torch.float64 else torch.float32
    return boxes.new_empty((boxes.shape[0] if backend != "cpu" else 0,), dtype=dtype)


@define_op("cnnk::soft_nms", returns=tuple[Tensor, Tensor])
def soft_nms_op(boxes: Tensor, scores: Tensor, gaussian: bool, iou_threshold: float,
                sigma: float, score_threshold: float, backend: str) -> Launch:
    """(indices in selection order, their decayed scores)."""
    n = _check_scores(boxes, scores)
    if gaussian and not sigma > 0:
        raise ValueError(f"sigma must be positive for the Gaussian decay, got {sigma}")
    iou_threshold, score_threshold = float(iou_threshold), float(score_threshold)
    if boxes.dtype != torch.float64:  # the kernels compare in float32: exact bounds there
        iou_threshold = float32_at_most(iou_threshold)
        score_threshold = float32_at_most(score_threshold, at_least=True)
    g = SoftNmsGeometry(n, bool(gaussian), iou_threshold, float(sigma), score_threshold)
    selected = boxes.new_empty((n,), dtype=torch.int64)
    selected_scores = scores.new_empty((n,))
    count = boxes.new_empty((1,), dtype=torch.int64)

    def run(backend: str) -> None:
        _ext.launchers(backend, boxes, _triton).soft_nms(
            g, boxes, scores, _accumulators(boxes, backend), selected, selected_scores, count)

    def result():
        kept = int(count.item())
        return selected[:kept].clone(), selected_scores[:kept].clone()

    def fake_result():
        size = torch.library.get_ctx().new_dynamic_size()
        return boxes.new_empty((size,), dtype=torch.int64), scores.new_empty((size,))

    return Launch((selected, selected_scores, count),
                  {"boxes": boxes, "scores": scores, "selected": selected,
                   "selected_scores": selected_scores}, run, g.index_extent(),
                  result=result, fake_result=fake_result)


@define_op("cnnk::matrix_nms", returns=Tensor)
def matrix_nms_op(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor], gaussian: bool,
                  sigma: float, backend: str) -> Launch:
    """Every box's decayed score, in the input order."""
    n = _check_scores(boxes, scores)
    if idxs is not None:
        _args.check_tensor(idxs, "idxs", ndim=1)
        if idxs.dtype != torch.int64 or idxs.device != boxes.device or idxs.shape[0] != n:
            raise ValueError(f"idxs must be int64 with one class per box on {boxes.device}, "
                             f"got {idxs.dtype} of shape {tuple(idxs.shape)} on {idxs.device}")
    g = MatrixNmsGeometry(n, bool(gaussian), float(sigma), idxs is not None)
    decayed = scores.new_empty((n,))

    def run(backend: str) -> None:
        order = torch.sort(scores, descending=True, stable=True).indices
        _ext.launchers(backend, boxes, _triton).matrix_nms(
            g, boxes, scores, order, idxs, _accumulators(boxes, backend), decayed)

    return Launch(decayed, {"boxes": boxes, "scores": scores, "idxs": idxs, "decayed": decayed},
                  run, g.index_extent())


def _method(method) -> bool:
    if method not in METHODS:
        raise ValueError(f"method must be 'linear' or 'gaussian', got {method!r}")
    return method == "gaussian"


def _real(value, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        raise TypeError(f"{name} must be a float, got {value!r}")
    return float(value)


def soft_nms(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.3, sigma: float = 0.5,
             score_threshold: float = 0.001,
             method: str = "gaussian") -> tuple[Tensor, Tensor]:
    """Soft-NMS (module docstring): (int64 indices in selection order, their
    decayed scores). ``method`` "gaussian" (exp(-IoU^2 / sigma)) or
    "linear" (1 - IoU above iou_threshold)."""
    return soft_nms_op(boxes, scores, _method(method), _real(iou_threshold, "iou_threshold"),
                       _real(sigma, "sigma"), _real(score_threshold, "score_threshold"),
                       _backend.current_backend())


def matrix_nms(boxes: Tensor, scores: Tensor, idxs: Optional[Tensor] = None,
               method: str = "gaussian", sigma: float = 2.0) -> Tensor:
    """Matrix NMS (SOLOv2; module docstring): every box's score decayed by
    the boxes of its class ``idxs`` (one class when None) scored above it,
    in the input order."""
    if idxs is not None:
        _args.check_tensor(idxs, "idxs", ndim=1)
        if idxs.dtype.is_floating_point or idxs.dtype == torch.bool:
            raise TypeError(f"idxs must be an integer tensor, got {idxs.dtype}")
        idxs = idxs.to(torch.int64)
    return matrix_nms_op(boxes, scores, idxs, _method(method), _real(sigma, "sigma"),
                         _backend.current_backend())
