"""The registered operators (``torch.ops.cnnk.*``), one module per op family,
and ``FAMILIES``, the family registry every tool reads (the package's
exports, the static check, the benchmarks, the command line, gpu_verify.sh,
the structure tests). Adding a family: its column files, then its two
imports and its entry here."""

from cnnkernels.ops.conv2d import *  # noqa: F403  (the family's public functions)
from cnnkernels.ops.conv2d import FAMILY as CONV2D
from cnnkernels.ops.conv_transpose2d import *  # noqa: F403
from cnnkernels.ops.conv_transpose2d import FAMILY as CONV_TRANSPOSE2D
from cnnkernels.ops.detection import *  # noqa: F403
from cnnkernels.ops.detection import FAMILY as DETECTION
from cnnkernels.ops.gram import *  # noqa: F403
from cnnkernels.ops.gram import FAMILY as GRAM
from cnnkernels.ops.metric import *  # noqa: F403
from cnnkernels.ops.metric import FAMILY as METRIC
from cnnkernels.ops.pool2d import *  # noqa: F403
from cnnkernels.ops.pool2d import FAMILY as POOL2D

FAMILIES = (CONV2D, CONV_TRANSPOSE2D, POOL2D, DETECTION, GRAM, METRIC)

__all__ = [name for family in FAMILIES for name in family.public]
