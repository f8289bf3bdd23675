"""The cpu backend's GEMM core (csrc/cpu/gemm/, cnnk/cpu_gemm.h) on its own:
products against float64 torch for sizes that are no multiple of the
micro-tile, strided operands, every dtype, and each instruction-set path
this machine has (CNNK_CPU_ISA, in a subprocess: the choice is made once)."""

import os
import subprocess
import sys

import pytest
import torch
from reference import assert_close

from cnnkernels import _ext

pytestmark = pytest.mark.skipif(not _ext.has_cpu_kernels(), reason="cnnkernels._C not built")

SHAPES = [(1, 1, 1), (7, 13, 5), (12, 32, 256), (13, 33, 257), (100, 37, 300),
          (145, 1030, 513), (3, 2000, 2), (0, 4, 3), (4, 0, 3), (5, 6, 0)]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16,
                                   torch.float16])
@pytest.mark.parametrize(("M", "N", "K"), SHAPES, ids=lambda v: str(v))
def test_matmul_matches_torch(M, N, K, dtype):
    generator = torch.Generator().manual_seed(M * 1000 + N + K)
    a = torch.randn(M, K, generator=generator).to(dtype)
    b = torch.randn(K, N, generator=generator).to(dtype)
    assert_close(_ext.cpu_matmul(a, b), a.double() @ b.double(), dtype, max(K, 1), "product")


def test_matmul_of_strided_operands():
    generator = torch.Generator().manual_seed(1)
    a = torch.randn(300, 200, generator=generator).t()  # column-major
    b = torch.randn(300, 260, generator=generator)[:, ::2]
    assert_close(_ext.cpu_matmul(a, b), a.double() @ b.double(), torch.float32, 300, "product")


def test_matmul_rejects_mismatched_operands():
    with pytest.raises(ValueError, match=r"takes \(M, K\) and \(K, N\) matrices"):
        _ext.cpu_matmul(torch.randn(3, 4), torch.randn(5, 6))
    with pytest.raises(TypeError, match="of one dtype"):
        _ext.cpu_matmul(torch.randn(3, 4), torch.randn(4, 6, dtype=torch.float64))


def _supported_isas() -> list[str]:
    best = _ext.cpu_isa()
    return ["portable", "avx2", "avx512"][:["portable", "avx2", "avx512"].index(best) + 1]


CHECK = """
import sys, torch, torch.nn.functional as F, cnnkernels as ck
from cnnkernels import _ext
assert _ext.cpu_isa() == sys.argv[1], (_ext.cpu_isa(), sys.argv[1])
g = torch.Generator().manual_seed(0)
for dtype, tol in ((torch.float32, 1e-4), (torch.float64, 1e-12)):
    a, b = torch.randn(37, 301, generator=g).to(dtype), torch.randn(301, 45, generator=g).to(dtype)
    assert torch.allclose(_ext.cpu_matmul(a, b), a @ b, rtol=tol, atol=tol * 30)
    x = torch.randn(2, 10, 9, 11, generator=g).to(dtype).requires_grad_()
    w = torch.randn(14, 10, 3, 3, generator=g).to(dtype).requires_grad_()
    with ck.use(backend="cpu", conv_algorithm="implicit_gemm"):
        y = ck.conv2d(x, w, padding=1, stride=(1, 2))
    y.sum().backward()
    xr, wr = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    F.conv2d(xr, wr, padding=1, stride=(1, 2)).sum().backward()
    assert torch.allclose(y, F.conv2d(xr, wr, padding=1, stride=(1, 2)), rtol=tol, atol=tol * 30)
    assert torch.allclose(x.grad, xr.grad, rtol=tol, atol=tol * 30)
    assert torch.allclose(w.grad, wr.grad, rtol=tol, atol=tol * 300)
print("ok")
"""


@pytest.mark.parametrize("isa", _supported_isas() if _ext.has_cpu_kernels() else [])
def test_each_instruction_set_path(isa):
    """Every micro-kernel this machine can run, chosen with CNNK_CPU_ISA."""
    result = subprocess.run([sys.executable, "-c", CHECK, isa], capture_output=True, text=True,
                            timeout=300, env={**os.environ, "CNNK_CPU_ISA": isa})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "ok"


def test_unsupported_isa_request_falls_back_to_the_best():
    code = "from cnnkernels import _ext; print(_ext.cpu_isa())"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, env={**os.environ, "CNNK_CPU_ISA": "sse9"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == _ext.cpu_isa()


def test_fma_peak_is_measured():
    from cnnkernels import _C

    one = _C.cpu.fma_peak(False, 1, 0.05)
    assert one > 1e8  # any x86-64 or aarch64 core issues more than 0.1 GFLOP/s
    assert _C.cpu.fma_peak(True, 1, 0.05) > 1e8
