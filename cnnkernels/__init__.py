"""cnnkernels: Triton, CUDA C++ and C++ kernels for convolutional networks,
registered as PyTorch custom operators (``torch.ops.cnnk.*``).

    import cnnkernels as ck
    y = ck.conv2d(x, w, b, stride=1, padding="same", activation="relu")
    with ck.use(backend="triton"):
        ...
    ck.info()
    model = ck.patch(model)   # every nn.Conv2d now runs on cnnkernels
"""

from cnnkernels import nn
from cnnkernels._backend import info, use
from cnnkernels.nn import patch
from cnnkernels.ops import conv2d

__version__ = "0.1.0"
__all__ = ["conv2d", "info", "nn", "patch", "use"]
