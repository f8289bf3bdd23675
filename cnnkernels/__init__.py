"""cnnkernels: Triton, CUDA C++ and C++ kernels for convolutional networks,
registered as PyTorch custom operators (``torch.ops.cnnk.*``).

    import cnnkernels as ck
    y = ck.conv2d(x, w, b, stride=1, padding="same", activation="relu")
    with ck.use(backend="triton"):
        ...
    ck.info()
    model = ck.patch(model)   # nn.Conv2d and the nn pooling modules now run on cnnkernels

The design: docs/design.md. ``import cnnkernels`` alone imports nothing
heavy, so that ``cnnkernels --help`` and ``--version`` answer without torch:
the first use of a public name (``ck.conv2d``, ``ck.use``, ``from cnnkernels
import *``) or ``import cnnkernels.ops`` imports torch and defines the
operators (cnnkernels/_api.py). Neither imports Triton nor torch's compiler
stack; the Triton kernels load when a Triton kernel first runs.
"""

import importlib
import importlib.util

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
