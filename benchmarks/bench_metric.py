"""pytest-benchmark suite for metric: torch and every cnnkernels backend that
runs here, on the triplet loss and the batch-hard loss at 256 and 4096
embeddings, forward and backward. How it runs: bench_common.py.

    pytest benchmarks/bench_metric.py --benchmark-only
"""

from bench_common import family_benchmark

from cnnkernels.bench import metric

test_metric = family_benchmark(metric, {("triplet", "256"), ("triplet", "4096"),
                                        ("batch_hard", "256")})
