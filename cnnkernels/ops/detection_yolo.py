"""YOLO head decoding and detection in one call, the detection family's
YOLO support (the course's grid of S x S cells x A anchor boxes x (5 + C)
values; YOLOv2/v3's parametrisation).

For cell (y, x) of a head with ``stride`` pixels per cell, anchor a of
size (p_w, p_h) pixels and its logits (t_x, t_y, t_w, t_h, t_o, t_1..t_C):
    centre = ((sigmoid(t_x) + x) stride, (sigmoid(t_y) + y) stride)
    size   = (p_w e^{t_w}, p_h e^{t_h})
    box    = centre -/+ size / 2 (xyxy), score_c = sigmoid(t_o) sigmoid(t_c)
(the course's p_c times c_i). ``yolo_decode`` writes boxes (B, H W A, 4)
and scores (B, H W A, C), prediction (y W + x) A + a, in one kernel that
reads the head through its strides (either layout without a copy);
``yolo_detect`` adds ``batched_nms_padded``: raw head to padded detections
without a host synchronisation. Not differentiable (inference).
"""

from torch import Tensor

from cnnkernels import _args, _backend, _ext
from cnnkernels.ops._define import Launch, define_op
from cnnkernels.ops.detection import YoloGeometry, batched_nms_padded


def _triton():
    from cnnkernels.kernels import detection_yolo

    return detection_yolo


@define_op("cnnk::yolo_decode", returns=tuple[Tensor, Tensor])
def yolo_decode_op(head: Tensor, anchors: Tensor, stride: float, backend: str) -> Launch:
    """(boxes (B, H W A, 4), scores (B, H W A, C)) of head (B, H, W, A (5 + C))."""
    _args.check_tensor(head, "head", ndim=4)
    _args.check_tensor(anchors, "anchors", ndim=2)
    if not head.dtype.is_floating_point:
        raise TypeError(f"head must be a floating-point tensor, got {head.dtype}")
    _args.check_same(head, "head", {"anchors": anchors})
    if anchors.shape[1] != 2 or anchors.shape[0] < 1:
        raise ValueError(f"anchors must be (A, 2) widths and heights, got shape "
                         f"{tuple(anchors.shape)}")
    B, H, W, D = head.shape
    A = anchors.shape[0]
    if D % A != 0 or D // A < 6:
        raise ValueError(f"head's last dimension must be A (5 + C) = {A} x (5 + C) with C >= 1, "
                         f"got {D}")
    g = YoloGeometry(B, H, W, A, D // A - 5, float(stride))
    boxes = head.new_empty((B, H * W * A, 4))
    scores = head.new_empty((B, H * W * A, g.C))
    return Launch((boxes, scores), {"head": head, "anchors": anchors, "boxes": boxes,
                                    "scores": scores},
                  lambda b: _ext.launchers(b, head, _triton).yolo_decode(
                      g, head, anchors, boxes, scores), g.index_extent())


def _channels_last(head: Tensor, layout: str) -> Tensor:
    if layout not in ("bhwc", "bchw"):
        raise ValueError(f"layout must be 'bhwc' (B, S, S, A (5 + C)) or 'bchw' "
                         f"(B, A (5 + C), S, S), got {layout!r}")
    _args.check_tensor(head, "head", ndim=4)
    return head.permute(0, 2, 3, 1) if layout == "bchw" else head


def yolo_decode(head: Tensor, anchors: Tensor, stride: float,
                layout: str = "bhwc") -> tuple[Tensor, Tensor]:
    """Boxes (B, S S A, 4) xyxy in pixels and class scores (B, S S A, C)
    from a YOLO head, (B, S, S, A (5 + C)) ("bhwc") or (B, A (5 + C), S, S)
    ("bchw"); anchors (A, 2) in pixels; ``stride`` pixels per cell."""
    if isinstance(stride, bool) or not isinstance(stride, int | float) or not stride > 0:
        raise ValueError(f"stride must be a positive number of pixels, got {stride!r}")
    return yolo_decode_op(_channels_last(head, layout), anchors, float(stride),
                          _backend.current_backend())


def yolo_detect(head: Tensor, anchors: Tensor, stride: float, iou_threshold: float = 0.5,
                score_threshold: float = 0.25, max_detections: int = 100, *,
                layout: str = "bhwc",
                pre_nms_top_k: int = 4096) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """A YOLO head to padded detections in one call: ``yolo_decode``, then
    ``batched_nms_padded`` (num_detections, boxes, scores, classes)."""
    boxes, scores = yolo_decode(head, anchors, stride, layout)
    return batched_nms_padded(boxes, scores, iou_threshold, score_threshold, max_detections,
                              pre_nms_top_k=pre_nms_top_k)
