"""benchmarks/static_check.py: the occupancy formula, the SASS and TTGIR readers, and a real
compilation of a tiny tl.dot kernel whose tensor-core instructions the check must count."""

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "static_check.py"


@pytest.fixture(scope="module")
def static_check():
    """The script as a module. Importing it drops TRITON_INTERPRET from the environment (the
    check compiles real kernels), which the interpreter tests of this process need: restored."""
    saved = dict(os.environ)
    try:
        spec = importlib.util.spec_from_file_location("static_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    return module


# Cases worked by hand from cuda_occupancy.h (sm_80: 64K registers in 4 sub-partitions of 16K,
# 256-register allocation per warp, 64 warps, 32 blocks, 164 KiB shared + 1 KiB reserved/block).
@pytest.mark.parametrize(("arch", "threads", "registers", "shared", "blocks", "warps"), [
    # 64 x 32 = 2048 registers per warp: 8 warps per sub-partition, 32 per SM, 8 blocks of 4.
    (80, 128, 64, 0, 8, 32),
    # 128 x 32 = 4096 per warp: 16 warps per SM, 2 blocks of 8.
    (80, 256, 128, 0, 2, 16),
    # 100 KiB + 1 KiB per block: one block in 164 KiB; two in the H100's 228 KiB.
    (80, 128, 32, 100 * 1024, 1, 4),
    (90, 128, 32, 100 * 1024, 2, 8),
    # 33 x 32 = 1056 rounds up to 1280: 12 warps per sub-partition, 48 per SM, 12 blocks of 4.
    (80, 128, 33, 0, 12, 48),
    # 16 registers: the thread limit (64 warps) binds before the registers: 16 blocks of 4.
    (80, 128, 16, 0, 16, 64),
    # 32-thread blocks with few registers: the 32-blocks-per-SM limit binds.
    (80, 32, 16, 0, 32, 32),
    # 1024 threads x 64 registers use the whole register file: one block.
    (80, 1024, 64, 0, 1, 32),
    # 1024 threads x 65 registers (2304 per warp) exceed the 64K a block may have: no block.
    (80, 1024, 65, 0, 0, 0),
    # The whole 163 KiB a block may opt in to fits once; a byte more (over 164 KiB) does not.
    (80, 128, 32, 163 * 1024, 1, 4),
    (80, 128, 32, 163 * 1024 + 1, 0, 0),
])
def test_occupancy_matches_the_occupancy_calculator(static_check, arch, threads, registers,
                                                    shared, blocks, warps):
    limits = static_check.SM_LIMITS[arch]
    assert static_check.occupancy(limits, threads, registers, shared) == (blocks, warps)


def test_mma_counted_per_function_and_architecture(static_check):
    sass = """
Fatbin elf code:
================
arch = sm_80
	code for sm_80
		Function : _Z8gemm_mmav
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;
        /*0020*/              @!P0 HMMA.16816.F32.BF16 R16, R8, R14, R16 ;
        /*0030*/                   EXIT ;
		Function : _Z6directv
        /*0000*/                   FFMA R1, R2, R3, R1 ;
Fatbin elf code:
================
arch = sm_90a
	code for sm_90
		Function : _Z8gemm_mmav
        /*0000*/                   HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], R24 ;
        /*0010*/                   WARPGROUP.ARRIVE ;
"""
    assert static_check.mma_by_function(sass) == {
        ("_Z8gemm_mmav", "sm_80"): 2, ("_Z6directv", "sm_80"): 0,
        ("_Z8gemm_mmav", "sm_90a"): 1}


def test_block_size_read_from_launch_bounds(static_check):
    elf = """
Fatbin elf code:
================
arch = sm_90a
.nv.info._Z6directv
	<0x1>
	Attribute:	EIATTR_MAX_THREADS
	Format:	EIFMT_SVAL
	Value:	0x100 0x1 0x1
	<0x2>
	Attribute:	EIATTR_CRS_STACK_SIZE
	Format:	EIFMT_SVAL
	Value:	0x0
.nv.info._Z7unboundv
	Attribute:	EIATTR_CRS_STACK_SIZE
	Format:	EIFMT_SVAL
	Value:	0x0
"""
    assert static_check.max_threads_by_function(elf) == {("_Z6directv", "sm_90a"): 256}


def test_stage_shared_reads_the_pipelined_buffers(static_check):
    ttgir = """
    %a = ttg.local_alloc : () -> !ttg.memdesc<3x128x64xbf16, #shared, #smem, mutable> loc(#l)
    %b = ttg.local_alloc : () -> !ttg.memdesc<3x64x128xbf16, #shared1, #smem, mutable> loc(#l)
    %bar = ttg.local_alloc : () -> !ttg.memdesc<3xi64, #shared2, #smem, mutable> loc(#l)
    %c = ttg.local_alloc %t : (tensor<128x128xf32, #blocked>) -> !ttg.memdesc<128x128xf32, #s>
"""
    assert static_check.stage_shared(ttgir) == ((128 * 64 + 64 * 128) * 2, 3)
    assert static_check.stage_shared("%c = ttg.local_alloc %t") == (None, None)


# A kernel module in the form the check reads (static_check_specs() of compile_spec entries):
# one 64x64 tile of a K loop of 64x32 by 32x64 dots.
PROBE_MODULE = '''
import triton
import triton.language as tl

from cnnkernels.kernels import compile_spec


@triton.jit
def dot_kernel(a_ptr, b_ptr, c_ptr, K, PRECISION: tl.constexpr):
    m = tl.arange(0, 64)
    n = tl.arange(0, 64)
    k = tl.arange(0, 32)
    acc = tl.zeros((64, 64), tl.float32)
    for k0 in range(0, K, 32):
        a = tl.load(a_ptr + m[:, None] * K + (k0 + k)[None, :])
        b = tl.load(b_ptr + (k0 + k)[:, None] * 64 + n[None, :])
        acc += tl.dot(a, b, input_precision=PRECISION)
    tl.store(c_ptr + m[:, None] * 64 + n[None, :], acc)


def static_check_specs():
    def spec(name, dtype, precision):
        return compile_spec(name, dot_kernel, pointers={"a_ptr": dtype, "b_ptr": dtype,
                                                        "c_ptr": "*fp32"},
                            constexprs={"PRECISION": precision}, num_warps=4, num_stages=3,
                            tensor_cores=True)
    return [spec("fp16", "*fp16", "tf32"), spec("tf32", "*fp32", "tf32"),
            spec("ieee", "*fp32", "ieee")]
'''

RUN_PROBE = '''
import dataclasses, json, sys
sys.path[:0] = sys.argv[1:]
import static_check
rows = {}
for index, name in enumerate(("fp16", "tf32", "ieee")):
    for arch in (80, 90):
        row, = static_check.compile_triton_spec("probe_dot", index, arch)
        rows[f"{name} {arch}"] = {**dataclasses.asdict(row), "problems": row.problems(),
                                  "metadata_shared": row.shared}
print(json.dumps(rows))
'''


@pytest.fixture(scope="module")
def probe_rows(tmp_path_factory):
    """The check's rows for the probe kernels on sm_80 and sm_90, compiled in a child process
    (this one defines kernels for the interpreter)."""
    folder = tmp_path_factory.mktemp("probe")
    (folder / "probe_dot.py").write_text(PROBE_MODULE)
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    result = subprocess.run(
        [sys.executable, "-c", RUN_PROBE, str(folder), str(SCRIPT.parent)], env=env,
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@pytest.mark.parametrize("arch", [80, 90])
def test_fp16_and_tf32_dots_run_on_tensor_cores(probe_rows, arch):
    for name in ("fp16", "tf32"):
        row = probe_rows[f"{name} {arch}"]
        assert row["error"] is None
        assert row["mma"] > 0, row
        assert row["problems"] == []


@pytest.mark.parametrize("arch", [80, 90])
def test_ieee_fp32_dot_has_no_mma_and_fails_as_declared_tensor_core_kernel(probe_rows, arch):
    row = probe_rows[f"ieee {arch}"]
    assert row["error"] is None
    assert row["mma"] == 0
    assert row["problems"] == ["no mma"]


@pytest.mark.parametrize("arch", [80, 90])
def test_probe_stage_and_occupancy(probe_rows, static_check, arch):
    """One stage of the fp32 dot is a 64x32 and a 32x64 fp32 tile; the occupancy is the
    formula's for 4 warps with the row's registers and shared memory."""
    row = probe_rows[f"tf32 {arch}"]
    assert row["stage_shared"] == (64 * 32 + 32 * 64) * 4
    assert 2 <= row["stages"] <= 3
    assert row["stage_shared"] * row["stages"] <= row["shared"]
    assert row["threads"] == 128
    expected = static_check.occupancy(static_check.SM_LIMITS[arch], 128, row["registers"],
                                      row["shared"])
    assert (row["blocks"], row["warps"]) == expected
    assert row["blocks"] > 0


def test_a_kernel_missing_from_the_disassembly_or_without_declared_mma_fails(static_check):
    def row(**fields):
        return static_check.Row("k", "sm_90a", registers=32, spill_stores=0, spill_loads=0,
                                shared=0, shared_limit=49152, **fields)

    assert row(mma=0).problems() == []
    assert row().problems() == ["no SASS"]
    assert row(mma=0, tensor_cores=True).problems() == ["no mma"]
    assert row(mma=12, tensor_cores=True).problems() == []
