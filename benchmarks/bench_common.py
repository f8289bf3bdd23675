"""What the pytest-benchmark suites (benchmarks/bench_<family>.py) share:
the device, batch and dtype they run at, the cases (torch and every backend
that runs here), and the timed call.

On CUDA the layers run at full size, batch 8, bfloat16, and the timed
function synchronizes so the time covers the kernels, not just their launch.
On the CPU they are shrunk (H, W <= 16, batch 1, float32) so a suite runs in
seconds; with TRITON_INTERPRET=1 the Triton backend adds one tiny smoke case.
"""

from dataclasses import replace

import pytest
import torch

import cnnkernels
from cnnkernels import _backend, bench

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CUDA = DEVICE.type == "cuda"
BATCH = 8 if CUDA else 1
DTYPE = torch.bfloat16 if CUDA else torch.float32
ROUNDS = 50 if CUDA else 5
CPU_MAX_SIZE = 16


def select(layers, wanted: set) -> list:
    """The (model, name) layers in ``wanted``, shrunk on the CPU."""
    return [layer if CUDA else replace(layer, height=min(layer.height, CPU_MAX_SIZE),
                                       width=min(layer.width, CPU_MAX_SIZE))
            for layer in layers if (layer.model, layer.name) in wanted]


def cases(layers, interpreter_smoke_layer):
    """(impl, layer) params: torch and every backend that runs here, plus the
    Triton interpreter on one tiny layer (it is thousands of times slower)."""
    impls = ["torch", *bench.default_backends(DEVICE)]
    for layer in layers:
        for impl in impls:
            yield pytest.param(impl, layer, id=f"{layer.model}-{layer.name}-{impl}")
    if not CUDA and _backend.backend_problem("triton", DEVICE) is None:
        yield pytest.param("triton", replace(interpreter_smoke_layer, height=8, width=8),
                           id="interpreter-smoke-triton")


def run(benchmark, impl: str, layer, direction: str, prepare, torch_impl, ours_impl, inputs,
        **extra_info) -> None:
    """Time ``prepare``'s function for torch or a cnnkernels backend."""
    interpreted = impl == "triton" and not CUDA
    with cnnkernels.use(backend=None if impl == "torch" else impl):
        fn, _ = prepare(torch_impl if impl == "torch" else ours_impl, layer, inputs, direction)

        def timed():
            fn()
            if CUDA:
                torch.cuda.synchronize()

        benchmark.group = f"{layer.model} {layer.name} {layer.describe()} {direction}"
        benchmark.extra_info.update(impl=impl, dtype=str(DTYPE), batch=BATCH, **extra_info)
        benchmark.pedantic(timed, rounds=1 if interpreted else ROUNDS,
                           warmup_rounds=0 if interpreted else 1)
