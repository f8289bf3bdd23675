"""Argument normalisation and checks shared by every op.

Every public op calls these before any kernel runs, so bad input raises a
clear exception naming the argument and the expected value instead of
reaching a kernel.
"""

from __future__ import annotations

import operator
from collections.abc import Sequence

import torch

from cnnkernels._ext import Activation

# The kernels of the cuda and triton backends index with 32-bit integers
# (Triton's default): every element offset of every tensor must fit, and
# every value their index arithmetic reaches (a geometry's index_extent())
# must stay below GEOMETRY_LIMIT, which leaves room for a tile past the end.
# The cpu kernels use 64-bit offsets throughout.
INDEX_LIMIT = 2**31 - 1
GEOMETRY_LIMIT = 2**30
BACKENDS_WITH_32_BIT_INDICES = ("cuda", "triton")

# Every geometry value and every sum of two stays within int64 below this
# (the C++ index arithmetic is int64 and must not overflow).
INT64_SAFE = 2**62
INT32_MAX = 2**31 - 1


def _is_bool(value) -> bool:
    """A Python or numpy bool (numpy names its type bool_ or, from 2.0, bool)."""
    return isinstance(value, bool) or (type(value).__module__ == "numpy"
                                       and type(value).__name__ in ("bool", "bool_"))


def integer(value, name: str) -> int:
    """An int argument in every form torch takes: a Python int, a numpy
    integer, a 0-d integer tensor (not a bool), fitting int64."""
    if isinstance(value, torch.SymInt):
        return value
    if isinstance(value, torch.Tensor):
        if value.dim() != 0 or value.dtype.is_floating_point or value.dtype.is_complex \
                or value.dtype == torch.bool:
            raise TypeError(f"{name} must be an int, got a tensor of shape "
                            f"{tuple(value.shape)} and dtype {value.dtype}")
        return int(value)
    if _is_bool(value):
        raise TypeError(f"{name} must be an int, got {value!r}")
    try:
        result = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {value!r}") from None
    if not -2**63 <= result < 2**63:
        raise ValueError(f"{name} must fit a 64-bit integer, got {result}")
    return result


def flag(value, name: str) -> bool:
    """A bool argument: a Python or numpy bool, as torch requires (torch
    refuses "False" and 1 too)."""
    if _is_bool(value):
        return bool(value)
    raise TypeError(f"{name} must be a bool, got {value!r}")


def pair(value, name: str, *, minimum: int, maximum: int = 2**63 - 1) -> tuple[int, int]:
    """An int or a sequence of two ints (as torch accepts), each in
    [minimum, maximum]."""
    if isinstance(value, torch.Tensor) and value.dim() == 1:
        value = value.tolist()  # torch takes a 1-D integer tensor for an int[] too
    if isinstance(value, Sequence) and not isinstance(value, str):
        values = tuple(value)
        if len(values) == 1:
            values = values * 2
    else:
        values = (value, value)
    if len(values) != 2:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}")
    try:
        values = tuple(integer(v, name) for v in values)
    except TypeError:
        raise TypeError(f"{name} must be an int or a pair of ints, got {value!r}") from None
    if any(v < minimum for v in values):
        raise ValueError(f"{name} must be >= {minimum}, got {value!r}")
    if any(v > maximum for v in values):
        raise ValueError(f"{name} must be <= {maximum}, got {value!r}")
    return values


def positive_int(value, name: str) -> int:
    try:
        result = integer(value, name)
    except TypeError:
        raise TypeError(f"{name} must be a positive int, got {value!r}") from None
    if result < 1:
        raise ValueError(f"{name} must be a positive int, got {value!r}")
    return result


def check_int64_safe(what: str, value: int) -> None:
    """Geometry values the C++ arithmetic adds and multiplies must stay far
    from int64's limit; torch refuses such sizes too."""
    if value >= INT64_SAFE:
        raise ValueError(f"{what} ({value}) is too large: at most {INT64_SAFE - 1}")


def conv_padding(padding, kernel_size: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) padding from torch's forms: int, pair,
    "valid" (none) or "same" (output size = input size, stride 1 only; an odd
    total goes to the bottom/right like torch)."""
    if isinstance(padding, str):
        if padding == "valid":
            return (0, 0, 0, 0)
        if padding == "same":
            if stride != (1, 1):
                raise ValueError(f"padding='same' needs stride 1 (like torch), got stride={stride}")
            pads = []
            for k, d in zip(kernel_size, dilation, strict=True):
                total = d * (k - 1)
                pads += [total // 2, total - total // 2]
            return tuple(pads)
        raise ValueError(f"padding must be 'same', 'valid', an int or a pair of ints, "
                         f"got {padding!r}")
    ph, pw = pair(padding, "padding", minimum=0)
    return (ph, ph, pw, pw)


def conv_output_size(size: int, kernel: int, stride: int, pad_lo: int, pad_hi: int,
                     dilation: int) -> int:
    """floor((n + p_lo + p_hi - d (f - 1) - 1) / s) + 1: the course notes'
    (n + 2p - f) / s + 1 with dilation and asymmetric padding."""
    return (size + pad_lo + pad_hi - dilation * (kernel - 1) - 1) // stride + 1


def pool_output_size(size: int, kernel: int, stride: int, pad: int, dilation: int,
                     ceil_mode: bool) -> int:
    """torch's pooling_output_shape: the conv formula, rounded up in ceil_mode
    but never starting a window past the input plus the left padding."""
    out = (size + 2 * pad - dilation * (kernel - 1) - 1 + (stride - 1 if ceil_mode else 0)) \
        // stride + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def activation(name) -> Activation:
    """The fused activation a public ``activation=`` argument (None or its
    name) asks for; the ops take its name, "none" for None."""
    key = "none" if name is None else name
    if not isinstance(key, str) or key not in Activation.__members__:
        names = [repr(a) for a in Activation.__members__ if a != "none"]
        raise ValueError(f"activation must be None, {', '.join(names[:-1])} or {names[-1]}, "
                         f"got {name!r}")
    return Activation[key]


def check_tensor(t, name: str, *, ndim: int | tuple[int, ...]) -> None:
    """A dense (strided) tensor of one of the ranks ``ndim``."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
    if t.is_nested or t.is_quantized or t.layout != torch.strided:
        kind = ("a nested tensor" if t.is_nested else "a quantized tensor" if t.is_quantized
                else f"layout {t.layout}")
        raise TypeError(f"{name} must be a dense (strided) tensor, got {kind}; convert it "
                        f"first (.to_dense(), .dequantize(), ...)")
    dims = (ndim,) if isinstance(ndim, int) else ndim
    if t.dim() not in dims:
        expected = " or ".join(f"{d}-D" for d in dims)
        raise ValueError(f"{name} must be {expected}, got a {t.dim()}-D tensor of shape "
                         f"{tuple(t.shape)}")


def check_same(reference: torch.Tensor, ref_name: str, tensors: dict) -> None:
    """Every tensor in ``tensors`` (name -> tensor or None) has the reference's
    device and dtype."""
    for name, t in tensors.items():
        if t is None:
            continue
        if t.device != reference.device:
            raise ValueError(f"{name} must be on {ref_name}'s device {reference.device}, "
                             f"got {t.device}")
        if t.dtype != reference.dtype:
            raise TypeError(f"{name} must have {ref_name}'s dtype {reference.dtype}, "
                            f"got {t.dtype}")


def check_dtype(t: torch.Tensor, name: str, backend: str, supported) -> None:
    if t.dtype not in supported:
        names = ", ".join(str(d).removeprefix("torch.") for d in supported)
        raise TypeError(f"backend {backend!r} computes {name} on {t.device.type} in {names}; "
                        f"got {t.dtype}")


def check_index_range(tensors: dict, backend: str) -> None:
    """For a backend with 32-bit indices: every tensor's element count and
    every element offset fit a signed 32-bit index."""
    for name, t in tensors.items():
        if t is None or t.numel() == 0:
            continue
        extent = sum((size - 1) * abs(stride)
                     for size, stride in zip(t.shape, t.stride(), strict=True)) + 1
        if max(extent, t.numel()) > INDEX_LIMIT:
            what = (f"has {t.numel()} elements" if t.numel() > INDEX_LIMIT
                    else f"spans {extent} elements of memory")
            raise ValueError(f"{name} of shape {tuple(t.shape)} {what}; backend {backend!r} "
                             f"indexes with 32 bits (at most {INDEX_LIMIT}): split the batch "
                             f"or use the cpu backend")


def check_geometry_range(extent: int, op: str, backend: str) -> None:
    """For a backend with 32-bit indices: the largest value its index
    arithmetic reaches for the op's geometry (``index_extent()``) fits."""
    if extent >= GEOMETRY_LIMIT:
        raise ValueError(f"{op}: the sizes, padding, dilation or stride reach {extent} in index "
                         f"arithmetic; backend {backend!r} indexes with 32 bits (below "
                         f"{GEOMETRY_LIMIT}): use smaller values or the cpu backend")


def is_channels_last(t: torch.Tensor) -> bool:
    """torch's suggest_memory_format for 4-D tensors (c10's
    is_channels_last_strides_2d_s4): True when the strides order the
    dimensions c, w, h, n from fastest to slowest; ambiguous cases are NCHW."""
    if t.dim() != 4:
        return False
    sizes, strides = t.shape, t.stride()
    if strides[1] == 0:
        return False
    smallest = 0
    for d in (1, 3, 2, 0):
        if sizes[d] == 0 or strides[d] < smallest:
            return False
        if d == 0 and smallest == strides[1]:
            return False
        smallest = strides[d] * sizes[d] if sizes[d] > 1 else strides[d]
    return True


def empty_4d(shape, like: torch.Tensor, channels_last: bool, dtype=None) -> torch.Tensor:
    """An uninitialised 4-D tensor on like's device, of like's dtype unless
    ``dtype`` is given, in channels_last or contiguous format."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return torch.empty(shape, dtype=like.dtype if dtype is None else dtype, device=like.device,
                       memory_format=fmt)


# Testing aid: when on, ops fill their outputs with NaN (integer outputs with
# their most negative value) before the kernels run, so an element a kernel
# forgets to write fails every comparison.
_poison_outputs = False


def set_output_poisoning(enabled: bool) -> None:
    global _poison_outputs
    _poison_outputs = bool(enabled)


def poison(*tensors) -> None:
    if _poison_outputs:
        for t in tensors:
            if t is not None:
                t.fill_(float("nan") if t.is_floating_point() else torch.iinfo(t.dtype).min)
