"""``cnnkernels bench --end-to-end``: images per second of each reference
model (trace.REFERENCE_MODELS, built by cnnkernels.models), for a training
step (forward, backward, SGD step) and for inference (eval, no grad), run
on cnnkernels' kernels ("patched": the builders' cnnkernels.nn modules,
plus ``cnnkernels.patch`` for any plain torch.nn one) and on plain torch
(``cnnkernels.models.plain_torch_copy``: every cnnkernels.nn module turned
back into its torch.nn base, a fused activation run by torch after it), eager and under
``torch.compile``; on a GPU also compiled with CUDA graphs
(mode="reduce-overhead").

Time: the median over ``repeats`` timed blocks of ``steps`` iterations
each, after warm-up iterations (compilation happens there), synchronised on
CUDA; images/s = batch * steps / block time.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from typing import NamedTuple

import torch

import cnnkernels
from cnnkernels.bench import driver, report, trace
from cnnkernels.models import plain_torch_copy


def _loss(output) -> torch.Tensor:
    """A scalar from whatever the model returns (a tensor, or a tuple/list/dict
    of them, None for an absent one: GoogLeNet's auxiliary heads in eval)."""
    if isinstance(output, torch.Tensor):
        return output.float().mean()
    values = output.values() if isinstance(output, dict) else output
    return sum(_loss(value) for value in values if value is not None)


class Measurement(NamedTuple):
    model: str
    mode: str  # train, infer
    execution: str  # eager, compile, cudagraphs
    variant: str  # torch, cnnkernels
    images_per_s: float | None
    message: str = ""


def _step(model, inputs, mode: str, optimizer):
    if mode == "infer":
        def infer():
            with torch.no_grad():
                return model(inputs)

        return infer

    def train():
        optimizer.zero_grad(set_to_none=True)
        _loss(model(inputs)).backward()
        optimizer.step()

    return train


def images_per_second(model: torch.nn.Module, inputs: torch.Tensor, mode: str, execution: str,
                      steps: int = 3, repeats: int = 3, warmup: int = 2,
                      compile_backend: str = "inductor") -> float:
    """Images/s of ``model`` (module doc) on ``inputs``."""
    model.train(mode == "train")
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3) if mode == "train" else None
    if execution != "eager":
        options = {"mode": "reduce-overhead"} if execution == "cudagraphs" else {}
        model = torch.compile(model, backend=compile_backend, **options)
    step = _step(model, inputs, mode, optimizer)
    cuda = inputs.device.type == "cuda"
    for _ in range(warmup):
        step()
    blocks = []
    for _ in range(repeats):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
        blocks.append(time.perf_counter() - start)
    return inputs.shape[0] * steps / statistics.median(blocks)


def measure(build, input_chw, name: str, device: torch.device, batch: int,
            executions: tuple[str, ...], modes=("train", "infer"), **timing) -> list:
    """Every (mode, execution, variant) of one model: a Measurement each,
    torch's then cnnkernels', side by side; a failure is a row with its message."""
    torch.manual_seed(0)
    patched = cnnkernels.patch(build().to(device))
    variants = {"torch": plain_torch_copy(patched), "cnnkernels": patched}
    inputs = torch.randn((batch, *input_chw), device=device)
    rows = []
    for mode in modes:
        for execution in executions:
            for variant, model in variants.items():
                try:
                    rate = images_per_second(copy.deepcopy(model), inputs, mode, execution,
                                             **timing)
                    rows.append(Measurement(name, mode, execution, variant, rate))
                except Exception as error:
                    rows.append(Measurement(name, mode, execution, variant, None,
                                            driver._one_line(error)))
    return rows


COLUMNS = (("model", 14, lambda m: m.model), ("mode", 6, lambda m: m.mode),
           ("execution", 10, lambda m: m.execution),
           ("torch img/s", 12, lambda m: m.torch), ("cnnkernels img/s", 17, lambda m: m.ours),
           ("vs torch", 0, lambda m: m.speedup))


class _Pair(NamedTuple):
    model: str
    mode: str
    execution: str
    torch: str
    ours: str
    speedup: str


def pairs(rows: list[Measurement]) -> list[_Pair]:
    """torch's and cnnkernels' measurement of each (model, mode, execution) as one line."""
    by_key: dict[tuple, dict[str, Measurement]] = {}
    for row in rows:
        by_key.setdefault((row.model, row.mode, row.execution), {})[row.variant] = row
    lines = []
    for (model, mode, execution), variants in by_key.items():
        plain, ours = variants.get("torch"), variants.get("cnnkernels")

        def text(m):
            return "-" if m is None or m.images_per_s is None else report.significant(
                m.images_per_s)

        both = plain and ours and plain.images_per_s and ours.images_per_s
        speedup = report.speedup_short(ours.images_per_s / plain.images_per_s) if both else \
            "; ".join(m.message for m in (plain, ours) if m is not None and m.message)[:60]
        lines.append(_Pair(model, mode, execution, text(plain), text(ours), speedup or "-"))
    return lines


def main(args) -> int:
    """The --end-to-end run: every selected reference model the installed
    cnnkernels.models builds; 1 if a measurement failed."""
    from cnnkernels import models
    device = driver.resolve_device(args.device)
    batch = args.batch or (32 if device.type == "cuda" else 2)
    wanted = [driver.group_key(n) for n in args.models or ()] if args.models else None
    references = [r for r in trace.REFERENCE_MODELS if hasattr(models, r.builder) and (
        wanted is None or any(driver.group_key(r.group).startswith(w)
                              or r.builder.startswith(w) for w in wanted))]
    if not references:
        raise driver.UsageError(f"--models {' '.join(args.models or ())}: no reference model "
                                f"matches; there are "
                                f"{', '.join(r.builder for r in trace.REFERENCE_MODELS)}")
    executions = ("eager", "compile") + (("cudagraphs",) if device.type == "cuda" else ())
    if args.quick:
        executions = ("eager",)
    print(f"end-to-end on {device}: batch {batch}, {', '.join(executions)}; images/s, "
          "median of 3 blocks of 3 steps", flush=True)
    print(report.table_header(COLUMNS), flush=True)
    rows = []
    for reference in references:
        chw = reference.input_chw
        if args.quick:
            chw = (chw[0], min(chw[1], 64), min(chw[2], 64))
        measured = measure(getattr(models, reference.builder), chw, reference.group, device,
                           batch, executions)
        rows += measured
        for pair in pairs(measured):
            print(report.table_row(pair, COLUMNS), flush=True)
    failed = [row for row in rows if row.images_per_s is None]
    for row in failed:
        print(f"FAILED {row.model} {row.mode} {row.execution} {row.variant}: {row.message}",
              file=sys.stderr)
    if args.json:
        report.write_json(args.json, {"command": "bench --end-to-end", "device": str(device),
                                      "batch": batch}, [row._asdict() for row in rows])
    return 1 if failed else 0
