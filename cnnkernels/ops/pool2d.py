"""2-D pooling as PyTorch custom operators: ``cnnk::max_pool2d`` and
``cnnk::avg_pool2d`` with their backward ops, each with a fake (meta)
implementation and the autograd formula, dispatched to the cpu (C++), cuda
(CUDA C++) and triton backends.

Four public functions share the two ops: ``max_pool2d`` and
``adaptive_max_pool2d``, ``avg_pool2d`` and ``adaptive_avg_pool2d``, with
torch's arguments and results (indices included). They turn their arguments
into one window description (output size, kernel, stride, padding,
dilation, adaptive, count_include_pad, divisor_override) that the kernels of
every backend read the same way (csrc/include/cnnk/pool2d.h). Backward is a
gather in every backend: deterministic, no atomics.
"""

from collections.abc import Sequence
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from cnnkernels import _args, _backend, _ext
from cnnkernels.ops._define import Family


class Pool2dGeometry(NamedTuple):
    """Sizes and window parameters in the order the kernels take them."""

    N: int
    C: int
    H: int
    W: int
    P: int
    Q: int
    kernel_h: int
    kernel_w: int
    stride_h: int
    stride_w: int
    pad_h: int
    pad_w: int
    dil_h: int
    dil_w: int
    adaptive: bool
    count_include_pad: bool
    divisor_override: int


# The window description an op receives: every Pool2dGeometry field after W.
WINDOW_FIELDS = Pool2dGeometry._fields[4:]


def _geometry(input: Tensor, window: Sequence[int], op: str) -> Pool2dGeometry:
    """Validate the input and the window; shared by the real and the fake
    implementations."""
    _args.check_tensor(input, "input", ndim=4)
    if not input.dtype.is_floating_point:
        raise TypeError(f"input must be a floating-point tensor, got {input.dtype}")
    if len(window) != len(WINDOW_FIELDS):
        raise ValueError(f"{op}: window takes {len(WINDOW_FIELDS)} values "
                         f"({', '.join(WINDOW_FIELDS)}), got {list(window)}")
    N, C, H, W = input.shape
    if C == 0 or H == 0 or W == 0:
        raise ValueError(f"{op}: input must have non-zero channels, height and width, got shape "
                         f"{tuple(input.shape)}")
    g = Pool2dGeometry(N, C, H, W, *(int(v) for v in window[:10]), bool(window[10]),
                       bool(window[11]), int(window[12]))
    if g.P < 0 or g.Q < 0:
        raise ValueError(f"{op}: output size must be >= 0, got ({g.P}, {g.Q})")
    if g.divisor_override < 0:
        raise ValueError(f"{op}: divisor_override must be positive, got {g.divisor_override}")
    if not g.adaptive:
        _check_sliding_window(g, op)
    return g


def _check_sliding_window(g: Pool2dGeometry, op: str) -> None:
    if min(g.kernel_h, g.kernel_w) < 1:
        raise ValueError(f"{op}: kernel_size must be >= 1, got ({g.kernel_h}, {g.kernel_w})")
    if min(g.stride_h, g.stride_w) < 1:
        raise ValueError(f"{op}: stride must be >= 1, got ({g.stride_h}, {g.stride_w})")
    if min(g.dil_h, g.dil_w) < 1:
        raise ValueError(f"{op}: dilation must be >= 1, got ({g.dil_h}, {g.dil_w})")
    if g.pad_h < 0 or g.pad_w < 0 or 2 * g.pad_h > g.kernel_h or 2 * g.pad_w > g.kernel_w:
        raise ValueError(f"{op}: padding must be between 0 and half the kernel size (like "
                         f"torch), got padding ({g.pad_h}, {g.pad_w}) for kernel_size "
                         f"({g.kernel_h}, {g.kernel_w})")
    if g.P < 1 or g.Q < 1:
        raise ValueError(f"{op}: output size ({g.P}, {g.Q}) is too small for input size "
                         f"({g.H}, {g.W}), kernel_size ({g.kernel_h}, {g.kernel_w}), padding "
                         f"({g.pad_h}, {g.pad_w}) and dilation ({g.dil_h}, {g.dil_w})")


def _empty_like_input(input: Tensor, shape, dtype=None) -> Tensor:
    return _args.empty_4d(shape, input, _args.is_channels_last(input), dtype)


def _launch(backend: str, name: str, g: Pool2dGeometry, *tensors) -> None:
    """Run a pool2d kernel on the backend; ``tensors`` in the launcher's
    order, None for absent indices."""
    if backend == "triton":
        from cnnkernels.kernels import pool2d as triton_pool2d

        getattr(triton_pool2d, name)(g, *tensors)
        return
    _ext.run_kernel(backend, name, tensors[0], tuple(int(v) for v in g),
                    *(_ext.tensor4(t) for t in tensors))


@torch.library.custom_op("cnnk::max_pool2d", mutates_args=(), device_types=("cpu", "cuda"))
def _max_pool2d(input: Tensor, window: Sequence[int], compute_indices: bool,
                backend: str) -> tuple[Tensor, Tensor]:
    g = _geometry(input, window, "max_pool2d")
    output, indices = _max_pool2d_outputs(input, g, compute_indices)
    _backend.check_runnable(backend, "max_pool2d", {"input": input, "output": output})
    _args.poison(output)
    if output.numel() > 0:
        _launch(backend, "max_pool2d_forward", g, input, output,
                indices if compute_indices else None)
    return output, indices


@_max_pool2d.register_fake
def _max_pool2d_fake(input, window, compute_indices, backend):
    return _max_pool2d_outputs(input, _geometry(input, window, "max_pool2d"), compute_indices)


def _max_pool2d_outputs(input: Tensor, g: Pool2dGeometry, compute_indices: bool):
    output = _empty_like_input(input, (g.N, g.C, g.P, g.Q))
    # Without indices (inference, no return_indices) the op returns an empty
    # int64 tensor instead of writing 8 bytes per output.
    shape = (g.N, g.C, g.P, g.Q) if compute_indices else (0, 0, 0, 0)
    indices = _empty_like_input(input, shape, torch.int64)
    return output, indices


@torch.library.custom_op("cnnk::max_pool2d_backward", mutates_args=(),
                         device_types=("cpu", "cuda"))
def _max_pool2d_backward(grad_output: Tensor, indices: Tensor, input: Tensor,
                         window: Sequence[int], backend: str) -> Tensor:
    g = _check_grad_args(grad_output, indices, input, window, "max_pool2d_backward")
    grad_input = _empty_like_input(input, input.shape)
    _backend.check_runnable(backend, "max_pool2d", {"grad_output": grad_output,
                                                    "indices": indices, "grad_input": grad_input})
    _args.poison(grad_input)
    if grad_input.numel() > 0:
        if grad_output.numel() == 0:
            grad_input.zero_()  # no window, no gradient
        else:
            _launch(backend, "max_pool2d_backward", g, grad_output, indices, grad_input)
    return grad_input


@_max_pool2d_backward.register_fake
def _max_pool2d_backward_fake(grad_output, indices, input, window, backend):
    _check_grad_args(grad_output, indices, input, window, "max_pool2d_backward")
    return _empty_like_input(input, input.shape)


@torch.library.custom_op("cnnk::avg_pool2d", mutates_args=(), device_types=("cpu", "cuda"))
def _avg_pool2d(input: Tensor, window: Sequence[int], backend: str) -> Tensor:
    g = _geometry(input, window, "avg_pool2d")
    output = _empty_like_input(input, (g.N, g.C, g.P, g.Q))
    _backend.check_runnable(backend, "avg_pool2d", {"input": input, "output": output})
    _args.poison(output)
    if output.numel() > 0:
        _launch(backend, "avg_pool2d_forward", g, input, output)
    return output


@_avg_pool2d.register_fake
def _avg_pool2d_fake(input, window, backend):
    g = _geometry(input, window, "avg_pool2d")
    return _empty_like_input(input, (g.N, g.C, g.P, g.Q))


@torch.library.custom_op("cnnk::avg_pool2d_backward", mutates_args=(),
                         device_types=("cpu", "cuda"))
def _avg_pool2d_backward(grad_output: Tensor, input: Tensor, window: Sequence[int],
                         backend: str) -> Tensor:
    g = _check_grad_args(grad_output, None, input, window, "avg_pool2d_backward")
    grad_input = _empty_like_input(input, input.shape)
    _backend.check_runnable(backend, "avg_pool2d", {"grad_output": grad_output,
                                                    "grad_input": grad_input})
    _args.poison(grad_input)
    if grad_input.numel() > 0:
        if grad_output.numel() == 0:
            grad_input.zero_()  # no window, no gradient
        else:
            _launch(backend, "avg_pool2d_backward", g, grad_output, grad_input)
    return grad_input


@_avg_pool2d_backward.register_fake
def _avg_pool2d_backward_fake(grad_output, input, window, backend):
    _check_grad_args(grad_output, None, input, window, "avg_pool2d_backward")
    return _empty_like_input(input, input.shape)


def _check_grad_args(grad_output, indices, input, window, op) -> Pool2dGeometry:
    g = _geometry(input, window, op)
    _args.check_tensor(grad_output, "grad_output", ndim=4)
    _args.check_same(input, "input", {"grad_output": grad_output})
    expected = (g.N, g.C, g.P, g.Q)
    if tuple(grad_output.shape) != expected:
        raise ValueError(f"{op}: grad_output must have the output's shape {expected}, got "
                         f"{tuple(grad_output.shape)}")
    if indices is not None:
        if indices.dtype != torch.int64 or tuple(indices.shape) != expected:
            raise ValueError(f"{op}: indices must be int64 of shape {expected} (the forward "
                             f"ran without indices?), got {indices.dtype} of shape "
                             f"{tuple(indices.shape)}")
        if indices.device != input.device:
            raise ValueError(f"{op}: indices must be on {input.device}, got {indices.device}")
    return g


def _max_setup_context(ctx, inputs, output) -> None:
    input, window, _, backend = inputs
    ctx.save_for_backward(input, output[1])
    ctx.window, ctx.backend = window, backend
    ctx.mark_non_differentiable(output[1])


def _max_backward(ctx, grad_output, _grad_indices):
    input, indices = ctx.saved_tensors
    grad = torch.ops.cnnk.max_pool2d_backward(grad_output, indices, input, ctx.window,
                                              ctx.backend)
    return grad, None, None, None


_max_pool2d.register_autograd(_max_backward, setup_context=_max_setup_context)


def _avg_setup_context(ctx, inputs, output) -> None:
    input, window, backend = inputs
    ctx.save_for_backward(input)
    ctx.window, ctx.backend = window, backend


def _avg_backward(ctx, grad_output):
    (input,) = ctx.saved_tensors
    return (torch.ops.cnnk.avg_pool2d_backward(grad_output, input, ctx.window, ctx.backend),
            None, None)


_avg_pool2d.register_autograd(_avg_backward, setup_context=_avg_setup_context)


def _batched(input: Tensor) -> tuple[Tensor, bool]:
    """torch's pooling takes (C, H, W) too: run it as a batch of one."""
    _args.check_tensor(input, "input", ndim=(3, 4))
    return (input.unsqueeze(0), True) if input.dim() == 3 else (input, False)


def _sliding_window(input: Tensor, kernel_size, stride, padding, dilation, ceil_mode,
                    count_include_pad=True, divisor_override=None) -> list[int]:
    kernel = _args.pair(kernel_size, "kernel_size", minimum=1)
    stride = kernel if stride is None or stride == [] or stride == () else \
        _args.pair(stride, "stride", minimum=1)
    padding = _args.pair(padding, "padding", minimum=0)
    dilation = _args.pair(dilation, "dilation", minimum=1)
    if divisor_override is not None and (not _args.is_int(divisor_override)
                                         or divisor_override == 0):
        raise ValueError(f"divisor_override must be a non-zero int or None, got "
                         f"{divisor_override!r}")
    out = [_args.pool_output_size(size, k, s, p, d, bool(ceil_mode))
           for size, k, s, p, d in zip(input.shape[-2:], kernel, stride, padding, dilation,
                                       strict=True)]
    return [*out, *kernel, *stride, *padding, *dilation, 0, int(bool(count_include_pad)),
            int(divisor_override or 0)]


def _adaptive_window(input: Tensor, output_size) -> list[int]:
    sizes = output_size if isinstance(output_size, Sequence) else (output_size, output_size)
    if len(sizes) != 2:
        raise TypeError(f"output_size must be an int, None or a pair, got {output_size!r}")
    out = []
    for size, default in zip(sizes, input.shape[-2:], strict=True):
        if size is None:
            size = default
        if not _args.is_int(size) or size < 0:
            raise ValueError(f"output_size must hold non-negative ints or None, got "
                             f"{output_size!r}")
        out.append(int(size))
    return [*out, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0]


def _backend_for(input: Tensor) -> str:
    return _backend.resolve_for_device_type(input.device.type, _backend.current_backend())


def _unbatch(t: Tensor, unbatched: bool) -> Tensor:
    return t.squeeze(0) if unbatched else t


def _max_pool(input: Tensor, window: list[int], return_indices: bool):
    input, unbatched = _batched(input)
    compute_indices = bool(return_indices) or (torch.is_grad_enabled() and input.requires_grad)
    output, indices = torch.ops.cnnk.max_pool2d(input, window, compute_indices,
                                                _backend_for(input))
    if return_indices:
        return _unbatch(output, unbatched), _unbatch(indices, unbatched)
    return _unbatch(output, unbatched)


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False):
    """``torch.nn.functional.max_pool2d`` on cnnkernels' kernels: same
    arguments and results, indices included (first maximum wins a tie, NaN
    propagates)."""
    _args.check_tensor(input, "input", ndim=(3, 4))
    window = _sliding_window(input, kernel_size, stride, padding, dilation, ceil_mode)
    return _max_pool(input, window, return_indices)


def adaptive_max_pool2d(input: Tensor, output_size, return_indices: bool = False):
    """``torch.nn.functional.adaptive_max_pool2d`` on cnnkernels' kernels."""
    _args.check_tensor(input, "input", ndim=(3, 4))
    return _max_pool(input, _adaptive_window(input, output_size), return_indices)


def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None) -> Tensor:
    """``torch.nn.functional.avg_pool2d`` on cnnkernels' kernels."""
    _args.check_tensor(input, "input", ndim=(3, 4))
    window = _sliding_window(input, kernel_size, stride, padding, 1, ceil_mode,
                             count_include_pad, divisor_override)
    batched, unbatched = _batched(input)
    return _unbatch(torch.ops.cnnk.avg_pool2d(batched, window, _backend_for(batched)), unbatched)


def adaptive_avg_pool2d(input: Tensor, output_size) -> Tensor:
    """``torch.nn.functional.adaptive_avg_pool2d`` on cnnkernels' kernels
    (output_size 1 is the global average pool of ResNet, MobileNet and
    Inception)."""
    _args.check_tensor(input, "input", ndim=(3, 4))
    batched, unbatched = _batched(input)
    window = _adaptive_window(batched, output_size)
    return _unbatch(torch.ops.cnnk.avg_pool2d(batched, window, _backend_for(batched)), unbatched)


FAMILY = Family(name="pool2d",
                public=("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"),
                triton_modules=("cnnkernels.kernels.pool2d",),
                bench_module="cnnkernels.bench.pool2d")
