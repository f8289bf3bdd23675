"""pytest-benchmark suite for detection: the plain torch references and every
cnnkernels backend that runs here, on box_iou, the three losses, nms and batched_nms
(1k boxes; 80 classes), forward (and the loss's backward). How it runs:
bench_common.py.

    pytest benchmarks/bench_detection.py --benchmark-only
"""

from bench_common import family_benchmark

from cnnkernels.bench import detection

test_detection = family_benchmark(detection)
