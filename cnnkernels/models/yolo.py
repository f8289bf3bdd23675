"""A small YOLO-style grid detector (Redmon et al. 2016, with YOLOv2's
anchor boxes), the course's S x S grid of A anchor boxes x (5 + C) values.

The backbone: log2(image_size / grid) stages of a 3x3 Conv2dNormActivation
and a 2x2 max pool (channels base_channels doubling per stage), a last 3x3
Conv2dNormActivation; the head: a 1x1 convolution to A (5 + C) channels.
``forward`` returns the head (N, S, S, A (5 + C)), a channels-last view of
the convolution's output: for anchor a of cell (y, x) the values
[a (5 + C), (a + 1)(5 + C)) are (t_x, t_y, t_w, t_h, t_o, t_1..t_C), the
parametrisation ``cnnkernels.yolo_decode`` reads:
    centre = ((sigmoid(t_x) + x) stride, (sigmoid(t_y) + y) stride)
    size   = (p_w e^{t_w}, p_h e^{t_h}),  score_c = sigmoid(t_o) sigmoid(t_c)
with stride = image_size / grid pixels per cell and anchors (p_w, p_h) in
pixels. ``detect`` decodes and runs the padded batched NMS in one call
(``cnnkernels.yolo_detect``, no host synchronisation).

``yolo_loss`` (``YOLO.loss``), the YOLOv1 sum-squared loss with YOLOv2's
anchors and logistic terms, per image (summed over the batch, divided by
its size). Each ground-truth box belongs to the cell holding its centre
and to the anchor whose shape has the largest IoU with its own (both
centred); these (cell, anchor) predictions are "responsible":
    coordinates  lambda_coord sum_resp [(sigmoid(t_x) - (c_x/stride - x))^2
                 + (sigmoid(t_y) - (c_y/stride - y))^2
                 + (t_w - log(w / p_w))^2 + (t_h - log(h / p_h))^2]
    objectness   sum_resp BCE(t_o, 1) + lambda_noobj sum_others BCE(t_o, 0)
    classes      sum_resp sum_c BCE(t_c, [c == label])
(BCE with logits; lambda_coord = 5, lambda_noobj = 0.5 as YOLOv1). Two
boxes claiming the same cell and anchor: one of them is kept."""

import torch
from torch import Tensor
from torch.nn import functional as F

from cnnkernels import _args, nn, ops
from cnnkernels.nn import Conv2dNormActivation

__all__ = ["YOLO", "yolo", "yolo_loss"]

# The course's two anchor shapes, tall (a pedestrian) and wide (a car), in
# pixels of a 64 x 64 image.
DEFAULT_ANCHORS = ((16.0, 32.0), (32.0, 16.0))


def _anchor_tensor(anchors) -> Tensor:
    try:
        result = torch.as_tensor(anchors, dtype=torch.float32)
    except (TypeError, ValueError):
        raise TypeError(f"anchors must be (A, 2) widths and heights in pixels, got "
                        f"{anchors!r}") from None
    if result.dim() != 2 or result.shape[0] < 1 or result.shape[1] != 2 or \
            not bool((result > 0).all()):
        raise ValueError(f"anchors must be (A, 2) positive widths and heights in pixels, got "
                         f"{anchors!r}")
    return result


class YOLO(torch.nn.Module):
    """Input (N, in_channels, image_size, image_size); ``anchors`` a buffer
    (A, 2) in pixels, ``stride`` = image_size / grid pixels per cell."""

    def __init__(self, num_classes: int = 3, anchors=DEFAULT_ANCHORS, grid: int = 8,
                 image_size: int = 64, in_channels: int = 3, base_channels: int = 16):
        super().__init__()
        self.num_classes = _args.positive_int(num_classes, "num_classes")
        self.grid = _args.positive_int(grid, "grid")
        self.image_size = _args.positive_int(image_size, "image_size")
        self.in_channels = _args.positive_int(in_channels, "in_channels")
        base_channels = _args.positive_int(base_channels, "base_channels")
        stride = image_size // grid
        if image_size % grid or stride & (stride - 1):
            raise ValueError(f"image_size / grid must be a power of two (the backbone halves the "
                             f"size per stage), got image_size={image_size}, grid={grid}")
        self.stride = stride
        self.register_buffer("anchors", _anchor_tensor(anchors))
        layers = []
        channels = in_channels
        for stage in range(stride.bit_length() - 1):
            layers += [Conv2dNormActivation(channels, base_channels * 2**stage),
                       nn.MaxPool2d(kernel_size=2, stride=2)]
            channels = base_channels * 2**stage
        layers.append(Conv2dNormActivation(channels, 2 * channels))
        self.backbone = torch.nn.Sequential(*layers)
        self.head = nn.Conv2d(2 * channels, len(self.anchors) * (5 + num_classes), 1)

    def forward(self, images: Tensor) -> Tensor:
        expected = (self.in_channels, self.image_size, self.image_size)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(f"images must be (N, {', '.join(map(str, expected))}), got shape "
                             f"{tuple(images.shape)}")
        return self.head(self.backbone(images)).permute(0, 2, 3, 1)

    def decode(self, head: Tensor) -> tuple[Tensor, Tensor]:
        """Boxes (N, S S A, 4) xyxy in pixels and class scores (N, S S A, C)."""
        return ops.yolo_decode(head, self.anchors.to(head.dtype), self.stride)

    @torch.no_grad()
    def detect(self, images: Tensor, score_threshold: float = 0.25, iou_threshold: float = 0.5,
               max_detections: int = 100) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(num_detections (N,), boxes (N, K, 4), scores (N, K), classes
        (N, K)), K = max_detections, padded (classes -1): decoding and NMS
        per class (``cnnkernels.batched_nms_padded``)."""
        head = self(images)
        return ops.yolo_detect(head, self.anchors.to(head.dtype), self.stride, iou_threshold,
                               score_threshold, max_detections)

    def loss(self, head: Tensor, boxes: list[Tensor], labels: list[Tensor]) -> Tensor:
        """``yolo_loss`` with this model's anchors and stride."""
        return yolo_loss(head, boxes, labels, self.anchors, self.stride)


def yolo_loss(head: Tensor, boxes: list[Tensor], labels: list[Tensor], anchors: Tensor,
              stride: float, lambda_coord: float = 5.0, lambda_noobj: float = 0.5) -> Tensor:
    """The loss of the module's docstring for head (N, S, S, A (5 + C)),
    per image ``boxes[i]`` (M_i, 4) xyxy in pixels and ``labels[i]`` (M_i,)
    class indices in [0, C)."""
    _args.check_tensor(head, "head", ndim=4)
    N, S_y, S_x, D = head.shape
    A = anchors.shape[0]
    if D % A or D // A < 6:
        raise ValueError(f"head's last dimension must be A (5 + C) = {A} x (5 + C), got {D}")
    C = D // A - 5
    if len(boxes) != N or len(labels) != N:
        raise ValueError(f"boxes and labels must hold one tensor per image ({N}), got "
                         f"{len(boxes)} and {len(labels)}")
    for i, (b, lab) in enumerate(zip(boxes, labels, strict=True)):
        if b.dim() != 2 or b.shape[1] != 4 or lab.shape != b.shape[:1]:
            raise ValueError(f"boxes[{i}] must be (M, 4) and labels[{i}] (M,), got "
                             f"{tuple(b.shape)} and {tuple(lab.shape)}")
        if lab.numel() and not bool(((lab >= 0) & (lab < C)).all()):
            raise ValueError(f"labels[{i}] must be class indices in [0, {C}), got {lab.tolist()}")
    pred = head.reshape(N, S_y, S_x, A, 5 + C)
    anchors = anchors.to(head)
    image = torch.repeat_interleave(torch.arange(N, device=head.device),
                                    torch.tensor([len(b) for b in boxes], dtype=torch.int64,
                                                 device=head.device))
    gt = torch.cat([head.new_zeros((0, 4)), *(b.to(head) for b in boxes)])
    label = torch.cat([torch.zeros(0, dtype=torch.int64, device=head.device),
                       *(lab.to(device=head.device, dtype=torch.int64) for lab in labels)])
    centre = (gt[:, :2] + gt[:, 2:]) / 2
    size = (gt[:, 2:] - gt[:, :2]).clamp_min(1e-6)
    cell = (centre / stride).floor().long()
    cell_x = cell[:, 0].clamp(0, S_x - 1)
    cell_y = cell[:, 1].clamp(0, S_y - 1)
    # IoU of the box's and each anchor's shapes, both centred.
    overlap = torch.minimum(size[:, None, :], anchors[None]).prod(2)
    shape_iou = overlap / (size.prod(1)[:, None] + anchors.prod(1)[None] - overlap)
    anchor = shape_iou.argmax(1)

    responsible = torch.zeros((N, S_y, S_x, A), dtype=torch.bool, device=head.device)
    responsible[image, cell_y, cell_x, anchor] = True
    target = head.new_zeros((N, S_y, S_x, A, 4 + C))
    target[image, cell_y, cell_x, anchor] = torch.cat([
        centre[:, :1] / stride - cell_x[:, None], centre[:, 1:] / stride - cell_y[:, None],
        torch.log(size / anchors[anchor]), F.one_hot(label, C).to(head)], 1)

    resp_pred, resp_target = pred[responsible], target[responsible]
    coordinates = ((resp_pred[:, :2].sigmoid() - resp_target[:, :2]).square().sum() +
                   (resp_pred[:, 2:4] - resp_target[:, 2:4]).square().sum())
    objectness = F.binary_cross_entropy_with_logits(pred[..., 4], responsible.to(head),
                                                    reduction="none")
    objectness = (objectness[responsible].sum() +
                  lambda_noobj * objectness[~responsible].sum())
    classes = F.binary_cross_entropy_with_logits(resp_pred[:, 5:], resp_target[:, 4:],
                                                 reduction="sum")
    return (lambda_coord * coordinates + objectness + classes) / max(N, 1)


def yolo(num_classes: int = 3, anchors=DEFAULT_ANCHORS, grid: int = 8, image_size: int = 64,
         in_channels: int = 3, base_channels: int = 16) -> YOLO:
    """The YOLO-style detector: an S x S = grid x grid head of A anchors
    (5 + C values each) for image_size x image_size images."""
    return YOLO(num_classes, anchors, grid, image_size, in_channels, base_channels)
