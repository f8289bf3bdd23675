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
  capped).
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
from dataclasses import asdict, dataclass
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
    channels_last: bool
    quick: bool
    budget_s: float | None
    algorithms: list[str] | None = None  # None: every algorithm of each family
    tf32: bool = False  # float32 may run as TF32 (ours and torch's alike)


def default_backends(device: torch.device) -> list[str]:
    """Every concrete backend that can run tensors on ``device``; never the
    Triton interpreter on the CPU, which is thousands of times slower."""
    return [b for b in ("cpu", "cuda", "triton")
            if _backend.backend_problem(b, device) is None
            and not (b == "triton" and device.type == "cpu")]


def settings_from_args(args: argparse.Namespace) -> Settings:
    device_type = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device_type)
    if args.dtype:
        names = [n for item in args.dtype for n in item.split(",") if n]
        unknown = [n for n in names if n.lower() not in DTYPE_NAMES]
        if unknown:
            raise SystemExit(f"unknown dtype {unknown[0]!r}; choose from {sorted(DTYPE_NAMES)}")
        dtypes = list(dict.fromkeys(DTYPE_NAMES[n.lower()] for n in names))
    elif device_type == "cuda":
        dtypes = [torch.float32, torch.bfloat16]
    else:
        dtypes = [torch.float32]
    if args.batch is not None and args.batch < 1:
        raise SystemExit(f"--batch must be >= 1, got {args.batch}")
    batch = args.batch or (32 if device_type == "cuda" and not args.quick else 1)
    backends = args.backend or default_backends(device)
    if not backends:
        reasons = "; ".join(f"{b}: {_backend.backend_problem(b, device)}"
                            for b in ("cpu", "cuda", "triton"))
        raise SystemExit(f"no cnnkernels backend runs on {device_type} here ({reasons})")
    ops = [family.name for family in FAMILIES] if args.op == "all" else [args.op]
    algorithms = list(dict.fromkeys(args.algorithm)) if args.algorithm else None
    return Settings(device=device, ops=ops, dtypes=dtypes, batch=batch, backends=backends,
                    directions=list(dict.fromkeys(args.direction)),
                    channels_last=args.channels_last, quick=args.quick, budget_s=args.budget,
                    algorithms=algorithms, tf32=args.tf32)


def _group_key(name: str) -> str:
    return "".join(c for c in name.lower() if c.isalnum())


def select_cases(cases: tuple, groups: list[str] | None = None, quick: bool = False) -> list:
    """The ``cases`` whose group starts with one of ``groups``, ignoring case
    and punctuation ("vgg", "resnet", "unet"; all when None); with ``quick``,
    the first QUICK_CASES_PER_GROUP of each group, each as ``case.quick()``."""
    wanted = [_group_key(g) for g in groups] if groups else None
    selected, per_group = [], {}
    for case in cases:
        if wanted and not any(_group_key(case.group).startswith(g) for g in wanted):
            continue
        if quick:
            per_group[case.group] = per_group.get(case.group, 0) + 1
            if per_group[case.group] > QUICK_CASES_PER_GROUP:
                continue
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
                  algorithms: list[str] | None = None) -> list[Table]:
    """The tables of the families named ``ops`` that keep a case after
    select_cases (and an algorithm named in ``algorithms``, for a family that
    has algorithms); none raises SystemExit naming the groups there are. An
    algorithm no selected family has raises SystemExit naming those there are."""
    modules = {family.name: family.bench_module for family in FAMILIES}
    families = [(op, importlib.import_module(modules[op])) for op in ops]
    known = [name for _, family in families for name in family.ALGORITHMS]
    unknown = [name for name in algorithms or () if name not in known]
    if unknown:
        raise SystemExit(f"unknown --algorithm {unknown[0]!r}; the selected ops have "
                         f"{', '.join(known) or 'none'}")
    tables = [Table(op, family, select_cases(family.CASES, groups, quick),
                    select_algorithms(family, algorithms))
              for op, family in families]
    tables = [table for table in tables if table.cases and table.algorithms]
    if not tables:
        names = dict.fromkeys(case.group for _, family in families for case in family.CASES)
        raise SystemExit(f"no {' or '.join(ops)} layer matches --model "
                         f"{' '.join(groups or ())}; models: {', '.join(names)}")
    return tables


# ---------------------------------------------------------------------------
# Timing


def _time_cpu(fn, rep_ms: float, min_runs: int = 3, max_runs: int = 100) -> float:
    """Median wall time of ``fn`` in ms over runs until ``rep_ms`` have passed
    (at least ``min_runs``, at most ``max_runs``). No warm-up run of its own:
    every caller has already run ``fn`` once to get the result it checks."""
    times: list[float] = []
    deadline = time.perf_counter() + rep_ms / 1e3
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < deadline):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _timer_settings(device: torch.device, quick: bool) -> dict:
    """do_bench's warm-up and repetition times (ms) on CUDA, shorter for a
    --quick smoke run; the repetition time of the perf_counter loop on the CPU."""
    if device.type == "cuda":
        return {"warmup": 5, "rep": 20} if quick else {"warmup": 25, "rep": 100}
    return {"rep_ms": 30 if quick else 200}


def timer_description(device: torch.device, quick: bool) -> dict:
    """What make_timer times with, for the results' header."""
    function = ("triton.testing.do_bench, median" if device.type == "cuda" else
                "perf_counter median after one warm-up run")
    return {"function": function, **_timer_settings(device, quick)}


def make_timer(device: torch.device, quick: bool):
    """ms = timer(fn), fn already run once: triton.testing.do_bench (median) on
    CUDA, a perf_counter median on the CPU."""
    if device.type == "cuda":
        from triton.testing import do_bench

        return functools.partial(do_bench, return_mode="median",
                                 **_timer_settings(device, quick))
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
    """max |result - reference| / max |reference|; NaN or inf stays non-finite."""
    diff = (result.double() - reference).abs().max().item()
    if not math.isfinite(diff):
        return diff
    return diff / max(reference.abs().max().item(), torch.finfo(torch.float64).tiny)


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


def case_rows(table: Table, case, dtype: torch.dtype, direction: str, settings: Settings,
              timer, roofline: Roofline | None) -> list[dict]:
    """One row per backend and algorithm for this case, dtype and direction."""
    family, device, batch = table.family, settings.device, settings.batch
    inputs = family.make_inputs(case, batch, dtype, device, settings.channels_last)
    with _cudnn_autotuning_off():
        reference = family.reference(case, inputs, direction)
    flops, nbytes = case.work(batch, dtype, direction)
    tf32 = settings.tf32 and dtype == torch.float32
    base = {"op": table.op, **asdict(case), "shape": case.describe(), "batch": batch,
            "dtype": dtype_name(dtype), "tf32": tf32,
            "layout": "channels_last" if settings.channels_last else "nchw",
            "direction": direction, "flops": flops, "bytes": nbytes,
            "tolerance": TF32_TOLERANCE if tf32 else TOLERANCES[dtype]}
    try:
        torch_fn, torch_results = family.prepare(family.torch_impl, case, inputs, direction)
        torch_errors, torch_mismatches = compare(torch_results, reference)
        del torch_results
        torch_ms = timer(torch_fn)
    except Exception as error:  # e.g. a dtype torch lacks on this device: ours still runs
        torch_ms, torch_errors, torch_mismatches = None, {"message": _one_line(error)}, None

    rows = []
    for backend, algorithm in ((b, a) for b in settings.backends for a in table.algorithms):
        row = {**base, "backend": backend, "algorithm": algorithm, "ours_ms": None,
               "torch_ms": torch_ms, "speedup": None, "tflops": None, "gbps": None,
               "roofline_fraction": None, "errors": {}, "index_mismatches": None,
               "torch_errors": torch_errors, "torch_index_mismatches": torch_mismatches,
               "status": "ok", "message": ""}
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
                ours_ms = timer(fn)
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
        seconds = ours_ms * 1e-3
        precision = "tf32" if tf32 else dtype
        row.update(ours_ms=ours_ms, gbps=nbytes / seconds / 1e9,
                   roofline_fraction=_roofline_fraction(flops, nbytes, precision, roofline,
                                                        seconds))
        if flops is not None:
            row["tflops"] = flops / seconds / 1e12
        if torch_ms is not None:
            row["speedup"] = torch_ms / ours_ms
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


# ---------------------------------------------------------------------------
# The run


class Result(NamedTuple):
    """One row (a JSON row) and the case it belongs to."""

    case: Any
    row: dict


def run(tables: list[Table], settings: Settings, out=sys.stdout) -> list[Result]:
    """Every case of each table x dtypes x directions, one table per family,
    printing rows as they complete; cases not started within
    ``settings.budget_s`` of the start are skipped (one row each with status
    "skipped", no backend run)."""
    with tf32_allowed(settings.tf32):
        return _run(tables, settings, out)


def _run(tables: list[Table], settings: Settings, out) -> list[Result]:
    timer = make_timer(settings.device, settings.quick)
    roofline = roofline_for(settings.device)
    start = time.perf_counter()
    results: list[Result] = []
    for index, table in enumerate(tables):
        if index:
            print(file=out)
        print(f"{table.family.LEGEND}\n{report.table_header(table.family.COLUMNS)}", file=out,
              flush=True)
        for case in table.cases:
            for dtype in settings.dtypes:
                for direction in settings.directions:
                    budget = settings.budget_s
                    if budget is not None and time.perf_counter() - start > budget:
                        results.append(Result(case, {
                            "op": table.op, **asdict(case), "dtype": dtype_name(dtype),
                            "direction": direction, "status": "skipped",
                            "message": f"time budget of {budget:g} s spent"}))
                        continue
                    for row in case_rows(table, case, dtype, direction, settings, timer,
                                         roofline):
                        print(report.table_row(row, table.family.COLUMNS), file=out,
                              flush=True)
                        results.append(Result(case, row))
    return results


def _variant(row: dict) -> str:
    """What a geometric mean is taken over: op, backend, algorithm and dtype
    ("tf32" for float32 allowed to run as TF32)."""
    algorithm = f" {row['algorithm']}" if row.get("algorithm") else ""
    dtype = "tf32" if row.get("tf32") else row["dtype"]
    return f"{row['op']} {row.get('backend')}{algorithm} {dtype}"


def summary(results: list[Result], elapsed_s: float) -> tuple[str, bool]:
    """(text to print after the tables, whether every case passed): status
    counts, geometric-mean speedups per direction and of forward + backward
    (the sums of both rows' times of each case: a training step's
    convolution), for memory-bound ops the fraction of the copy bandwidth
    reached on the cases of at least LARGE_CASE_BYTES, the reasons for
    skipped rows, and the failures."""
    counts = {}
    for _, row in results:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    lines = [f"{len(results)} rows in {elapsed_s:.1f} s: "
             + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))]
    speedups: dict[tuple, list[float]] = {}
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
        if (row.get("roofline_fraction") is not None and row["flops"] is None
                and row["bytes"] >= LARGE_CASE_BYTES):
            bandwidth.setdefault(key, []).append(result)
    for (variant, _), rows in timed.items():
        if set(rows) == set(DIRECTIONS):
            torch_ms = sum(row["torch_ms"] for row in rows.values())
            speedups.setdefault((variant, "forward+backward"), []).append(
                torch_ms / sum(row["ours_ms"] for row in rows.values()))
    for (variant, direction), values in sorted(speedups.items()):
        lines.append(f"geometric-mean speedup {variant} {direction}: "
                     f"{statistics.geometric_mean(values):.2f}x over {len(values)} layers")
    for (variant, direction), large in sorted(bandwidth.items()):
        fractions = [r.row["roofline_fraction"] for r in large]
        lowest = min(large, key=lambda r: r.row["roofline_fraction"]).case
        lines.append(f"copy bandwidth {variant} {direction}: median "
                     f"{statistics.median(fractions):.0%}, lowest {min(fractions):.0%} "
                     f"({lowest.group} {lowest.name}) over the {len(large)} layers "
                     f"moving >= {LARGE_CASE_BYTES / 1e6:g} MB")
    skipped: dict[str, list[dict]] = {}
    for _, row in results:
        if row["status"] == "skipped" and row.get("backend"):
            skipped.setdefault(_variant(row), []).append(row)
    for variant, rows in sorted(skipped.items()):
        reasons = dict.fromkeys(row["message"] for row in rows)
        lines.append(f"skipped {variant}: {len(rows)} rows ({'; '.join(reasons)})")
    for case, row in results:
        if row["status"] in ("error", "wrong"):
            lines.append(f"{row['status'].upper()} {case.group} {case.name} {_variant(row)} "
                         f"{row['direction']}: {row['message']}")
    ok = not any(row["status"] in ("error", "wrong") for _, row in results)
    return "\n".join(lines), ok
