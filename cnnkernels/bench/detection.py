"""detection's benchmark (the driver's family contract, see driver.py):
``cnnkernels.box_iou``, the IoU losses, ``nms``, ``batched_nms``,
``batched_nms_padded``, ``soft_nms``, ``matrix_nms`` and ``yolo_detect``
against plain torch references (torchvision is not a dependency): the IoU
matrix and the losses as torchvision writes them in torch ops, NMS as sort +
IoU matrix + a greedy Python loop over its rows, batched NMS as that per
class (torchvision's path on the cpu above 4000 boxes); the padded batched
NMS as a Python loop over the images of: sort the (box, class) candidates,
the pre_nms_top_k best above the score threshold, that batched NMS (the
timed anchor uses torchvision.ops.batched_nms instead where torchvision is
importable), the max_detections best, padding; Soft-NMS as Bodla et al.'s
loop over the decays of its N x N IoU matrix, matrix NMS as SOLOv2's N x N
matrices; yolo_detect as the YOLOv2/v3 decode in torch ops, then that
padded NMS. The formulas are the ops' docstrings'
(cnnkernels/ops/detection_decay.py, detection_yolo.py).

A batch is that many images: each its own call (ours and the reference
alike), except ``batched_nms_padded`` and ``yolo_detect``, whose one call
of ours takes the batch (the reference loops over its images). Boxes:
detector-like, centres anywhere in a 640 x 640 image, sides 8 to 200,
uniform scores (the padded NMS: N boxes x C classes of them), IoU threshold
0.5; the padded NMS and yolo_detect keep at most 100 detections of the 4096
best candidates, scoring above 0.05 (yolo_detect: 0.25, a head of standard
normal logits, 3 anchors per cell, the grid of a 640 x 640 image). Soft-NMS:
the op's defaults (IoU threshold 0.3, sigma 0.5, score threshold 0.001);
matrix NMS: per class, sigma 2. The checks compare ours with the reference
in float64, but the selections (every NMS kind but matrix_nms, whose result
is scores) with the reference in the precision the kernels compute in
(float32 for float16 and bfloat16, e^x correctly rounded), so that
comparisons with the thresholds and near-ties of scores fall alike: their
indices, counts and classes must be equal.

``mem MB`` is the largest buffers each side allocates per image, by
construction, float32: the reference's IoU matrix and suppression mask (N x
N, or n_c x n_c per class); ours, the N x N / 8 bytes of bitmask of the
cuda and triton kernels (the cpu kernel keeps none: O(N)). The padded NMS
adds, on both sides, the sort of the N C scores (values and int64 indices),
and runs its NMS on the T <= 4096 candidates; yolo_detect adds the decoded
boxes and scores. Soft-NMS: the reference's IoU and decay matrices (N x
N); ours, the N running scores. Matrix NMS: the reference's IoU and decay
matrices and the class mask (9 N^2); ours, the N compensating IoUs.

``python -m cnnkernels.bench.detection`` prints the cpu target figures:
nms and batched_nms on 10k boxes against the plain references, 2 threads,
interleaved runs, medians.
"""

from __future__ import annotations

import functools
import math
import statistics
import time
from dataclasses import dataclass, fields, replace

import torch

import cnnkernels
from cnnkernels.bench import driver, report
from cnnkernels.bench.verify import VerifyConfig

THRESHOLD = 0.5
IMAGE_SIZE = 640
# The padded NMS's and yolo_detect's: TensorRT EfficientNMS-like settings.
MAX_DETECTIONS = 100
PRE_NMS_TOP_K = 4096
PADDED_SCORE_THRESHOLD = 0.05
YOLO_SCORE_THRESHOLD = 0.25
# YOLOv3's anchors of its stride-8 head, in cells (scaled by each case's stride).
YOLO_ANCHORS = ((1.25, 1.625), (2.0, 3.75), (4.125, 2.875))
SOFT_NMS = {"iou_threshold": 0.3, "sigma": 0.5, "score_threshold": 0.001}
MATRIX_NMS_SIGMA = 2.0
SHORT_METHODS = {"gaussian": "gauss"}  # in case names, which the compact table cuts at 21

# The kinds whose call of ours takes the whole batch (module doc) and their results.
PADDED_KINDS = ("batched_nms_padded", "yolo_detect")
PADDED_RESULTS = ("count", "boxes", "scores", "classes")


@dataclass(frozen=True)
class DetectionCase:
    """One timed call: ``kind`` (box_iou, giou_loss, diou_loss, ciou_loss, nms,
    batched_nms, batched_nms_padded, soft_nms, matrix_nms, yolo_detect) on
    ``boxes`` boxes (box_iou: boxes x boxes; losses: pairs; yolo_detect: the
    predictions of a square grid, len(YOLO_ANCHORS) per cell) of ``classes``
    classes, per image; ``method`` the decay (soft_nms, matrix_nms: linear or
    gaussian). The driver's case protocol."""

    kind: str
    boxes: int
    classes: int = 1
    method: str = ""

    @property
    def group(self) -> str:
        """The kind; batched_nms_padded's "padded_nms", short enough for the
        compact table's case column to show its sizes apart."""
        return "padded_nms" if self.kind == "batched_nms_padded" else self.kind

    @property
    def name(self) -> str:
        size = f"{self.boxes // 1000}k" if self.boxes >= 1000 else str(self.boxes)
        return f"{size} {SHORT_METHODS.get(self.method, self.method)}" if self.method else size

    @property
    def grid(self) -> int:
        """yolo_detect's cells per side."""
        return math.isqrt(self.boxes // len(YOLO_ANCHORS))

    @property
    def stride(self) -> float:
        """yolo_detect's pixels per cell."""
        return IMAGE_SIZE / self.grid

    @property
    def score_threshold(self) -> float:
        return YOLO_SCORE_THRESHOLD if self.kind == "yolo_detect" else PADDED_SCORE_THRESHOLD

    def describe(self) -> str:
        text = (f"{self.grid}x{self.grid}x{len(YOLO_ANCHORS)} boxes" if self.kind == "yolo_detect"
                else f"{self.boxes} boxes")
        return text + (f", {self.classes} classes" if self.classes > 1 else "")

    def quick(self) -> DetectionCase:
        """A tenth of the boxes: the sizes stay distinct (NMS time against
        boxes); yolo_detect's grid a side about sqrt(10) shorter."""
        if self.kind == "yolo_detect":
            side = max(round(self.grid / math.sqrt(10)), 2)
            return replace(self, boxes=len(YOLO_ANCHORS) * side * side)
        return replace(self, boxes=max(self.boxes // 10, 10))

    def tiny(self) -> DetectionCase:
        """The Triton interpreter's size (driver.TINY_LIMITS' 64 boxes; a
        4 x 4 grid for yolo_detect)."""
        if self.kind == "yolo_detect":
            return replace(self, boxes=len(YOLO_ANCHORS) * 16)
        return replace(self, boxes=min(self.boxes, driver.TINY_LIMITS["boxes"]))

    def work(self, batch: int, dtype: torch.dtype, direction: str) -> tuple[None, int]:
        """(no flops, minimum bytes): the inputs read and the results written."""
        n, size = self.boxes, dtype.itemsize
        if self.kind == "box_iou":
            return None, batch * (2 * n * 4 + n * n) * size
        if self.kind.endswith("loss"):
            per_pair = 8 * size * (2 if direction == "backward" else 1) + 4
            return None, batch * n * per_pair
        if self.kind in PADDED_KINDS:  # boxes (a head's 5 logits) and scores; the detections
            read = n * (self.classes + (5 if self.kind == "yolo_detect" else 4))
            return None, batch * (read * size + MAX_DETECTIONS * (5 * size + 8) + 8)
        if self.kind in ("soft_nms", "matrix_nms"):
            # soft: boxes, scores; the selection and its scores. matrix: boxes,
            # scores, classes; the decayed scores. 6 numbers and 8 bytes a box.
            return None, batch * n * (6 * size + 8)
        return None, batch * n * (4 * size + 8)

    def memory(self) -> tuple[int, int]:
        """(reference, ours) bytes of the largest buffers per image (module doc)."""
        n, c = self.boxes, self.classes
        if self.kind in PADDED_KINDS:
            t = min(PRE_NMS_TOP_K, n * c)  # the candidates per image
            both = 12 * n * c + (16 * n + 4 * n * c if self.kind == "yolo_detect" else 0)
            return both + 5 * t * t // c, both + t * t // 8
        if self.kind == "soft_nms":
            return 8 * n * n, 4 * n
        if self.kind == "matrix_nms":
            return 9 * n * n, 4 * n
        if self.kind.endswith("nms"):
            return 5 * n * n // c, n * n // 8
        if self.kind == "box_iou":
            return 2 * 4 * n * n, 4 * n * n
        return 0, 0


def case_of(row: dict) -> DetectionCase:
    """The case a result row was measured on."""
    return DetectionCase(**{f.name: row[f.name] for f in fields(DetectionCase)})


CASES = (
    DetectionCase("box_iou", 1000),
    DetectionCase("giou_loss", 100_000),
    DetectionCase("diou_loss", 100_000),
    DetectionCase("ciou_loss", 100_000),
    DetectionCase("nms", 1000),
    DetectionCase("nms", 10_000),
    DetectionCase("batched_nms", 1000, 80),
    DetectionCase("batched_nms", 10_000, 80),
    DetectionCase("batched_nms_padded", 1000, 80),
    DetectionCase("batched_nms_padded", 10_000, 80),
    DetectionCase("batched_nms_padded", 100_000, 80),
    DetectionCase("soft_nms", 1000, method="gaussian"),
    DetectionCase("soft_nms", 1000, method="linear"),
    DetectionCase("soft_nms", 10_000, method="gaussian"),
    DetectionCase("matrix_nms", 1000, 80, "gaussian"),
    DetectionCase("matrix_nms", 1000, 80, "linear"),
    DetectionCase("matrix_nms", 10_000, 80, "gaussian"),
    DetectionCase("yolo_detect", 3 * 20 * 20, 80),  # a 640 x 640 image at stride 32
    DetectionCase("yolo_detect", 3 * 80 * 80, 80),  # ... at stride 8
)
ALGORITHMS = {}

LEGEND = ("detection: vs plain torch references (sort + IoU matrix + greedy loop for NMS; the "
          "padded NMS: torchvision's batched_nms per image where installed); a batch is that "
          "many images;\nmem MB = largest buffers per image, reference/ours (by construction)")
COLUMNS = (
    ("op", 18, lambda r: r["kind"]),
    ("case", 26, lambda r: r["shape"]),
    *report.CASE_COLUMNS,
    ("mem MB", 13, lambda r: "/".join(f"{b / 1e6:.3g}" for b in case_of(r).memory())),
    ("max rel err", 11, report.errors),
    ("indices", 7, report.indices),
    report.STATUS_COLUMN,
)

VERIFY_CONFIGS = (VerifyConfig("detection-float32", ("--dtype", "float32"), 30),)
VERIFY_TARGETS = ("detection targets (issue 11): batched_nms 10k boxes x 80 classes >= 3x "
                  "torchvision; cpu nms / batched_nms 10k >= 2x the plain torch reference. "
                  "Records, not pass/fail criteria.")


def random_boxes(n: int, generator: torch.Generator | None = None) -> torch.Tensor:
    centre = torch.rand(n, 2, generator=generator) * 640
    half = (torch.rand(n, 2, generator=generator) * 192 + 8) / 2
    return torch.cat([centre - half, centre + half], 1)


def make_inputs(case: DetectionCase, batch: int, dtype: torch.dtype, device: torch.device,
                channels_last: bool) -> dict:
    """Per image: boxes (and targets for the losses), scores, classes; the
    padded NMS's scores per box and class (B, N, C); yolo_detect's head as
    a convolution gives it, (B, A (5 + C), S, S), in the layout's memory
    format, and its anchors (A, 2) in pixels."""
    n = case.boxes
    if case.kind == "yolo_detect":
        side = case.grid
        head = torch.randn(batch, len(YOLO_ANCHORS) * (5 + case.classes), side, side)
        inputs = {"head": head.contiguous(memory_format=torch.channels_last)
                  if channels_last else head,
                  "anchors": torch.tensor(YOLO_ANCHORS) * case.stride}
    elif case.kind == "batched_nms_padded":
        inputs = {"boxes": torch.stack([random_boxes(n) for _ in range(batch)]),
                  "scores": torch.rand(batch, n, case.classes)}
    else:
        inputs = {"boxes": torch.stack([random_boxes(n) for _ in range(batch)]),
                  "targets": torch.stack([random_boxes(n) for _ in range(batch)]),
                  "scores": torch.rand(batch, n),
                  "classes": torch.randint(0, case.classes, (batch, n))}
    return {name: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
            for name, t in inputs.items()}


def torch_box_iou(a, b):
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    wh = (torch.min(a[:, None, 2:], b[:, 2:]) - torch.max(a[:, None, :2], b[:, :2])).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    return inter / (area_a[:, None] + area_b - inter)


def torch_nms(boxes, scores, threshold):
    """Sort, the N x N IoU matrix, then the greedy loop over its rows."""
    order = torch.sort(scores, descending=True, stable=True).indices
    suppress = (torch_box_iou(boxes[order], boxes[order]) > threshold).triu_(1)
    removed = torch.zeros(len(order), dtype=torch.bool, device=boxes.device)
    keep = []
    for i in range(len(order)):
        if not removed[i]:
            keep.append(i)
            removed |= suppress[i]
    return order[keep]


def torch_batched_nms(boxes, scores, classes, threshold):
    """torchvision's per-class path (its choice above 4000 boxes on the cpu):
    torch_nms per class, the kept indices sorted by score (ties by index)."""
    kept = torch.zeros(len(scores), dtype=torch.bool, device=boxes.device)
    for c in torch.unique(classes):
        index = torch.where(classes == c)[0]
        kept[index[torch_nms(boxes[index], scores[index], threshold)]] = True
    kept = torch.where(kept)[0]
    return kept[torch.sort(scores[kept], descending=True, stable=True).indices]


def torch_batched_nms_padded(boxes, scores, iou_threshold, score_threshold, max_detections,
                             pre_nms_top_k, batched_nms=torch_batched_nms):
    """One image of the padded NMS (cnnkernels.batched_nms_padded's
    docstring), boxes (N, 4) and scores (N, C): the (box, class) candidates
    by decreasing score (stable: ties by box, then class; NaN last), the
    pre_nms_top_k first, those above score_threshold, ``batched_nms`` per
    class, the max_detections first kept in that order, padded with 0
    (classes -1). (count, boxes (K, 4), scores (K,), classes (K,))."""
    n, c = scores.shape
    flat = scores.reshape(n * c)
    flat = torch.where(flat.isnan(), -math.inf, flat)
    ranked, candidates = torch.sort(flat, descending=True, stable=True)
    ranked, candidates = ranked[:pre_nms_top_k], candidates[:pre_nms_top_k]
    above = ranked.double() > score_threshold  # the threshold as given, not rounded
    ranked, candidates = ranked[above], candidates[above]
    classes, picked = candidates % c, boxes[candidates // c]
    kept = torch.sort(batched_nms(picked, ranked, classes, iou_threshold)).values
    kept = kept[:max_detections]
    count = len(kept)
    out_boxes = boxes.new_zeros((max_detections, 4))
    out_scores = scores.new_zeros((max_detections,))
    out_classes = torch.full((max_detections,), -1, dtype=torch.int64, device=boxes.device)
    out_boxes[:count], out_scores[:count], out_classes[:count] = \
        picked[kept], ranked[kept], classes[kept]
    return torch.tensor(count, device=boxes.device), out_boxes, out_scores, out_classes


def torch_padded_batch(boxes, scores, score_threshold, batched_nms=torch_batched_nms):
    """torch_batched_nms_padded over the images of (B, N, 4) boxes and (B, N,
    C) scores, a Python loop, stacked: (count (B,), boxes (B, K, 4), scores
    (B, K), classes (B, K))."""
    images = [torch_batched_nms_padded(boxes[b], scores[b], THRESHOLD, score_threshold,
                                       MAX_DETECTIONS, PRE_NMS_TOP_K, batched_nms)
              for b in range(boxes.shape[0])]
    return tuple(torch.stack(parts) for parts in zip(*images, strict=True))


@functools.cache
def anchor_batched_nms():
    """The padded NMS's timed anchor: torchvision.ops.batched_nms where
    torchvision is importable (the issue's baseline), else torch_batched_nms.
    The reference results always come from torch_batched_nms: torchvision's
    offset-coordinates path (below 4000 numbers on the cpu, 20000 on cuda)
    rounds the boxes it compares."""
    try:
        from torchvision.ops import batched_nms
    except ImportError:
        return torch_batched_nms
    return batched_nms


def correctly_rounded_exp(x):
    """e^x rounded once to x's dtype, as glibc's expf (within 0.502 ulp) and
    exp give it to the cpu kernels; torch's vectorised float32 exp is off by
    up to an ulp, and an ulp decides near-ties of thousands of decayed scores."""
    return torch.exp(x.double()).to(x.dtype) if x.dtype != torch.float64 else torch.exp(x)


def _at_most(value: float, dtype: torch.dtype) -> float:
    """The largest ``dtype`` number <= value: a ``dtype`` number compared with
    it decides as compared with ``value`` itself (as the kernels compare)."""
    rounded = torch.tensor(value, dtype=torch.float64).to(dtype)
    if rounded.item() > value:
        rounded = torch.nextafter(rounded, rounded.new_tensor(-math.inf))
    return rounded.item()


def torch_soft_nms(boxes, scores, iou_threshold, sigma, score_threshold, method,
                   exp=torch.exp):
    """Bodla et al.'s loop (cnnkernels.soft_nms's docstring) in torch ops
    over the N x N IoU matrix and its decays (linear: 1 - IoU above
    iou_threshold; Gaussian: exp(-IoU^2 / sigma)): select the highest score
    left (the first on a tie; never a NaN), stop below score_threshold,
    multiply every other score left by its decay from the selected box.
    (indices in selection order, their scores.) float16 and bfloat16 go in
    float32, as the kernels compute them: a loop in those dtypes would
    select other boxes, and the row would lose its anchor."""
    if boxes.dtype in (torch.float16, torch.bfloat16):
        boxes, scores = boxes.float(), scores.float()
    iou = torch_box_iou(boxes, boxes)
    if method == "gaussian":
        decay = exp(-(iou * iou) / sigma)
    else:
        decay = torch.where(iou > _at_most(iou_threshold, iou.dtype), 1 - iou, 1.0)
    del iou
    score = torch.where(scores.isnan(), -math.inf, scores)
    selected, values = [], []
    for _ in range(len(score)):
        best = int(torch.argmax(score))
        value = score[best].item()
        if value == -math.inf or value < score_threshold:
            break
        selected.append(best)
        values.append(value)
        score[best] = -math.inf
        score = torch.where(score > -math.inf, score * decay[best], score)
    return (torch.tensor(selected, dtype=torch.int64, device=boxes.device),
            torch.tensor(values, dtype=scores.dtype, device=scores.device))


def torch_matrix_nms(boxes, scores, idxs, method, sigma):
    """SOLOv2's matrix NMS (cnnkernels.matrix_nms's docstring) in N x N torch
    ops: the boxes in score order (stable), IoU_ij of box i above box j of
    one class, compensate_i = max_k IoU_ki, decay_j = min(1, min_i
    f(IoU_ij, compensate_i)); every score times its decay, in input order."""
    order = torch.sort(scores, descending=True, stable=True).indices
    ordered = boxes[order]
    iou = torch_box_iou(ordered, ordered).triu(1)
    if idxs is not None:
        ordered_classes = idxs[order]
        iou = iou * (ordered_classes[:, None] == ordered_classes[None, :])
    compensate = iou.max(0).values[:, None]
    if method == "gaussian":
        decay = torch.exp(-sigma * (iou * iou - compensate * compensate))
    else:
        decay = (1 - iou) / (1 - compensate)
    decayed = torch.empty_like(scores)
    decayed[order] = scores[order] * decay.min(0).values.clamp(max=1)
    return decayed


def torch_yolo_decode(head, anchors, stride, exp=torch.exp):
    """The YOLOv2/v3 decode (cnnkernels.yolo_decode's docstring) in torch
    ops, in the head's dtype, the sigmoid as 1 / (1 + e^-v): a head (B, A
    (5 + C), S, S) to boxes (B, S S A, 4) xyxy and scores (B, S S A, C),
    prediction (y S + x) A + a."""
    B, D, H, W = head.shape
    A = anchors.shape[0]
    t = head.permute(0, 2, 3, 1).reshape(B, H, W, A, D // A)
    y, x = torch.meshgrid(torch.arange(H, device=head.device, dtype=head.dtype),
                          torch.arange(W, device=head.device, dtype=head.dtype), indexing="ij")

    def sigmoid(v):
        return 1 / (1 + exp(-v))

    cx = (sigmoid(t[..., 0]) + x[..., None]) * stride
    cy = (sigmoid(t[..., 1]) + y[..., None]) * stride
    half_w = anchors[:, 0] * exp(t[..., 2]) / 2
    half_h = anchors[:, 1] * exp(t[..., 3]) / 2
    boxes = torch.stack([cx - half_w, cy - half_h, cx + half_w, cy + half_h], -1)
    scores = sigmoid(t[..., 4:5]) * sigmoid(t[..., 5:])
    return boxes.reshape(B, H * W * A, 4), scores.reshape(B, H * W * A, D // A - 5)


def _torch_loss(kind, boxes1, boxes2, eps=1e-7):
    x1, y1, x2, y2 = boxes1.unbind(-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(-1)
    xk1, yk1, xk2, yk2 = torch.max(x1, x1g), torch.max(y1, y1g), torch.min(x2, x2g), \
        torch.min(y2, y2g)
    inter = torch.where((yk2 > yk1) & (xk2 > xk1), (xk2 - xk1) * (yk2 - yk1), 0.0)
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    cw, ch = torch.max(x2, x2g) - torch.min(x1, x1g), torch.max(y2, y2g) - torch.min(y1, y1g)
    if kind == "giou_loss":
        return 1 - (iou - (cw * ch - union) / (cw * ch + eps))
    loss = 1 - iou + (((x2 + x1) - (x1g + x2g)) ** 2 + ((y2 + y1) - (y1g + y2g)) ** 2) / 4 \
        / (cw ** 2 + ch ** 2 + eps)
    if kind == "ciou_loss":
        v = 4 / math.pi ** 2 * (torch.atan((x2g - x1g) / (y2g - y1g))
                                - torch.atan((x2 - x1) / (y2 - y1))) ** 2
        loss = loss + (v / (1 - iou + v + eps)).detach() * v
    return loss


_OURS_LOSSES = {"giou_loss": "generalized_box_iou_loss", "diou_loss": "distance_box_iou_loss",
                "ciou_loss": "complete_box_iou_loss"}


def _per_image(fn, case, inputs, index):
    boxes, scores, classes = (inputs[k][index] for k in ("boxes", "scores", "classes"))
    if case.kind == "box_iou":
        return fn["box_iou"](boxes, inputs["targets"][index])
    if case.kind.endswith("loss"):
        return fn[case.kind](boxes, inputs["targets"][index])
    if case.kind == "nms":
        return fn["nms"](boxes, scores, THRESHOLD)
    if case.kind == "soft_nms":
        return fn["soft_nms"](boxes, scores, method=case.method, **SOFT_NMS)
    if case.kind == "matrix_nms":
        return fn["matrix_nms"](boxes, scores, classes, case.method, MATRIX_NMS_SIGMA)
    return fn["batched_nms"](boxes, scores, classes, THRESHOLD)


TORCH = {"box_iou": torch_box_iou, "nms": torch_nms, "batched_nms": torch_batched_nms,
         "soft_nms": torch_soft_nms, "matrix_nms": torch_matrix_nms,
         **{kind: (lambda a, b, kind=kind: _torch_loss(kind, a, b)) for kind in _OURS_LOSSES}}


def _ours():
    return {"box_iou": cnnkernels.box_iou, "nms": cnnkernels.nms,
            "batched_nms": cnnkernels.batched_nms, "soft_nms": cnnkernels.soft_nms,
            "matrix_nms": cnnkernels.matrix_nms,
            **{kind: getattr(cnnkernels, name) for kind, name in _OURS_LOSSES.items()}}


def torch_impl(case, inputs, index):
    """The plain torch reference of image ``index``; of every image (index
    None, a loop over them) for the padded kinds, whose NMS is
    anchor_batched_nms."""
    if case.kind == "yolo_detect":
        boxes, scores = torch_yolo_decode(inputs["head"], inputs["anchors"], case.stride)
        return torch_padded_batch(boxes, scores, case.score_threshold, anchor_batched_nms())
    if case.kind == "batched_nms_padded":
        return torch_padded_batch(inputs["boxes"], inputs["scores"], case.score_threshold,
                                  anchor_batched_nms())
    return _per_image(TORCH, case, inputs, index)


def ours_impl(case, inputs, index):
    """cnnkernels on the current backend: image ``index``; every image in
    one call (index None) for the padded kinds."""
    if case.kind == "yolo_detect":
        return cnnkernels.yolo_detect(inputs["head"], inputs["anchors"], case.stride, THRESHOLD,
                                      case.score_threshold, MAX_DETECTIONS, layout="bchw",
                                      pre_nms_top_k=PRE_NMS_TOP_K)
    if case.kind == "batched_nms_padded":
        return cnnkernels.batched_nms_padded(inputs["boxes"], inputs["scores"], THRESHOLD,
                                             case.score_threshold, MAX_DETECTIONS,
                                             pre_nms_top_k=PRE_NMS_TOP_K)
    return _per_image(_ours(), case, inputs, index)


def prepare(impl, case: DetectionCase, inputs: dict, direction: str):
    """(fn over every image, {name: result}). Backward: the losses' gradient
    of both box sets; NMS and IoU matrices have none (Unsupported)."""
    if direction == "backward" and not case.kind.endswith("loss"):
        raise driver.Unsupported(f"{case.kind} has no backward")
    if case.kind in PADDED_KINDS:
        def whole_batch():
            return impl(case, inputs, None)

        return whole_batch, dict(zip(PADDED_RESULTS, whole_batch(), strict=True))
    images = inputs["boxes"].shape[0]
    if direction == "forward":
        def forward():
            return [impl(case, inputs, i) for i in range(images)]

        results = forward()
        if case.kind == "soft_nms":
            return forward, {"indices": torch.cat([indices for indices, _ in results]),
                             "scores": torch.cat([scores for _, scores in results])}
        if case.kind.endswith("nms") and case.kind != "matrix_nms":
            return forward, {"indices": torch.cat(results)}
        return forward, {"output": torch.cat([r.flatten().detach() for r in results])}
    leaves = {name: inputs[name].detach().requires_grad_() for name in ("boxes", "targets")}
    graph_inputs = {**inputs, **leaves}
    losses = [impl(case, graph_inputs, i) for i in range(images)]

    def backward():
        return torch.autograd.grad(losses, list(leaves.values()),
                                   [torch.ones_like(loss) for loss in losses], retain_graph=True)

    grads = backward()
    return backward, {"grad_boxes": grads[0], "grad_targets": grads[1]}


def _exact_reference(case: DetectionCase, inputs: dict) -> dict:
    """The selections (nms, batched_nms, soft_nms, the padded kinds) in the
    precision cnnkernels computes them in, float32 for float16 and bfloat16
    (torchvision's rounding), so that its comparisons and near-ties come
    out alike; e^x correctly rounded; the padded NMS with torch_batched_nms."""
    work = {k: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
            for k, t in inputs.items()}
    if case.kind == "soft_nms":
        def soft_nms(case, inputs, index):
            return torch_soft_nms(inputs["boxes"][index], inputs["scores"][index],
                                  method=case.method, exp=correctly_rounded_exp, **SOFT_NMS)

        return prepare(soft_nms, case, work, "forward")[1]
    if case.kind == "yolo_detect":
        # Ours rounds its decoded boxes and scores to the head's dtype before the NMS.
        decoded = torch_yolo_decode(work["head"], work["anchors"], case.stride,
                                    exp=correctly_rounded_exp)
        boxes, scores = (t.to(inputs["head"].dtype).to(t.dtype) for t in decoded)
    elif case.kind == "batched_nms_padded":
        boxes, scores = work["boxes"], work["scores"]
    else:
        return prepare(torch_impl, case, work, "forward")[1]
    return dict(zip(PADDED_RESULTS, torch_padded_batch(boxes, scores, case.score_threshold),
                    strict=True))


def reference(case: DetectionCase, inputs: dict, direction: str) -> dict:
    """The plain torch reference in float64, or for a selection (the NMS
    kinds but matrix_nms) _exact_reference's; none for a backward that does
    not exist (prepare then skips the row)."""
    if direction == "backward" and not case.kind.endswith("loss"):
        return {}
    if case.kind in PADDED_KINDS or (case.kind.endswith("nms") and case.kind != "matrix_nms"):
        return _exact_reference(case, inputs)
    ref_inputs = {k: t.double() if t.is_floating_point() else t for k, t in inputs.items()}
    return prepare(torch_impl, case, ref_inputs, direction)[1]


def target_figures(sizes=(10_000,), runs: int = 5, threads: int = 2) -> list[str]:
    """The cpu target (issue 11): ours / plain reference time ratios of nms
    and batched_nms (80 classes), side by side in one process, ``threads``
    threads, ``runs`` interleaved runs each, medians."""
    torch.set_num_threads(threads)
    lines = []
    for n in sizes:
        generator = torch.Generator().manual_seed(n)
        boxes, scores = random_boxes(n, generator), torch.rand(n, generator=generator)
        classes = torch.randint(0, 80, (n,), generator=generator)
        calls = {"nms": ((boxes, scores, THRESHOLD), torch_nms, cnnkernels.nms),
                 "batched_nms": ((boxes, scores, classes, THRESHOLD), torch_batched_nms,
                                 cnnkernels.batched_nms)}
        with cnnkernels.use(backend="cpu"):
            for name, (args, plain, ours) in calls.items():
                assert torch.equal(plain(*args), ours(*args)), f"{name}: results differ"
                times = {"plain": [], "ours": []}
                for _ in range(runs):
                    for label, fn in (("plain", plain), ("ours", ours)):
                        start = time.perf_counter()
                        fn(*args)
                        times[label].append(time.perf_counter() - start)
                plain_s = statistics.median(times["plain"])
                ours_s = statistics.median(times["ours"])
                lines.append(f"{name} {n} boxes{' x 80 classes' if name != 'nms' else ''}: "
                             f"plain {plain_s * 1e3:.1f} ms, ours {ours_s * 1e3:.2f} ms, "
                             f"{plain_s / ours_s:.1f}x ({threads} threads, median of {runs})")
    return lines


if __name__ == "__main__":
    print("\n".join(target_figures()))
