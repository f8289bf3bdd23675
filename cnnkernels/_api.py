"""The package's public names: importing this module imports torch and
defines every registered operator. ``import cnnkernels`` imports it at
once, or, started as the command line, ``cnnkernels.__getattr__`` on the
first use of a public name (cnnkernels/__init__.py)."""

from cnnkernels import nn, ops
from cnnkernels._backend import info, use
from cnnkernels._patch import PatchReport, patch, unpatch
from cnnkernels.ops import *  # noqa: F403  (every registered family's public functions)

__all__ = [*ops.__all__, "PatchReport", "info", "nn", "patch", "unpatch", "use"]
