"""One training step (forward, cross-entropy, backward, SGD update) of a
reference model from cnnkernels.models against the same model on plain
torch ops (``cnnkernels.models.plain_torch_copy``, the same weights), side
by side in one process, interleaved, median of ``--reps`` steps after two
warm-up steps each. Prints both medians, the speed ratio torch/ours (above
1: ours is faster) by wall time and by the process thread's CPU time
(``time.thread_time``, steadier on a shared machine, meaningful at one
thread).

    PYTHONPATH=. python benchmarks/models_training_step.py --threads 2
    PYTHONPATH=. python benchmarks/models_training_step.py --threads 1 --autocast bf16

Inputs: LeNet-5 (N, 3, 32, 32), its only size; the others (N, 3, S, S) with
S = --size (64 by default: ImageNet models on 224 x 224 take seconds per
step on a CPU).
"""

import argparse
import statistics
import time

import torch
from torch.nn import functional as F

import cnnkernels as ck
from cnnkernels import models


def time_steps(name: str, batch: int, size: int, reps: int, autocast: str | None) -> dict:
    torch.manual_seed(0)
    ours = getattr(models, name)(num_classes=10).train()
    plain = models.plain_torch_copy(ours)
    side = 32 if name == "lenet5" else size
    x = torch.randn(batch, 3, side, side)
    y = torch.randint(0, 10, (batch,))
    optimizers = {id(m): torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9)
                  for m in (ours, plain)}

    def step(model):
        optimizers[id(model)].zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast == "bf16"):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizers[id(model)].step()

    wall = {"ours": [], "torch": []}
    cpu = {"ours": [], "torch": []}
    with ck.use(backend="cpu"):
        for model in (ours, plain, ours, plain):
            step(model)
        for rep in range(reps):
            order = [("ours", ours), ("torch", plain)]
            for label, model in order if rep % 2 == 0 else order[::-1]:
                start_wall, start_cpu = time.perf_counter(), time.thread_time()
                step(model)
                wall[label].append(time.perf_counter() - start_wall)
                cpu[label].append(time.thread_time() - start_cpu)
    return {k: statistics.median(v) for k, v in (("ours", wall["ours"]),
                                                 ("torch", wall["torch"]),
                                                 ("ours_cpu", cpu["ours"]),
                                                 ("torch_cpu", cpu["torch"]))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["lenet5", "resnet18", "mobilenet_v2"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--reps", type=int, default=7)
    parser.add_argument("--autocast", choices=["bf16"], default=None)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), batch {args.batch}, "
          f"{args.autocast or 'fp32'}, median of {args.reps}")
    for name in args.models:
        t = time_steps(name, args.batch, args.size, args.reps, args.autocast)
        print(f"{name:13s} ours {t['ours'] * 1e3:8.1f} ms  torch {t['torch'] * 1e3:8.1f} ms  "
              f"torch/ours {t['torch'] / t['ours']:.2f}  "
              f"(thread CPU time: {t['torch_cpu'] / t['ours_cpu']:.2f})")


if __name__ == "__main__":
    main()
