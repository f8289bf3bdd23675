"""Triton pieces the families share: the accumulator type, the fused
activations and their derivatives, the deterministic split-sum, channel
blocking (the block size for a channel count, a program's channel tile of a
grouped dimension), geometries passed to kernels by field name, and
autotuning with its on-disk cache.

The activation codes are ``cnnkernels._ext.Activation``'s (C++'s
cnnk::Activation, read from _C), as compile-time globals the kernels compare
their ACTIVATION argument with.
"""

import torch
import triton
import triton.language as tl
from cnnkernels.kernels import TORCH_TO_TRITON_POINTER, compile_spec

from cnnkernels._ext import Activation

RELU = tl.constexpr(int(Activation.relu))
RELU6 = tl.constexpr(int(Activation.relu6))
SILU = tl.constexpr(int(Activation.silu))


def autotune(configs: list, key: list[str]):
    """``triton.autotune`` with Triton's on-disk cache of the tuned
    configurations (``cache_results``): the timings of each tuning key (the
    shape) are stored under TRITON_CACHE_DIR in a file keyed by the Triton
    version, the GPU target, the kernel's source and the configurations, so
    a later process reads them instead of tuning again (``cnnkernels tune``
    fills the cache for the reference models). Triton writes each file to a
    temporary directory and renames it into place (os.replace), so
    processes tuning at once lose nothing. The interpreter never tunes."""
    return triton.autotune(configs=configs, key=key, cache_results=True)


def acc_type(dtype: torch.dtype):
    """Accumulate in fp32, fp64 for fp64 inputs (interpreter only)."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """acc_type as a torch dtype, for scratch tensors."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def geometry_args(kernel, g) -> dict:
    """The kernel's arguments named like a field or property of the geometry
    ``g``, by name: geometry scalars are never passed by position."""
    return {name: getattr(g, name) for name in kernel.arg_names if hasattr(g, name)}


def channel_block(channels: int, choices: tuple[int, ...]) -> int:
    """Smallest listed power of two covering ``channels`` (capped at the largest)."""
    for block in choices:
        if block >= channels:
            return block
    return choices[-1]


@triton.jit
def channel_tile(pid, channels_per_group, BLOCK: tl.constexpr):
    """Channel tile ``pid`` of a grouped channel dimension, tiled BLOCK
    channels at a time within each group, the groups one after another:
    (group, the tile's channels within the group, their mask)."""
    tiles = tl.cdiv(channels_per_group, BLOCK)
    local = (pid % tiles) * BLOCK + tl.arange(0, BLOCK)
    return pid // tiles, local, local < channels_per_group


@triton.jit
def apply_activation(v, ACTIVATION: tl.constexpr):
    """relu / relu6 / silu as torch computes them (cnnk::apply_activation),
    in v's type (the accumulator's): a NaN passes through (selects, not
    tl.maximum, whose NaN handling is not torch's); silu is v / (1 + e^-v),
    whose e^-v overflowing to infinity gives -0 for a large negative v and
    NaN for -inf, as torch's."""
    if ACTIVATION == RELU:
        v = tl.where(v < 0, 0.0, v)
    elif ACTIVATION == RELU6:
        v = tl.where(v < 0, 0.0, tl.where(v > 6, 6.0, v))
    elif ACTIVATION == SILU:
        v = v / (1.0 + tl.exp(-v))
    return v


@triton.jit
def masked_grad(gy, saved, ACTIVATION: tl.constexpr):
    """gy through the activation, from ``saved`` (its output y for relu and
    relu6, its input z for silu), as torch computes it
    (cnnk::activation_grad): relu passes gy unless y <= 0 (a NaN y passes
    it), relu6 only where 0 < y < 6; silu multiplies it by
    s (1 + z (1 - s)), s = 1 / (1 + e^-z)."""
    if ACTIVATION == RELU:
        gy = tl.where(saved <= 0, 0.0, gy)
    elif ACTIVATION == RELU6:
        gy = tl.where((saved > 0) & (saved < 6), gy, 0.0)
    elif ACTIVATION == SILU:
        s = 1.0 / (1.0 + tl.exp(-saved))
        gy = gy * s * (1.0 + saved * (1.0 - s))
    return gy


@triton.jit
def _sum_splits_kernel(
    partial_ptr, out_ptr,
    E, SPLITS, D1, D2, D3,
    os0, os1, os2, os3,
    BLOCK: tl.constexpr,
):
    """out[e] = sum over splits of partial[split, e], in split order; e is the
    flat index of a (D0, D1, D2, D3) tensor written through its strides."""
    e = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = e < E
    total = tl.load(partial_ptr + e, mask=mask, other=0.0)
    for split in range(1, SPLITS):
        total += tl.load(partial_ptr + split * E + e, mask=mask, other=0.0)
    i3 = e % D3
    i2 = (e // D3) % D2
    i1 = (e // (D3 * D2)) % D1
    i0 = e // (D3 * D2 * D1)
    tl.store(out_ptr + i0 * os0 + i1 * os1 + i2 * os2 + i3 * os3,
             total.to(out_ptr.dtype.element_ty), mask=mask)


def split_reduction(tiles: int, length: int, block: int, target_programs: int,
                    min_blocks_per_split: int) -> tuple[int, int]:
    """(splits, length per split) for a reduction of ``length`` in ``block``
    chunks that each of ``tiles`` output tiles runs: enough programs (tiles x
    splits) to reach ``target_programs``, each over at least
    ``min_blocks_per_split`` chunks, and each split whole chunks (the chunk
    boundaries never move). A function of the shape only, so the summation
    order is fixed."""
    chunks = triton.cdiv(length, block)
    by_work = max(1, chunks // min_blocks_per_split)
    by_occupancy = max(1, triton.cdiv(target_programs, tiles))
    splits = min(by_work, by_occupancy)
    return splits, triton.cdiv(triton.cdiv(length, splits), block) * block


_SUM_BLOCK = 256
_SUM_WARPS = 4


def sum_splits(partial: torch.Tensor, out: torch.Tensor, splits: int) -> None:
    """out = partial.sum(0) for partial of shape (splits, *out.shape) (up to
    4-D out, any strides), summed in split order: the deterministic second
    pass of a split reduction. Memory-bound: reads splits * out.numel()
    accumulators and writes out once."""
    shape = (1,) * (4 - out.dim()) + tuple(out.shape)
    strides = (0,) * (4 - out.dim()) + tuple(out.stride())
    E = out.numel()
    _sum_splits_kernel[(triton.cdiv(E, _SUM_BLOCK),)](
        partial, out, E, splits, shape[1], shape[2], shape[3], *strides,
        BLOCK=_SUM_BLOCK, num_warps=_SUM_WARPS,
    )


def sum_splits_specs(prefix: str, dtype: str) -> list[dict]:
    """sum_splits' launch configurations, for a family's static check specs."""
    return [compile_spec(f"{prefix}_sum_splits[{dtype}]", _sum_splits_kernel,
                         pointers={"partial_ptr": "*fp32",
                                   "out_ptr": TORCH_TO_TRITON_POINTER[dtype]},
                         constexprs={"BLOCK": _SUM_BLOCK}, num_warps=_SUM_WARPS)]
