"""Access to the compiled extension ``cnnkernels._C`` and the conventions of
its calls.

The codes that cross the boundary are defined once, in C++
(csrc/include/cnnk/common.h), and exported by ``_C``: ``Status`` (a launcher
that fails raises a RuntimeError with its message, pyext/binding.h),
``DType`` (named like torch's dtypes) and ``Activation``. ``Activation`` is
also needed without ``_C`` (the Triton kernels read it), so it is an IntEnum
built from ``_C``'s members, or from the same numbers when ``_C`` is not
built (tests/test_structure.py checks them against ``_C``).

``native(backend, like)`` gives the launchers of ``_C.cpu`` or ``_C.cuda``
with the calling convention applied: ``native("cuda", x).name(geometry,
*tensors)`` calls ``_C.cuda.name(dtype of x, geometry, *tensors, stream)``;
``launchers(backend, like, triton)`` gives them or the family's Triton
module, whose launchers have the same names and arguments.
The package works without ``_C`` (Triton backend); asking for a C++ backend
then raises an error that says how to build it.
"""

from __future__ import annotations

import enum
import functools
from collections.abc import Callable
from types import ModuleType

import torch

try:
    from cnnkernels import _C
except ImportError as error:  # not built, or built for another Python
    _C = None
    _IMPORT_ERROR: ImportError | None = error
else:
    _IMPORT_ERROR = None

BUILD_HINT = (
    "build it with `pip install -e .` from the repository root (add --no-build-isolation "
    "on a machine without network; CNNK_WITH_CUDA=1 makes a missing nvcc an error)"
)

# cnnk::Activation's codes, for a build without _C.
ACTIVATION_CODES = {"none": 0, "relu": 1, "relu6": 2, "silu": 3}

Activation = enum.IntEnum(
    "Activation",
    ACTIVATION_CODES if _C is None
    else {name: int(member) for name, member in _C.Activation.__members__.items()},
    module=__name__,
)


def cpu_kernels():
    """The ``_C.cpu`` submodule, or a RuntimeError saying how to build it."""
    if _C is None:
        raise RuntimeError(
            f"backend 'cpu' needs the C++ extension cnnkernels._C, which is not importable "
            f"({_IMPORT_ERROR}); {BUILD_HINT}"
        )
    return _C.cpu


def cuda_kernels():
    """The ``_C.cuda`` submodule, or a RuntimeError saying how to build it."""
    if _C is None or not hasattr(_C, "cuda"):
        reason = (
            f"cnnkernels._C is not importable ({_IMPORT_ERROR})"
            if _C is None
            else "cnnkernels._C was built without CUDA (nvcc was not found)"
        )
        raise RuntimeError(f"backend 'cuda' needs the CUDA kernels of cnnkernels._C: {reason}; "
                           f"{BUILD_HINT}")
    return _C.cuda


def has_cpu_kernels() -> bool:
    return _C is not None


def has_cuda_kernels() -> bool:
    return _C is not None and hasattr(_C, "cuda")


def build_info() -> dict:
    if _C is None:
        return {"built": False, "error": str(_IMPORT_ERROR)}
    return {"built": True, **_C.build_info()}


def dtype_code(dtype: torch.dtype):
    """The ``_C.DType`` member of a torch dtype (same name)."""
    return getattr(_C.DType, str(dtype).removeprefix("torch."))


class _Launchers:
    """The launchers of one ``_C`` submodule, called with the dtype of the
    tensor they were made for and, on CUDA, on its device and current stream.
    A launcher is looked up once and kept as an attribute (op calls are
    frequent and small: each microsecond shows on the cpu)."""

    def __init__(self, backend: str, device: torch.device, dtype: torch.dtype):
        self._backend = backend
        self._device = device
        self._module = cpu_kernels() if backend == "cpu" else cuda_kernels()
        self._dtype = dtype_code(dtype)

    def __getattr__(self, name: str):
        launcher = getattr(self._module, name)
        if self._backend == "cpu":
            bound = functools.partial(launcher, self._dtype)
        else:
            def bound(*args):
                with torch.cuda.device(self._device):
                    launcher(self._dtype, *args,
                             torch.cuda.current_stream(self._device).cuda_stream)

        setattr(self, name, bound)
        return bound


_NATIVE: dict[tuple, _Launchers] = {}


def native(backend: str, like: torch.Tensor) -> _Launchers:
    """The C++ ("cpu") or CUDA ("cuda") launchers for tensors like ``like``."""
    key = (backend, like.device, like.dtype)
    launchers = _NATIVE.get(key)
    if launchers is None:
        launchers = _NATIVE[key] = _Launchers(backend, like.device, like.dtype)
    return launchers


def launchers(backend: str, like: torch.Tensor, triton: Callable[[], ModuleType]):
    """A family's launchers on ``backend``, called alike on every backend
    (same names, same arguments): the Triton module that ``triton()`` imports
    (on first use, so that importing cnnkernels does not import Triton) or
    ``native(backend, like)``."""
    return triton() if backend == "triton" else native(backend, like)


def cpu_isa() -> str | None:
    """The instruction set of the cpu backend's GEMM micro-kernels
    ("avx512", "avx2" or "portable"; chosen at run time, CNNK_CPU_ISA asks
    for a lower one), or None without ``_C``."""
    return None if _C is None else _C.cpu.gemm_isa()


def cpu_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ b`` on the cpu backend's GEMM core (2-D CPU tensors of one
    floating-point dtype, any strides): the core on its own, for its tests
    and the benchmark's GEMM row."""
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"cpu_matmul takes (M, K) and (K, N) matrices, got {tuple(a.shape)} "
                         f"and {tuple(b.shape)}")
    if a.dtype != b.dtype or not a.dtype.is_floating_point or a.is_cuda or b.is_cuda:
        raise TypeError(f"cpu_matmul takes CPU floating-point tensors of one dtype, got "
                        f"{a.dtype} on {a.device} and {b.dtype} on {b.device}")
    c = torch.empty(a.shape[0], b.shape[1], dtype=a.dtype)
    cpu_kernels().gemm_matmul(dtype_code(a.dtype), a.shape[0], b.shape[1], a.shape[1], a, b, c)
    return c
