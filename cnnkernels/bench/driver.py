"""The benchmark driver: the settings a run takes from the command line, the
cases it selects, the timer, the comparison against the float64 reference,
the run loop (one table per op family, one row per backend of each case) and
the summary.

The driver finds the op families in the registry (``cnnkernels.ops.FAMILIES``)
and imports a family's bench module (``Family.bench_module``) only when the
family runs. A family's bench module exports, under these names:

- ``CASES``: the family's cases, in table order;
- ``make_inputs(case, batch, dtype, device, channels_last)``: {name: tensor},
  fresh random inputs of one case;
- ``reference(case, inputs, direction)``: {name: float64 tensor}, torch's
  results for the same inputs (it may adjust ``inputs`` first, for every
  implementation alike);
- ``torch_impl`` and ``ours_impl``: the anchor (torch's implementation) and
  cnnkernels', each ``(case, *tensors)``;
- ``prepare(impl, case, inputs, direction)``: (function to time, {name:
  result}) for one implementation; the result names match the reference's;
- ``COLUMNS`` and ``LEGEND``: its table's columns (see report.py) and the
  text printed above the table;
- ``ALGORITHMS``: {name: () -> context manager that makes the op use that
  algorithm} for a family with several ({} for one with a single way): each
  backend runs each case once per algorithm (``--algorithm`` selects); an
  algorithm the op rejects for the backend or the shape (ValueError) gives a
  skipped row. ``ours_impl`` may also raise ``Unsupported`` for a case the
  library cannot run yet: a skipped row with the reason.
- ``VERIFY_CONFIGS`` and ``VERIFY_TARGETS``: the configurations gpu_verify.sh
  runs for the family and the targets its results file states (see verify.py).

A case is whatever the family times; the driver uses only this protocol of it
(layers.Layer implements it for the reference models' layers):

- it is a dataclass, whose fields are the case's part of each JSON row (a
  layer's: model, name, its sizes);
- ``group`` and ``name`` (str): what ``--model`` selects by (the group's name
  starts with one of the names given, ignoring case and punctuation) and what
  the summary names the case by; for a layer, its model and its name;
- ``describe()``: the shape column (and the JSON row's ``shape``);
- ``work(batch, dtype, direction)``: (flops or None for a memory-bound op,
  minimum DRAM bytes), for the rates and the roofline fraction;
- ``quick()``: the case as a --quick smoke run times it (a layer: H and W
  capped);
- optionally ``tiny()``: the case as the Triton interpreter verifies it on a
  CPU (default: tiny_case caps the size fields it knows, TINY_LIMITS).

The layer cases of conv2d, conv_transpose2d and pool2d are traced from
cnnkernels.models (trace.py); verify (command.py) runs the same families
without timing.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import math
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from types import ModuleType
from typing import Any, NamedTuple

import torch

import cnnkernels
from cnnkernels import _backend, _ext
from cnnkernels.bench import report
from cnnkernels.ops import FAMILIES

# --quick: the first cases of each group (a model's first layers), batch 1.
QUICK_CASES_PER_GROUP = 2

# The summary's copy-bandwidth lines cover the memory-bound (flop-free)
# cases that move at least this many bytes: twice an H100's 50 MB L2, so
# their traffic streams from DRAM rather than cache.
LARGE_CASE_BYTES = 100e6

# Max |ours - ref| / max |ref| allowed per dtype. Loose on purpose: this flags
# broken kernels; tests/ holds the tight, reduction-length-scaled tolerances.
TOLERANCES = {torch.float16: 5e-2, torch.bfloat16: 5e-2, torch.float32: 1e-3,
              torch.float64: 1e-9}
# float32 computed as TF32 (10-bit mantissa, like fp16's) when --tf32 allows it.
TF32_TOLERANCE = 5e-2

DTYPE_NAMES = {"float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
               "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
               "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
               "float64": torch.float64, "fp64": torch.float64, "double": torch.float64}

DIRECTIONS = ("forward", "backward")


@dataclass(frozen=True)
class Roofline:
    """Peak DRAM bandwidth (bytes/s) and compute (flop/s) by dtype."""

    bandwidth: float
    flops: dict


# Matched as a substring of torch.cuda.get_device_name(). H100: measured on
# the lent machines (DESIGN.md); fp32 is the CUDA-core rate and "tf32" the
# dense TF32 tensor-core rate (both nominal, H100 SXM datasheet), the peak of
# float32 with --tf32. A GPU not listed gets no roofline column rather than a
# guessed one.
ROOFLINES = {
    "H100": Roofline(bandwidth=3.0e12, flops={torch.bfloat16: 790e12, torch.float16: 790e12,
                                              torch.float32: 67e12, "tf32": 495e12}),
}


def roofline_for(device: torch.device) -> Roofline | None:
    if device.type == "cpu":
        return cpu_roofline(torch.get_num_threads())
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((roof for key, roof in ROOFLINES.items() if key in name), None)


@functools.cache
def cpu_roofline(threads: int) -> Roofline | None:
    """The cpu backend's roofline, measured on the machine at hand: the FMA
    probe's throughput with ``threads`` threads (fp32 for fp16/bf16 too, which
    the cpu kernels compute in fp32; fp64) and the bandwidth of a 128 MiB copy
    (bytes read + written). None without the C++ extension."""
    if not _ext.has_cpu_kernels():
        return None
    cpu = _ext.cpu_kernels()
    f32, f64 = cpu.fma_peak(False, threads, 0.2), cpu.fma_peak(True, threads, 0.2)
    source = torch.ones(2**25)
    target = torch.empty_like(source)
    seconds = []
    for _ in range(5):
        start = time.perf_counter()
        target.copy_(source)
        seconds.append(time.perf_counter() - start)
    return Roofline(bandwidth=2 * source.nbytes / min(seconds),
                    flops={torch.float32: f32, torch.bfloat16: f32, torch.float16: f32,
                           torch.float64: f64})


def gemm_core_rate(size: int = 1024, runs: int = 5) -> dict | None:
    """The cpu GEMM core alone on a size^3 fp32 product against torch.mm,
    interleaved, medians: flop/s of each and the core's fraction of the FMA
    peak (the micro-kernels' roofline check). None without the extension."""
    roofline = cpu_roofline(torch.get_num_threads())
    if roofline is None:
        return None
    a, b = torch.randn(size, size), torch.randn(size, size)
    ours, theirs = [], []
    for _ in range(runs):
        for times, product in ((ours, _ext.cpu_matmul), (theirs, torch.mm)):
            start = time.perf_counter()
            product(a, b)
            times.append(time.perf_counter() - start)
    flops = 2 * size ** 3
    rate = flops / statistics.median(ours)
    return {"size": size, "gflops": rate / 1e9,
            "torch_gflops": flops / statistics.median(theirs) / 1e9,
            "peak_fraction": rate / roofline.flops[torch.float32]}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class Unsupported(Exception):
    """Raised by a family's ``ours_impl`` for a case cnnkernels cannot run yet
    (the row is skipped, with the message as the reason)."""


def _cudnn_flags(**changed):
    """torch.backends.cudnn.flags() with the ``changed`` flags and the others
    as they are: plain assignment is refused once a test suite has called
    torch.backends.disable_global_flags."""
    cudnn = torch.backends.cudnn
    flags = dict(enabled=cudnn.enabled, benchmark=cudnn.benchmark,
                 deterministic=cudnn.deterministic, allow_tf32=cudnn.allow_tf32)
    return cudnn.flags(**{**flags, **changed})


@contextlib.contextmanager
def tf32_allowed(allowed: bool):
    """torch's two TF32 switches (convolutions: cudnn.allow_tf32; matmuls:
    cuda.matmul.allow_tf32) set for the block: cnnkernels reads the same
    ones, so ours and torch's run under the same rule."""
    saved_matmul = torch.backends.cuda.matmul.allow_tf32
    with _cudnn_flags(allow_tf32=allowed):
        torch.backends.cuda.matmul.allow_tf32 = allowed
        try:
            yield
        finally:
            torch.backends.cuda.matmul.allow_tf32 = saved_matmul


# ---------------------------------------------------------------------------
# Settings and cases


@dataclass(frozen=True)
class Settings:
    """One run's parameters, from the command line and the device's defaults."""

    device: torch.device
    ops: list[str]
    dtypes: list[torch.dtype]
    batch: int
    backends: list[str]
    directions: list[str]
    layouts: list[str]
    quick: bool
    budget_s: float | None
    algorithms: list[str] | None = None  # None: every algorithm of each family
    tf32: bool = False  # float32 may run as TF32 (ours and torch's alike)
    excluded: dict = field(default_factory=dict)  # backend -> why it does not run here


LAYOUTS = ("nchw", "channels_last")


class UsageError(SystemExit):
    """A request this machine or these options cannot satisfy: the command
    prints the one-line message and exits with status 2."""

    def __init__(self, message: str):
        super().__init__(2)
        self.message = message


def default_backends(device: torch.device) -> list[str]:
    """Every concrete backend that can run tensors on ``device``; never the
    Triton interpreter on the CPU, which is thousands of times slower."""
    return [b for b in ("cpu", "cuda", "triton")
            if _backend.backend_problem(b, device) is None
            and not (b == "triton" and device.type == "cpu")]


def excluded_backends(device: torch.device) -> dict:
    """{backend: why it does not run (or is not timed) here} for the
    backends default_backends leaves out, for the header."""
    reasons = {}
    for backend in ("cpu", "cuda", "triton"):
        if backend in default_backends(device):
            continue
        if backend == "triton" and device.type == "cpu" and _backend.triton_available():
            reasons[backend] = ("Triton is installed, but without a GPU it runs only in its "
                                "interpreter, which is never timed (cnnkernels verify checks it)")
        elif backend == "cuda" and device.type == "cpu":
            reasons[backend] = ("CUDA kernels built, but no GPU here" if _ext.has_cuda_kernels()
                                else "no GPU here (and cnnkernels._C was built without CUDA)")
        elif backend == "cpu" and device.type != "cpu":
            continue  # the cpu backend runs CPU tensors: not a gap on a GPU run
        else:
            reasons[backend] = _backend.backend_problem(backend, device)
    return reasons


def resolve_device(requested: str | None) -> torch.device:
    """--device, or cuda when available, else cpu; cuda without CUDA is a UsageError."""
    if requested == "cuda" and not torch.cuda.is_available():
        why = ("torch was built without CUDA" if torch.version.cuda is None
               else "torch sees no CUDA device")
        raise UsageError(f"--device cuda: {why} (torch {torch.__version__}); "
                         "run without --device to use the cpu")
    return torch.device(requested or ("cuda" if torch.cuda.is_available() else "cpu"))


def parse_dtypes(names: list[str] | None, device: torch.device) -> list[torch.dtype]:
    """--dtype (comma- or space-separated); default float32 and bfloat16 on
    CUDA, float32 on the CPU."""
    if not names:
        return [torch.float32, torch.bfloat16] if device.type == "cuda" else [torch.float32]
    names = [n for item in names for n in item.split(",") if n]
    unknown = [n for n in names if n.lower() not in DTYPE_NAMES]
    if unknown:
        raise UsageError(f"--dtype {unknown[0]!r}: choose from {', '.join(sorted(DTYPE_NAMES))}")
    return list(dict.fromkeys(DTYPE_NAMES[n.lower()] for n in names))


def parse_layouts(args: argparse.Namespace) -> list[str]:
    layouts = [n for item in args.layout or () for n in item.split(",") if n]
    unknown = [n for n in layouts if n not in LAYOUTS]
    if unknown:
        raise UsageError(f"--layout {unknown[0]!r}: choose from {', '.join(LAYOUTS)}")
    if args.channels_last:
        layouts.append("channels_last")
    return list(dict.fromkeys(layouts)) or ["nchw"]


def parse_ops(names: list[str] | None) -> list[str]:
    known = [family.name for family in FAMILIES]
    names = [n for item in names or () for n in item.split(",") if n]
    unknown = [n for n in names if n not in known]
    if unknown:
        raise UsageError(f"--ops {unknown[0]!r}: the op families are {', '.join(known)}")
    return list(dict.fromkeys(names)) or known


def runnable_backends(device: torch.device, allow_interpreter: bool = False) -> list[str]:
    """default_backends, plus the Triton interpreter on a CPU where
    ``allow_interpreter`` (verify) and it can run."""
    backends = default_backends(device)
    if allow_interpreter and device.type == "cpu" \
            and _backend.backend_problem("triton", device) is None:
        backends.append("triton")
    return backends


def parse_backends(names: list[str] | None, device: torch.device,
                   allow_interpreter: bool = False) -> list[str]:
    """--backend, each checked to run on ``device``; the Triton interpreter
    only where ``allow_interpreter`` (verify). A backend that cannot run is
    a UsageError saying why."""
    if not names:
        backends = runnable_backends(device, allow_interpreter)
        if not backends:
            reasons = "; ".join(f"{b}: {_backend.backend_problem(b, device)}"
                                for b in ("cpu", "cuda", "triton"))
            raise UsageError(f"no cnnkernels backend runs on {device.type} here ({reasons})")
        return backends
    names = list(dict.fromkeys(n for item in names for n in item.split(",") if n))
    for name in names:
        if name not in ("cpu", "cuda", "triton"):
            raise UsageError(f"--backend {name!r}: choose from cpu, cuda, triton")
        if name == "triton" and device.type == "cpu" and not allow_interpreter:
            raise UsageError("--backend triton: there is no GPU here, and Triton's interpreter "
                             "(its only way to run CPU tensors) is never timed, being "
                             "thousands of times slower; cnnkernels verify checks its results")
        problem = _backend.backend_problem(name, device)
        if problem is not None:
            raise UsageError(f"--backend {name}: cannot run on {device.type} here: {problem}")
    return names


def settings_from_args(args: argparse.Namespace, allow_interpreter: bool = False) -> Settings:
    """The run's settings; a request this machine cannot satisfy raises UsageError."""
    device = resolve_device(args.device)
    batch = getattr(args, "batch", None)
    if batch is not None and batch < 1:
        raise UsageError(f"--batch must be >= 1, got {batch}")
    batch = batch or (32 if device.type == "cuda" and not args.quick else 1)
    directions = [n for item in getattr(args, "direction", None) or () for n in item.split(",")]
    unknown = [n for n in directions if n not in DIRECTIONS]
    if unknown:
        raise UsageError(f"--direction {unknown[0]!r}: choose from {', '.join(DIRECTIONS)}")
    backends = parse_backends(args.backend, device, allow_interpreter)
    algorithms = list(dict.fromkeys(args.algorithm)) if args.algorithm else None
    return Settings(device=device, ops=parse_ops(args.ops),
                    dtypes=parse_dtypes(args.dtype, device), batch=batch, backends=backends,
                    directions=list(dict.fromkeys(directions)) or list(DIRECTIONS),
                    layouts=parse_layouts(args), quick=args.quick,
                    budget_s=getattr(args, "budget", None), algorithms=algorithms,
                    tf32=getattr(args, "tf32", False),
                    excluded=_excluded(device, backends, allow_interpreter))


def _excluded(device: torch.device, backends: list[str], allow_interpreter: bool) -> dict:
    """{backend: why it does not run} for the header: not selected, or
    excluded_backends' reason."""
    runnable = runnable_backends(device, allow_interpreter)
    reasons = excluded_backends(device)
    return {b: "not selected (--backend)" if b in runnable else reasons[b]
            for b in ("cpu", "cuda", "triton") if b not in backends
            and (b in runnable or b in reasons)}


def group_key(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


# The fields of a case that are sizes: distinct_configurations ignores them.
SIZE_FIELDS = ("model", "name", "height", "width", "channels", "in_channels", "out_channels",
               "boxes")


def distinct_configurations(cases: list) -> list:
    """The first case of each configuration apart from its sizes: its other
    fields (activation, kind, residual, ...), whole numbers told apart only
    as 0, 1 or more (a 1x1 or a larger kernel, stride 1 or more, groups or
    not); the cases a quick verification needs to reach every algorithm and
    code path."""
    seen, kept = set(), []
    for case in cases:
        key = (type(case), tuple(
            (name, min(value, 2) if type(value) is int else value)
            for name, value in ((n, getattr(case, n)) for n in case.__dataclass_fields__
                                if n not in SIZE_FIELDS)))
        if key not in seen:
            seen.add(key)
            kept.append(case)
    return kept


def select_cases(cases: tuple, groups: list[str] | None = None, quick: bool = False,
                 per_group: int | None = None) -> list:
    """The ``cases`` whose group starts with one of ``groups``, ignoring case
    and punctuation ("vgg", "resnet", "unet"; all when None); with ``quick``,
    each as ``case.quick()`` and only the first ``per_group`` of each group
    (default QUICK_CASES_PER_GROUP; None with ``quick`` False: all)."""
    if per_group is None and quick:
        per_group = QUICK_CASES_PER_GROUP
    wanted = [group_key(g) for g in groups] if groups else None
    selected, counts = [], {}
    for case in cases:
        if wanted and not any(group_key(case.group).startswith(g) for g in wanted):
            continue
        counts[case.group] = counts.get(case.group, 0) + 1
        if per_group is not None and counts[case.group] > per_group:
            continue
        if quick:
            case = case.quick()
        selected.append(case)
    return selected


@dataclass(frozen=True)
class Table:
    """One family's table: its name (the rows' ``op``), its bench module, the
    cases selected from it and the algorithms each backend runs them with
    ([None] for a family with a single way)."""

    op: str
    family: ModuleType
    cases: list
    algorithms: list = (None,)


def select_algorithms(family: ModuleType, wanted: list[str] | None) -> list:
    """The family's algorithms named in ``wanted`` (all when None), in its
    order; [None] for a family without algorithms."""
    if not family.ALGORITHMS:
        return [None]
    return [name for name in family.ALGORITHMS if wanted is None or name in wanted]


def select_tables(ops: list[str], groups: list[str] | None, quick: bool,
                  algorithms: list[str] | None = None,
                  per_group: int | None = None) -> list[Table]:
    """The tables of the families named ``ops`` that keep a case after
    select_cases (and an algorithm named in ``algorithms``, for a family that
    has algorithms); none raises SystemExit naming the groups there are. An
    algorithm no selected family has raises SystemExit naming those there are."""
    modules = {family.name: family.bench_module for family in FAMILIES}
    families = [(op, importlib.import_module(modules[op])) for op in ops]
    known = [name for _, family in families for name in family.ALGORITHMS]
    unknown = [name for name in algorithms or () if name not in known]
    if unknown:
        raise UsageError(f"--algorithm {unknown[0]!r}: the selected ops have "
                         f"{', '.join(known) or 'none'}")
    tables = [Table(op, family, select_cases(family.CASES, groups, quick, per_group),
                    select_algorithms(family, algorithms))
              for op, family in families]
    tables = [table for table in tables if table.cases and table.algorithms]
    if not tables:
        names = dict.fromkeys(case.group for _, family in families for case in family.CASES)
        raise UsageError(f"no {' or '.join(ops)} case matches --models "
                         f"{' '.join(groups or ())}; there are: {', '.join(names)}")
    return tables


# The tiny form of a case, for the Triton interpreter: each size field the
# case has, capped.
TINY_LIMITS = {"height": 8, "width": 8, "in_channels": 8, "out_channels": 8, "channels": 8,
               "boxes": 64}


def tiny_case(case):
    """``case.tiny()`` where the case defines it, else the case with its
    TINY_LIMITS fields capped (a grouped convolution keeps its channels per
    group: depthwise stays depthwise)."""
    if hasattr(case, "tiny"):
        return case.tiny()
    changes = {name: min(getattr(case, name), limit) for name, limit in TINY_LIMITS.items()
               if hasattr(case, name)}
    if getattr(case, "groups", 1) > 1:
        changes["groups"] = math.gcd(case.groups, changes["in_channels"],
                                     changes["out_channels"])
    return replace(case, **changes)


# ---------------------------------------------------------------------------
# Timing


class Timing(NamedTuple):
    """A median time in ms and its spread: half the interquartile range, as a
    fraction of the median (what --compare measures a change against)."""

    ms: float
    spread: float


def _timing(times_ms: list[float]) -> Timing:
    median = statistics.median(times_ms)
    if len(times_ms) < 2:
        return Timing(median, 0.0)
    q1, _, q3 = statistics.quantiles(times_ms, n=4)
    return Timing(median, (q3 - q1) / 2 / median if median > 0 else 0.0)


def _time_cpu(*fns, rep_ms: float, min_runs: int = 5, max_runs: int = 100) -> list[Timing]:
    """The median wall time and spread of each of ``fns``, timed in turns (one
    run of each per round, so that a machine's slow spells fall on all of them
    alike) until ``rep_ms`` have passed (at least ``min_runs`` rounds, at most
    ``max_runs``). No warm-up run of its own: every caller has already run
    each fn once to get the result it checks."""
    times: list[list[float]] = [[] for _ in fns]
    deadline = time.perf_counter() + rep_ms / 1e3 * len(fns)
    while len(times[0]) < max_runs and (len(times[0]) < min_runs
                                         or time.perf_counter() < deadline):
        for fn, fn_times in zip(fns, times, strict=True):
            start = time.perf_counter()
            fn()
            fn_times.append((time.perf_counter() - start) * 1e3)
    return [_timing(fn_times) for fn_times in times]


def _time_cuda(*fns, warmup: float, rep: float) -> list[Timing]:
    """triton.testing.do_bench's quartiles of each of ``fns`` (L2 flushed
    between runs)."""
    from triton.testing import do_bench

    timings = []
    for fn in fns:
        q1, median, q3 = do_bench(fn, warmup=warmup, rep=rep, quantiles=[0.25, 0.5, 0.75])
        timings.append(Timing(median, (q3 - q1) / 2 / median if median > 0 else 0.0))
    return timings


def _timer_settings(device: torch.device, quick: bool) -> dict:
    """do_bench's warm-up and repetition times (ms) on CUDA, shorter for a
    --quick smoke run; the repetition time of the perf_counter loop on the CPU."""
    if device.type == "cuda":
        return {"warmup": 5, "rep": 20} if quick else {"warmup": 25, "rep": 100}
    return {"rep_ms": 20, "min_runs": 3} if quick else {"rep_ms": 200}


def timer_description(device: torch.device, quick: bool) -> dict:
    """What make_timer times with, for the results' header."""
    function = ("triton.testing.do_bench, median and quartiles" if device.type == "cuda" else
                "perf_counter median and quartiles, ours and torch's in turns, after one "
                "warm-up run")
    return {"function": function, **_timer_settings(device, quick)}


def make_timer(device: torch.device, quick: bool):
    """[Timing of each fn] = timer(*fns), each fn already run once:
    triton.testing.do_bench on CUDA, perf_counter in turns on the CPU."""
    if device.type == "cuda":
        return functools.partial(_time_cuda, **_timer_settings(device, quick))
    return functools.partial(_time_cpu, **_timer_settings(device, quick))


# ---------------------------------------------------------------------------
# One case: a dtype and a direction, timed for torch and each backend


@contextlib.contextmanager
def _cudnn_autotuning_off():
    """With cudnn.benchmark on, cuDNN would try every algorithm on each new
    float64 reference shape, which costs far more than computing it."""
    with _cudnn_flags(benchmark=False):
        yield


def relative_error(result: torch.Tensor, reference: torch.Tensor) -> float:
    """max |result - reference| / max |reference|; NaN or inf stays non-finite.
    The denominator is at least the result dtype's smallest normal number:
    below it (float16's subnormals, under 6.1e-5) a dtype has no relative
    precision left, so a result that underflows there, as a float16 style
    loss's gradient does, is as right as the dtype can hold."""
    diff = (result.double() - reference).abs().max().item()
    if not math.isfinite(diff):
        return diff
    return diff / max(reference.abs().max().item(), torch.finfo(result.dtype).tiny)


def compare(results: dict, reference: dict) -> tuple[dict, int | None]:
    """({name: relative error} of the floating-point results, how many
    elements of the integer ones (max pooling's indices) differ from the
    reference's: None without any). A result shaped unlike the reference
    raises."""
    errors, mismatches = {}, None
    for name, result in results.items():
        expected = reference[name]
        if result.shape != expected.shape:
            raise ValueError(f"{name} has shape {tuple(result.shape)}, the reference "
                             f"{tuple(expected.shape)}")
        if result.is_floating_point():
            errors[name] = relative_error(result, expected)
        else:
            mismatches = (mismatches or 0) + int((result != expected).sum())
    return errors, mismatches


def _roofline_fraction(flops: int | None, nbytes: int, precision,
                       roofline: Roofline | None, seconds: float) -> float | None:
    """The time at the roofline over the time taken: the memory bound, or the
    compute bound where that takes longer (an op with flops). ``precision``
    is the dtype, or "tf32" for float32 allowed to run as TF32. None without
    a roofline for the device, or with flops but no compute peak for it."""
    if roofline is None or (flops is not None and precision not in roofline.flops):
        return None
    bound_s = nbytes / roofline.bandwidth
    if flops is not None:
        bound_s = max(bound_s, flops / roofline.flops[precision])
    return bound_s / seconds


def _one_line(error: Exception) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}"


def _peak_memory(device: torch.device, fn) -> int | None:
    """Bytes of the device's peak allocation while ``fn`` runs once, above what
    was allocated before (CUDA; None on the CPU, where torch keeps no count)."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize(device)
    before = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) - before


def case_rows(table: Table, case, dtype: torch.dtype, layout: str, direction: str,
              settings: Settings, timer, roofline: Roofline | None) -> list[dict]:
    """One row per backend and algorithm for this case, dtype, layout and
    direction; ``timer`` None checks the results without timing (verify)."""
    family, device, batch = table.family, settings.device, settings.batch
    inputs = family.make_inputs(case, batch, dtype, device, layout == "channels_last")
    with _cudnn_autotuning_off():
        reference = family.reference(case, inputs, direction)
    flops, nbytes = case.work(batch, dtype, direction)
    tf32 = settings.tf32 and dtype == torch.float32
    base = {"op": table.op, **asdict(case), "group": case.group, "name": case.name,
            "shape": case.describe(),
            "batch": batch, "dtype": dtype_name(dtype), "tf32": tf32, "layout": layout,
            "direction": direction, "flops": flops, "bytes": nbytes,
            "tolerance": TF32_TOLERANCE if tf32 else TOLERANCES[dtype]}
    torch_fn, torch_errors, torch_mismatches = None, {}, None
    if timer is not None:  # verify checks ours against the reference only
        try:
            torch_fn, torch_results = family.prepare(family.torch_impl, case, inputs, direction)
            torch_errors, torch_mismatches = compare(torch_results, reference)
            del torch_results
        except Exception as error:  # e.g. a dtype torch lacks on this device: ours still runs
            torch_fn, torch_errors = None, {"message": _one_line(error)}

    rows = []
    for backend, algorithm in ((b, a) for b in settings.backends for a in table.algorithms):
        row = {**base, "backend": backend, "algorithm": algorithm, "ours_ms": None,
               "ours_spread": None, "torch_ms": None, "torch_spread": None, "speedup": None,
               "tflops": None, "gbps": None, "roofline_fraction": None, "peak_bytes": None,
               "errors": {}, "index_mismatches": None, "torch_errors": torch_errors,
               "torch_index_mismatches": torch_mismatches, "status": "ok", "message": ""}
        supported = _backend.SUPPORTED_DTYPES.get((backend, device.type))
        if supported is not None and dtype not in supported:
            row.update(status="unsupported",
                       message=f"backend {backend!r} does not compute {dtype_name(dtype)} "
                               f"on {device.type}")
            rows.append(row)
            continue
        choice = (family.ALGORITHMS[algorithm]() if algorithm is not None
                  else contextlib.nullcontext())
        try:
            with cnnkernels.use(backend=backend), choice:
                fn, results = family.prepare(family.ours_impl, case, inputs, direction)
                row["errors"], row["index_mismatches"] = compare(results, reference)
                del results
                if timer is not None:
                    # ours and torch's in turns: a row's speedup compares runs of one spell
                    timing, *torch_timing = timer(fn, *(() if torch_fn is None else (torch_fn,)))
                    if torch_timing:
                        row.update(torch_ms=torch_timing[0].ms,
                                   torch_spread=torch_timing[0].spread)
                    row["peak_bytes"] = _peak_memory(device, fn)
                del fn
        except (Unsupported, ValueError) as error:
            # An explicit algorithm the op rejects for this backend or shape, or a
            # case the library cannot run yet; a ValueError without an explicit
            # algorithm is a failure like any other.
            skipped = isinstance(error, Unsupported) or algorithm is not None
            row.update(status="skipped" if skipped else "error", message=_one_line(error))
            rows.append(row)
            continue
        except Exception as error:
            row.update(status="error", message=_one_line(error))
            rows.append(row)
            continue
        if timer is not None:
            _add_rates(row, timing, flops, nbytes, "tf32" if tf32 else dtype, roofline)
        problems = []
        if not all(e <= row["tolerance"] for e in row["errors"].values()):  # NaN fails too
            problems.append(f"error above {row['tolerance']:g}")
        if row["index_mismatches"]:
            problems.append(f"{row['index_mismatches']} of the indices differ from the "
                            "reference's")
        if problems:
            row.update(status="wrong", message="; ".join(problems))
        rows.append(row)
    return rows


def _add_rates(row: dict, timing: Timing, flops: int | None, nbytes: int, precision,
               roofline: Roofline | None) -> None:
    seconds = timing.ms * 1e-3
    row.update(ours_ms=timing.ms, ours_spread=timing.spread, gbps=nbytes / seconds / 1e9,
               roofline_fraction=_roofline_fraction(flops, nbytes, precision, roofline,
                                                    seconds))
    if flops is not None:
        row["tflops"] = flops / seconds / 1e12
    if row["torch_ms"] is not None:
        row["speedup"] = row["torch_ms"] / timing.ms


# ---------------------------------------------------------------------------
# The run


class Result(NamedTuple):
    """One row (a JSON row) and the case it belongs to."""

    case: Any
    row: dict


class Section(NamedTuple):
    """Rows printed under one heading: a family in one dtype, layout and direction."""

    table: Table
    dtype: torch.dtype
    layout: str
    direction: str

    def heading(self) -> str:
        return f"{self.table.op} | {dtype_name(self.dtype)} | {self.layout} | {self.direction}"


def sections(tables: list[Table], settings: Settings) -> list[Section]:
    return [Section(table, dtype, layout, direction) for table in tables
            for dtype in settings.dtypes for layout in settings.layouts
            for direction in settings.directions]


def _progress(total: int):
    """(advance(description), write(line), close()): a tqdm bar on stderr when
    tqdm is installed (hidden when stderr is not a terminal), else a plain
    ``[k/total]`` line on stderr per case."""
    try:
        from tqdm import tqdm
    except ImportError:
        count = [0]

        def advance(description: str) -> None:
            count[0] += 1
            print(f"[{count[0]}/{total}] {description}", file=sys.stderr, flush=True)

        return advance, None, lambda: None
    bar = tqdm(total=total, unit="case", file=sys.stderr, leave=False, dynamic_ncols=True,
               disable=None)

    def advance(description: str) -> None:
        bar.set_description_str(description[:40])
        bar.update()

    return advance, bar, bar.close


def run(tables: list[Table], settings: Settings, out=None, wide: bool = False,
        timed: bool = True, progress: bool = True) -> list[Result]:
    """Every case of each table x dtypes x layouts x directions, a heading per
    section and a line per row as it completes (the family's own columns with
    ``wide``, else report.COMPACT_COLUMNS); cases not started within
    ``settings.budget_s`` of the start are skipped (one row each with status
    "skipped", no backend run). ``timed`` False checks results only (verify)."""
    with tf32_allowed(settings.tf32):
        return _run(tables, settings, out or sys.stdout, wide, timed, progress)


def _run(tables, settings, out, wide, timed, progress) -> list[Result]:
    timer = make_timer(settings.device, settings.quick) if timed else None
    roofline = roofline_for(settings.device) if timed else None
    start = time.perf_counter()
    results: list[Result] = []
    plan = sections(tables, settings)
    total = sum(len(section.table.cases) for section in plan)
    advance, bar, close = _progress(total) if progress else (lambda _: None, None, lambda: None)

    def emit(text: str) -> None:
        if bar is not None:
            bar.write(text, file=out)
        else:
            print(text, file=out, flush=True)

    try:
        for index, section in enumerate(plan):
            family = section.table.family
            columns = family.COLUMNS if wide else report.compact_columns(timed)
            # The family's legend explains its timing columns: not for verify's table.
            legend = f"{report.wrap(family.LEGEND)}\n" if timed and (
                wide or index == 0 or plan[index - 1].table is not section.table) else ""
            emit(f"{chr(10) if index else ''}{legend}== {section.heading()}\n"
                 f"{report.table_header(columns)}")
            for case in section.table.cases:
                advance(f"{section.table.op} {case.group} {case.name}")
                budget = settings.budget_s
                if budget is not None and time.perf_counter() - start > budget:
                    results.append(Result(case, {
                        "op": section.table.op, **asdict(case), "group": case.group,
                        "name": case.name,
                        "dtype": dtype_name(section.dtype), "layout": section.layout,
                        "direction": section.direction, "status": "skipped",
                        "message": f"time budget of {budget:g} s spent"}))
                    continue
                for row in case_rows(section.table, case, section.dtype, section.layout,
                                     section.direction, settings, timer, roofline):
                    emit(report.table_row(row, columns))
                    results.append(Result(case, row))
    finally:
        close()
    return results


def _variant(row: dict) -> str:
    """What a geometric mean is taken over: op, backend, algorithm, dtype
    ("tf32" for float32 allowed to run as TF32) and layout."""
    algorithm = f" {row['algorithm']}" if row.get("algorithm") else ""
    dtype = "tf32" if row.get("tf32") else row["dtype"]
    return f"{row['op']} {row.get('backend')}{algorithm} {dtype} {row.get('layout', 'nchw')}"


def _geomean_line(label: str, values: list[float], what: str) -> str:
    speedup = report.speedup_text(statistics.geometric_mean(values))
    return f"geometric-mean speedup {label}: {speedup} over {len(values)} {what}"


# What the cpu backend is for, said once under the CPU figures.
CPU_BACKEND_NOTE = ("the cpu backend is the library's portable path (the same ops, autograd and "
                    "torch.compile support where there is no GPU); torch's CPU ops (oneDNN, MKL) "
                    "are the figures it is measured against, not a target it claims to beat")


def summary(results: list[Result], elapsed_s: float) -> tuple[str, bool]:
    """(text to print after the tables, whether every case passed): status
    counts, geometric-mean speedups per family variant and direction and of
    forward + backward (the sums of both rows' times of each case: a
    training step's share), per model (every family's rows of its layers),
    for memory-bound ops the fraction of the copy bandwidth reached on the
    cases of at least LARGE_CASE_BYTES, the reasons for skipped rows, and
    the failures."""
    counts = {}
    for _, row in results:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    lines = [f"{len(results)} rows in {elapsed_s:.1f} s: "
             + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))]
    speedups: dict[tuple, list[float]] = {}
    per_model: dict[tuple, list[float]] = {}
    bandwidth: dict[tuple, list[Result]] = {}
    timed: dict[tuple, dict[str, dict]] = {}  # (variant, case) -> {direction: row}
    for result in results:
        row = result.row
        if row["status"] != "ok":
            continue
        key = (_variant(row), row["direction"])
        if row.get("speedup"):
            speedups.setdefault(key, []).append(row["speedup"])
            timed.setdefault((_variant(row), result.case), {})[row["direction"]] = row
            per_model.setdefault((result.case.group, row["backend"]), []).append(row["speedup"])
        if (row.get("roofline_fraction") is not None and row["flops"] is None
                and row["bytes"] >= LARGE_CASE_BYTES):
            bandwidth.setdefault(key, []).append(result)
    for (variant, _), rows in timed.items():
        if set(rows) == set(DIRECTIONS):
            torch_ms = sum(row["torch_ms"] for row in rows.values())
            speedups.setdefault((variant, "forward+backward"), []).append(
                torch_ms / sum(row["ours_ms"] for row in rows.values()))
    for (variant, direction), values in sorted(speedups.items()):
        lines.append(_geomean_line(f"{variant} {direction}", values, "cases"))
    for (group, backend), values in sorted(per_model.items()):
        lines.append(_geomean_line(f"{group} ({backend}, every op and direction)", values,
                                   "rows"))
    for (variant, direction), large in sorted(bandwidth.items()):
        fractions = [r.row["roofline_fraction"] for r in large]
        lowest = min(large, key=lambda r: r.row["roofline_fraction"]).case
        lines.append(f"copy bandwidth {variant} {direction}: median "
                     f"{statistics.median(fractions):.0%}, lowest {min(fractions):.0%} "
                     f"({lowest.group} {lowest.name}) over the {len(large)} layers "
                     f"moving >= {LARGE_CASE_BYTES / 1e6:g} MB")
    if any(backend == "cpu" for _, backend in per_model):
        lines.append(f"note: {CPU_BACKEND_NOTE}")
    skipped: dict[str, list[dict]] = {}
    for _, row in results:
        if row["status"] == "skipped" and row.get("backend"):
            skipped.setdefault(_variant(row), []).append(row)
    for variant, rows in sorted(skipped.items()):
        reasons = list(dict.fromkeys(row["message"] for row in rows))
        more = f"; and {len(reasons) - 1} more like it" if len(reasons) > 1 else ""
        lines.append(f"skipped {variant}: {len(rows)} rows ({reasons[0]}{more})")
    for case, row in results:
        if row["status"] in ("error", "wrong"):
            lines.append(f"{row['status'].upper()} {case.group} {case.name} {_variant(row)} "
                         f"{row['direction']}: {row['message']}")
    ok = not any(row["status"] in ("error", "wrong") for _, row in results)
    return "\n".join(report.wrap(line) for line in lines), ok
