"""The package's public names: importing this module imports torch and
defines every registered operator. ``import cnnkernels`` imports it at
once, or, started as the command line, ``cnnkernels.__getattr__`` on the
first use of a public name (cnnkernels/__init__.py)."""

from cnnkernels import nn, ops
from cnnkernels._backend import info, use
from cnnkernels._interop import accepts_arrays
from cnnkernels._patch import PatchReport, patch, unpatch

# Every registered family's public functions, taking CuPy (and NumPy) arrays
# as well as tensors (cnnkernels/_interop.py).
globals().update({name: accepts_arrays(getattr(ops, name)) for name in ops.__all__})

__all__ = [*ops.__all__, "PatchReport", "info", "nn", "patch", "unpatch", "use"]
