"""Access to the compiled extension ``cnnkernels._C`` and the conventions of
its calls: dtype codes, tensors passed as (data_ptr, strides), status codes
turned into exceptions. The package works without ``_C`` (Triton backend);
asking for a C++ backend then raises an error that says how to build it."""

from __future__ import annotations

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

# Must match cnnk::DType in csrc/include/cnnk/common.h.
DTYPE_CODES = {torch.float16: 0, torch.bfloat16: 1, torch.float32: 2, torch.float64: 3}

# Must match cnnk::Status in csrc/include/cnnk/common.h.
_STATUS_MESSAGES = {
    1: "the kernel rejected its arguments",
    2: "the kernel does not support this dtype",
    3: "an index does not fit the kernel's index type",
    4: "a CUDA call or kernel launch failed",
    5: "the backend was not compiled into this build",
}


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


def check_status(status: int, op: str) -> None:
    """Raise if a launcher returned a non-zero cnnk::Status."""
    if status != 0:
        message = _STATUS_MESSAGES.get(status, f"unknown status {status}")
        raise RuntimeError(f"{op}: {message} (status {status})")


def tensor4(t: torch.Tensor | None) -> tuple[int, tuple[int, int, int, int]]:
    """A 4-D tensor argument; None becomes a null pointer."""
    if t is None:
        return (0, (0, 0, 0, 0))
    return (t.data_ptr(), tuple(t.stride()))


def tensor1(t: torch.Tensor | None) -> tuple[int, int]:
    """A 1-D tensor argument; None becomes a null pointer."""
    if t is None:
        return (0, 0)
    return (t.data_ptr(), t.stride(0))


def run_kernel(backend: str, name: str, like: torch.Tensor, *args) -> None:
    """Call ``_C.<backend>.<name>(dtype code of like, *args)``, adding the
    current CUDA stream of like's device for the cuda backend, and raise if
    the launcher returns a non-zero status."""
    dtype = DTYPE_CODES[like.dtype]
    if backend == "cpu":
        status = getattr(cpu_kernels(), name)(dtype, *args)
    else:
        with torch.cuda.device(like.device):
            stream = torch.cuda.current_stream(like.device).cuda_stream
            status = getattr(cuda_kernels(), name)(dtype, *args, stream)
    check_status(status, f"cnnk.{name} ({backend})")
