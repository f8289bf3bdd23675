"""pytest-benchmark suite for conv2d: torch and every cnnkernels backend that
runs here, with each conv2d algorithm (skipped where the op rejects it), on a
few reference-model layers, forward (with the fused activation) and backward
(grad_input + grad_weight). How it runs: bench_common.py.

    pytest benchmarks/bench_conv2d.py --benchmark-only
"""

from bench_common import family_benchmark

from cnnkernels.bench import conv2d

# The first layer of LeNet-5, VGG-16, the ResNets and the MobileNets: a classic small
# conv, a large 3x3, a strided 7x7 stem and MobileNet's stem.
test_conv2d = family_benchmark(conv2d, ["lenet", "vgg", "resnet", "mobilenet"])
