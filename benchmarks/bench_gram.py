"""pytest-benchmark suite for gram: torch and every cnnkernels backend that
runs here, on VGG-16's first style layer, forward and backward.
How it runs: bench_common.py.

    pytest benchmarks/bench_gram.py --benchmark-only
"""

from bench_common import family_benchmark

from cnnkernels.bench import gram

test_gram = family_benchmark(gram)
