"""box_iou, generalized_box_iou, the IoU losses, nms and batched_nms on every
backend that runs here, against independent references written here:
torchvision's documented formulas in float64 (IoU matrices, losses and their
gradients through autograd) and a plain Python loop of the course's greedy
NMS. The tests every family gets come from tests/harness.py (the losses are
its differentiable samples; double backward is not supported, so the
harness's derivative test is replaced by a first-order one); this module
adds the family's own: exact indices with ties, NaN scores and identical
boxes, degenerate boxes, batches, compile with a data-dependent size."""

import math
import random

import pytest
import torch
from conftest import backend_params, dtypes_for, interpreted
from harness import FamilySpec, Sample, common_tests
from reference import assert_close

import cnnkernels as ck
from cnnkernels.ops.detection import (
    LOSS_KINDS,
    batched_nms_op,
    box_iou_loss_backward_op,
    box_iou_loss_op,
    box_iou_op,
    float32_at_most,
    nms_op,
)
from cnnkernels.ops.detection_decay import matrix_nms_op, soft_nms_op
from cnnkernels.ops.detection_yolo import yolo_decode_op

KINDS = ("iou", "giou", "giou_loss", "diou_loss", "ciou_loss", "nms", "batched_nms")
LOSSES = {"giou_loss": ck.generalized_box_iou_loss, "diou_loss": ck.distance_box_iou_loss,
          "ciou_loss": ck.complete_box_iou_loss}


def random_boxes(n, generator, *, spread=20.0, size=12.0, integer=False, batch=()):
    """xyxy boxes in a small region, so many overlap; integer corners make
    exact ties of IoU with the threshold possible."""
    xy = torch.rand((*batch, n, 2), generator=generator, dtype=torch.float64) * spread
    wh = torch.rand((*batch, n, 2), generator=generator, dtype=torch.float64) * size + 0.5
    if integer:
        xy, wh = xy.round(), wh.round()
    return torch.cat([xy, xy + wh], -1)


# References: torchvision's formulas, written out.

def reference_iou(a, b, generalized=False):
    """(…, N, M) IoU (GIoU) in the inputs' dtype; 0 where the union (the
    enclosing box) is empty, as cnnkernels defines it."""
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    lt = torch.maximum(a[..., :, None, :2], b[..., None, :, :2])
    rb = torch.minimum(a[..., :, None, 2:], b[..., None, :, 2:])
    wh = (rb - lt).clamp(min=0)
    inter = wh[..., 0] * wh[..., 1]
    union = (area_a[..., :, None] + area_b[..., None, :]) - inter
    iou = torch.where(union > 0, inter / union, torch.zeros_like(union))
    if not generalized:
        return iou
    lti = torch.minimum(a[..., :, None, :2], b[..., None, :, :2])
    rbi = torch.maximum(a[..., :, None, 2:], b[..., None, :, 2:])
    whi = (rbi - lti).clamp(min=0)
    enclosing = whi[..., 0] * whi[..., 1]
    return torch.where(enclosing > 0, iou - (enclosing - union) / enclosing, iou)


def reference_loss(kind, boxes1, boxes2, eps=1e-7):
    """torchvision's generalized / distance / complete IoU loss, elementwise
    (reduction none)."""
    x1, y1, x2, y2 = boxes1.unbind(-1)
    x1g, y1g, x2g, y2g = boxes2.unbind(-1)
    xk1, yk1 = torch.max(x1, x1g), torch.max(y1, y1g)
    xk2, yk2 = torch.min(x2, x2g), torch.min(y2, y2g)
    mask = (yk2 > yk1) & (xk2 > xk1)
    inter = torch.zeros_like(x1)
    inter[mask] = (xk2[mask] - xk1[mask]) * (yk2[mask] - yk1[mask])
    union = (x2 - x1) * (y2 - y1) + (x2g - x1g) * (y2g - y1g) - inter
    iou = inter / (union + eps)
    xc1, yc1 = torch.min(x1, x1g), torch.min(y1, y1g)
    xc2, yc2 = torch.max(x2, x2g), torch.max(y2, y2g)
    if kind == "giou_loss":
        area_c = (xc2 - xc1) * (yc2 - yc1)
        return 1 - (iou - (area_c - union) / (area_c + eps))
    diagonal = ((xc2 - xc1) ** 2) + ((yc2 - yc1) ** 2) + eps
    centres = ((x2 + x1) / 2 - (x1g + x2g) / 2) ** 2 + ((y2 + y1) / 2 - (y1g + y2g) / 2) ** 2
    loss = 1 - iou + centres / diagonal
    if kind == "diou_loss":
        return loss
    v = (4 / (math.pi ** 2)) * torch.pow(torch.atan((x2g - x1g) / (y2g - y1g))
                                         - torch.atan((x2 - x1) / (y2 - y1)), 2)
    # torchvision computes alpha under no_grad, a constant for reverse mode;
    # detached, it is one for forward mode too (cnnkernels' jvp).
    alpha = (v / (1 - iou + v + eps)).detach()
    return loss + alpha * v


def reference_nms(boxes, scores, threshold, classes=None):
    """The course's procedure, plainly: visit the boxes by decreasing score
    (NaN first, ties by index), keep one unless a kept box of its class
    overlaps it with IoU > threshold. IoU as torchvision rounds it: in the
    boxes' precision (float32 for float16/bfloat16)."""
    work = boxes if boxes.dtype == torch.float64 else boxes.float()
    iou = inter_over_union(work)
    values = scores.tolist()
    order = sorted(range(len(values)), key=lambda i: (0, 0, i) if math.isnan(values[i])
                   else (1, -values[i], i))
    kept = []
    for i in order:
        if all(iou[k][i] <= threshold or (classes is not None and classes[k] != classes[i])
               or math.isnan(iou[k][i]) for k in kept):
            kept.append(i)
    return kept


def inter_over_union(b):
    """inter / union of every pair, torchvision's nms arithmetic (NaN for 0 / 0)."""
    area = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    w = (torch.minimum(b[:, None, 2], b[None, :, 2])
         - torch.maximum(b[:, None, 0], b[None, :, 0])).clamp(min=0)
    h = (torch.minimum(b[:, None, 3], b[None, :, 3])
         - torch.maximum(b[:, None, 1], b[None, :, 1])).clamp(min=0)
    inter = w * h
    return (inter / ((area[:, None] + area[None, :]) - inter)).double().tolist()


# The harness's spec.

def random_case(seed: int, tiny: bool) -> dict:
    rng = random.Random(seed)
    return dict(kind=KINDS[seed % len(KINDS)], N=rng.choice((1, 7, 13) if tiny else (1, 13, 31)),
                M=rng.choice((1, 5) if tiny else (5, 17)), batch=rng.choice((None, 2)),
                integer=rng.random() < 0.5, tied=rng.random() < 0.5,
                threshold=rng.choice((0.0, 0.3, 0.5, 0.7)), classes=rng.randint(1, 4),
                transposed=rng.random() < 0.3)


def _layout(t, transposed):
    """A non-contiguous view of the same values (coordinates strided)."""
    return t.transpose(-1, -2).contiguous().transpose(-1, -2) if transposed else t


def run_case(device, backend, case, dtype, seed):
    generator = torch.Generator().manual_seed(seed)
    kind, n = case["kind"], case["N"]
    batch = () if case["batch"] is None or kind.endswith("nms") else (case["batch"],)
    a64 = random_boxes(n, generator, integer=case["integer"], batch=batch)
    b64 = random_boxes(case["M"] if kind in ("iou", "giou") else n, generator,
                       integer=case["integer"], batch=batch)
    a = _layout(a64.to(device=device, dtype=dtype), case["transposed"])
    b = _layout(b64.to(device=device, dtype=dtype), case["transposed"])
    with ck.use(backend=backend):
        if kind in ("iou", "giou"):
            fn = ck.box_iou if kind == "iou" else ck.generalized_box_iou
            expected = reference_iou(a.double().cpu(), b.double().cpu(), kind == "giou")
            assert_close(fn(a, b), expected, dtype, 4, kind)
        elif kind in LOSSES:
            x = a.detach().requires_grad_()
            y = b.detach().requires_grad_()
            loss = LOSSES[kind](x, y)
            grad = torch.rand(loss.shape, generator=generator, dtype=torch.float64)
            loss.backward(grad.to(device=device, dtype=dtype))
            x64 = a.double().cpu().requires_grad_()
            y64 = b.double().cpu().requires_grad_()
            expected = reference_loss(kind, x64, y64)
            expected.backward(grad)
            assert loss.dtype == dtype
            assert_close(loss, expected.detach(), dtype, 16, kind)
            assert_close(x.grad, x64.grad, dtype, 64, "grad boxes1")
            assert_close(y.grad, y64.grad, dtype, 64, "grad boxes2")
        else:
            check_nms(a, case, generator)


def check_nms(boxes, case, generator):
    n = boxes.shape[0]
    if case["tied"]:
        scores = torch.randint(0, 4, (n,), generator=generator).double() / 4
    else:
        scores = torch.rand(n, generator=generator, dtype=torch.float64)
    scores = scores.to(device=boxes.device, dtype=boxes.dtype)
    threshold = case["threshold"]
    if case["kind"] == "nms":
        kept = ck.nms(boxes, scores, threshold)
        expected = reference_nms(boxes.cpu(), scores.cpu(), threshold)
    else:
        classes = torch.randint(0, case["classes"], (n,), generator=generator)
        kept = ck.batched_nms(boxes, scores, classes.to(boxes.device), threshold)
        expected = reference_nms(boxes.cpu(), scores.cpu(), threshold, classes.tolist())
        values = scores.cpu().tolist()
        expected.sort(key=lambda i: (0, 0, i) if math.isnan(values[i]) else (1, -values[i], i))
    assert kept.dtype == torch.int64
    assert kept.tolist() == expected


def _loss_sample(kind):
    def make(dtype, device, generator, batch):
        return (random_boxes(batch + 1, generator).to(device=device, dtype=dtype)[:batch],
                random_boxes(batch + 1, generator).to(device=device, dtype=dtype)[:batch])

    return Sample(kind, LOSSES[kind], lambda x, y: reference_loss(kind, x, y), make, 16)


def _op_calls(device, backend, dtype):
    generator = torch.Generator().manual_seed(71)
    a = random_boxes(5, generator, batch=(2,)).to(device=device, dtype=dtype)
    b = random_boxes(3, generator, batch=(2,)).to(device=device, dtype=dtype)
    boxes = random_boxes(9, generator).to(device=device, dtype=dtype)
    scores = torch.rand(9, generator=generator, dtype=torch.float64).to(device=device,
                                                                       dtype=dtype)
    classes = torch.randint(0, 3, (9,), generator=generator).to(device)
    x, y = boxes[:4].clone().requires_grad_(), boxes[4:8].clone()
    return [
        (box_iou_op, (a, b, False, backend)),
        (box_iou_op, (a, b, True, backend)),
        *[(box_iou_loss_op, (x, y, code, 1e-7, backend)) for code in LOSS_KINDS.values()],
        (box_iou_loss_backward_op, (scores[:4], x.detach(), y, LOSS_KINDS["ciou"], 1e-7,
                                    backend)),
        (nms_op, (boxes, scores, 0.5, backend)),
        (batched_nms_op, (boxes, scores, classes, 0.3, backend)),
        (soft_nms_op, (boxes, scores, True, 0.3, 0.5, 0.01, backend)),
        (soft_nms_op, (boxes, scores, False, 0.3, 0.5, 0.01, backend)),
        (matrix_nms_op, (boxes, scores, classes, True, 2.0, backend)),
        (matrix_nms_op, (boxes, scores, None, False, 2.0, backend)),
        (yolo_decode_op, (torch.randn(2, 3, 3, 14, generator=generator, dtype=torch.float64)
                          .to(device=device, dtype=dtype), boxes[:2, 2:] + 1, 16.0, backend)),
    ]


BOXES = torch.tensor([[0.0, 0.0, 2.0, 2.0], [1.0, 1.0, 3.0, 3.0]])
BAD_INPUTS = (
    ("iou_rank", lambda: ck.box_iou(torch.rand(4), BOXES), ValueError,
     "boxes1 must be 2-D or 3-D"),
    ("iou_last_dim", lambda: ck.box_iou(torch.rand(2, 5), BOXES), ValueError,
     "boxes1 must hold boxes (x1, y1, x2, y2) in its last dimension of size 4"),
    ("iou_integer", lambda: ck.box_iou(BOXES.long(), BOXES), TypeError,
     "boxes1 must be a floating-point tensor"),
    ("iou_dtype", lambda: ck.box_iou(BOXES, BOXES.double()), TypeError,
     "boxes2 must have boxes1's dtype"),
    ("iou_ranks_differ", lambda: ck.box_iou(BOXES[None], BOXES), ValueError,
     "must both be (N, 4) or both (B, N, 4)"),
    ("iou_batch", lambda: ck.box_iou(BOXES.expand(2, 2, 4), BOXES.expand(3, 2, 4)), ValueError,
     "the same batch size"),
    ("loss_reduction", lambda: ck.generalized_box_iou_loss(BOXES, BOXES, reduction="avg"),
     ValueError, "Invalid Value for arg 'reduction'"),
    ("loss_shape", lambda: ck.distance_box_iou_loss(BOXES, torch.rand(3, 4)), RuntimeError,
     "must match"),
    ("nms_scores_rank", lambda: ck.nms(BOXES, torch.rand(2, 1), 0.5), ValueError,
     "scores must be 1-D"),
    ("nms_lengths", lambda: ck.nms(BOXES, torch.rand(3), 0.5), ValueError,
     "boxes and scores must hold the same number of boxes"),
    ("nms_boxes_rank", lambda: ck.nms(BOXES[None], torch.rand(2), 0.5), ValueError,
     "boxes must be 2-D"),
    ("nms_threshold", lambda: ck.nms(BOXES, torch.rand(2), "0.5"), TypeError,
     "iou_threshold must be a float"),
    ("nms_integer_scores", lambda: ck.nms(BOXES, torch.ones(2, dtype=torch.int64), 0.5),
     TypeError, "scores must be a floating-point tensor"),
    ("batched_idxs_float", lambda: ck.batched_nms(BOXES, torch.rand(2), torch.rand(2), 0.5),
     TypeError, "idxs must be an integer tensor"),
    ("soft_method", lambda: ck.soft_nms(BOXES, torch.rand(2), method="hard"), ValueError,
     "method must be 'linear' or 'gaussian'"),
    ("soft_scores_dtype", lambda: ck.soft_nms(BOXES, torch.rand(2, dtype=torch.float64)),
     TypeError, "scores must have boxes's dtype"),
    ("matrix_idxs_float", lambda: ck.matrix_nms(BOXES, torch.rand(2), torch.rand(2)), TypeError,
     "idxs must be an integer tensor"),
    ("padded_shape", lambda: ck.batched_nms_padded(BOXES[None], torch.rand(1, 3, 2)),
     ValueError, "boxes must have shape (1, 3, 4)"),
    ("padded_max_detections", lambda: ck.batched_nms_padded(BOXES[None], torch.rand(1, 2, 2),
                                                            max_detections=0),
     ValueError, "max_detections must be a positive int"),
    ("yolo_depth", lambda: ck.yolo_decode(torch.randn(1, 2, 2, 13), torch.ones(2, 2), 8),
     ValueError, "head's last dimension must be A (5 + C)"),
    ("yolo_anchors", lambda: ck.yolo_decode(torch.randn(1, 2, 2, 12), torch.ones(2, 3), 8),
     ValueError, "anchors must be (A, 2)"),
    ("yolo_layout", lambda: ck.yolo_decode(torch.randn(1, 2, 2, 12), torch.ones(2, 2), 8,
                                           layout="nchw"), ValueError, "layout must be"),
    ("yolo_stride", lambda: ck.yolo_decode(torch.randn(1, 2, 2, 12), torch.ones(2, 2), 0),
     ValueError, "stride must be a positive number"),
    ("batched_idxs_length", lambda: ck.batched_nms(BOXES, torch.rand(2),
                                                   torch.zeros(3, dtype=torch.int64), 0.5),
     ValueError, "idxs must hold one class per box"),
)

SPEC = FamilySpec(
    random_case=random_case, run_case=run_case,
    dtype_cases=tuple(dict(kind=kind, N=7, M=5, batch=2, integer=False, tied=True,
                           threshold=0.5, classes=3, transposed=True) for kind in KINDS),
    samples=tuple(_loss_sample(kind) for kind in LOSSES), op_calls=_op_calls,
    bad_inputs=BAD_INPUTS, seeds=(14, 70))

_common = common_tests(SPEC)
# The losses have no second derivative: the harness's check of first and
# second derivatives is replaced by test_loss_gradients_match_finite_differences.
del _common["test_derivatives_match_finite_differences"]
globals().update(_common)


@pytest.mark.parametrize(("device", "backend"), [p for p in backend_params()
                                                 if torch.float64 in dtypes_for(*p.values)])
@pytest.mark.parametrize("kind", ["giou_loss", "diou_loss"])
def test_loss_gradients_match_finite_differences(device, backend, kind):
    """First derivatives, reverse and forward mode (the interpreter: reverse
    mode, gradcheck's fast mode). Not ciou: torchvision's gradient holds its
    alpha constant, which finite differences do not (the random cases compare
    ciou's gradient with torchvision's through autograd)."""
    generator = torch.Generator().manual_seed(5)
    x = random_boxes(6, generator).to(device).requires_grad_()
    y = random_boxes(6, generator).to(device).requires_grad_()
    fast = interpreted(device, backend)
    with ck.use(backend=backend):
        assert torch.autograd.gradcheck(LOSSES[kind], (x, y), fast_mode=fast,
                                        check_forward_ad=not fast)


def test_second_derivative_of_a_loss_raises():
    x = random_boxes(3, torch.Generator().manual_seed(9)).requires_grad_()
    with ck.use(backend="cpu"):
        (g,) = torch.autograd.grad(ck.complete_box_iou_loss(x, x.detach() + 1).sum(), x,
                                   create_graph=True)
        with pytest.raises(NotImplementedError, match="once, not twice"):
            torch.autograd.grad(g.sum(), x)


@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("reduction", ["none", "mean", "sum"])
def test_loss_reductions_and_identical_boxes(device, backend, reduction):
    """Identical boxes (every min / max a tie: torch splits the gradient in
    half) and broadcasting of a single target box, with each reduction."""
    dtype = dtypes_for(device, backend)[0]
    boxes = random_boxes(4, torch.Generator().manual_seed(13)).to(device=device, dtype=dtype)
    target = boxes[1:2]
    for kind, fn in LOSSES.items():
        x = torch.cat([boxes[:1], boxes[1:]]).requires_grad_()
        x64 = x.detach().double().cpu().requires_grad_()
        with ck.use(backend=backend):
            loss = fn(x, target, reduction=reduction)
            loss.sum().backward()
        expected = reference_loss(kind, x64, target.double().cpu().expand(4, 4))
        expected = {"none": expected, "mean": expected.mean(), "sum": expected.sum()}[reduction]
        expected.sum().backward()
        assert_close(loss, expected.detach(), dtype, 16, kind)
        assert_close(x.grad, x64.grad, dtype, 64, f"{kind} gradient")
    with ck.use(backend=backend):
        empty = ck.generalized_box_iou_loss(boxes[:0], boxes[:0], reduction=reduction)
    assert empty.numel() == 0 if reduction == "none" else empty.item() == 0


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_degenerate_boxes_give_zero_not_nan(device, backend):
    """Zero-area and inverted boxes: IoU and GIoU 0 where torchvision divides
    0 by 0; NMS keeps them (torchvision's NaN suppresses nothing)."""
    dtype = dtypes_for(device, backend)[0]
    boxes = torch.tensor([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0], [0.0, 0.0, 0.0, 5.0],
                          [3.0, 3.0, 1.0, 1.0], [0.0, 0.0, 2.0, 2.0]], dtype=dtype, device=device)
    with ck.use(backend=backend):
        iou = ck.box_iou(boxes, boxes)
        giou = ck.generalized_box_iou(boxes, boxes)
        kept = ck.nms(boxes, torch.arange(5.0, 0, -1, dtype=dtype, device=device), 0.5)
    assert not iou.isnan().any() and not giou.isnan().any()
    assert_close(iou, reference_iou(boxes.double().cpu(), boxes.double().cpu()), dtype, 4, "iou")
    assert_close(giou, reference_iou(boxes.double().cpu(), boxes.double().cpu(), True), dtype, 4,
                 "giou")
    assert iou[0, 1] == 0 and iou[4, 4] == 1
    assert kept.tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("n", [0, 1, 2, 65])
def test_nms_small_identical_and_tied(device, backend, n):
    """0 and 1 box, identical boxes with equal scores (the first index wins),
    a size just past one 64-box mask word."""
    dtype = dtypes_for(device, backend)[0]
    boxes = torch.tensor([[2.0, 3.0, 7.0, 9.0]], dtype=dtype, device=device).expand(n, 4)
    scores = torch.ones(n, dtype=dtype, device=device)
    classes = torch.arange(n, device=device) % 2
    with ck.use(backend=backend):
        assert ck.nms(boxes, scores, 0.5).tolist() == ([0] if n else [])
        assert ck.batched_nms(boxes, scores, classes, 0.5).tolist() == list(range(min(n, 2)))
        # Identical boxes have IoU 1: a threshold of 1 suppresses none of them.
        assert ck.nms(boxes, scores, 1.0).tolist() == list(range(n))


@pytest.mark.parametrize(("device", "backend"), backend_params())
def test_nms_nan_scores_come_first_as_torchvision(device, backend):
    dtype = dtypes_for(device, backend)[0]
    generator = torch.Generator().manual_seed(17)
    boxes = random_boxes(40, generator, integer=True).to(device=device, dtype=dtype)
    scores = torch.randint(0, 3, (40,), generator=generator).to(device=device, dtype=dtype)
    scores[torch.randperm(40, generator=generator)[:6].to(device)] = float("nan")
    with ck.use(backend=backend):
        kept = ck.nms(boxes, scores, 0.4)
    assert kept.tolist() == reference_nms(boxes.cpu(), scores.cpu(), 0.4)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
def test_cpu_nms_many_boxes_and_classes(dtype):
    """Hundreds of overlapping boxes, tied scores, 80 classes and one; the
    half types compute in float32 from their exact values."""
    generator = torch.Generator().manual_seed(23)
    boxes = random_boxes(600, generator, spread=60.0, size=20.0).to(dtype)
    scores = (torch.randint(0, 50, (600,), generator=generator) / 50).to(dtype)
    classes = torch.randint(0, 80, (600,), generator=generator)
    with ck.use(backend="cpu"):
        kept = ck.nms(boxes, scores, 0.5)
        batched = ck.batched_nms(boxes, scores, classes, 0.5)
    assert kept.tolist() == reference_nms(boxes, scores.float(), 0.5)
    expected = reference_nms(boxes, scores.float(), 0.5, classes.tolist())
    values = scores.float().tolist()
    expected.sort(key=lambda i: (-values[i], i))
    assert batched.tolist() == expected


@pytest.mark.parametrize("threshold", [0.1, 0.3, 0.7, 1 / 3, -1.0, 2.0, math.inf, 1e39])
def test_float32_threshold_decides_as_the_double(threshold):
    """iou > float32_at_most(t) in float32 exactly when iou > t in double."""
    below = float32_at_most(threshold)
    candidates = torch.tensor([below], dtype=torch.float32)
    values = torch.cat([torch.nextafter(candidates, torch.tensor(-math.inf)), candidates,
                        torch.nextafter(candidates, torch.tensor(math.inf))])
    for value in values.tolist():
        assert (value > below) == (value > threshold)


def test_nms_compiles_with_a_data_dependent_size():
    generator = torch.Generator().manual_seed(29)
    boxes = random_boxes(50, generator).float()
    scores = torch.rand(50, generator=generator)
    classes = torch.randint(0, 4, (50,), generator=generator)
    torch._dynamo.reset()
    with ck.use(backend="cpu"):
        compiled = torch.compile(lambda b, s, c: (ck.nms(b, s, 0.5), ck.batched_nms(b, s, c, 0.5),
                                                  *ck.soft_nms(b, s)), fullgraph=True)
        kept, batched, soft, soft_scores = compiled(boxes, scores, classes)
        assert torch.equal(kept, ck.nms(boxes, scores, 0.5))
        assert torch.equal(batched, ck.batched_nms(boxes, scores, classes, 0.5))
        assert torch.equal(soft, ck.soft_nms(boxes, scores)[0])
        assert torch.equal(soft_scores, ck.soft_nms(boxes, scores)[1])


def test_backend_for_other_device_raises():
    with ck.use(backend="cuda"), pytest.raises(RuntimeError,
                                               match="backend 'cuda' runs CUDA tensors"):
        ck.nms(BOXES, torch.rand(2), 0.5)


def reference_padded(boxes, scores, iou_threshold, score_threshold, k, top_k):
    """EfficientNMS's contract, plainly, image by image: the candidates
    (box, class) above the score threshold by decreasing score (ties: box,
    then class), the top_k first, the course's greedy NMS per class, the k
    first kept."""
    results = []
    for b in range(scores.shape[0]):
        n, c = scores.shape[1:]
        values = scores[b].reshape(-1).tolist()
        candidates = sorted((i for i in range(n * c) if values[i] > score_threshold),
                            key=lambda i: (-values[i], i))[:top_k]
        picked = torch.stack([boxes[b, i // c] if boxes.dim() == 3 else boxes[b, i // c, i % c]
                              for i in candidates]) if candidates else boxes.new_zeros(0, 4)
        kept = reference_nms(picked, torch.tensor([values[i] for i in candidates]),
                             iou_threshold, [i % c for i in candidates])[:k]
        results.append([(candidates[j] // c, candidates[j] % c) for j in kept])
    return results


@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("class_specific", [False, True])
def test_batched_nms_padded_matches_the_plain_procedure(device, backend, class_specific):
    dtype = dtypes_for(device, backend)[0]
    generator = torch.Generator().manual_seed(31)
    B, N, C, K = 3, 12 if interpreted(device, backend) else 40, 3, 6
    boxes = random_boxes(N * C if class_specific else N, generator, integer=True, batch=(B,))
    boxes = boxes.reshape(B, N, C, 4) if class_specific else boxes
    scores = (torch.randint(0, 8, (B, N, C), generator=generator) / 8).double()
    scores[0, :3, 0] = float("nan")
    scores[2] = 0.0  # an image without detections
    boxes, scores = boxes.to(device=device, dtype=dtype), scores.to(device=device, dtype=dtype)
    with ck.use(backend=backend):
        count, out_boxes, out_scores, out_classes = ck.batched_nms_padded(
            boxes, scores, 0.4, 0.2, K, pre_nms_top_k=N)
    expected = reference_padded(boxes.cpu(), scores.cpu(), 0.4, 0.2, K, N)
    assert count.dtype == torch.int64 and out_classes.dtype == torch.int64
    assert out_boxes.shape == (B, K, 4) and out_scores.shape == (B, K)
    for b, detections in enumerate(expected):
        assert count[b].item() == len(detections)
        assert out_classes[b].tolist() == [c for _, c in detections] + [-1] * (K - len(detections))
        for j, (n, c) in enumerate(detections):
            assert out_scores[b, j] == scores[b, n, c]
            box = boxes[b, n, c] if class_specific else boxes[b, n]
            assert torch.equal(out_boxes[b, j], box)
        assert (out_boxes[b, len(detections):] == 0).all()
        assert (out_scores[b, len(detections):] == 0).all()


def test_batched_nms_padded_compiles_and_exports_with_static_shapes():
    generator = torch.Generator().manual_seed(37)
    boxes = random_boxes(20, generator, batch=(2,)).float()
    scores = torch.rand(2, 20, 4, generator=generator)

    class Detect(torch.nn.Module):
        def forward(self, boxes, scores):
            return ck.batched_nms_padded(boxes, scores, 0.5, 0.3, 5)

    torch._dynamo.reset()
    with ck.use(backend="cpu"):
        eager = Detect()(boxes, scores)
        compiled = torch.compile(Detect(), fullgraph=True)(boxes, scores)
        exported = torch.export.export(Detect(), (boxes, scores)).module()(boxes, scores)
    for a, b, c in zip(eager, compiled, exported, strict=True):
        assert torch.equal(a, b) and torch.equal(a, c)
    opcheck_args = (boxes, scores, 0.5, 0.3, 5, 4096, "cpu")
    torch.library.opcheck(torch.ops.cnnk.batched_nms_padded.default, opcheck_args)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
@pytest.mark.parametrize("backend", ["cuda", "triton"])
def test_batched_nms_padded_no_sync_and_cuda_graph(backend):
    """No host synchronisation (sync debug mode raises on one) and a CUDA
    graph replay gives the eager results for new inputs."""
    generator = torch.Generator().manual_seed(41)
    boxes = random_boxes(300, generator, spread=200.0, size=40.0, batch=(4,)).float().cuda()
    scores = torch.rand(4, 300, 8, generator=generator).cuda()
    with ck.use(backend=backend):
        ck.batched_nms_padded(boxes, scores, 0.5, 0.3, 50)  # warm-up (Triton compiles)
        torch.cuda.set_sync_debug_mode("error")
        try:
            eager = ck.batched_nms_padded(boxes, scores, 0.5, 0.3, 50)
        finally:
            torch.cuda.set_sync_debug_mode("default")
        static_boxes, static_scores = boxes.clone(), scores.clone()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            captured = ck.batched_nms_padded(static_boxes, static_scores, 0.5, 0.3, 50)
        new_boxes = random_boxes(300, generator, spread=200.0, size=40.0, batch=(4,)).float().cuda()
        new_scores = torch.rand(4, 300, 8, generator=generator).cuda()
        static_boxes.copy_(new_boxes)
        static_scores.copy_(new_scores)
        graph.replay()
        expected = ck.batched_nms_padded(new_boxes, new_scores, 0.5, 0.3, 50)
    assert not torch.equal(eager[1], expected[1])  # the new inputs give other detections
    for a, b in zip(expected, captured, strict=True):
        assert torch.equal(a, b)


def reference_soft_nms(boxes, scores, iou_threshold, sigma, score_threshold, method):
    """Bodla et al.'s procedure, plainly, in float64."""
    iou = reference_iou(boxes.double(), boxes.double()).tolist()
    score = [-math.inf if math.isnan(v) else v for v in scores.double().tolist()]
    selected, values = [], []
    while True:
        best = max(range(len(score)), key=lambda i: (score[i], -i), default=None)
        if best is None or score[best] == -math.inf or score[best] < score_threshold:
            return selected, values
        selected.append(best)
        values.append(score[best])
        score[best] = -math.inf
        for i, v in enumerate(score):
            if v != -math.inf:
                o = iou[best][i]
                score[i] = v * (math.exp(-o * o / sigma) if method == "gaussian"
                                else (1 - o if o > iou_threshold else 1.0))


def reference_matrix_nms(boxes, scores, classes, method, sigma):
    """SOLOv2's matrix NMS, written as its paper's code in float64."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i].item(), i))
    b = boxes.double()[order]
    iou = reference_iou(b, b).triu(1)
    if classes is not None:
        c = classes[order]
        iou = iou * (c[:, None] == c[None, :])
    compensate = iou.max(0).values[:, None].expand_as(iou) if len(order) else iou
    if method == "gaussian":
        decay = (torch.exp(-sigma * iou ** 2) / torch.exp(-sigma * compensate ** 2)).min(0).values
    else:
        decay = ((1 - iou) / (1 - compensate)).min(0).values
    result = torch.empty(len(order), dtype=torch.float64)
    result[order] = scores.double()[order] * decay
    return result


@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("method", ["linear", "gaussian"])
def test_soft_nms_matches_the_plain_procedure(device, backend, method):
    dtype = dtypes_for(device, backend)[0]
    generator = torch.Generator().manual_seed(43)
    for n in (0, 1, 9 if interpreted(device, backend) else 60):
        boxes = random_boxes(n, generator).to(device=device, dtype=dtype)
        scores = torch.rand(n, generator=generator, dtype=torch.float64)
        if n > 2:
            scores[1] = float("nan")
            scores[2] = scores[0]  # a tie: the lower index first
        scores = scores.to(device=device, dtype=dtype)
        with ck.use(backend=backend):
            kept, kept_scores = ck.soft_nms(boxes, scores, 0.3, 0.5, 0.05, method)
        expected, expected_scores = reference_soft_nms(boxes.cpu(), scores.cpu(), 0.3, 0.5,
                                                       0.05, method)
        assert kept.tolist() == expected and kept.dtype == torch.int64
        assert_close(kept_scores, torch.tensor(expected_scores, dtype=torch.float64), dtype,
                     len(expected) + 1, "scores")


@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("method", ["linear", "gaussian"])
@pytest.mark.parametrize("by_class", [False, True])
def test_matrix_nms_matches_solov2(device, backend, method, by_class):
    dtype = dtypes_for(device, backend)[0]
    generator = torch.Generator().manual_seed(47)
    n = 11 if interpreted(device, backend) else 70
    boxes = random_boxes(n, generator).to(device=device, dtype=dtype)
    scores = torch.rand(n, generator=generator, dtype=torch.float64).to(device=device,
                                                                       dtype=dtype)
    classes = torch.randint(0, 3, (n,), generator=generator) if by_class else None
    with ck.use(backend=backend):
        decayed = ck.matrix_nms(boxes, scores, None if classes is None else classes.to(device),
                                method, 2.0)
    expected = reference_matrix_nms(boxes.cpu(), scores.cpu(), classes, method, 2.0)
    assert_close(decayed, expected, dtype, n, "decayed scores")


def reference_yolo(head, anchors, stride):
    """YOLOv2/v3 decoding, plainly, in float64, from a (B, S, S, A (5 + C)) head."""
    B, H, W, D = head.shape
    A = anchors.shape[0]
    t = head.double().reshape(B, H, W, A, D // A)
    y, x = torch.meshgrid(torch.arange(H), torch.arange(W), indexing="ij")
    cx = (torch.sigmoid(t[..., 0]) + x[None, :, :, None]) * stride
    cy = (torch.sigmoid(t[..., 1]) + y[None, :, :, None]) * stride
    w = anchors.double()[:, 0] * torch.exp(t[..., 2])
    h = anchors.double()[:, 1] * torch.exp(t[..., 3])
    boxes = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)
    scores = torch.sigmoid(t[..., 4:5]) * torch.sigmoid(t[..., 5:])
    return boxes.reshape(B, H * W * A, 4), scores.reshape(B, H * W * A, -1)


@pytest.mark.parametrize(("device", "backend"), backend_params())
@pytest.mark.parametrize("layout", ["bhwc", "bchw"])
def test_yolo_decode_and_detect(device, backend, layout):
    dtype = dtypes_for(device, backend)[0]
    generator = torch.Generator().manual_seed(53)
    A, C, S = 3, 4, 5
    head = torch.randn(2, S, S, A * (5 + C), generator=generator, dtype=torch.float64)
    anchors = torch.tensor([[10.0, 14.0], [23.0, 27.0], [37.0, 58.0]], dtype=torch.float64)
    given = head.permute(0, 3, 1, 2) if layout == "bchw" else head
    given, anchors_d = given.to(device=device, dtype=dtype), anchors.to(device=device,
                                                                          dtype=dtype)
    with ck.use(backend=backend):
        boxes, scores = ck.yolo_decode(given, anchors_d, 8, layout=layout)
        detections = ck.yolo_detect(given, anchors_d, 8, 0.45, 0.3, 10, layout=layout)
        expected_detections = ck.batched_nms_padded(boxes, scores, 0.45, 0.3, 10)
    expected_boxes, expected_scores = reference_yolo(head.to(dtype), anchors.to(dtype), 8)
    assert_close(boxes, expected_boxes, dtype, 4, "boxes")
    assert_close(scores, expected_scores, dtype, 4, "scores")
    for a, b in zip(detections, expected_detections, strict=True):
        assert torch.equal(a, b)
