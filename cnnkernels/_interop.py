"""Arrays of other libraries in and out of the functional ops: CuPy arrays
on the GPU (and NumPy arrays on the CPU) go in and come out as their own
type, zero-copy through DLPack.

A public op called with an array that speaks DLPack (``__dlpack__`` and
``__dlpack_device__``) but is not a torch tensor sees it through
``torch.from_dlpack`` (the same memory), and each tensor it returns goes
back through the first such argument's library (``cupy.from_dlpack``,
``numpy.from_dlpack``), again without a copy. A CUDA array's op runs on
its library's current stream (``cupy.cuda.get_current_stream()``, as
torch.cuda.ExternalStream), so it is ordered with the caller's CuPy work
without a synchronisation. No autograd: arrays carry no gradients.
"""

import contextlib
import functools
import importlib

import torch

_KDLCUDA = 2  # DLPack's device type of CUDA memory


def _foreign(value) -> bool:
    return (not isinstance(value, torch.Tensor) and hasattr(value, "__dlpack__")
            and hasattr(value, "__dlpack_device__"))


def _to_torch(value):
    return torch.from_dlpack(value) if _foreign(value) else value


def _to_library(library, value):
    if isinstance(value, torch.Tensor):
        return library.from_dlpack(value.detach())
    if isinstance(value, tuple):
        converted = [_to_library(library, v) for v in value]
        return type(value)(*converted) if hasattr(value, "_fields") else tuple(converted)
    return value


def _stream_of(library, array):
    """The torch stream a CUDA array's library is ordered on (None: torch's own)."""
    if array.__dlpack_device__()[0] != _KDLCUDA or not hasattr(library, "cuda"):
        return None
    return torch.cuda.ExternalStream(library.cuda.get_current_stream().ptr)


def accepts_arrays(function):
    """``function`` (a public op) taking and returning other libraries'
    arrays as the module docstring says; torch tensors pass straight through."""

    @functools.wraps(function)
    def wrapper(*args, **kwargs):
        first = next((v for v in (*args, *kwargs.values()) if _foreign(v)), None)
        if first is None:
            return function(*args, **kwargs)
        library = importlib.import_module(type(first).__module__.split(".")[0])
        stream = _stream_of(library, first)
        with torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext():
            result = function(*map(_to_torch, args),
                              **{name: _to_torch(v) for name, v in kwargs.items()})
            return _to_library(library, result)

    return wrapper
