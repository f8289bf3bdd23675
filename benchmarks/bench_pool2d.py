"""pytest-benchmark suite for pool2d: torch and every cnnkernels backend that
runs here, on a few reference-model pooling layers, forward and backward.
Both directions run as in training (``cnnkernels.bench.pool2d.prepare``):
the input requires grad, so max pooling writes the indices its backward
reads; backward times grad_input alone. How it runs: bench_common.py.

    pytest benchmarks/bench_pool2d.py --benchmark-only
"""

from bench_common import family_benchmark

from cnnkernels.bench import pool2d

# Average (LeNet-5), overlapping max (AlexNet), disjoint max (VGG-16), padded max (ResNet).
test_pool2d = family_benchmark(pool2d, ["lenet", "alexnet", "vgg", "resnet"])
