"""metric's benchmark (the driver's family contract, see driver.py):
``cnnkernels.triplet_margin_loss`` against ``F.triplet_margin_loss`` and
``cnnkernels.batch_hard_triplet_loss`` against a plain torch batch-hard
composition (cdist, label masks, max / min, a gather, the hinge), at 256
to 4096 embeddings of 128 values (FaceNet's embedding size). A batch is
that many losses, each its own call, as a training step computes one per
mini-batch. Backward: the gradients of every input.

``mem MB`` is the largest working set each side allocates per loss beyond
its inputs and outputs, by construction: torch's triplet loss materialises
(N, D) differences (two per distance, with the eps added), ours nothing
but one partial per 8 triplets; the batch-hard composition its (N, N)
distances and masks, ours the (N, N) distances only.

``python -m cnnkernels.bench.metric`` prints the cpu target figures:
forward and forward+backward of both losses at 256, 1024 and 4096 x 128,
side by side in one process, 2 threads, interleaved runs, medians, with
thread-CPU-time ratios at 1 thread and the measured peak of memory
allocated during a call (torch's profiler on the cpu, at op boundaries).
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F

import cnnkernels
from cnnkernels.bench import report
from cnnkernels.bench.verify import VerifyConfig

MARGIN = 1.0
CLASSES = 32  # identities per mini-batch of the batch-hard cases


@dataclass(frozen=True)
class MetricCase:
    """One loss over ``triplets`` anchors of ``dim`` values: ``kind``
    "triplet" (anchor, positive, negative rows) or "batch_hard" (embeddings
    and labels). The driver's case protocol."""

    kind: str
    triplets: int
    dim: int = 128

    @property
    def group(self) -> str:
        return self.kind

    @property
    def name(self) -> str:
        return str(self.triplets)

    def describe(self) -> str:
        return f"{self.triplets} x {self.dim}"

    def quick(self) -> MetricCase:
        return replace(self, triplets=min(self.triplets, 256))

    def work(self, batch: int, dtype: torch.dtype, direction: str) -> tuple[int | None, int]:
        """(flops, minimum bytes): the triplet loss is memory-bound (3 N D
        read, the backward reads them again and writes 3 N D); batch-hard
        computes the N^2 D distance matrix (3 flops per difference)."""
        n, d = self.triplets, self.dim
        if self.kind == "triplet":
            elements = 3 * n * d * (1 if direction == "forward" else 3)
            return None, batch * elements * dtype.itemsize
        return batch * 3 * n * n * d, batch * (n * d + n * n) * dtype.itemsize

    def memory(self) -> tuple[int, int]:
        """(torch's, ours) working bytes per loss in float32 (module doc)."""
        n, d = self.triplets, self.dim
        if self.kind == "triplet":
            return 4 * 4 * n * d, 4 * (n // 8 + 1)
        return 4 * n * n + 3 * n * n, 4 * n * n


CASES = tuple(MetricCase(kind, n) for kind in ("triplet", "batch_hard")
              for n in (256, 1024, 4096))
ALGORITHMS = {}

LEGEND = ("metric: triplet_margin_loss vs F.triplet_margin_loss, batch_hard_triplet_loss vs a "
          "torch composition (cdist + masks + max/min + gather);\na batch is that many losses, "
          "each its own call; mem MB = working set per loss, torch/ours (by construction)")
COLUMNS = (
    ("loss", 10, lambda r: r["kind"]),
    ("case", 11, lambda r: r["shape"]),
    *report.CASE_COLUMNS,
    ("mem MB", 13, lambda r: "/".join(f"{b / 1e6:.3g}" for b in
                                      MetricCase(r["kind"], r["triplets"], r["dim"]).memory())),
    ("max rel err", 11, report.errors),
    report.STATUS_COLUMN,
)

VERIFY_CONFIGS = (VerifyConfig("metric-float32", ("--dtype", "float32"), 20),
                  VerifyConfig("metric-bfloat16", ("--dtype", "bfloat16"), 20))
VERIFY_TARGETS = ("metric targets (issue 12): triplet loss forward+backward >= 2x "
                  "F.triplet_margin_loss on the GPU, >= 1.5x on the cpu (2 threads). Records, "
                  "not pass/fail criteria.")


def make_inputs(case: MetricCase, batch: int, dtype: torch.dtype, device: torch.device,
                channels_last: bool) -> dict:
    """Per loss: anchor, positive and negative rows, or embeddings and
    labels (CLASSES identities)."""
    shape = (batch, case.triplets, case.dim)
    inputs = {name: torch.randn(shape) for name in ("anchor", "positive", "negative")} \
        if case.kind == "triplet" else \
        {"embeddings": torch.randn(shape),
         "labels": torch.randint(0, CLASSES, (batch, case.triplets))}
    return {name: t.to(device=device, dtype=dtype if t.is_floating_point() else t.dtype)
            for name, t in inputs.items()}


def torch_batch_hard(embeddings, labels, margin=MARGIN):
    """Batch-hard mining in torch ops: cdist, the label masks, the hardest
    positive (max) and negative (min), the chosen pairs' distances, the
    hinge, the mean over the anchors that have both."""
    distances = torch.cdist(embeddings, embeddings)
    same = labels[:, None] == labels[None]
    eye = torch.eye(len(labels), dtype=torch.bool, device=labels.device)
    positives, negatives = same & ~eye, ~same
    hardest_positive = torch.where(positives, distances, -torch.inf).max(1)
    hardest_negative = torch.where(negatives, distances, torch.inf).min(1)
    included = positives.any(1) & negatives.any(1)
    loss = (margin + hardest_positive.values - hardest_negative.values).clamp_min(0)
    loss = torch.where(included, loss, 0)
    return loss.sum() / included.sum().clamp_min(1)


def _loss(ours: bool, case: MetricCase, inputs: dict, index: int):
    if case.kind == "triplet":
        rows = [inputs[k][index] for k in ("anchor", "positive", "negative")]
        fn = cnnkernels.triplet_margin_loss if ours else F.triplet_margin_loss
        return fn(*rows, margin=MARGIN)
    fn = cnnkernels.batch_hard_triplet_loss if ours else torch_batch_hard
    return fn(inputs["embeddings"][index], inputs["labels"][index], MARGIN)


def torch_impl(case, inputs, index):
    return _loss(False, case, inputs, index)


def ours_impl(case, inputs, index):
    return _loss(True, case, inputs, index)


def _leaves(case: MetricCase) -> tuple[str, ...]:
    return ("anchor", "positive", "negative") if case.kind == "triplet" else ("embeddings",)


def prepare(impl, case: MetricCase, inputs: dict, direction: str):
    """(fn over every loss of the batch, {name: result}); backward records
    the forward once and times the gradients of every input."""
    losses = next(iter(inputs.values())).shape[0]
    if direction == "forward":
        def forward():
            return torch.stack([impl(case, inputs, i) for i in range(losses)])

        return forward, {"loss": forward().detach()}
    leaves = {name: inputs[name].detach().requires_grad_() for name in _leaves(case)}
    graph_inputs = {**inputs, **leaves}
    total = torch.stack([impl(case, graph_inputs, i) for i in range(losses)]).sum()

    def backward():
        return torch.autograd.grad(total, list(leaves.values()), retain_graph=True)

    return backward, {f"grad_{name}": g for name, g in zip(leaves, backward(), strict=True)}


def reference(case: MetricCase, inputs: dict, direction: str) -> dict:
    """torch's float64 result on the same device."""
    ref_inputs = {k: t.double() if t.is_floating_point() else t for k, t in inputs.items()}
    return prepare(torch_impl, case, ref_inputs, direction)[1]


def peak_bytes(fn) -> int:
    """The peak of memory allocated while ``fn`` runs, beyond what was
    allocated before: CUDA's allocator statistics, or on the cpu the running
    sum, in time order, of what torch's profiler records: each top-level
    op's net allocation and the frees outside ops (the peak at op
    boundaries)."""
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU],
                                profile_memory=True) as profile:
        fn()
    current = peak = 0
    events = [e for e in profile.events() if e.cpu_parent is None]
    for event in sorted(events, key=lambda e: e.time_range.start):
        current += event.cpu_memory_usage
        peak = max(peak, current)
    return peak


def _calls(kind: str, n: int, dim: int, generator: torch.Generator):
    """(inputs to differentiate, the torch call, ours) of one loss."""
    if kind == "triplet":
        rows = [torch.randn(n, dim, generator=generator).requires_grad_() for _ in range(3)]
        return (rows, lambda: F.triplet_margin_loss(*rows, margin=MARGIN),
                lambda: cnnkernels.triplet_margin_loss(*rows, margin=MARGIN))
    embeddings = torch.randn(n, dim, generator=generator).requires_grad_()
    labels = torch.randint(0, CLASSES, (n,), generator=generator)
    return ([embeddings], lambda: torch_batch_hard(embeddings, labels),
            lambda: cnnkernels.batch_hard_triplet_loss(embeddings, labels, MARGIN))


def _timed(fn, clock) -> float:
    start = clock()
    fn()
    return clock() - start


def target_figures(sizes=(256, 1024, 4096), dim: int = 128, runs: int = 15,
                   threads: int = 2) -> list[str]:
    """Ours / torch for each loss and size, forward and forward+backward:
    wall time at ``threads`` threads and thread CPU time at 1 thread, both
    interleaved, medians of ``runs``; and each side's peak memory."""
    lines = []
    generator = torch.Generator().manual_seed(0)
    with cnnkernels.use(backend="cpu"):
        for kind in ("triplet", "batch_hard"):
            for n in sizes:
                leaves, plain, ours = _calls(kind, n, dim, generator)

                def with_backward(fn, leaves=leaves):
                    return lambda: torch.autograd.grad(fn(), leaves)

                for direction, pair in (("fwd", (plain, ours)),
                                        ("fwd+bwd", tuple(map(with_backward, (plain, ours))))):
                    ratios = []
                    for count, clock in ((threads, time.perf_counter), (1, time.thread_time)):
                        torch.set_num_threads(count)
                        for fn in pair:  # warm-up
                            fn()
                        times = ([], [])
                        for _ in range(runs):
                            for side, fn in enumerate(pair):
                                times[side].append(_timed(fn, clock))
                        ratios.append((statistics.median(times[0]),
                                       statistics.median(times[1])))
                    (plain_s, ours_s), (plain_cpu, ours_cpu) = ratios
                    memory = [peak_bytes(fn) / 1e6 for fn in pair]
                    lines.append(
                        f"{kind} {n}x{dim} {direction}: torch {plain_s * 1e3:.3f} ms, ours "
                        f"{ours_s * 1e3:.3f} ms, {plain_s / ours_s:.2f}x ({threads} threads); "
                        f"{plain_cpu / ours_cpu:.2f}x thread CPU time (1 thread); peak MB "
                        f"torch/ours {memory[0]:.3g}/{memory[1]:.3g}")
    torch.set_num_threads(threads)
    return lines


if __name__ == "__main__":
    print("\n".join(target_figures()))
