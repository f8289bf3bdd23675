"""pytest-benchmark suite for conv2d: torch and every cnnkernels backend that
runs here, on a few reference-model layers, forward and backward.

    pytest benchmarks/bench_conv2d.py --benchmark-only

On CUDA the layers run at full size, batch 8, bfloat16, and the timed function
synchronizes so the time covers the kernels, not just their launch. On the
CPU they are shrunk (H, W <= 16, batch 1, float32) so the suite runs in
seconds; with TRITON_INTERPRET=1 the Triton backend adds one tiny smoke case.
Timings only: correctness is tests/ and ``cnnkernels bench`` (which also
covers every model's layers). Not collected by the default test run
(pyproject.toml: testpaths = ["tests"]).
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

# A classic small conv, a large 3x3, a bottleneck 3x3, depthwise and pointwise.
_SELECTED = {("LeNet-5", "conv2"), ("VGG-16", "conv1_2"), ("ResNet-50", "layer1.3x3"),
             ("MobileNet", "dw32"), ("MobileNet", "pw32-64")}
LAYERS = [layer if CUDA else replace(layer, height=min(layer.height, 16),
                                     width=min(layer.width, 16))
          for layer in bench.CONV_LAYERS if (layer.model, layer.name) in _SELECTED]
# The Triton interpreter (CPU) is thousands of times slower: one tiny layer only.
_INTERPRETER_SMOKE = replace(bench.CONV_LAYERS[0], height=8, width=8)  # LeNet-5 conv1


def _cases():
    impls = ["torch", *bench.default_backends(DEVICE)]
    for layer in LAYERS:
        for impl in impls:
            yield pytest.param(impl, layer, id=f"{layer.model}-{layer.name}-{impl}")
    if not CUDA and _backend.backend_problem("triton", DEVICE) is None:
        yield pytest.param("triton", _INTERPRETER_SMOKE, id="interpreter-smoke-triton")


@pytest.mark.parametrize("direction", bench.DIRECTIONS)
@pytest.mark.parametrize(("impl", "layer"), _cases())
def test_conv2d(benchmark, impl, layer, direction):
    inputs = bench.make_inputs(layer, BATCH, DTYPE, DEVICE, channels_last=False)
    conv = bench.torch_conv if impl == "torch" else bench.ours_conv
    interpreted = impl == "triton" and not CUDA
    with cnnkernels.use(backend=None if impl == "torch" else impl):
        fn, _ = bench.prepare(conv, layer, inputs, direction)

        def timed():
            fn()
            if CUDA:
                torch.cuda.synchronize()

        benchmark.group = f"{layer.model} {layer.name} {layer.describe()} {direction}"
        benchmark.extra_info.update(impl=impl, dtype=str(DTYPE), batch=BATCH,
                                    flops=layer.flops(BATCH) * (1 if direction == "forward"
                                                                else 2))
        benchmark.pedantic(timed, rounds=1 if interpreted else ROUNDS,
                           warmup_rounds=0 if interpreted else 1)
