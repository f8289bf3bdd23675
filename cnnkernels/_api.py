"""The package's public names, loaded by ``cnnkernels.__getattr__`` on first
use (cnnkernels/__init__.py): importing this module imports torch and
defines every registered operator."""

from cnnkernels import nn, ops
from cnnkernels._backend import info, use
from cnnkernels.nn import patch
from cnnkernels.ops import *  # noqa: F403  (every registered family's public functions)

__all__ = [*ops.__all__, "info", "nn", "patch", "use"]
