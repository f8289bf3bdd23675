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

import pytest
from bench_common import BATCH, DEVICE, DTYPE, cases, run, select

from cnnkernels import bench

# Average, overlapping max, a large disjoint max, padded max, global average.
LAYERS = select(bench.POOL_LAYERS, {("LeNet-5", "pool1"), ("AlexNet", "pool1"),
                                    ("VGG-16", "pool1"), ("ResNet-50", "maxpool"),
                                    ("ResNet-50", "avgpool")})


@pytest.mark.parametrize("direction", bench.DIRECTIONS)
@pytest.mark.parametrize(("impl", "layer"), cases(LAYERS, bench.POOL_LAYERS[0]))
def test_pool2d(benchmark, impl, layer, direction):
    inputs = bench.make_pool_inputs(layer, BATCH, DTYPE, DEVICE, channels_last=False)
    run(benchmark, impl, layer, direction, bench.prepare_pool, bench.torch_pool,
        bench.ours_pool, inputs, bytes=layer.min_bytes(BATCH, DTYPE))
