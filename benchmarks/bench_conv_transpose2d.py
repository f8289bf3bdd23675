"""pytest-benchmark suite for conv_transpose2d: torch and every cnnkernels
backend that runs here on U-Net's first up-convolution,
forward and backward. How it runs: bench_common.py.

    pytest benchmarks/bench_conv_transpose2d.py --benchmark-only
"""

from bench_common import family_benchmark

from cnnkernels.bench import conv_transpose2d

test_conv_transpose2d = family_benchmark(conv_transpose2d)
