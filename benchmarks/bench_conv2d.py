"""pytest-benchmark suite for conv2d: torch and every cnnkernels backend that
runs here, with each conv2d algorithm (skipped where the op rejects it), on a
few reference-model layers, forward (with the fused activation) and backward
(grad_input + grad_weight). How it runs: bench_common.py.

    pytest benchmarks/bench_conv2d.py --benchmark-only
"""

from bench_common import family_benchmark

from cnnkernels.bench import conv2d

# A classic small conv, a large 3x3, a bottleneck 3x3, depthwise and pointwise.
test_conv2d = family_benchmark(conv2d, {("LeNet-5", "conv2"), ("VGG-16", "conv1_2"),
                                        ("ResNet-50", "layer1.3x3"), ("MobileNet", "dw32"),
                                        ("MobileNet", "pw32-64")})
