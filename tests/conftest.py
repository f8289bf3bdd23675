"""Shared test setup.

Without a CUDA device the Triton kernels run on CPU tensors in Triton's
interpreter; Triton reads TRITON_INTERPRET when a kernel is defined, so it is
set here, before any test module imports cnnkernels' kernels.
"""

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest

import cnnkernels
from cnnkernels import _args, _backend


@pytest.fixture(autouse=True)
def poisoned_outputs():
    """Every op output starts as NaN, so unwritten elements fail comparisons."""
    _args.set_output_poisoning(True)
    yield
    _args.set_output_poisoning(False)


@pytest.fixture(autouse=True)
def default_backend_choice():
    """Tests that change the global backend cannot leak it into others."""
    with cnnkernels.use(backend="auto", conv_algorithm="auto"):
        yield


def backend_params():
    """(device, backend) pairs for every backend that can run on this machine;
    CUDA ones carry the `cuda` marker. Backends that cannot run here are
    listed too, skipped with the reason, so the gap is visible in the report."""
    params = []
    for device, backend in (("cpu", "cpu"), ("cpu", "triton"), ("cuda", "cuda"),
                            ("cuda", "triton")):
        marks = [pytest.mark.cuda] if device == "cuda" else []
        if device == "cuda" and not torch.cuda.is_available():
            marks.append(pytest.mark.skip(reason="no CUDA device"))
        else:
            problem = _backend.backend_problem(backend, torch.device(device))
            if problem is not None:
                marks.append(pytest.mark.skip(reason=problem))
        params.append(pytest.param(device, backend, id=f"{backend}-{device}", marks=marks))
    return params


def interpreted(device: str, backend: str) -> bool:
    """Triton on CPU tensors: every program instance runs in numpy, so cases
    must stay tiny."""
    return backend == "triton" and device == "cpu"


def dtypes_for(device: str, backend: str):
    """The dtypes the backend computes in on the device (its declaration,
    ``_backend.SUPPORTED_DTYPES``), first the one single-dtype tests use:
    float64 on the CPU (the reference's precision), float32 on CUDA."""
    first = torch.float64 if device == "cpu" else torch.float32
    supported = _backend.SUPPORTED_DTYPES[(backend, device)]
    return (first, *(dtype for dtype in supported if dtype != first))


def dtype_params():
    """(device, backend, dtype) for every dtype of every backend."""
    params = []
    for p in backend_params():
        for dtype in dtypes_for(*p.values):
            name = str(dtype).removeprefix("torch.")
            params.append(pytest.param(*p.values, dtype, id=f"{p.id}-{name}", marks=p.marks))
    return params


def seeded_params(interpreted_count: int, count: int):
    """(device, backend, seed) for random sweeps: fewer seeds where Triton is
    interpreted."""
    params = []
    for p in backend_params():
        n = interpreted_count if interpreted(*p.values) else count
        params += [pytest.param(*p.values, seed, id=f"{p.id}-{seed}", marks=p.marks)
                   for seed in range(n)]
    return params
