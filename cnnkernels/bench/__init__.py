"""Benchmark driver: times cnnkernels' ops against torch's on the layers of
the reference models, and checks every result against a float64 torch
reference computed on the same device. One table per op family (``--op``):

- conv2d: ``cnnkernels.conv2d`` against ``torch.nn.functional.conv2d`` plus
  the same activation; TFLOP/s and the fraction of the roofline (the compute
  or the memory bound, whichever takes longer).
- pool2d: ``cnnkernels.max_pool2d``, ``avg_pool2d`` and
  ``adaptive_avg_pool2d`` against torch.nn.functional's. Pooling is memory
  bound: GB/s and the fraction of the device's copy bandwidth (its roofline).
  Both directions run as in training: the input requires grad, so max pooling
  writes the int64 indices its backward reads. Bytes are the minimum DRAM
  traffic: forward reads x once and writes y (+ the indices, max pooling
  only); backward reads grad_y (+ the indices) and writes grad_x. Max
  pooling's indices must equal the float64 reference's exactly (the first
  maximum wins a tie, as in torch): any difference is a wrong result.

    cnnkernels bench                        # every layer, every backend that runs here
    cnnkernels bench --quick                # a smoke run: small layers, batch 1
    cnnkernels bench --op pool2d --model vgg unet --dtype bfloat16 --channels-last
    cnnkernels bench --model resnet --dtype bfloat16 --channels-last --json out.json
    cnnkernels bench --op conv2d --algorithm implicit_gemm --dtype float32 --tf32

conv2d runs every algorithm (``cnnkernels.ops.conv2d.ALGORITHMS``) on every
backend: one row each; an algorithm the op rejects for the backend or the
layer is a skipped row with the op's reason. float32 is true float32 for
ours and torch's unless ``--tf32`` lets both use TF32.

Timing: on CUDA ``triton.testing.do_bench`` (median after warm-up, L2
flushed between runs); on the CPU the median of repeated ``perf_counter``
runs after one warm-up run. Backward times the autograd backward alone (one
``torch.autograd.grad`` call on a recorded forward graph: conv grad_input +
grad_weight, pooling grad_input), not the forward. Inputs are random and
fresh per case; for the backward of a fused activation the output gradient
is zeroed within a few ulps of the activation's kinks, where the derivative
legitimately depends on rounding.

A case that raises is an error row; a result whose error exceeds the dtype's
tolerance is flagged wrong. Either makes the command exit with status 1 once
every case has run. A dtype the backend does not compute in is listed as
unsupported and is not a failure. A timing is never a failure.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from cnnkernels import _backend
from cnnkernels.bench import driver, report
from cnnkernels.bench.environment import environment
from cnnkernels.bench.layers import QUICK_MAX_SIZE
from cnnkernels.ops import FAMILIES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options."""
    parser.add_argument("--op", choices=(*(family.name for family in FAMILIES), "all"),
                        default="all",
                        help="the op family to time (default: all, one table each)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{driver.QUICK_CASES_PER_GROUP} layers per model and op, H and W "
                             f"capped at {QUICK_MAX_SIZE}, batch 1 (a smoke run: under a minute "
                             f"on a CPU)")
    parser.add_argument("--model", nargs="+", metavar="NAME",
                        help="only models whose name starts with NAME, ignoring case and "
                             "punctuation (lenet, vgg, resnet, unet, ...)")
    parser.add_argument("--device", choices=("cuda", "cpu"),
                        help="default: cuda when available, else cpu")
    parser.add_argument("--backend", nargs="+", choices=_backend.BACKENDS,
                        help="default: every backend that runs on the device (the Triton "
                             "interpreter on the CPU only when named)")
    parser.add_argument("--dtype", nargs="+", metavar="DTYPE",
                        help="float32, bfloat16, float16, float64 (or fp32, bf16, ...); "
                             "default: float32 and bfloat16 on CUDA, float32 on the CPU")
    parser.add_argument("--batch", type=int, help="default: 32 on CUDA, 1 on the CPU and "
                                                  "with --quick")
    parser.add_argument("--direction", nargs="+", choices=driver.DIRECTIONS,
                        default=list(driver.DIRECTIONS))
    parser.add_argument("--channels-last", action="store_true",
                        help="inputs, weights and gradients in channels_last memory format")
    parser.add_argument("--algorithm", nargs="+", metavar="NAME",
                        help="only these algorithms of the ops that have several (conv2d: "
                             "direct, implicit_gemm, ...); default: every one, each on every "
                             "backend that has it (the others are listed as skipped)")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=False,
                        help="let float32 convolutions and matmuls run as TF32 on tensor "
                             "cores, ours and torch's alike (torch.backends.cudnn.allow_tf32 "
                             "and torch.backends.cuda.matmul.allow_tf32); default: off, true "
                             "float32 for both")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="start no new case after this many seconds (the rest are "
                             "listed as skipped)")
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the header and every row as JSON")


def main(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed options describe; 1 if a case failed."""
    settings = driver.settings_from_args(args)
    if settings.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # torch at its best: cuDNN picks its algorithm
    tables = driver.select_tables(settings.ops, args.model, args.quick, settings.algorithms)
    torch.manual_seed(0)
    header = environment(settings)
    if "triton" in settings.backends and settings.device.type == "cpu":
        print("note: Triton runs CPU tensors in its interpreter, thousands of times slower "
              "than a GPU: keep such runs to a tiny smoke case (--quick --model lenet)")
    print(report.heading(header), flush=True)
    start = time.perf_counter()
    results = driver.run(tables, settings)
    text, ok = driver.summary(results, time.perf_counter() - start)
    print(f"\n{text}", flush=True)
    if args.json:
        report.write_json(args.json, header, [result.row for result in results])
    return 0 if ok else 1
