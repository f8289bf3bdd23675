"""Static GPU check without a GPU: registers, spills and shared memory of every kernel.

CI has no GPU, yet a kernel that spills registers to local memory or asks for more shared
memory than the architecture allows is a performance bug (spills) or a launch failure (shared
memory) that only shows on the GPU. This script finds both on any machine:

* Triton: every spec of ``static_check_specs()`` of every Triton module of every family in the
  registry ``cnnkernels.ops.FAMILIES`` (each kernel in each launch configuration its launchers
  use) is compiled for sm_80 and sm_90 with ``triton.compile`` and a ``GPUTarget``, in a process
  pool.
  Registers, spill stores/loads and the stack frame come from the ``ptxas -v`` log of Triton's
  own ptxas run (``TRITON_DUMP_PTXAS_LOG``): the same ptxas binary and options that produced the
  cubin, and the only tool output that gives spills in bytes (``cuobjdump --dump-resource-usage``
  gives registers and stack only, and re-running ptxas on the PTX would have to copy Triton's
  choice of ptxas binary and flags). Triton's cache is bypassed so that every compile runs ptxas.
  Shared memory is ``compiled.metadata.shared``, the bytes Triton requests at launch.
* CUDA: the ``ptxas -v`` report of the CUDA build, which CMake embeds in the extension
  (``cnnkernels._C.cuda.ptxas_report()``, written by csrc/cuda/ptxas_report.py), for every kernel
  and architecture it was built for. Only static shared memory is visible there; it must fit
  the 48 KiB a kernel gets without opting in.

A kernel fails when it spills (spill stores or loads > 0), uses more than 255 registers, or more
shared memory than the limit, or when its ptxas report has no spill figures; a Triton compilation
that fails and a CUDA build whose report is missing or empty fail too. The script prints one
table and exits non-zero with a summary if anything failed.

    python benchmarks/static_check.py [--jobs N] [--arch 80 --arch 90] [--filter TEXT]
                                      [--require-cuda] [--csv PATH]
"""

import os

# TRITON_INTERPRET is read when a Triton kernel is defined, so it must be gone before
# cnnkernels.kernels is imported. TRITON_DUMP_PTXAS_LOG makes Triton print its ptxas -v log, and
# TRITON_ALWAYS_COMPILE makes it run ptxas even when the kernel is in its cache.
os.environ.pop("TRITON_INTERPRET", None)
os.environ["TRITON_DUMP_PTXAS_LOG"] = "1"
os.environ["TRITON_ALWAYS_COMPILE"] = "1"

import argparse
import contextlib
import csv
import dataclasses
import functools
import importlib
import io
import multiprocessing
import re
import shutil
import subprocess
import sys
import time
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from cnnkernels import _ext
from cnnkernels.ops import FAMILIES

MAX_REGISTERS = 255
# Largest shared memory one block can use after opting in (cudaFuncSetAttribute), by compute
# capability: A100 163 KiB, H100 227 KiB. Triton requests its shared memory dynamically.
TRITON_SHARED_LIMIT = {80: 163 * 1024, 90: 227 * 1024}
# Static (__shared__) memory of a CUDA kernel: the 48 KiB available without opting in.
CUDA_STATIC_SHARED_LIMIT = 48 * 1024

# ptxas -v lines; Triton's sm_90 ptxas is called ptxas-blackwell, hence "ptxas\S*".
_PTXAS_START = re.compile(r"^ptxas\S* info\s*: \d+ bytes gmem")
_PTXAS_ENTRY = re.compile(r"^ptxas\S* info\s*: Compiling entry function '([^']+)' for '(sm_\w+)'")
_PTXAS_PROPERTIES = re.compile(r"^ptxas\S* info\s*: Function properties for (\S+)")
_PTXAS_FRAME = re.compile(
    r"^\s*(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads")
_PTXAS_USED = re.compile(r"^ptxas\S* info\s*: Used (\d+) registers")
_PTXAS_SMEM = re.compile(r"(\d+) bytes smem")


@dataclasses.dataclass
class Row:
    """One kernel (or non-inlined device function) on one architecture; None = unknown."""

    kernel: str
    arch: str
    registers: int | None = None
    spill_stores: int | None = None
    spill_loads: int | None = None
    stack: int | None = None
    shared: int | None = None
    shared_limit: int | None = None
    error: str | None = None
    compile_seconds: float | None = None  # Triton only: the whole compilation, not just ptxas

    def problems(self) -> list[str]:
        if self.error is not None:
            return ["compile error"]
        problems = []
        if self.spill_stores is None:
            problems.append("no spill info")
        elif self.spill_stores or self.spill_loads:
            problems.append("spills")
        if self.registers is not None and self.registers > MAX_REGISTERS:
            problems.append("registers")
        if self.shared is not None and self.shared > self.shared_limit:
            problems.append("shared memory")
        return problems


def parse_ptxas_log(text: str) -> list[Row]:
    """Rows for every function in ``ptxas -v`` output (any number of ptxas runs, e.g. one per
    object file and architecture). Entry functions get registers and static shared memory;
    non-inlined device functions only have a stack frame and spills, and take the architecture
    of the ptxas run they appear in."""
    rows: list[Row] = []
    run_rows: list[Row] = []  # rows of the current ptxas run, to give device functions its arch
    current: Row | None = None  # the row the next frame / "Used" line belongs to
    run_arch = ""
    for line in text.splitlines():
        if _PTXAS_START.match(line):
            run_rows, run_arch, current = [], "", None
        elif match := _PTXAS_ENTRY.match(line):
            name, run_arch = match.groups()
            current = Row(name, run_arch, shared=0)
            for row in run_rows:
                row.arch = row.arch or run_arch
            rows.append(current)
            run_rows.append(current)
        elif match := _PTXAS_PROPERTIES.match(line):
            name = match.group(1)
            if current is None or current.kernel != name or current.stack is not None:
                current = Row(name, run_arch)
                rows.append(current)
                run_rows.append(current)
        elif (match := _PTXAS_FRAME.match(line)) and current is not None:
            current.stack, current.spill_stores, current.spill_loads = map(int, match.groups())
        elif (match := _PTXAS_USED.match(line)) and current is not None:
            current.registers = int(match.group(1))
            if smem := _PTXAS_SMEM.search(line):
                current.shared = int(smem.group(1))
    return rows


# Every family's Triton modules, in registry order.
TRITON_MODULES = tuple(module for family in FAMILIES for module in family.triton_modules)


@functools.cache
def module_specs(module: str) -> list[dict]:
    return importlib.import_module(module).static_check_specs()


def compile_triton_spec(module: str, index: int, arch: int) -> list[Row]:
    """Compile one spec for one architecture (in a worker process)."""
    spec = module_specs(module)[index]
    start = time.perf_counter()
    log = io.StringIO()  # Triton prints the ptxas log (and, when ptxas fails, the PTX) here
    try:
        with contextlib.redirect_stdout(log):
            compiled = triton.compile(
                ASTSource(spec["fn"], spec["signature"], constexprs=spec["constexprs"],
                          attrs=spec["attrs"]),
                target=GPUTarget("cuda", arch, 32),
                options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"]},
            )
    except Exception as error:
        return [Row(spec["name"], f"sm_{arch}", error=f"{type(error).__name__}: {error}",
                    compile_seconds=time.perf_counter() - start)]
    seconds = time.perf_counter() - start
    rows = parse_ptxas_log(log.getvalue())
    if not rows:
        return [Row(spec["name"], f"sm_{arch}", compile_seconds=seconds,
                    error="Triton printed no ptxas -v log (TRITON_DUMP_PTXAS_LOG ignored?)")]
    for row in rows:
        is_kernel = row.registers is not None
        row.kernel = spec["name"] if is_kernel else f"{spec['name']} / {row.kernel}"
        row.shared = compiled.metadata.shared if is_kernel else None
        row.shared_limit = TRITON_SHARED_LIMIT[arch]
        row.compile_seconds = seconds
    return rows


def _size_hint(spec: dict) -> int:
    """Product of the integer constexprs (block sizes, unrolled loop counts): the generated
    code, and so compile time, grows with them."""
    hint = 1
    for value in spec["constexprs"].values():
        if isinstance(value, int):
            hint *= max(value, 1)
    return hint


def check_triton(archs: list[int], name_filter: str, jobs: int) -> list[Row]:
    tasks = [
        (module, index, arch)
        for module in TRITON_MODULES
        for index, spec in enumerate(module_specs(module))
        if name_filter in spec["name"]
        for arch in archs
    ]
    # Longest compilations first, so that none of them starts last and runs alone.
    tasks.sort(key=lambda task: -_size_hint(module_specs(task[0])[task[1]]))
    print(f"Triton: compiling {len(tasks)} kernels (sm_{', sm_'.join(map(str, archs))}) "
          f"with {jobs} processes", flush=True)
    results: dict[tuple[str, int, int], list[Row]] = {}
    start = time.perf_counter()
    next_report = 0.1
    with ProcessPoolExecutor(max_workers=jobs,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(compile_triton_spec, *task): task for task in tasks}
        for future in as_completed(futures):
            task = futures[future]
            try:
                results[task] = future.result()
            except Exception as error:  # the worker process died (e.g. a crash in LLVM)
                name = module_specs(task[0])[task[1]]["name"]
                results[task] = [Row(name, f"sm_{task[2]}", error=repr(error))]
            if len(results) >= next_report * len(tasks):
                print(f"  {len(results)}/{len(tasks)} compiled "
                      f"({time.perf_counter() - start:.0f} s)", flush=True)
                next_report = len(results) / len(tasks) + 0.1
    ordered = sorted(results, key=lambda task: (TRITON_MODULES.index(task[0]),
                                                task[1], task[2]))
    rows = [row for task in ordered for row in results[task]]
    timed = [row for row in rows if row.compile_seconds is not None]
    if timed:
        slowest = sorted(timed, key=lambda row: row.compile_seconds, reverse=True)[:5]
        print("Slowest compilations: " + "; ".join(
            f"{row.kernel} {row.arch} {row.compile_seconds:.0f} s" for row in slowest))
    return rows


# Every CUDA kernel lives in cnnk::cuda, most in an anonymous namespace: dropped from the table.
_CUDA_NAME_NOISE = ("(anonymous namespace)::", "cnnk::cuda::")


def demangle(names: list[str]) -> list[str]:
    """C++ names without their parameter lists (template arguments tell instances apart)."""
    if not names or shutil.which("c++filt") is None:
        return names
    output = subprocess.run(["c++filt", "--no-params"], input="\n".join(names),
                            capture_output=True, text=True, check=True).stdout
    demangled = output.splitlines()
    for noise in _CUDA_NAME_NOISE:
        demangled = [name.replace(noise, "") for name in demangled]
    return demangled


def cuda_report_rows(report: str) -> list[Row]:
    """Rows of a CUDA build's ptxas report, with demangled names and the static smem limit."""
    rows = parse_ptxas_log(report)
    for row, name in zip(rows, demangle([row.kernel for row in rows]), strict=True):
        row.kernel = name
        row.shared_limit = CUDA_STATIC_SHARED_LIMIT if row.shared is not None else None
    return rows


def check_cuda(name_filter: str, require_cuda: bool) -> tuple[list[Row], str | None]:
    """Rows from the ptxas report embedded in the CUDA build, and a failure message (or None)."""
    info = _ext.build_info()
    if not info["built"] or not info["cuda"]:
        reason = (f"cnnkernels._C is not importable ({info['error']})" if not info["built"]
                  else "cnnkernels._C was built without CUDA (no nvcc at build time, "
                       "or CNNK_WITH_CUDA=0)")
        print(f"CUDA: skipped, {reason}; rebuild with CNNK_WITH_CUDA=1 to check the CUDA kernels")
        return [], ("CUDA kernels required (--require-cuda) but not built: " + reason
                    if require_cuda else None)
    cuda = _ext.cuda_kernels()
    if not hasattr(cuda, "ptxas_report"):
        return [], ("CUDA: cnnkernels._C was built with CUDA but has no ptxas report "
                    "(_C.cuda.ptxas_report); rebuild it")
    rows = cuda_report_rows(cuda.ptxas_report())
    if not any(row.registers is not None for row in rows):
        return [], "CUDA: the ptxas report of cnnkernels._C lists no kernels"
    print(f"CUDA: ptxas report of cnnkernels._C (archs {info['cuda_archs']}, "
          f"CUDA {info['cuda_version']}), {len(rows)} functions")
    return [row for row in rows if name_filter in row.kernel], None


COLUMNS = ("kernel", "arch", "registers", "spill stores/loads", "stack", "shared", "limit",
           "status")


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def table_cells(row: Row) -> list[str]:
    spills = ("-" if row.spill_stores is None
              else f"{row.spill_stores}/{row.spill_loads}")
    return [row.kernel, row.arch, _cell(row.registers), spills, _cell(row.stack),
            _cell(row.shared), _cell(row.shared_limit), ", ".join(row.problems()) or "ok"]


def print_table(rows: list[Row]) -> None:
    lines = [list(COLUMNS)] + [table_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    for line in lines:
        # Left-align text (kernel, arch, status), right-align numbers.
        print("  ".join(cell.ljust(width) if i in (0, 1, len(COLUMNS) - 1) else cell.rjust(width)
                        for i, (cell, width) in enumerate(zip(line, widths, strict=True))).rstrip())


def write_csv(rows: list[Row], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["kernel", "arch", "registers", "spill_stores", "spill_loads",
                         "stack_bytes", "shared_bytes", "shared_limit_bytes", "status",
                         "compile_seconds"])
        for row in rows:
            seconds = None if row.compile_seconds is None else f"{row.compile_seconds:.1f}"
            writer.writerow([row.kernel, row.arch, row.registers, row.spill_stores,
                             row.spill_loads, row.stack, row.shared, row.shared_limit,
                             "; ".join(row.problems()) or "ok", seconds])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="compiler processes (default: CPU count)")
    parser.add_argument("--arch", type=int, action="append", choices=sorted(TRITON_SHARED_LIMIT),
                        help="compute capability to compile the Triton kernels for, repeatable "
                             "(default: 80 and 90)")
    parser.add_argument("--filter", default="",
                        help="only kernels whose name (spec name, demangled CUDA name) "
                             "contains this text")
    parser.add_argument("--require-cuda", action="store_true",
                        help="fail when cnnkernels._C was built without CUDA")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    archs = args.arch or sorted(TRITON_SHARED_LIMIT)

    start = time.perf_counter()
    rows = check_triton(archs, args.filter, max(args.jobs, 1))
    cuda_rows, cuda_failure = check_cuda(args.filter, args.require_cuda)
    rows += cuda_rows
    print()
    print_table(rows)
    if args.csv:
        write_csv(rows, args.csv)

    failed = [row for row in rows if row.problems()]
    for row in failed:
        if row.error is not None:
            print(f"\n{row.kernel} {row.arch}: {row.error}")
    counts = Counter(problem for row in failed for problem in row.problems())
    elapsed = time.perf_counter() - start
    failures = []
    if failed:
        details = ", ".join(f"{count} {problem}" for problem, count in counts.items())
        failures.append(f"{len(failed)} of {len(rows)} kernels fail the static check ({details})")
    if cuda_failure:
        failures.append(cuda_failure)
    print()
    if failures:
        print(f"FAILED: {'; '.join(failures)}; wall time {elapsed:.0f} s")
        return 1
    print(f"OK: {len(rows)} kernels, no spills, registers and shared memory within limits; "
          f"wall time {elapsed:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
