"""cnnkernels: Triton, CUDA C++ and C++ kernels for convolutional networks,
registered as PyTorch custom operators (``torch.ops.cnnk.*``).

    import cnnkernels as ck
    y = ck.conv2d(x, w, b, stride=1, padding="same", activation="relu")
    with ck.use(backend="triton"):
        ...
    ck.info()
    model = ck.patch(model)   # nn.Conv2d and the nn pooling modules now run on cnnkernels
    print(model.cnnkernels_report)
    model = ck.patch(model.eval(), fuse=True)   # inference: batch norm folded, epilogues fused
    ck.unpatch(model)         # back to torch.nn

The design: docs/design.md. Importing the package defines the operators but
imports neither Triton nor torch's compiler stack; the Triton kernels load
when a Triton kernel first runs.
"""

from cnnkernels import nn, ops
from cnnkernels._backend import info, use
from cnnkernels._patch import PatchReport, patch, unpatch
from cnnkernels.ops import *  # noqa: F403  (every registered family's public functions)

__version__ = "0.1.0"
__all__ = [*ops.__all__, "PatchReport", "info", "nn", "patch", "unpatch", "use"]
