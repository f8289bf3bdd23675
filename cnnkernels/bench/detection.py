"""detection's benchmark (the driver's family contract, see driver.py):
``cnnkernels.box_iou``, the IoU losses, ``nms`` and ``batched_nms`` against
plain torch references (torchvision is not a dependency): the IoU matrix
and the losses as torchvision writes them in torch ops, NMS as sort + IoU
matrix + a greedy Python loop over its rows, batched NMS as that per class
(torchvision's path on the cpu above 4000 boxes). A batch is that many
images, each its own call (ours and the reference alike). Boxes:
detector-like, centres anywhere in a 640 x 640 image, sides 8 to 200,
uniform scores, IoU threshold 0.5.

``mem MB`` is the largest buffers each side allocates per image, by
construction: the reference's IoU matrix and suppression mask (N x N, or
n_c x n_c per class); ours, the N x N / 8 bytes of bitmask of the cuda and
triton kernels (the cpu kernel keeps none: O(N)).

``python -m cnnkernels.bench.detection`` prints the cpu target figures:
nms and batched_nms on 10k boxes against the plain references, 2 threads,
interleaved runs, medians.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, replace

import torch

import cnnkernels
from cnnkernels.bench import driver, report
from cnnkernels.bench.verify import VerifyConfig

THRESHOLD = 0.5


@dataclass(frozen=True)
class DetectionCase:
    """One timed call: ``kind`` (box_iou, giou_loss, diou_loss, ciou_loss, nms,
    batched_nms) on ``boxes`` boxes (box_iou: boxes x boxes; losses: pairs)
    of ``classes`` classes, per image. The driver's case protocol."""

    kind: str
    boxes: int
    classes: int = 1

    @property
    def group(self) -> str:
        return self.kind

    @property
    def name(self) -> str:
        return f"{self.boxes // 1000}k" if self.boxes >= 1000 else str(self.boxes)

    def describe(self) -> str:
        text = f"{self.boxes} boxes"
        return text + (f", {self.classes} classes" if self.classes > 1 else "")

    def quick(self) -> DetectionCase:
        """A tenth of the boxes: the sizes stay distinct (NMS time against boxes)."""
        return replace(self, boxes=max(self.boxes // 10, 10))

    def work(self, batch: int, dtype: torch.dtype, direction: str) -> tuple[None, int]:
        """(no flops, minimum bytes): the boxes read and the result written."""
        n = self.boxes
        if self.kind == "box_iou":
            return None, batch * (2 * n * 4 + n * n) * dtype.itemsize
        if self.kind.endswith("loss"):
            per_pair = 8 * dtype.itemsize * (2 if direction == "backward" else 1) + 4
            return None, batch * n * per_pair
        return None, batch * n * (4 * dtype.itemsize + 8)

    def memory(self) -> tuple[int, int]:
        """(reference, ours) bytes of the largest buffers per image (module doc)."""
        n = self.boxes
        if self.kind.endswith("nms"):
            return 5 * n * n // self.classes, n * n // 8
        if self.kind == "box_iou":
            return 2 * 4 * n * n, 4 * n * n
        return 0, 0


CASES = (
    DetectionCase("box_iou", 1000),
    DetectionCase("giou_loss", 100_000),
    DetectionCase("diou_loss", 100_000),
    DetectionCase("ciou_loss", 100_000),
    DetectionCase("nms", 1000),
    DetectionCase("nms", 10_000),
    DetectionCase("batched_nms", 1000, 80),
    DetectionCase("batched_nms", 10_000, 80),
)
ALGORITHMS = {}

LEGEND = ("detection: vs plain torch references (sort + IoU matrix + greedy loop for NMS); "
          "a batch is that many images;\nmem MB = largest buffers per image, reference/ours "
          "(by construction)")
COLUMNS = (
    ("op", 12, lambda r: r["kind"]),
    ("case", 26, lambda r: r["shape"]),
    *report.CASE_COLUMNS,
    ("mem MB", 13, lambda r: "/".join(f"{b / 1e6:.3g}" for b in
                                      DetectionCase(r["kind"], r["boxes"],
                                                    r["classes"]).memory())),
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
    """Per image: boxes (and targets for the losses), scores, classes."""
    n = case.boxes
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
    return fn["batched_nms"](boxes, scores, classes, THRESHOLD)


TORCH = {"box_iou": torch_box_iou, "nms": torch_nms, "batched_nms": torch_batched_nms,
         **{kind: (lambda a, b, kind=kind: _torch_loss(kind, a, b)) for kind in _OURS_LOSSES}}


def _ours():
    return {"box_iou": cnnkernels.box_iou, "nms": cnnkernels.nms,
            "batched_nms": cnnkernels.batched_nms,
            **{kind: getattr(cnnkernels, name) for kind, name in _OURS_LOSSES.items()}}


def torch_impl(case, inputs, index):
    """The plain torch reference of one image."""
    return _per_image(TORCH, case, inputs, index)


def ours_impl(case, inputs, index):
    """cnnkernels on the current backend, one image."""
    return _per_image(_ours(), case, inputs, index)


def prepare(impl, case: DetectionCase, inputs: dict, direction: str):
    """(fn over every image, {name: result}). Backward: the losses' gradient
    of both box sets; NMS and IoU matrices have none (Unsupported)."""
    images = inputs["boxes"].shape[0]
    if direction == "backward" and not case.kind.endswith("loss"):
        raise driver.Unsupported(f"{case.kind} has no backward")
    if direction == "forward":
        def forward():
            return [impl(case, inputs, i) for i in range(images)]

        results = forward()
        if case.kind.endswith("nms"):
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


def reference(case: DetectionCase, inputs: dict, direction: str) -> dict:
    """The plain torch reference in float64 (NMS: in the boxes' precision, as
    torchvision rounds it, float32 for float16 and bfloat16: the values
    exactly, as cnnkernels computes them); none for a backward that does
    not exist (prepare then skips the row)."""
    if direction == "backward" and not case.kind.endswith("loss"):
        return {}
    if case.kind.endswith("nms"):
        work = {k: t.float() if t.dtype in (torch.float16, torch.bfloat16) else t
                for k, t in inputs.items()}
        return prepare(torch_impl, case, work, direction)[1]
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
