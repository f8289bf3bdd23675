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

import pytest
from bench_common import BATCH, DEVICE, DTYPE, cases, run, select

from cnnkernels import bench

# A classic small conv, a large 3x3, a bottleneck 3x3, depthwise and pointwise.
LAYERS = select(bench.CONV_LAYERS, {("LeNet-5", "conv2"), ("VGG-16", "conv1_2"),
                                    ("ResNet-50", "layer1.3x3"), ("MobileNet", "dw32"),
                                    ("MobileNet", "pw32-64")})


@pytest.mark.parametrize("direction", bench.DIRECTIONS)
@pytest.mark.parametrize(("impl", "layer"), cases(LAYERS, bench.CONV_LAYERS[0]))
def test_conv2d(benchmark, impl, layer, direction):
    inputs = bench.make_inputs(layer, BATCH, DTYPE, DEVICE, channels_last=False)
    run(benchmark, impl, layer, direction, bench.prepare, bench.torch_conv, bench.ours_conv,
        inputs, flops=layer.flops(BATCH) * (1 if direction == "forward" else 2))
