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

Tensor cores, shared memory per pipeline stage and occupancy:

* ``mma``: the tensor-core instructions in the kernel's SASS, the opcodes ending in MMA (HMMA
  from ``mma.sync``, and TF32 dots, on sm_80; HGMMA from ``wgmma`` or HMMA on sm_90; IMMA, DMMA,
  QGMMA, ... likewise). Triton: its cubin disassembled with the ``nvdisasm`` Triton ships, in the
  worker that compiled it. ptxas emits tensor-core instructions only for the PTX MMA instructions
  (``mma``, ``wmma.mma``, ``wgmma.mma_async``, ``tcgen05.mma``), so a kernel whose PTX has none
  counts 0 without a disassembly (0.2 s per cubin, which would add a third to the run); every
  declared tensor-core kernel is disassembled. CUDA: ``cuobjdump -sass`` of the extension, per
  function and architecture, in the same process pool. A kernel declared a tensor-core kernel
  (Triton: ``compile_spec(..., tensor_cores=True)``; CUDA: ``mma`` in its function name) fails
  when its count is 0, and any kernel missing from the disassembly fails.
* ``stage``: Triton only, the shared memory of one pipeline stage, read from the kernel's TTGIR:
  the software pipeliner gives each pipelined load a buffer ``ttg.local_alloc`` of shape
  ``stages x tile`` (mutable, no initial value); one stage is one tile of each of them, and
  ``stages`` is their leading dimension. Kernels without such buffers show "-".
* ``blocks`` / ``warps``: resident blocks and warps per SM (``occupancy()``, the rules of CUDA's
  occupancy calculator) from registers per thread, threads per block and shared memory per
  block. Triton: ``num_warps`` * 32 threads, ``compiled.metadata.shared`` bytes. CUDA: the
  block size is the ``__launch_bounds__`` maximum recorded in the cubin (EIATTR_MAX_THREADS of
  ``cuobjdump -elf``), blank without one, and only static shared memory is known. A kernel of
  which no block fits on an SM (a launch failure) fails.

A kernel fails when it spills (spill stores or loads > 0), uses more than 255 registers, or more
shared memory than the limit, or when its ptxas report has no spill figures; a Triton compilation
that fails and a CUDA build whose report is missing or empty fail too. The script prints one
table per architecture (the stack frame and the shared memory limit are in the CSV only) and
exits non-zero with a summary if anything failed.

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
import tempfile
import time
from collections import Counter
from concurrent.futures import Future, ProcessPoolExecutor, as_completed

import triton
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

from cnnkernels import _ext
from cnnkernels.ops import FAMILIES

MAX_REGISTERS = 255


@dataclasses.dataclass(frozen=True)
class SmLimits:
    """Resources of one SM and the per-block limits of an architecture (CUDA C++ programming
    guide, "Technical Specifications per Compute Capability"; cudaDeviceProp of the GPU)."""

    gpu: str
    shared: int  # shared memory per SM for blocks (sharedMemPerMultiprocessor)
    registers: int = 64 * 1024
    registers_per_block: int = 64 * 1024
    threads: int = 2048
    threads_per_block: int = 1024
    blocks: int = 32
    reserved_shared_per_block: int = 1024  # taken by the driver from every block (sm_80 on)

    @property
    def shared_per_block(self) -> int:
        """Largest shared memory one block can use after opting in (cudaFuncSetAttribute):
        sharedMemPerBlockOptin, the SM's less the block's reserved KiB."""
        return self.shared - self.reserved_shared_per_block


SM_LIMITS = {80: SmLimits("A100", shared=164 * 1024), 90: SmLimits("H100", shared=228 * 1024)}
# Triton requests its shared memory dynamically and opts in to the largest.
TRITON_SHARED_LIMIT = {arch: limits.shared_per_block for arch, limits in SM_LIMITS.items()}
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


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def occupancy(limits: SmLimits, threads: int, registers: int, shared: int) -> tuple[int, int]:
    """Resident blocks and warps per SM of a kernel with ``threads`` threads per block,
    ``registers`` per thread and ``shared`` bytes of shared memory per block (static + dynamic).

    The rules of CUDA's occupancy calculator, ``cuda_occupancy.h`` (cudaOccMaxBlocksPerSM*Limit,
    CUDA 13.0) for sm_80 and sm_90 with the default carveout (all of the SM's shared memory) and
    no partitioned global caching:

    * warps: ``threads / 32`` rounded up; at most 2048 threads per SM;
    * registers: allocated per warp, ``registers * 32`` rounded up to 256; each of the SM's 4
      sub-partitions holds ``floor(16384 / that)`` warps; a block must fit the 64K registers a
      block may have, counted with its warps rounded up to a multiple of 4;
    * shared memory: ``shared`` plus the 1 KiB the driver reserves per block, rounded up to 128
      bytes; ``floor(SM's shared memory / that)`` blocks;
    * at most 32 blocks per SM.
    """
    warps = -(-threads // 32)
    if threads > limits.threads_per_block:
        return 0, 0
    by_warps = limits.threads // 32 // warps
    registers_per_warp = _round_up(registers * 32, 256)
    if (registers_per_warp * _round_up(warps, 4) > limits.registers_per_block
            or registers > 256):
        by_registers = 0
    elif registers_per_warp == 0:
        by_registers = limits.blocks
    else:
        by_registers = (limits.registers // 4 // registers_per_warp) * 4 // warps
    shared_per_block = _round_up(shared + limits.reserved_shared_per_block, 128)
    by_shared = limits.shared // shared_per_block
    blocks = min(limits.blocks, by_warps, by_registers, by_shared)
    return blocks, blocks * warps


# A SASS instruction line of cuobjdump -sass / nvdisasm: "/*0a30*/  @!P0 HMMA.16816.F32 R4, ...".
_SASS_INSTRUCTION = re.compile(r"^\s*/\*[0-9a-f]+\*/\s+(?:@!?U?P(?:T|\d+)\s+)?([A-Z][A-Z0-9_]*)")
_SASS_FUNCTION = re.compile(r"^\s*Function : (\S+)")
# The fatbin entry's header; its "code for sm_90" line drops the "a" with CUDA 12's cuobjdump.
_SASS_ARCH = re.compile(r"^arch = (sm_\w+)")
# The PTX instructions that ptxas turns into tensor-core instructions.
_PTX_MMA = re.compile(r"\b(?:mma\.s|wmma\.mma|wgmma\.mma_async|tcgen05\.mma)")


def is_mma_opcode(opcode: str) -> bool:
    """Tensor-core opcodes all end in MMA: HMMA, IMMA, DMMA, HGMMA, QGMMA, UTCHMMA, ..."""
    return opcode.endswith("MMA")


def count_mma(sass: str) -> int:
    """Tensor-core instructions in a disassembly of one kernel."""
    return sum(1 for line in sass.splitlines()
               if (match := _SASS_INSTRUCTION.match(line)) and is_mma_opcode(match.group(1)))


def mma_by_function(sass: str) -> dict[tuple[str, str], int]:
    """Tensor-core instructions per (mangled function name, architecture) in ``cuobjdump -sass``
    output of a binary with several cubins."""
    counts: dict[tuple[str, str], int] = {}
    arch, function = "", None
    for line in sass.splitlines():
        if match := _SASS_ARCH.match(line):
            arch, function = match.group(1), None
        elif match := _SASS_FUNCTION.match(line):
            function = (match.group(1), arch)
            counts[function] = 0
        elif (function is not None and (match := _SASS_INSTRUCTION.match(line))
              and is_mma_opcode(match.group(1))):
            counts[function] += 1
    return counts


def max_threads_by_function(elf_dump: str) -> dict[tuple[str, str], int]:
    """Block size limit (``__launch_bounds__``, EIATTR_MAX_THREADS: x y z) per (mangled function
    name, architecture) in ``cuobjdump -elf`` output."""
    threads: dict[tuple[str, str], int] = {}
    arch, function, attribute = "", None, ""
    for line in elf_dump.splitlines():
        if match := _SASS_ARCH.match(line):
            arch, function = match.group(1), None
        elif line.startswith(".nv.info."):
            function = (line[len(".nv.info."):].strip(), arch)
        elif line.strip().startswith("Attribute:"):
            attribute = line.split()[-1]
        elif (function is not None and attribute == "EIATTR_MAX_THREADS"
              and line.strip().startswith("Value:")):
            x, y, z = (int(value, 16) for value in line.split()[1:4])
            threads[function] = x * y * z
    return threads


_TTGIR_STAGE_BUFFER = re.compile(
    r"ttg\.local_alloc\s*:\s*\(\)\s*->\s*!ttg\.memdesc<(\d+(?:x\d+){2,})x([a-z]\w*?)(\d+)\w*,"
    r"[^>]*\bmutable>")


def stage_shared(ttgir: str) -> tuple[int | None, int | None]:
    """Shared memory of one pipeline stage and the number of stage buffers, from a Triton
    kernel's TTGIR: the pipeliner's buffers are ``local_alloc``s of ``stages x tile`` (2-D or
    larger tiles) with no initial value; (None, None) when there are none. The sizes come from
    each allocation's shape and element type, the same numbers Triton's allocator sums."""
    stage_bytes, stages = 0, 0
    for match in _TTGIR_STAGE_BUFFER.finditer(ttgir):
        dims = [int(dim) for dim in match.group(1).split("x")]
        tile = 1
        for dim in dims[1:]:
            tile *= dim
        stage_bytes += tile * int(match.group(3)) // 8
        stages = max(stages, dims[0])
    return (stage_bytes, stages) if stages else (None, None)


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
    stage_shared: int | None = None
    stages: int | None = None
    threads: int | None = None
    blocks: int | None = None  # resident per SM
    warps: int | None = None  # resident per SM
    tensor_cores: bool = False  # declared: its SASS must have MMA instructions
    mma: int | None = None
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
        if self.blocks == 0:
            problems.append("no block fits an SM")
        if self.registers is not None and self.mma is None:
            problems.append("no SASS")  # a kernel the disassembly lacks: the check is blind
        elif self.tensor_cores and not self.mma:
            problems.append("no mma")
        return problems

    def set_occupancy(self) -> None:
        """Blocks and warps per SM, when threads, registers and shared memory are known."""
        if None not in (self.threads, self.registers, self.shared):
            limits = SM_LIMITS[arch_number(self.arch)]
            self.blocks, self.warps = occupancy(limits, self.threads, self.registers,
                                                self.shared)


def arch_number(arch: str) -> int:
    """80 for "sm_80", 90 for "sm_90a"."""
    return int(re.match(r"sm_(\d+)", arch).group(1))


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
                options={"num_warps": spec["num_warps"], "num_stages": spec["num_stages"],
                         **({"maxnreg": spec["maxnreg"]} if spec.get("maxnreg") else {})},
            )
    except Exception as error:
        return [Row(spec["name"], f"sm_{arch}", error=f"{type(error).__name__}: {error}",
                    compile_seconds=time.perf_counter() - start)]
    seconds = time.perf_counter() - start
    rows = parse_ptxas_log(log.getvalue())
    if not rows:
        return [Row(spec["name"], f"sm_{arch}", compile_seconds=seconds,
                    error="Triton printed no ptxas -v log (TRITON_DUMP_PTXAS_LOG ignored?)")]
    stage_bytes, stages = stage_shared(compiled.asm["ttgir"])
    mma = (triton_cubin_mma(compiled.asm["cubin"])
           if spec["tensor_cores"] or _PTX_MMA.search(compiled.asm["ptx"]) else 0)
    for row in rows:
        row.shared_limit = TRITON_SHARED_LIMIT[arch]
        row.compile_seconds = seconds
        if row.registers is None:  # a non-inlined device function: its caller has the figures
            row.kernel = f"{spec['name']} / {row.kernel}"
            continue
        row.kernel = spec["name"]
        row.tensor_cores = spec["tensor_cores"]
        row.shared = compiled.metadata.shared
        row.stage_shared, row.stages = stage_bytes, stages
        row.threads = compiled.metadata.num_warps * 32
        row.mma = mma
        row.set_occupancy()
    return rows


def triton_cubin_mma(cubin: bytes) -> int:
    """Tensor-core instructions in a Triton cubin (one kernel), disassembled with the nvdisasm
    Triton ships (code sections only, no dataflow analysis: the fastest listing)."""
    with tempfile.NamedTemporaryFile(suffix=".cubin") as file:
        file.write(cubin)
        file.flush()
        sass = subprocess.run([triton.knobs.nvidia.nvdisasm.path, "-c", "-ndf", file.name],
                              capture_output=True, text=True, check=True).stdout
    return count_mma(sass)


def _size_hint(spec: dict) -> int:
    """Product of the integer constexprs (block sizes, unrolled loop counts): the generated
    code, and so compile time, grows with them."""
    hint = 1
    for value in spec["constexprs"].values():
        if isinstance(value, int):
            hint *= max(value, 1)
    return hint


def check_triton(pool: ProcessPoolExecutor, archs: list[int], name_filter: str,
                 jobs: int) -> list[Row]:
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


def cuda_binary_facts(path: str) -> tuple[dict, dict]:
    """``mma_by_function`` and ``max_threads_by_function`` of a binary with embedded cubins (in
    a worker process: disassembling the whole extension takes seconds)."""
    def dump(option: str) -> str:
        return subprocess.run([triton.knobs.nvidia.cuobjdump.path, option, path],
                              capture_output=True, text=True, check=True).stdout
    return mma_by_function(dump("-sass")), max_threads_by_function(dump("-elf"))


def cuda_report_rows(report: str, mma: dict, max_threads: dict) -> list[Row]:
    """Rows of a CUDA build's ptxas report, with demangled names, the static smem limit, and the
    tensor-core count and block size (``cuda_binary_facts``) of each kernel; a kernel whose name
    has "mma" (template arguments aside) is declared a tensor-core kernel."""
    rows = parse_ptxas_log(report)
    for row, name in zip(rows, demangle([row.kernel for row in rows]), strict=True):
        key = (row.kernel, row.arch)
        row.kernel = name
        row.shared_limit = CUDA_STATIC_SHARED_LIMIT if row.shared is not None else None
        if row.registers is not None:
            row.mma = mma.get(key)
            row.tensor_cores = "mma" in name.split("<")[0]
            row.threads = max_threads.get(key)
            row.set_occupancy()
    return rows


def extension_path() -> str | None:
    """The CUDA build of cnnkernels._C, or None without one."""
    info = _ext.build_info()
    return _ext._C.__file__ if info["built"] and info["cuda"] else None


def check_cuda(name_filter: str, require_cuda: bool,
               facts: Future | None) -> tuple[list[Row], str | None]:
    """Rows from the ptxas report embedded in the CUDA build, completed with the facts of its
    cubins (``facts``, the future of ``cuda_binary_facts``), and a failure message (or None)."""
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
    try:
        mma, max_threads = facts.result()
    except (OSError, subprocess.CalledProcessError) as error:
        return [], f"CUDA: cuobjdump failed on cnnkernels._C: {error}"
    rows = cuda_report_rows(cuda.ptxas_report(), mma, max_threads)
    if not any(row.registers is not None for row in rows):
        return [], "CUDA: the ptxas report of cnnkernels._C lists no kernels"
    print(f"CUDA: ptxas report of cnnkernels._C (archs {info['cuda_archs']}, "
          f"CUDA {info['cuda_version']}), {len(rows)} functions")
    return [row for row in rows if name_filter in row.kernel], None


# The printed table: one per architecture; the stack frame and the limits are in the CSV.
COLUMNS = ("kernel", "regs", "spills", "shared", "stage", "blocks", "warps", "mma", "status")
TABLE_WIDTH = 120


def _cell(value: int | None) -> str:
    return "-" if value is None else str(value)


def table_cells(row: Row) -> list[str]:
    spills = ("-" if row.spill_stores is None
              else f"{row.spill_stores}/{row.spill_loads}")
    stage = "-" if row.stage_shared is None else f"{row.stage_shared}x{row.stages}"
    mma = _cell(row.mma) + ("*" if row.tensor_cores else "")
    return [row.kernel, _cell(row.registers), spills, _cell(row.shared), stage,
            _cell(row.blocks), _cell(row.warps), mma, ", ".join(row.problems()) or "ok"]


def format_table(rows: list[Row]) -> list[str]:
    """The lines of one table: numbers right-aligned, text left-aligned; a kernel name too long
    for the table's width has a line of its own, above its figures."""
    lines = [list(COLUMNS)] + [table_cells(row) for row in rows]
    widths = [max(len(line[i]) for line in lines) for i in range(1, len(COLUMNS) - 1)]
    name_width = max(len(COLUMNS[0]), TABLE_WIDTH - sum(widths) - 2 * (len(COLUMNS) - 1)
                     - len(COLUMNS[-1]))
    out = []
    for kernel, *numbers, status in lines:
        if len(kernel) > name_width:
            out.append(kernel)
            kernel = ""
        cells = [kernel.ljust(name_width)] + [
            cell.rjust(width) for cell, width in zip(numbers, widths, strict=True)] + [status]
        out.append("  ".join(cells).rstrip())
    return out


def print_tables(rows: list[Row]) -> None:
    for arch in sorted({row.arch for row in rows}, key=lambda arch: (arch_number(arch), arch)):
        limits = SM_LIMITS[arch_number(arch)]
        print(f"\n{arch} ({limits.gpu}): per SM {limits.registers // 1024}K registers, "
              f"{limits.threads} threads, {limits.blocks} blocks, {limits.shared // 1024} KiB "
              f"shared memory;\nper block {limits.shared_per_block // 1024} KiB shared memory "
              f"(Triton, dynamic), {CUDA_STATIC_SHARED_LIMIT // 1024} KiB (CUDA, static)")
        print("\n".join(format_table([row for row in rows if row.arch == arch])))
    print("\nspills: stores/loads bytes; stage: shared bytes of one pipeline stage x stages; "
          "blocks, warps: resident per SM;\nmma: tensor-core instructions in the SASS "
          "(* declared a tensor-core kernel)")


CSV_COLUMNS = ("kernel", "arch", "registers", "spill_stores", "spill_loads", "stack_bytes",
               "shared_bytes", "shared_limit_bytes", "stage_shared_bytes", "stages", "threads",
               "occupancy_blocks", "occupancy_warps", "tensor_cores", "mma", "status",
               "compile_seconds")


def write_csv(rows: list[Row], path: str) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            seconds = None if row.compile_seconds is None else f"{row.compile_seconds:.1f}"
            writer.writerow([row.kernel, row.arch, row.registers, row.spill_stores,
                             row.spill_loads, row.stack, row.shared, row.shared_limit,
                             row.stage_shared, row.stages, row.threads, row.blocks, row.warps,
                             int(row.tensor_cores), row.mma,
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
    parser.add_argument("--triton-only", action="store_true",
                        help="check the Triton kernels only (the CUDA build's rows do not depend "
                             "on the Triton version: CI's second Triton release skips them)")
    parser.add_argument("--csv", help="also write the table to this CSV file")
    args = parser.parse_args(argv)
    if args.triton_only and args.require_cuda:
        parser.error("--triton-only and --require-cuda exclude each other")
    archs = args.arch or sorted(TRITON_SHARED_LIMIT)

    start = time.perf_counter()
    jobs = max(args.jobs, 1)
    with ProcessPoolExecutor(max_workers=jobs,
                             mp_context=multiprocessing.get_context("spawn")) as pool:
        # Submitted first: the longest task, it runs beside the Triton compilations.
        so_path = None if args.triton_only else extension_path()
        facts = pool.submit(cuda_binary_facts, so_path) if so_path else None
        rows = check_triton(pool, archs, args.filter, jobs)
        cuda_rows, cuda_failure = ([], None) if args.triton_only else \
            check_cuda(args.filter, args.require_cuda, facts)
    rows += cuda_rows
    print_tables(rows)
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
