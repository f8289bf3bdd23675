"""detection: box IoU matrices, the IoU losses and non-maximum suppression,
torchvision.ops' functions on cnnkernels' kernels.

Operators (``torch.ops.cnnk.*``), each a plan (cnnkernels/ops/_define.py):
``box_iou`` (IoU or GIoU matrices of batches of boxes), ``box_iou_loss`` and
``box_iou_loss_backward`` (the generalized, distance and complete IoU losses
of pairs of boxes and their gradient), ``nms`` and ``batched_nms`` (the kept
indices: a size that depends on the data, an unbacked size in their fake).
The formulas are torchvision's, in the order it computes them
(csrc/include/cnnk/boxes.h, mirrored in kernels/detection.py), except that
the IoU / GIoU of boxes whose union / enclosing box is empty is 0, not NaN.
Boxes are xyxy, (..., 4), any strides; float16 and bfloat16 boxes compute
in float32.

NMS is the course's greedy procedure: visit the boxes by decreasing score
(torch.sort, stable, descending: ties by index, NaN scores first, as
torchvision's), keep a box unless a kept one overlaps it with IoU >
iou_threshold; ``batched_nms`` does it per class (``idxs``), and returns
the kept indices of all classes by decreasing score (ties by index). The
launchers (one name, ``nms``, on every backend) take the visiting order
and the classes and write a kept flag per visited box: a tiled 64 x 64 IoU
bitmask of the upper triangle within each class and the greedy pass over
it on the device (cuda, triton); on the cpu each kept box's mask row is
computed when it is kept, with no stored mask. The sort and the gathering
of the kept indices are torch's (the one aten call besides allocation in
these ops: a sort is no detection kernel).

Derivatives: the losses' reverse mode is ``box_iou_loss_backward`` (torch's
derivative of each operation of torchvision's formula, ties of min / max
split in half, ciou's alpha held constant); forward mode is the same
gradient contracted with the tangents. The IoU matrices and NMS are not
differentiable (their outputs carry no gradient).
"""

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from cnnkernels import _args, _backend, _ext
from cnnkernels.ops._define import Family, Launch, define_op, save

FAMILY = Family(name="detection",
                public=("box_iou", "generalized_box_iou", "generalized_box_iou_loss",
                        "distance_box_iou_loss", "complete_box_iou_loss", "nms",
                        "batched_nms", "batched_nms_padded", "soft_nms", "matrix_nms",
                        "yolo_decode", "yolo_detect"),
                triton_modules=("cnnkernels.kernels.detection",
                                "cnnkernels.kernels.detection_decay",
                                "cnnkernels.kernels.detection_yolo"),
                bench_module="cnnkernels.bench.detection")

__all__ = list(FAMILY.public)

# cnnk::BoxLoss's codes.
LOSS_KINDS = {"giou": 0, "diou": 1, "ciou": 2}
NMS_BLOCK = 64  # boxes per mask word (cnnk::kNmsBlock)


@dataclass(frozen=True)
class BoxPairGeometry:
    """IoU matrices of boxes1 (B, N, 4) against boxes2 (B, M, 4), field for
    field ``cnnk::BoxPairGeometry`` (csrc/include/cnnk/detection.h)."""

    B: int
    N: int
    M: int
    generalized: bool

    def index_extent(self) -> int:
        return max(self.N, self.M, 1)


@dataclass(frozen=True)
class BoxLossGeometry:
    """An IoU loss over P pairs of boxes: ``kind`` a LOSS_KINDS code."""

    P: int
    kind: int
    eps: float

    def index_extent(self) -> int:
        return 4 * self.P + 4


@dataclass(frozen=True)
class NmsGeometry:
    """NMS over N boxes, ``words`` = ceil(N / 64) mask words per row;
    ``iou_threshold_f32``: the largest float32 at most ``iou_threshold``
    (a float IoU exceeds one exactly when it exceeds the other);
    ``by_class``: the boxes carry classes (batched_nms)."""

    N: int
    words: int
    iou_threshold: float
    iou_threshold_f32: float
    by_class: bool

    def index_extent(self) -> int:
        """The mask's offsets reach N rows x words."""
        return (self.N + 1) * self.words + NMS_BLOCK


@dataclass(frozen=True)
class SoftNmsGeometry:
    """Soft-NMS over N boxes (cnnkernels/ops/detection_decay.py)."""

    N: int
    gaussian: bool
    iou_threshold: float
    sigma: float
    score_threshold: float

    def index_extent(self) -> int:
        return 4 * self.N + 4


@dataclass(frozen=True)
class MatrixNmsGeometry:
    """Matrix NMS over N boxes in score order (detection_decay.py)."""

    N: int
    gaussian: bool
    sigma: float
    by_class: bool

    def index_extent(self) -> int:
        return 4 * self.N + 4


@dataclass(frozen=True)
class YoloGeometry:
    """YOLO head decoding (cnnkernels/ops/detection_yolo.py): B images of
    H x W cells, A anchors, C classes, ``stride`` pixels per cell."""

    B: int
    H: int
    W: int
    A: int
    C: int
    stride: float

    def index_extent(self) -> int:
        return self.B * self.H * self.W * self.A + self.A * (5 + self.C)


def float32_at_most(value: float, at_least: bool = False) -> float:
    """The largest float32 <= value (the smallest >= value with at_least; NaN
    for NaN): for a float32 x, x > value exactly when x > that bound (x < value
    when x < the at_least bound)."""
    rounded = torch.tensor(value, dtype=torch.float32)
    if (rounded.item() < value) if at_least else (rounded.item() > value):
        rounded = torch.nextafter(rounded, torch.tensor(math.inf if at_least else -math.inf))
    return rounded.item()


def _triton():
    from cnnkernels.kernels import detection

    return detection


def check_boxes(t, name: str, ndim) -> None:
    """A floating-point tensor of boxes: its last dimension 4 (xyxy)."""
    _args.check_tensor(t, name, ndim=ndim)
    if not t.dtype.is_floating_point:
        raise TypeError(f"{name} must be a floating-point tensor, got {t.dtype}")
    if t.shape[-1] != 4:
        raise ValueError(f"{name} must hold boxes (x1, y1, x2, y2) in its last dimension of "
                         f"size 4, got shape {tuple(t.shape)}")


def _check_pair(boxes1: Tensor, boxes2: Tensor, ndim) -> None:
    check_boxes(boxes1, "boxes1", ndim)
    check_boxes(boxes2, "boxes2", ndim)
    _args.check_same(boxes1, "boxes1", {"boxes2": boxes2})


@define_op("cnnk::box_iou", returns=Tensor)
def box_iou_op(boxes1: Tensor, boxes2: Tensor, generalized: bool, backend: str) -> Launch:
    """(B, N, M) IoU (or GIoU) matrices of boxes1 (B, N, 4) and boxes2 (B, M, 4)."""
    _check_pair(boxes1, boxes2, 3)
    if boxes1.shape[0] != boxes2.shape[0]:
        raise ValueError(f"boxes1 and boxes2 must have the same batch size, got "
                         f"{tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    g = BoxPairGeometry(boxes1.shape[0], boxes1.shape[1], boxes2.shape[1], bool(generalized))
    out = boxes1.new_empty((g.B, g.N, g.M))
    return Launch(out, {"boxes1": boxes1, "boxes2": boxes2, "out": out},
                  lambda b: _ext.launchers(b, boxes1, _triton).box_iou(g, boxes1, boxes2, out),
                  g.index_extent())


def _loss_geometry(boxes1: Tensor, boxes2: Tensor, kind: int, eps: float) -> BoxLossGeometry:
    _check_pair(boxes1, boxes2, 2)
    if boxes1.shape != boxes2.shape:
        raise ValueError(f"boxes1 and boxes2 must have the same shape, got "
                         f"{tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    if kind not in LOSS_KINDS.values():
        raise ValueError(f"kind must be one of {sorted(LOSS_KINDS.values())}, got {kind!r}")
    return BoxLossGeometry(boxes1.shape[0], int(kind), float(eps))


@define_op("cnnk::box_iou_loss", returns=Tensor)
def box_iou_loss_op(boxes1: Tensor, boxes2: Tensor, kind: int, eps: float,
                    backend: str) -> Launch:
    """(P,) losses of the pairs boxes1[p], boxes2[p] (P, 4); ``kind`` a
    LOSS_KINDS code."""
    g = _loss_geometry(boxes1, boxes2, kind, eps)
    loss = boxes1.new_empty((g.P,))
    return Launch(loss, {"boxes1": boxes1, "boxes2": boxes2, "loss": loss},
                  lambda b: _ext.launchers(b, boxes1, _triton).box_iou_loss_forward(
                      g, boxes1, boxes2, loss),
                  g.index_extent())


@define_op("cnnk::box_iou_loss_backward", returns=tuple[Tensor, Tensor])
def box_iou_loss_backward_op(grad_loss: Tensor, boxes1: Tensor, boxes2: Tensor, kind: int,
                             eps: float, backend: str) -> Launch:
    """(grad_boxes1, grad_boxes2): grad_loss[p] times the loss's derivative."""
    g = _loss_geometry(boxes1, boxes2, kind, eps)
    _args.check_tensor(grad_loss, "grad_loss", ndim=1)
    _args.check_same(boxes1, "boxes1", {"grad_loss": grad_loss})
    if grad_loss.shape[0] != g.P:
        raise ValueError(f"grad_loss must have one value per pair ({g.P}), got shape "
                         f"{tuple(grad_loss.shape)}")
    grad1, grad2 = boxes1.new_empty(boxes1.shape), boxes2.new_empty(boxes2.shape)
    return Launch((grad1, grad2), {"boxes1": boxes1, "boxes2": boxes2, "grad_loss": grad_loss,
                                   "grad1": grad1, "grad2": grad2},
                  lambda b: _ext.launchers(b, boxes1, _triton).box_iou_loss_backward(
                      g, grad_loss, boxes1, boxes2, grad1, grad2),
                  g.index_extent())


def _loss_setup(ctx, inputs, output) -> None:
    save(ctx, inputs[0], inputs[1])
    ctx.kind, ctx.eps, ctx.backend = inputs[2], inputs[3], inputs[4]


def _loss_backward(ctx, grad_loss):
    boxes1, boxes2 = ctx.saved_tensors
    grad1, grad2 = box_iou_loss_backward_op(grad_loss.contiguous(), boxes1, boxes2, ctx.kind,
                                            ctx.eps, ctx.backend)
    return grad1, grad2, None, None, None


def _loss_jvp(ctx, tangent1, tangent2, *_):
    boxes1, boxes2 = ctx.saved_tensors
    ones = boxes1.new_ones(boxes1.shape[0])
    grad1, grad2 = box_iou_loss_backward_op(ones, boxes1, boxes2, ctx.kind, ctx.eps,
                                            ctx.backend)
    result = torch.zeros_like(ones)
    for grad, tangent in ((grad1, tangent1), (grad2, tangent2)):
        if tangent is not None:
            result = result + (grad * tangent).sum(-1)
    return result


box_iou_loss_op.register_derivatives(setup_context=_loss_setup, backward=_loss_backward,
                                     jvp=_loss_jvp)


def _no_second_derivative(*_):
    raise NotImplementedError("cnnkernels differentiates the IoU losses once, not twice "
                              "(box_iou_loss_backward has no derivative)")


box_iou_loss_backward_op.register_derivatives(setup_context=lambda ctx, inputs, output: None,
                                              backward=_no_second_derivative,
                                              jvp=_no_second_derivative)


def _nms_geometry(boxes: Tensor, scores: Tensor, iou_threshold: float,
                  by_class: bool) -> NmsGeometry:
    check_boxes(boxes, "boxes", 2)
    _args.check_tensor(scores, "scores", ndim=1)
    if not scores.dtype.is_floating_point:
        raise TypeError(f"scores must be a floating-point tensor, got {scores.dtype}")
    if scores.device != boxes.device:
        raise ValueError(f"scores must be on boxes' device {boxes.device}, got {scores.device}")
    if scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"boxes and scores must hold the same number of boxes, got "
                         f"{boxes.shape[0]} and {scores.shape[0]}")
    n = boxes.shape[0]
    threshold = float(iou_threshold)
    return NmsGeometry(n, -(-n // NMS_BLOCK), threshold, float32_at_most(threshold), by_class)


def _nms_launch(g: NmsGeometry, boxes: Tensor, scores: Tensor, idxs) -> Launch:
    """Sort (into ``order``), run the launchers' nms, gather the kept
    indices by decreasing score."""
    kept = boxes.new_empty((g.N,), dtype=torch.uint8)  # a flag per visited box
    order = boxes.new_empty((g.N,), dtype=torch.int64)

    def run(backend: str) -> None:
        by_score = torch.sort(scores, descending=True, stable=True).indices
        if idxs is None:
            order.copy_(by_score)
        else:
            order.copy_(by_score[torch.sort(idxs[by_score], stable=True).indices])
        words = g.N * g.words + g.words if backend != "cpu" else 0
        workspace = boxes.new_empty((words,), dtype=torch.int64)
        _ext.launchers(backend, boxes, _triton).nms(g, boxes, order, idxs, workspace, kept)

    def result() -> Tensor:
        if idxs is None:
            return order[kept.bool()]
        by_score = torch.sort(scores, descending=True, stable=True).indices
        flags = torch.zeros_like(kept, dtype=torch.bool)
        flags[order[kept.bool()]] = True
        return by_score[flags[by_score]]

    def fake_result() -> Tensor:
        return boxes.new_empty((torch.library.get_ctx().new_dynamic_size(),),
                               dtype=torch.int64)

    return Launch((kept, order), {"boxes": boxes, "scores": scores, "idxs": idxs,
                                  "kept": kept, "order": order},
                  run, g.index_extent(), result=result, fake_result=fake_result)


@define_op("cnnk::nms", returns=Tensor)
def nms_op(boxes: Tensor, scores: Tensor, iou_threshold: float, backend: str) -> Launch:
    """The indices (int64) of the boxes NMS keeps, by decreasing score."""
    return _nms_launch(_nms_geometry(boxes, scores, iou_threshold, False), boxes, scores, None)


@define_op("cnnk::batched_nms", returns=Tensor)
def batched_nms_op(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float,
                   backend: str) -> Launch:
    """NMS per class ``idxs`` (int64): the kept indices by decreasing score."""
    g = _nms_geometry(boxes, scores, iou_threshold, True)
    _args.check_tensor(idxs, "idxs", ndim=1)
    if idxs.dtype != torch.int64:
        raise TypeError(f"idxs must be an int64 tensor, got {idxs.dtype}")
    if idxs.device != boxes.device or idxs.shape[0] != g.N:
        raise ValueError(f"idxs must hold one class per box on {boxes.device}, got shape "
                         f"{tuple(idxs.shape)} on {idxs.device}")
    return _nms_launch(g, boxes, scores, idxs)


def _padded_sizes(boxes: Tensor, scores: Tensor, max_detections: int,
                  pre_nms_top_k: int) -> tuple[int, int, int, int]:
    """(B, N, C, candidates) of a padded batched NMS, validated."""
    check_boxes(boxes, "boxes", (3, 4))
    _args.check_tensor(scores, "scores", ndim=3)
    if not scores.dtype.is_floating_point or scores.device != boxes.device:
        raise TypeError(f"scores must be a floating-point tensor on boxes' device "
                        f"{boxes.device}, got {scores.dtype} on {scores.device}")
    B, N, C = scores.shape
    expected = (B, N, 4) if boxes.dim() == 3 else (B, N, C, 4)
    if tuple(boxes.shape) != expected:
        raise ValueError(f"boxes must have shape {expected} (B, N[, C], 4) for scores of shape "
                         f"{tuple(scores.shape)}, got {tuple(boxes.shape)}")
    if max_detections < 1 or pre_nms_top_k < 1:
        raise ValueError(f"max_detections and pre_nms_top_k must be positive, got "
                         f"{max_detections} and {pre_nms_top_k}")
    return B, N, C, min(pre_nms_top_k, N * C)


@define_op("cnnk::batched_nms_padded", returns=tuple[Tensor, Tensor, Tensor, Tensor])
def batched_nms_padded_op(boxes: Tensor, scores: Tensor, iou_threshold: float,
                          score_threshold: float, max_detections: int, pre_nms_top_k: int,
                          backend: str) -> Launch:
    """(num_detections (B,), boxes (B, K, 4), scores (B, K), classes (B, K)),
    K = max_detections, padded with 0 (classes: -1): per image, the
    (box, class) candidates scoring above score_threshold, the
    pre_nms_top_k best (stable: ties by box, then class), class-aware NMS,
    then the max_detections best kept. Static shapes, no host
    synchronisation: one nms launch per image on the device."""
    B, N, C, T = _padded_sizes(boxes, scores, max_detections, pre_nms_top_k)
    K = max_detections
    g = NmsGeometry(T, -(-T // NMS_BLOCK), float(iou_threshold),
                    float32_at_most(float(iou_threshold)), True)
    count = boxes.new_empty((B,), dtype=torch.int64)
    out_boxes = boxes.new_empty((B, K, 4))
    out_scores = scores.new_empty((B, K))
    out_classes = boxes.new_empty((B, K), dtype=torch.int64)

    def run(backend: str) -> None:
        flat_scores = scores.reshape(B, N * C)
        # A NaN score is never a detection: -inf sorts it past the others.
        flat_scores = torch.where(flat_scores.isnan(), -math.inf, flat_scores)
        ranked, candidates = torch.sort(flat_scores, dim=1, descending=True, stable=True)
        ranked, candidates = ranked[:, :T], candidates[:, :T]
        valid = ranked.double() > score_threshold  # the threshold as given, not rounded
        classes = candidates % C
        flat = boxes.reshape(B, N, 4) if boxes.dim() == 3 else boxes.reshape(B, N * C, 4)
        source = candidates // C if boxes.dim() == 3 else candidates
        picked = torch.gather(flat, 1, source[..., None].expand(B, T, 4)).contiguous()
        # Below the score threshold: a class of its own, so such a candidate
        # neither suppresses nor is suppressed; it is dropped after.
        own = torch.arange(C, C + T, device=boxes.device)
        kept = torch.zeros((B, T), dtype=torch.bool, device=boxes.device)
        workspace = boxes.new_empty((T * g.words + g.words if backend != "cpu" else 0,),
                                    dtype=torch.int64)
        launchers = _ext.launchers(backend, boxes, _triton)
        for b in range(B):
            by_class = torch.where(valid[b], classes[b], own)
            order = torch.sort(by_class, stable=True).indices
            flags = boxes.new_empty((T,), dtype=torch.uint8)
            launchers.nms(g, picked[b], order, by_class, workspace, flags)
            kept[b, order] = flags.bool()
        kept &= valid
        rank = torch.cumsum(kept, 1)
        taken = kept & (rank <= K)
        slot = torch.where(taken, rank - 1, K)
        position = torch.full((B, K + 1), -1, dtype=torch.int64, device=boxes.device)
        position.scatter_(1, slot, torch.arange(T, device=boxes.device).expand(B, T))
        position = position[:, :K]
        present = position >= 0
        at = position.clamp(min=0)
        count.copy_(taken.sum(1))
        out_boxes.copy_(torch.where(present[..., None],
                                    torch.gather(picked, 1, at[..., None].expand(B, K, 4)), 0))
        out_scores.copy_(torch.where(present, torch.gather(ranked, 1, at), 0))
        out_classes.copy_(torch.where(present, torch.gather(classes, 1, at), -1))

    return Launch((count, out_boxes, out_scores, out_classes),
                  {"boxes": boxes, "scores": scores, "count": count, "out_boxes": out_boxes},
                  run, g.index_extent())


# The public functions: torchvision.ops' signatures.

def _matrix(op_generalized: bool, boxes1: Tensor, boxes2: Tensor) -> Tensor:
    _check_pair(boxes1, boxes2, (2, 3))
    if boxes1.dim() != boxes2.dim():
        raise ValueError(f"boxes1 and boxes2 must both be (N, 4) or both (B, N, 4), got "
                         f"{tuple(boxes1.shape)} and {tuple(boxes2.shape)}")
    single = boxes1.dim() == 2
    out = box_iou_op(boxes1.unsqueeze(0) if single else boxes1,
                     boxes2.unsqueeze(0) if single else boxes2, op_generalized,
                     _backend.current_backend())
    return out.squeeze(0) if single else out


def box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``torchvision.ops.box_iou``: (N, 4) x (M, 4) -> (N, M) IoU of xyxy
    boxes; also batched, (B, N, 4) x (B, M, 4) -> (B, N, M). 0 (not NaN)
    where the union is empty."""
    return _matrix(False, boxes1, boxes2)


def generalized_box_iou(boxes1: Tensor, boxes2: Tensor) -> Tensor:
    """``torchvision.ops.generalized_box_iou``: IoU - (C - union) / C, C the
    smallest enclosing box's area; IoU where C is empty (not NaN)."""
    return _matrix(True, boxes1, boxes2)


def _reduce(loss: Tensor, reduction: str) -> Tensor:
    if reduction == "none":
        return loss
    if reduction == "mean":
        return loss.mean() if loss.numel() > 0 else 0.0 * loss.sum()
    if reduction == "sum":
        return loss.sum()
    raise ValueError(f"Invalid Value for arg 'reduction': '{reduction} \n Supported reduction "
                     f"modes: 'none', 'mean', 'sum'")


def _box_loss(kind: str, boxes1: Tensor, boxes2: Tensor, reduction: str, eps: float) -> Tensor:
    for name, t in (("boxes1", boxes1), ("boxes2", boxes2)):
        _args.check_tensor(t, name, ndim=tuple(range(1, 9)))
    if reduction not in ("none", "mean", "sum"):
        _reduce(boxes1, reduction)
    # torchvision upcasts integer boxes to float.
    boxes1 = boxes1 if boxes1.is_floating_point() else boxes1.float()
    boxes2 = boxes2 if boxes2.is_floating_point() else boxes2.float()
    check_boxes(boxes1, "boxes1", tuple(range(1, 9)))
    check_boxes(boxes2, "boxes2", tuple(range(1, 9)))
    boxes1, boxes2 = torch.broadcast_tensors(boxes1, boxes2)
    shape = boxes1.shape[:-1]
    loss = box_iou_loss_op(boxes1.reshape(-1, 4), boxes2.reshape(-1, 4), LOSS_KINDS[kind],
                           float(eps), _backend.current_backend())
    return _reduce(loss.reshape(shape), reduction)


def generalized_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none",
                             eps: float = 1e-7) -> Tensor:
    """``torchvision.ops.generalized_box_iou_loss``: 1 - GIoU per pair of
    xyxy boxes (..., 4), with torchvision's eps; reduction none/mean/sum."""
    return _box_loss("giou", boxes1, boxes2, reduction, eps)


def distance_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none",
                          eps: float = 1e-7) -> Tensor:
    """``torchvision.ops.distance_box_iou_loss``: 1 - IoU + d^2 / c^2 (d the
    centres' distance, c the enclosing box's diagonal)."""
    return _box_loss("diou", boxes1, boxes2, reduction, eps)


def complete_box_iou_loss(boxes1: Tensor, boxes2: Tensor, reduction: str = "none",
                          eps: float = 1e-7) -> Tensor:
    """``torchvision.ops.complete_box_iou_loss``: the distance loss plus
    alpha v, v = 4 / pi^2 (atan(w_gt / h_gt) - atan(w / h))^2."""
    return _box_loss("ciou", boxes1, boxes2, reduction, eps)


def _threshold(value, name: str = "iou_threshold") -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} must be a float, got {value!r}")
    return float(value)


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float) -> Tensor:
    """``torchvision.ops.nms``: the int64 indices of the kept boxes by
    decreasing score (ties by index; NaN scores first); a box is dropped when
    a kept box of higher score overlaps it with IoU > iou_threshold."""
    return nms_op(boxes, scores, _threshold(iou_threshold), _backend.current_backend())


def batched_nms(boxes: Tensor, scores: Tensor, idxs: Tensor, iou_threshold: float) -> Tensor:
    """``torchvision.ops.batched_nms``: NMS within each class ``idxs``
    (integers), the kept indices of every class by decreasing score (ties by
    index). Memory stays per class on the cpu (no mask)."""
    _args.check_tensor(idxs, "idxs", ndim=1)
    if idxs.dtype.is_floating_point or idxs.dtype.is_complex or idxs.dtype == torch.bool:
        raise TypeError(f"idxs must be an integer tensor, got {idxs.dtype}")
    return batched_nms_op(boxes, scores, idxs.to(torch.int64), _threshold(iou_threshold),
                          _backend.current_backend())


def batched_nms_padded(boxes: Tensor, scores: Tensor, iou_threshold: float = 0.5,
                       score_threshold: float = 0.0, max_detections: int = 100, *,
                       pre_nms_top_k: int = 4096) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Fixed-size NMS over a batch of images, TensorRT EfficientNMS's
    contract: boxes (B, N, 4), or (B, N, C, 4) class-specific, scores
    (B, N, C) -> (num_detections (B,) int64, boxes (B, K, 4), scores (B, K),
    classes (B, K) int64), K = max_detections, padded with 0 (classes -1),
    each image's detections by decreasing score. Per image: the (box, class)
    candidates scoring above score_threshold, the pre_nms_top_k best, NMS
    within each class (IoU > iou_threshold suppresses), then the K best;
    NaN scores are never detections.
    Static shapes and no host synchronisation: capturable in a CUDA graph,
    traceable by torch.compile(fullgraph=True) and torch.export."""
    return batched_nms_padded_op(boxes, scores, _threshold(iou_threshold),
                                 _threshold(score_threshold, "score_threshold"),
                                 _args.positive_int(max_detections, "max_detections"),
                                 _args.positive_int(pre_nms_top_k, "pre_nms_top_k"),
                                 _backend.current_backend())



# soft_nms and matrix_nms, and the YOLO head: their own modules (this one's
# size), on the geometries above; exported from here with the family's
# other functions.
from cnnkernels.ops.detection_decay import matrix_nms, soft_nms  # noqa: E402, F401
from cnnkernels.ops.detection_yolo import yolo_decode, yolo_detect  # noqa: E402, F401
