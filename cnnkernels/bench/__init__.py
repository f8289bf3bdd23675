"""The benchmark and verification suite behind ``cnnkernels bench``,
``cnnkernels verify`` and ``cnnkernels tune``: this module holds their
options and help texts only, and imports neither torch nor Triton (so that
``--help`` is instant); the commands are in command.py, the run loop in
driver.py, the output in report.py, the history in history.py, the plots in
plots.py, the end-to-end model timings in models.py.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

BENCH_DESCRIPTION = """\
Times every op family (cnnkernels.ops.FAMILIES) on the layer shapes of the
reference models and on the detection and loss workloads, forward and
backward, on each backend and algorithm that runs on the device, against
torch's equivalent in the same process. Every result is also checked against
a float64 torch reference: a wrong result or an error makes the command exit
with status 1 once every case has run (a timing never does).

Columns: case (model and layer), impl (backend and algorithm), ours (median
time and its spread, half the interquartile range), vs torch (torch time /
ours, "Nx faster" or "Nx slower"), rate (MFLOP/s to TFLOP/s for ops with
flops, MB/s to TB/s of minimum traffic for memory-bound ones), roof% (the time at the
roofline over ours: measured FMA peak and copy bandwidth on the CPU, the GPU's
datasheet figures on a GPU) and check (max relative error vs float64). --wide
shows each family's own columns (shapes, torch time, per-result errors).

On a CPU the cpu backend runs against torch's CPU ops. Triton's interpreter
(TRITON_INTERPRET=1) is never timed: it is thousands of times slower than a
GPU; cnnkernels verify checks its results.

Each run appends a line to RESULTS_DIR/<device>.jsonl; --compare shows the
change against the previous run on the same device and flags regressions
larger than the two runs' measured spreads.

examples:
  cnnkernels bench --quick
  cnnkernels bench --ops conv2d --models resnet --dtype bf16 --layout channels_last
  cnnkernels bench --quick --compare --markdown report.md --plots plots/
  cnnkernels bench --end-to-end --models resnet18
"""

VERIFY_DESCRIPTION = """\
Checks every op x backend x algorithm x dtype x layout that runs on the device
at hand against torch in float64, forward and backward, and prints a pass/fail
table; the exit status is 1 if any check fails. On a CPU without a GPU the
Triton backend runs in its interpreter (TRITON_INTERPRET=1, set by this
command) on tiny shapes: the first case of each family, float32.

examples:
  cnnkernels verify --quick
  cnnkernels verify --ops gram pool2d --backend cpu
"""

TUNE_DESCRIPTION = """\
Runs the autotuned Triton kernels on every convolution of the reference
models, so that Triton's autotuner records the best configuration of each
shape in its on-disk cache (TRITON_CACHE_DIR, default ~/.triton/cache; keyed
by the Triton version, the GPU, the kernel and the shape). Later runs read it
instead of tuning again. On a machine without a GPU there is nothing to tune
(the interpreter runs one configuration): the command says so and exits 0.
"""

QUICK_HELP = ("a smoke run: the first layers of each model, H and W capped, batch 1 "
              "(under two minutes on a 2-core CPU)")


def default_results_dir() -> Path:
    """$CNNK_RESULTS_DIR, else benchmarks/results of the checkout the package
    lives in, else ~/.cache/cnnkernels/results (an installed package)."""
    if os.environ.get("CNNK_RESULTS_DIR"):
        return Path(os.environ["CNNK_RESULTS_DIR"])
    checkout = Path(__file__).resolve().parents[2] / "benchmarks" / "results"
    if checkout.is_dir():
        return checkout
    return Path.home() / ".cache" / "cnnkernels" / "results"


def _selection_arguments(parser: argparse.ArgumentParser) -> None:
    """The filters bench and verify share."""
    parser.add_argument("--ops", "--op", nargs="+", metavar="FAMILY",
                        help="only these op families (conv2d, pool2d, gram, ...); default: all")
    parser.add_argument("--models", "--model", nargs="+", metavar="NAME",
                        help="only cases whose model (or workload) starts with NAME, ignoring "
                             "case and punctuation (lenet, vgg, resnet, unet, nms, ...)")
    parser.add_argument("--device", choices=("cuda", "cpu"),
                        help="default: cuda when available, else cpu")
    parser.add_argument("--backend", nargs="+", metavar="NAME",
                        help="cpu, cuda, triton; default: every backend that runs on the device")
    parser.add_argument("--algorithm", nargs="+", metavar="NAME",
                        help="only these algorithms of the ops that have several (conv2d: "
                             "direct, implicit_gemm, pointwise, im2col, depthwise)")
    parser.add_argument("--dtype", nargs="+", metavar="DTYPE",
                        help="float32, bfloat16, float16, float64 (or fp32, bf16, ...)")
    parser.add_argument("--layout", nargs="+", metavar="LAYOUT",
                        help="nchw, channels_last (default: nchw)")
    parser.add_argument("--channels-last", action="store_true",
                        help="the same as --layout channels_last")
    parser.add_argument("--quick", action="store_true", help=QUICK_HELP)
    parser.add_argument("--json", type=Path, metavar="PATH",
                        help="also write the header and every row as JSON")


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``bench`` subcommand's options."""
    _selection_arguments(parser)
    parser.add_argument("--batch", type=int,
                        help="default: 32 on CUDA, 1 on the CPU and with --quick")
    parser.add_argument("--direction", nargs="+", metavar="DIR",
                        help="forward, backward (default: both)")
    parser.add_argument("--tf32", action=argparse.BooleanOptionalAction, default=False,
                        help="let float32 convolutions and matmuls run as TF32, ours and "
                             "torch's alike (default: off, true float32 for both)")
    parser.add_argument("--budget", type=float, metavar="SECONDS",
                        help="start no new case after this many seconds (the rest are "
                             "listed as skipped)")
    parser.add_argument("--wide", action="store_true",
                        help="each family's own, wider columns instead of the 100-column table")
    parser.add_argument("--csv", type=Path, metavar="PATH", help="also write every row as CSV")
    parser.add_argument("--markdown", type=Path, metavar="PATH",
                        help="also write a Markdown report (header, tables, summary)")
    parser.add_argument("--plots", type=Path, metavar="DIR",
                        help="also write PNG plots (speedup per layer per model, fraction of "
                             "the roofline per op, NMS time against the number of boxes)")
    parser.add_argument("--compare", action="store_true",
                        help="show the change against the last recorded run on this device")
    parser.add_argument("--results-dir", type=Path, metavar="DIR",
                        help="where the history lives (default: $CNNK_RESULTS_DIR, else the "
                             "checkout's benchmarks/results, else ~/.cache/cnnkernels/results)")
    parser.add_argument("--no-history", action="store_true",
                        help="do not append this run to the history")
    parser.add_argument("--end-to-end", action="store_true",
                        help="instead of the ops: images/s of a training step and of inference "
                             "of each reference model, patched vs plain torch, eager and "
                             "torch.compile (and CUDA graphs on a GPU)")


def add_verify_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``verify`` subcommand's options."""
    _selection_arguments(parser)


def add_tune_arguments(parser: argparse.ArgumentParser) -> None:
    """The ``tune`` subcommand's options."""
    parser.add_argument("--models", "--model", nargs="+", metavar="NAME",
                        help="only these models' shapes (default: every reference model)")
    parser.add_argument("--batch", type=int, default=32, help="default: 32")
    parser.add_argument("--dtype", nargs="+", metavar="DTYPE",
                        help="default: bfloat16 float16 float32")
