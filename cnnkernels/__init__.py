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

The design: docs/design.md. ``import cnnkernels`` imports torch and defines
the operators (cnnkernels/_api.py), but neither Triton nor torch's compiler
stack: the Triton kernels load when a Triton kernel first runs. Started as
the command line (``cnnkernels ...``, ``python -m cnnkernels``), the package
defers even that to the first public name a command uses, so that
``--help`` and ``--version`` answer without importing torch.
"""

import importlib
import importlib.util
import os
import sys

__version__ = "0.1.0"


def __getattr__(name: str):
    """A submodule (imported now: ``from cnnkernels import bench`` loads no
    more than cnnkernels.bench), or a public name from cnnkernels/_api.py,
    loaded on first use."""
    if name.startswith("__") and name != "__all__":
        raise AttributeError(f"module 'cnnkernels' has no attribute {name!r}")
    if importlib.util.find_spec(f"cnnkernels.{name}") is not None:
        return importlib.import_module(f"cnnkernels.{name}")
    api = importlib.import_module("cnnkernels._api")
    try:
        value = getattr(api, name)
    except AttributeError:
        raise AttributeError(f"module 'cnnkernels' has no attribute {name!r}") from None
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__getattr__("__all__")})


def _started_as_the_command_line() -> bool:
    """``cnnkernels ...`` (the console script) or ``python -m cnnkernels...``
    (argv[0] is "-m" while runpy imports the package)."""
    argv0 = (getattr(sys, "argv", None) or [""])[0]
    return argv0 == "-m" or os.path.basename(argv0) == "cnnkernels"


# A library import defines the operators at once, so that torch.ops.cnnk.*
# exists for code that only calls the operators (torch.export.load of a
# saved program, say); the command line defers it to the first command that
# needs it, so that --help and --version answer without importing torch.
if not _started_as_the_command_line():
    from cnnkernels._api import *  # noqa: F403
