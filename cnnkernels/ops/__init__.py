"""The registered operators (``torch.ops.cnnk.*``), one module per op family."""

from cnnkernels.ops.conv2d import conv2d
from cnnkernels.ops.pool2d import adaptive_avg_pool2d, adaptive_max_pool2d, avg_pool2d, max_pool2d

__all__ = ["adaptive_avg_pool2d", "adaptive_max_pool2d", "avg_pool2d", "conv2d", "max_pool2d"]
