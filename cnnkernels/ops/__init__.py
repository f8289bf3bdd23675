"""The registered operators (``torch.ops.cnnk.*``), one module per op family,
and ``FAMILIES``, the family registry every tool reads (the static check, the
benchmarks, the command line, gpu_verify.sh). Adding a family: its column
files, then its import and its entry here."""

from cnnkernels.ops.conv2d import FAMILY as CONV2D
from cnnkernels.ops.conv2d import conv2d
from cnnkernels.ops.pool2d import FAMILY as POOL2D
from cnnkernels.ops.pool2d import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d

FAMILIES = (CONV2D, POOL2D)

__all__ = ["FAMILIES", "adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "conv2d",
           "max_pool2d"]
