"""The registered operators (``torch.ops.cnnk.*``), one module per op family."""

from cnnkernels.ops.conv2d import conv2d

__all__ = ["conv2d"]
