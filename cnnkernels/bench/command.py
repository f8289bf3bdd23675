"""The commands behind ``cnnkernels bench``, ``verify`` and ``tune`` (their
options and help: cnnkernels/bench/__init__.py). Each returns the exit
status: 0, 1 when a result was wrong or a case failed, 2 for a request
this machine or these options cannot satisfy (one line on stderr, no
traceback)."""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time
from dataclasses import replace

import torch

import cnnkernels
from cnnkernels import _backend
from cnnkernels.bench import default_results_dir, driver, history, report
from cnnkernels.bench.environment import environment


def _usage_errors(command: str):
    """Turn a driver.UsageError into its one line on stderr and status 2."""

    def decorate(function):
        @functools.wraps(function)
        def wrapper(args: argparse.Namespace) -> int:
            try:
                return function(args)
            except driver.UsageError as error:
                print(f"cnnkernels {command}: error: {error.message}", file=sys.stderr)
                return 2

        return wrapper

    return decorate


def _section_rows(results: list[driver.Result]) -> list[tuple[str, list[dict]]]:
    """The rows grouped under their section headings, in run order."""
    grouped: dict[str, list[dict]] = {}
    for _, row in results:
        title = f"{row['op']} | {row['dtype']} | {row['layout']} | {row['direction']}"
        grouped.setdefault(title, []).append(row)
    return list(grouped.items())


@_usage_errors("bench")
def bench(args: argparse.Namespace) -> int:
    """Run the benchmark the parsed options describe; 1 if a case failed."""
    if args.end_to_end:
        from cnnkernels.bench import models

        return models.main(args)
    settings = driver.settings_from_args(args)
    if settings.device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # torch at its best: cuDNN picks its algorithm
    tables = driver.select_tables(settings.ops, args.models, args.quick, settings.algorithms)
    torch.manual_seed(0)
    header = environment(settings, "bench")
    print(report.heading(header), flush=True)
    start = time.perf_counter()
    results = driver.run(tables, settings, wide=args.wide)
    text, ok = driver.summary(results, time.perf_counter() - start)
    print(f"\n{text}", flush=True)
    rows = [result.row for result in results]
    comparison = None
    results_dir = args.results_dir or default_results_dir()
    if args.compare:
        previous = history.last_run(results_dir, header["device"])
        if previous is None:
            comparison = (f"--compare: no earlier run recorded for {header['device']} in "
                          f"{results_dir}")
        else:
            comparison, _ = history.compare(previous, rows)
        print(f"\n{comparison}", flush=True)
    if not args.no_history:
        path = history.append(results_dir, header, rows)
        print(f"recorded in {path}")
    _write_outputs(args, header, results, text, comparison)
    return 0 if ok else 1


def _write_outputs(args, header: dict, results: list[driver.Result], summary: str,
                   comparison: str | None) -> None:
    rows = [result.row for result in results]
    if args.json:
        report.write_json(args.json, header, rows)
    if getattr(args, "csv", None):
        report.write_csv(args.csv, rows)
    if getattr(args, "markdown", None):
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(report.markdown(header, _section_rows(results), summary,
                                                 comparison))
    if getattr(args, "plots", None):
        from cnnkernels.bench import plots

        for path in plots.write_plots(rows, args.plots):
            print(f"plot: {path}")


def _verify_tables(settings: driver.Settings, args) -> list[tuple[driver.Settings, list]]:
    """(settings, tables) runs: the compiled backends on the selected cases
    (--quick: one per configuration apart from sizes; H and W capped as bench
    --quick caps them on a CPU or with --quick), and on a CPU the Triton
    interpreter on the tiny form of each family's first case in float32."""
    cpu = settings.device.type == "cpu"
    interpreted = [b for b in settings.backends if b == "triton" and cpu]
    compiled = [b for b in settings.backends if b not in interpreted]
    tables = driver.select_tables(settings.ops, args.models, False, settings.algorithms)
    if args.quick:
        tables = [replace(t, cases=driver.distinct_configurations(t.cases)) for t in tables]
    if cpu or args.quick:
        tables = [replace(t, cases=[case.quick() for case in t.cases]) for t in tables]
    runs = []
    if compiled:
        runs.append((replace(settings, backends=compiled), tables))
    if interpreted:
        tiny = [driver.Table(t.op, t.family, [driver.tiny_case(t.cases[0])], t.algorithms)
                for t in tables]
        dtypes = [d for d in settings.dtypes if d == torch.float32] or settings.dtypes[:1]
        runs.append((replace(settings, backends=interpreted, dtypes=dtypes),
                     tiny))
    return runs


@_usage_errors("verify")
def verify(args: argparse.Namespace) -> int:
    """Every op x backend x algorithm x dtype x layout that runs here against
    float64 torch; 1 if any check failed."""
    if not torch.cuda.is_available() or args.device == "cpu":
        # Triton runs CPU tensors in its interpreter, read when its kernels are defined.
        os.environ.setdefault("TRITON_INTERPRET", "1")
    settings = driver.settings_from_args(args, allow_interpreter=True)
    if not args.dtype:
        supported = [set(_backend.SUPPORTED_DTYPES[(b, settings.device.type)])
                     for b in settings.backends]
        settings = replace(settings, dtypes=list(dict.fromkeys(
            d for d in driver.DTYPE_NAMES.values() if any(d in s for s in supported))))
    if not args.layout and not args.channels_last:
        settings = replace(settings, layouts=list(driver.LAYOUTS))
    torch.manual_seed(0)
    header = environment(settings, "verify")
    print(report.heading(header), flush=True)
    start = time.perf_counter()
    results = []
    for run_settings, tables in _verify_tables(settings, args):
        if run_settings.backends == ["triton"] and run_settings.device.type == "cpu":
            print(report.wrap("triton runs in its interpreter here (no GPU): the first case of "
                              "each family, shrunk to a tiny shape, float32, both layouts"))
        results += driver.run(tables, run_settings, timed=False)
    failed = [(case, row) for case, row in results if row["status"] in ("error", "wrong")]
    counts: dict[str, int] = {}
    for _, row in results:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    print(f"\n{len(results)} checks in {time.perf_counter() - start:.1f} s: "
          + ", ".join(f"{n} {status}" for status, n in sorted(counts.items())))
    for case, row in failed:
        print(report.wrap(f"FAIL {row['op']} {case.group} {case.name} {report.implementation(row)} "
                          f"{row['dtype']} {row['layout']} {row['direction']}: "
                          f"{row['message']}"))
    print("verify: PASS" if not failed else f"verify: FAIL ({len(failed)} checks)")
    if args.json:
        report.write_json(args.json, header, [row for _, row in results])
    return 1 if failed else 0


@_usage_errors("tune")
def tune(args: argparse.Namespace) -> int:
    """Run the autotuned Triton kernels on the reference models' convolutions
    (every layer, each dtype, both layouts, forward and backward) so that
    Triton's autotuner caches each shape's configuration on disk."""
    from cnnkernels.bench import conv2d

    device = torch.device("cuda") if torch.cuda.is_available() else None
    if device is None or _backend.backend_problem("triton", device) is not None:
        why = ("no GPU here" if device is None
               else _backend.backend_problem("triton", device))
        print(f"cnnkernels tune: nothing to tune ({why}): the Triton kernels autotune on a "
              "GPU only; the interpreter runs one configuration")
        return 0
    dtypes = driver.parse_dtypes(args.dtype or ["bfloat16", "float16", "float32"], device)
    cases = driver.select_cases(conv2d.CASES, args.models)
    start = time.perf_counter()
    with cnnkernels.use(backend="triton", conv_algorithm="implicit_gemm"):
        for index, case in enumerate(cases, 1):
            for dtype in dtypes:
                for layout in driver.LAYOUTS:
                    inputs = conv2d.make_inputs(case, args.batch, dtype, device,
                                                layout == "channels_last")
                    for direction in driver.DIRECTIONS:
                        try:
                            conv2d.prepare(conv2d.ours_impl, case, inputs, direction)
                        except ValueError as error:  # the algorithm does not take the layer
                            print(f"  {case.group} {case.name}: {error}")
                            break
            print(f"[{index}/{len(cases)}] {case.group} {case.name} tuned", flush=True)
    torch.cuda.synchronize()
    print(f"tuned {len(cases)} layers x {len(dtypes)} dtypes x 2 layouts in "
          f"{time.perf_counter() - start:.0f} s; cache: "
          f"{os.environ.get('TRITON_CACHE_DIR', '~/.triton/cache')}")
    return 0
