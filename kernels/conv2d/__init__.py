"""conv2d's Triton kernels, one module per algorithm (``direct``)."""
