"""Backend and algorithm selection.

``use(backend=..., conv_algorithm=...)`` sets the choice globally when called
as a statement and only for the ``with`` block when used as a context manager.
The initial backend comes from ``CNNK_BACKEND`` (default ``auto``). The public
functions pass the current choice into their op; the op resolves ``auto`` for
its tensors' device (``runnable``), or raises an error that says why the
requested backend cannot run, before any kernel runs.

Algorithms are a family's own business: the family module lists them and
routes ``auto`` (cnnkernels/ops/conv2d.py); this module only keeps the
current choice per family.
"""

from __future__ import annotations

import functools
import importlib.util
import os

import torch

from cnnkernels import _args, _ext

BACKENDS = ("auto", "cpu", "cuda", "triton")

# The dtypes each concrete backend computes in, by tensor device type.
SUPPORTED_DTYPES = {
    ("cpu", "cpu"): (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    ("cuda", "cuda"): (torch.float16, torch.bfloat16, torch.float32, torch.float64),
    ("triton", "cuda"): (torch.float16, torch.bfloat16, torch.float32),
    ("triton", "cpu"): (torch.float32, torch.float64),
}


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}")
    return value


_settings = {
    "backend": check_choice("CNNK_BACKEND", os.environ.get("CNNK_BACKEND", "auto"), BACKENDS),
    "conv_algorithm": "auto",
}


class use:
    """Select the backend and the convolution algorithm.

    ``cnnkernels.use(backend="triton")`` sets it for the process;
    ``with cnnkernels.use(backend="cpu"): ...`` sets it for the block and
    restores the previous choice afterwards. ``None`` keeps the current value.
    """

    def __init__(self, backend: str | None = None, conv_algorithm: str | None = None):
        from cnnkernels.ops.conv2d import ALGORITHMS as conv_algorithms

        new = dict(_settings)
        if backend is not None:
            new["backend"] = check_choice("backend", backend, BACKENDS)
        if conv_algorithm is not None:
            new["conv_algorithm"] = check_choice("conv_algorithm", conv_algorithm,
                                                 ("auto", *conv_algorithms))
        self._previous = dict(_settings)
        _settings.update(new)

    def __enter__(self) -> use:
        return self

    def __exit__(self, *exc_info) -> None:
        _settings.update(self._previous)

    def __repr__(self) -> str:
        return f"cnnkernels.use(backend={_settings['backend']!r}, " \
               f"conv_algorithm={_settings['conv_algorithm']!r})"


def current_backend() -> str:
    return _settings["backend"]


def requested(backend: str | None) -> str:
    """The backend a call asks for: ``backend`` (a public function's
    keyword, which pins the call), or the current choice when None."""
    return current_backend() if backend is None else check_choice("backend", backend, BACKENDS)


def current_conv_algorithm() -> str:
    return _settings["conv_algorithm"]


@functools.cache
def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_interpreter_enabled() -> bool:
    """Triton decides at kernel-definition time whether it interprets."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def _triton_problem(device: torch.device) -> str | None:
    if not triton_available():
        return "Triton is not installed (pip install 'triton>=3.6')"
    if device.type == "cpu":
        from cnnkernels.kernels import interpreted

        if not interpreted():
            return ("Triton runs CPU tensors only in its interpreter: set TRITON_INTERPRET=1 "
                    "before cnnkernels' Triton kernels are first imported")
    elif device.type != "cuda":
        return f"Triton runs CUDA tensors (and CPU tensors when interpreted), not {device.type}"
    elif not torch.cuda.is_available():
        return "CUDA is not available to torch"
    return None


def backend_problem(backend: str, device: torch.device) -> str | None:
    """Why ``backend`` cannot run tensors on ``device``, or None if it can."""
    if backend == "cpu":
        if device.type != "cpu":
            return f"backend 'cpu' runs CPU tensors, got a tensor on {device}"
        return None if _ext.has_cpu_kernels() else "the C++ extension cnnkernels._C is not built"
    if backend == "cuda":
        if device.type != "cuda":
            return f"backend 'cuda' runs CUDA tensors, got a tensor on {device}"
        return None if _ext.has_cuda_kernels() else "cnnkernels._C was built without CUDA"
    if backend == "triton":
        return _triton_problem(device)
    return f"unknown backend {backend!r}"


def resolve_backend(device: torch.device, backend: str | None = None) -> str:
    """The concrete backend that runs tensors on ``device``: ``backend`` (the
    current choice when None), with ``auto`` the C++/CUDA kernels where they
    are built, else Triton."""
    backend = current_backend() if backend is None else check_choice("backend", backend, BACKENDS)
    if backend == "auto":
        preferred = {"cpu": ("cpu", "triton"), "cuda": ("cuda", "triton")}.get(device.type, ())
        for candidate in preferred:
            if backend_problem(candidate, device) is None:
                return candidate
        reasons = "; ".join(f"{c}: {backend_problem(c, device)}" for c in preferred)
        raise RuntimeError(f"no cnnkernels backend can run tensors on {device} ({reasons}); "
                           f"{_ext.BUILD_HINT}")
    problem = backend_problem(backend, device)
    if problem is not None:
        hint = f"; {_ext.BUILD_HINT}" if "cnnkernels._C" in problem else ""
        raise RuntimeError(f"backend {backend!r} cannot run here: {problem}{hint}")
    return backend


def runnable(backend: str, op: str, tensors: dict, index_extent: int) -> str:
    """The concrete backend that runs ``op`` on ``tensors`` (name -> tensor or
    None; the first one sets device and dtype), after checking everything it
    needs of them: it can run on their device, computes in their dtype, and,
    where it indexes with 32 bits, every offset and ``index_extent`` (the
    largest value of the geometry's index arithmetic) fit."""
    first = next(iter(tensors.values()))
    backend = resolve_backend(first.device, backend)
    _args.check_dtype(first, op, backend, SUPPORTED_DTYPES[(backend, first.device.type)])
    if backend in _args.BACKENDS_WITH_32_BIT_INDICES:
        _args.check_index_range(tensors, backend)
        _args.check_geometry_range(index_extent, op, backend)
    return backend


def info() -> dict:
    """What was built, what is importable, and the device at hand."""
    build = _ext.build_info()
    result = {
        "torch": torch.__version__,
        "extension_built": build["built"],
        "cuda_kernels_built": bool(build.get("cuda", False)),
        "cuda_archs": build.get("cuda_archs", ""),
        "nvcc_version": build.get("cuda_version", ""),
        "openmp": bool(build.get("openmp", False)),
        "triton": None,
        "triton_interpreter": triton_interpreter_enabled(),
        "cupy": None,
        "cuda_available": torch.cuda.is_available(),
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "backend": current_backend(),
        "conv_algorithm": current_conv_algorithm(),
    }
    if not build["built"]:
        result["extension_error"] = build["error"]
    for module in ("triton", "cupy"):
        if importlib.util.find_spec(module) is not None:
            result[module] = importlib.import_module(module).__version__
    return result
