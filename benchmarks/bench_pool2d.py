"""pytest-benchmark suite for pool2d: torch and every cnnkernels backend that
runs here, on a few reference-model pooling layers, forward and backward.

    pytest benchmarks/bench_pool2d.py --benchmark-only

Both directions run as in training (``cnnkernels.bench.prepare_pool``): the
input requires grad, so max pooling writes the indices its backward reads;
backward times grad_input alone. On CUDA the layers run at full size, batch
8, bfloat16, and the timed function synchronizes so the time covers the
kernels, not just their launch. On the CPU they are shrunk (H, W <= 16,
batch 1, float32) so the suite runs in seconds; with TRITON_INTERPRET=1 the
Triton backend adds one tiny smoke case. Timings only: correctness is tests/
and ``cnnkernels bench --op pool2d`` (which also covers every model's
layers). Not collected by the default test run (pyproject.toml: testpaths =
["tests"]).
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

# Average, overlapping max, a large disjoint max, padded max, global average.
_SELECTED = {("LeNet-5", "pool1"), ("AlexNet", "pool1"), ("VGG-16", "pool1"),
             ("ResNet-50", "maxpool"), ("ResNet-50", "avgpool")}
LAYERS = [layer if CUDA else replace(layer, height=min(layer.height, 16),
                                     width=min(layer.width, 16))
          for layer in bench.POOL_LAYERS if (layer.model, layer.name) in _SELECTED]
# The Triton interpreter (CPU) is thousands of times slower: one tiny layer only.
_INTERPRETER_SMOKE = replace(bench.POOL_LAYERS[0], height=8, width=8)  # LeNet-5 pool1


def _cases():
    impls = ["torch", *bench.default_backends(DEVICE)]
    for layer in LAYERS:
        for impl in impls:
            yield pytest.param(impl, layer, id=f"{layer.model}-{layer.name}-{impl}")
    if not CUDA and _backend.backend_problem("triton", DEVICE) is None:
        yield pytest.param("triton", _INTERPRETER_SMOKE, id="interpreter-smoke-triton")


@pytest.mark.parametrize("direction", bench.DIRECTIONS)
@pytest.mark.parametrize(("impl", "layer"), _cases())
def test_pool2d(benchmark, impl, layer, direction):
    inputs = bench.make_pool_inputs(layer, BATCH, DTYPE, DEVICE, channels_last=False)
    pool = bench.torch_pool if impl == "torch" else bench.ours_pool
    interpreted = impl == "triton" and not CUDA
    with cnnkernels.use(backend=None if impl == "torch" else impl):
        fn, _ = bench.prepare_pool(pool, layer, inputs, direction)

        def timed():
            fn()
            if CUDA:
                torch.cuda.synchronize()

        benchmark.group = f"{layer.model} {layer.name} {layer.describe()} {direction}"
        benchmark.extra_info.update(impl=impl, dtype=str(DTYPE), batch=BATCH,
                                    bytes=layer.min_bytes(BATCH, DTYPE))
        benchmark.pedantic(timed, rounds=1 if interpreted else ROUNDS,
                           warmup_rounds=0 if interpreted else 1)
