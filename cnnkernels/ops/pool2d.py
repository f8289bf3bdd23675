"""pool2d: max and average pooling over sliding or adaptive windows.

Operators (``torch.ops.cnnk.*``), each a plan (cnnkernels/ops/_define.py),
split as aten splits them: ``max_pool2d`` and ``adaptive_max_pool2d``
(output and int64 indices), ``avg_pool2d`` and ``adaptive_avg_pool2d``, each
with its ``*_backward`` op, and ``max_pool2d_gather`` (the input's values at
the indices). The window crosses the op boundary as named arguments
(kernel_size, stride, padding, dilation, ceil_mode, ...; or output_size) and
becomes one ``Pool2dGeometry`` that the kernels of every backend read the
same way (csrc/include/cnnk/pool2d.h). The launchers have the same names and
arguments on every backend: kernels/pool2d.py (Triton), csrc/cpu/pool2d.cpp
and csrc/cuda/pool2d.cu (through _C). Backward is deterministic and without
atomics on every backend (gathers on the GPU; on the cpu a scatter for max
pooling within the plane a task owns). Max pooling's backward counts an
index only inside its window: a dilated window with no tap inside the input
returns -inf and, like torch, an index that is no element of it; it passes
no gradient (torch's backward scatters there anyway).

Derivatives: every op is linear in its one differentiable input, so its
forward mode (jvp) is the op applied to the tangent and its reverse mode the
adjoint: the average backward / forward over the same windows for average
pooling, the gather at the indices / the max backward for max pooling. A
third reverse-mode derivative of max pooling raises.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor
from torch.autograd import forward_ad

from cnnkernels import _args, _backend, _ext
from cnnkernels.ops._define import Family, Launch, define_op, save

FAMILY = Family(name="pool2d",
                public=("max_pool2d", "avg_pool2d", "adaptive_avg_pool2d", "adaptive_max_pool2d"),
                triton_modules=("cnnkernels.kernels.pool2d",),
                bench_module="cnnkernels.bench.pool2d")

__all__ = list(FAMILY.public)


@dataclass(frozen=True)
class Pool2dGeometry:
    """Sizes and window of one pooling, field for field ``cnnk::Pool2dGeometry``
    (csrc/include/cnnk/pool2d.h): every backend's launchers take it by field
    name. Input (N, C, H, W), output (N, C, P, Q). Sliding windows: output p
    reads rows p * stride_h - pad_h + i * dil_h, i < kernel_h. Adaptive
    windows (``adaptive``; the sliding fields are then unused, 1 or 0): rows
    [floor(p H / P), ceil((p + 1) H / P)). ``divisor_override``: 0 for none."""

    N: int
    C: int
    H: int
    W: int
    P: int
    Q: int
    kernel_h: int = 1
    kernel_w: int = 1
    stride_h: int = 1
    stride_w: int = 1
    pad_h: int = 0
    pad_w: int = 0
    dil_h: int = 1
    dil_w: int = 1
    adaptive: bool = False
    count_include_pad: bool = True
    divisor_override: int = 0

    def index_extent(self) -> int:
        """The largest value the cuda and triton kernels' 32-bit index
        arithmetic reaches besides tensor offsets (checked on their own):
        sizes, plane indices h * W + w (a window's first index may lie past
        the input), window reaches, and the adaptive windows' products o * H.
        The batch is unbounded: the CUDA launcher splits it."""
        sizes = max(self.C, self.H * self.W, self.P * self.Q)
        if self.adaptive:
            return max(sizes, self.H * self.P + self.H + self.P, self.W * self.Q + self.W + self.Q)
        row_reach = (self.P - 1) * self.stride_h + self.kernel_h * self.dil_h
        col_reach = (self.Q - 1) * self.stride_w + self.kernel_w * self.dil_w
        return max(sizes, row_reach + self.H + self.pad_h + self.stride_h,
                   col_reach + self.W + self.pad_w + self.stride_w,
                   self.kernel_h * self.kernel_w, row_reach * self.W + col_reach)


def _input_sizes(input: Tensor, op: str, *, empty_channels: bool = False,
                 empty_plane: bool = False):
    """(N, C, H, W), checked like torch: an empty batch is fine, empty
    channels or an empty plane only where torch takes them."""
    _args.check_tensor(input, "input", ndim=4)
    if not input.dtype.is_floating_point:
        raise TypeError(f"input must be a floating-point tensor, got {input.dtype}")
    N, C, H, W = input.shape
    if (C == 0 and not empty_channels) or ((H == 0 or W == 0) and not empty_plane):
        what = "height and width" if empty_channels else "channels, height and width"
        raise ValueError(f"{op}: input must have non-zero {what}, got shape "
                         f"{tuple(input.shape)}")
    return N, C, H, W


def _two(values: Sequence[int], name: str, op: str, minimum: int,
         maximum: int = 2**63 - 1) -> tuple[int, int]:
    if len(values) != 2:
        raise ValueError(f"{op}: {name} takes 2 values, got {list(values)}")
    if min(values) < minimum or max(values) > maximum:
        raise ValueError(f"{op}: {name} must be in [{minimum}, {maximum}], got {tuple(values)}")
    return int(values[0]), int(values[1])


def sliding_geometry(input: Tensor, kernel_size: Sequence[int], stride: Sequence[int],
                     padding: Sequence[int], dilation: Sequence[int], ceil_mode: bool,
                     count_include_pad: bool, divisor_override: Optional[int],
                     op: str) -> Pool2dGeometry:
    """The geometry of a sliding-window pooling, validated like torch's: the
    window arguments are 32-bit ints there (so every product of two fits
    int64 here), the padding at most half the kernel; divisor_override any
    non-zero int64."""
    N, C, H, W = _input_sizes(input, op)
    kh, kw = _two(kernel_size, "kernel_size", op, 1, _args.INT32_MAX)
    sh, sw = _two(stride, "stride", op, 1, _args.INT32_MAX)
    ph, pw = _two(padding, "padding", op, 0, _args.INT32_MAX)
    dh, dw = _two(dilation, "dilation", op, 1, _args.INT32_MAX)
    if 2 * ph > kh or 2 * pw > kw:  # torch's rule, with or without dilation
        raise ValueError(f"{op}: padding must be between 0 and half the kernel size (like "
                         f"torch), got padding ({ph}, {pw}) for kernel_size ({kh}, {kw})")
    if divisor_override == 0:
        raise ValueError(f"{op}: divisor_override must be a non-zero int or None, got 0")
    P = _args.pool_output_size(H, kh, sh, ph, dh, bool(ceil_mode))
    Q = _args.pool_output_size(W, kw, sw, pw, dw, bool(ceil_mode))
    if P < 1 or Q < 1:
        raise ValueError(f"{op}: output size ({P}, {Q}) is too small for input size "
                         f"({H}, {W}), kernel_size ({kh}, {kw}), padding ({ph}, {pw}) and "
                         f"dilation ({dh}, {dw})")
    return Pool2dGeometry(N, C, H, W, P, Q, kh, kw, sh, sw, ph, pw, dh, dw,
                          count_include_pad=bool(count_include_pad),
                          divisor_override=int(divisor_override or 0))


def adaptive_geometry(input: Tensor, output_size: Sequence[int], op: str,
                      average: bool = False) -> Pool2dGeometry:
    """The adaptive windows; torch's average takes empty channels, and an
    empty plane for a 1 x 1 output (the mean of nothing: NaN)."""
    P, Q = _two(output_size, "output_size", op, 0, _args.INT32_MAX)
    N, C, H, W = _input_sizes(input, op, empty_channels=average,
                              empty_plane=average and (P, Q) == (1, 1))
    return Pool2dGeometry(N, C, H, W, P, Q, adaptive=True)


def _sizes_geometry(input: Tensor, output_shape, op: str) -> Pool2dGeometry:
    """Sizes only, for the gather (it reads no window)."""
    N, C, H, W = _input_sizes(input, op)
    return Pool2dGeometry(N, C, H, W, *output_shape[2:])


def _triton():
    from cnnkernels.kernels import pool2d

    return pool2d


def _like_input(input: Tensor, shape, dtype=None) -> Tensor:
    return _args.empty_4d(shape, input, _args.is_channels_last(input), dtype)


def _max_launch(g: Pool2dGeometry, input: Tensor, compute_indices: bool) -> Launch:
    output = _like_input(input, (g.N, g.C, g.P, g.Q))
    # Without indices (inference, no return_indices) the op returns an empty
    # int64 tensor instead of writing 8 bytes per output.
    indices = _like_input(input, (g.N, g.C, g.P, g.Q) if compute_indices else (0, 0, 0, 0),
                          torch.int64)
    return Launch((output, indices), {"input": input, "output": output},
                  lambda b: _ext.launchers(b, input, _triton).max_pool2d_forward(
                      g, input, output, indices if compute_indices else None),
                  g.index_extent())


def _check_grad_output(grad_output: Tensor, input: Tensor, g: Pool2dGeometry, op: str) -> None:
    _args.check_tensor(grad_output, "grad_output", ndim=4)
    _args.check_same(input, "input", {"grad_output": grad_output})
    expected = (g.N, g.C, g.P, g.Q)
    if tuple(grad_output.shape) != expected:
        raise ValueError(f"{op}: grad_output must have the output's shape {expected}, got "
                         f"{tuple(grad_output.shape)}")


def _check_indices(indices: Tensor, input: Tensor, shape, op: str) -> None:
    if indices.dtype != torch.int64 or tuple(indices.shape) != tuple(shape):
        raise ValueError(f"{op}: indices must be int64 of shape {tuple(shape)} (the forward "
                         f"ran without indices?), got {indices.dtype} of shape "
                         f"{tuple(indices.shape)}")
    if indices.device != input.device:
        raise ValueError(f"{op}: indices must be on {input.device}, got {indices.device}")


def _max_backward_launch(g: Pool2dGeometry, grad_output: Tensor, indices: Tensor,
                         input: Tensor, op: str) -> Launch:
    _check_grad_output(grad_output, input, g, op)
    _check_indices(indices, input, grad_output.shape, op)
    grad_input = _like_input(input, input.shape)
    return Launch(grad_input, {"grad_output": grad_output, "indices": indices,
                               "grad_input": grad_input},
                  lambda b: _ext.launchers(b, input, _triton).max_pool2d_backward(
                      g, grad_output, indices, grad_input),
                  g.index_extent(), empty_sum=grad_output.numel() == 0)


def _avg_launch(g: Pool2dGeometry, input: Tensor) -> Launch:
    output = _like_input(input, (g.N, g.C, g.P, g.Q))
    if g.H == 0 or g.W == 0:  # the mean of an empty plane, as torch's
        return Launch(output, {"input": input, "output": output},
                      lambda b: output.fill_(float("nan")), 0)
    return Launch(output, {"input": input, "output": output},
                  lambda b: _ext.launchers(b, input, _triton).avg_pool2d_forward(g, input, output),
                  g.index_extent())


def _avg_backward_launch(g: Pool2dGeometry, grad_output: Tensor, input: Tensor,
                         op: str) -> Launch:
    _check_grad_output(grad_output, input, g, op)
    grad_input = _like_input(input, input.shape)
    return Launch(grad_input, {"grad_output": grad_output, "grad_input": grad_input},
                  lambda b: _ext.launchers(b, input, _triton).avg_pool2d_backward(
                      g, grad_output, grad_input),
                  g.index_extent(), empty_sum=grad_output.numel() == 0)


@define_op("cnnk::max_pool2d", returns=tuple[Tensor, Tensor])
def max_pool2d_op(input: Tensor, kernel_size: Sequence[int], stride: Sequence[int],
                  padding: Sequence[int], dilation: Sequence[int], ceil_mode: bool,
                  compute_indices: bool, backend: str) -> Launch:
    """(output, indices); indices is empty unless ``compute_indices``."""
    g = sliding_geometry(input, kernel_size, stride, padding, dilation, ceil_mode, True, None,
                         "max_pool2d")
    return _max_launch(g, input, compute_indices)


@define_op("cnnk::max_pool2d_backward", returns=Tensor)
def max_pool2d_backward_op(grad_output: Tensor, indices: Tensor, input: Tensor,
                           kernel_size: Sequence[int], stride: Sequence[int],
                           padding: Sequence[int], dilation: Sequence[int], ceil_mode: bool,
                           backend: str) -> Launch:
    g = sliding_geometry(input, kernel_size, stride, padding, dilation, ceil_mode, True, None,
                         "max_pool2d_backward")
    return _max_backward_launch(g, grad_output, indices, input, "max_pool2d_backward")


@define_op("cnnk::adaptive_max_pool2d", returns=tuple[Tensor, Tensor])
def adaptive_max_pool2d_op(input: Tensor, output_size: Sequence[int], compute_indices: bool,
                           backend: str) -> Launch:
    return _max_launch(adaptive_geometry(input, output_size, "adaptive_max_pool2d"), input,
                       compute_indices)


@define_op("cnnk::adaptive_max_pool2d_backward", returns=Tensor)
def adaptive_max_pool2d_backward_op(grad_output: Tensor, indices: Tensor, input: Tensor,
                                    backend: str) -> Launch:
    op = "adaptive_max_pool2d_backward"
    _args.check_tensor(grad_output, "grad_output", ndim=4)
    g = adaptive_geometry(input, grad_output.shape[2:], op)
    return _max_backward_launch(g, grad_output, indices, input, op)


@define_op("cnnk::avg_pool2d", returns=Tensor)
def avg_pool2d_op(input: Tensor, kernel_size: Sequence[int], stride: Sequence[int],
                  padding: Sequence[int], ceil_mode: bool, count_include_pad: bool,
                  divisor_override: Optional[int], backend: str) -> Launch:
    g = sliding_geometry(input, kernel_size, stride, padding, (1, 1), ceil_mode,
                         count_include_pad, divisor_override, "avg_pool2d")
    return _avg_launch(g, input)


@define_op("cnnk::avg_pool2d_backward", returns=Tensor)
def avg_pool2d_backward_op(grad_output: Tensor, input: Tensor, kernel_size: Sequence[int],
                           stride: Sequence[int], padding: Sequence[int], ceil_mode: bool,
                           count_include_pad: bool, divisor_override: Optional[int],
                           backend: str) -> Launch:
    op = "avg_pool2d_backward"
    g = sliding_geometry(input, kernel_size, stride, padding, (1, 1), ceil_mode,
                         count_include_pad, divisor_override, op)
    return _avg_backward_launch(g, grad_output, input, op)


@define_op("cnnk::adaptive_avg_pool2d", returns=Tensor)
def adaptive_avg_pool2d_op(input: Tensor, output_size: Sequence[int], backend: str) -> Launch:
    return _avg_launch(adaptive_geometry(input, output_size, "adaptive_avg_pool2d",
                                         average=True), input)


@define_op("cnnk::adaptive_avg_pool2d_backward", returns=Tensor)
def adaptive_avg_pool2d_backward_op(grad_output: Tensor, input: Tensor,
                                    backend: str) -> Launch:
    op = "adaptive_avg_pool2d_backward"
    _args.check_tensor(grad_output, "grad_output", ndim=4)
    g = adaptive_geometry(input, grad_output.shape[2:], op, average=True)
    return _avg_backward_launch(g, grad_output, input, op)


@define_op("cnnk::max_pool2d_gather", returns=Tensor)
def max_pool2d_gather_op(input: Tensor, indices: Tensor, backend: str) -> Launch:
    """output[n, c, p, q] = input[n, c, h, w] at h * W + w = indices[n, c, p, q]
    (NaN for an index outside the plane, which max pooling never gives)."""
    op = "max_pool2d_gather"
    _args.check_tensor(indices, "indices", ndim=4)
    g = _sizes_geometry(input, indices.shape, op)
    _check_indices(indices, input, (g.N, g.C, g.P, g.Q), op)
    output = _like_input(indices, indices.shape, input.dtype)
    return Launch(output, {"input": input, "indices": indices, "output": output},
                  lambda b: _ext.launchers(b, input, _triton).max_pool2d_gather(
                      g, input, indices, output),
                  g.index_extent())


# Derivatives. Every pooling op is linear in its one differentiable input
# (max pooling's indices are constants), so a jvp applies the op to the
# tangent and a backward applies the adjoint. The forward ops save the input
# (and the indices) and their window arguments: every argument between the
# input and the trailing flags.

def _max_setup(ctx, inputs, output) -> None:
    save(ctx, inputs[0], output[1])
    ctx.window, ctx.backend = inputs[1:-2], inputs[-1]
    ctx.mark_non_differentiable(output[1])


def _max_backward(ctx, grad_output, _grad_indices):
    input, indices = ctx.saved_tensors
    grad = max_pool2d_backward_op(grad_output, indices, input, *ctx.window, ctx.backend)
    return grad, *([None] * 7)


def _adaptive_max_backward(ctx, grad_output, _grad_indices):
    input, indices = ctx.saved_tensors
    return adaptive_max_pool2d_backward_op(grad_output, indices, input, ctx.backend), None, None, \
        None


def _max_jvp(ctx, input_tangent, *_):
    _, indices = ctx.saved_tensors
    return max_pool2d_gather_op(input_tangent, indices, ctx.backend), None


max_pool2d_op.register_derivatives(setup_context=_max_setup, backward=_max_backward,
                                   jvp=_max_jvp)
adaptive_max_pool2d_op.register_derivatives(setup_context=_max_setup,
                                            backward=_adaptive_max_backward, jvp=_max_jvp)


def _max_backward_setup(ctx, inputs, output) -> None:
    save(ctx, inputs[1], inputs[2])  # indices, input
    ctx.window, ctx.backend, ctx.arguments = inputs[3:-1], inputs[-1], len(inputs)


def _max_double_backward(ctx, grad_grad_input):
    """The max backward scatters grad_output to the indices; its adjoint
    gathers from them."""
    indices, _ = ctx.saved_tensors
    return max_pool2d_gather_op(grad_grad_input, indices, ctx.backend), \
        *([None] * (ctx.arguments - 1))


def _max_backward_jvp(ctx, grad_output_tangent, *_):
    indices, input = ctx.saved_tensors
    op = max_pool2d_backward_op if ctx.window else adaptive_max_pool2d_backward_op
    return op(grad_output_tangent, indices, input, *ctx.window, ctx.backend)


for _op in (max_pool2d_backward_op, adaptive_max_pool2d_backward_op):
    _op.register_derivatives(setup_context=_max_backward_setup, backward=_max_double_backward,
                             jvp=_max_backward_jvp)


def _gather_setup(ctx, inputs, output) -> None:
    save(ctx, inputs[1])
    ctx.backend = inputs[-1]


def _gather_backward(ctx, _grad_output):
    raise NotImplementedError("cnnkernels differentiates max pooling twice, not three times "
                              "(max_pool2d_gather has no reverse-mode derivative)")


def _gather_jvp(ctx, input_tangent, *_):
    (indices,) = ctx.saved_tensors
    return max_pool2d_gather_op(input_tangent, indices, ctx.backend)


max_pool2d_gather_op.register_derivatives(setup_context=_gather_setup, backward=_gather_backward,
                                          jvp=_gather_jvp)


def _avg_setup(ctx, inputs, output) -> None:
    save(ctx, inputs[0])
    ctx.window, ctx.backend = inputs[1:-1], inputs[-1]


def _avg_backward(ctx, grad_output):
    (input,) = ctx.saved_tensors
    return avg_pool2d_backward_op(grad_output, input, *ctx.window, ctx.backend), *([None] * 7)


def _avg_jvp(ctx, input_tangent, *_):
    return avg_pool2d_op(input_tangent, *ctx.window, ctx.backend)


def _adaptive_avg_backward(ctx, grad_output):
    (input,) = ctx.saved_tensors
    return adaptive_avg_pool2d_backward_op(grad_output, input, ctx.backend), None, None


def _adaptive_avg_jvp(ctx, input_tangent, *_):
    return adaptive_avg_pool2d_op(input_tangent, *ctx.window, ctx.backend)


avg_pool2d_op.register_derivatives(setup_context=_avg_setup, backward=_avg_backward,
                                   jvp=_avg_jvp)
adaptive_avg_pool2d_op.register_derivatives(setup_context=_avg_setup,
                                            backward=_adaptive_avg_backward, jvp=_adaptive_avg_jvp)


def _avg_backward_setup(ctx, inputs, output) -> None:
    save(ctx, inputs[1])  # input
    ctx.window, ctx.backend, ctx.arguments = inputs[2:-1], inputs[-1], len(inputs)
    ctx.output_size = list(inputs[0].shape[2:])


def _avg_forward_over_window(ctx, input):
    """The average forward over the windows of the backward in ``ctx``."""
    if ctx.window:
        return avg_pool2d_op(input, *ctx.window, ctx.backend)
    return adaptive_avg_pool2d_op(input, ctx.output_size, ctx.backend)


def _avg_double_backward(ctx, grad_grad_input):
    """The average backward spreads grad_output over each window / its
    divisor; its adjoint is the average forward over the same windows."""
    return _avg_forward_over_window(ctx, grad_grad_input), *([None] * (ctx.arguments - 1))


def _avg_backward_jvp(ctx, grad_output_tangent, *_):
    (input,) = ctx.saved_tensors
    if ctx.window:
        return avg_pool2d_backward_op(grad_output_tangent, input, *ctx.window, ctx.backend)
    return adaptive_avg_pool2d_backward_op(grad_output_tangent, input, ctx.backend)


for _op in (avg_pool2d_backward_op, adaptive_avg_pool2d_backward_op):
    _op.register_derivatives(setup_context=_avg_backward_setup, backward=_avg_double_backward,
                             jvp=_avg_backward_jvp)


# The public functions: torch's signatures and argument forms.

def _batched(input: Tensor) -> tuple[Tensor, bool]:
    """torch's pooling takes (C, H, W) too: run it as a batch of one."""
    _args.check_tensor(input, "input", ndim=(3, 4))
    return (input.unsqueeze(0), True) if input.dim() == 3 else (input, False)


def _unbatch(t: Tensor, unbatched: bool) -> Tensor:
    return t.squeeze(0) if unbatched else t


def _window(kernel_size, stride, padding, dilation) -> tuple[list[int], ...]:
    """torch's int-or-pair window arguments as pairs; stride defaults to the kernel."""
    kernel = _args.pair(kernel_size, "kernel_size", minimum=1)
    # torch's default stride: None or an empty list (the nn modules pass []).
    no_stride = stride is None or (isinstance(stride, list | tuple) and len(stride) == 0)
    stride = kernel if no_stride else _args.pair(stride, "stride", minimum=1)
    return (list(kernel), list(stride), list(_args.pair(padding, "padding", minimum=0)),
            list(_args.pair(dilation, "dilation", minimum=1)))


def _output_size(input: Tensor, output_size) -> list[int]:
    sizes = output_size if isinstance(output_size, Sequence) else (output_size, output_size)
    if len(sizes) != 2:
        raise TypeError(f"output_size must be an int, None or a pair, got {output_size!r}")
    out = []
    for size, default in zip(sizes, input.shape[-2:], strict=True):
        size = default if size is None else _args.integer(size, "output_size")
        if size < 0:
            raise ValueError(f"output_size must hold non-negative ints or None, got "
                             f"{output_size!r}")
        out.append(int(size))
    return out


def _max_result(result, unbatched: bool, return_indices: bool):
    output, indices = result
    if return_indices:
        return _unbatch(output, unbatched), _unbatch(indices, unbatched)
    return _unbatch(output, unbatched)


def _needs_indices(input: Tensor, return_indices: bool) -> bool:
    """Indices cost 8 bytes per output: computed when returned or when a
    derivative (reverse or forward mode) will read them."""
    return (bool(return_indices) or (torch.is_grad_enabled() and input.requires_grad)
            or forward_ad._current_level >= 0)


def max_pool2d(input: Tensor, kernel_size, stride=None, padding=0, dilation=1,
               ceil_mode: bool = False, return_indices: bool = False, *,
               backend: Optional[str] = None):
    """``torch.nn.functional.max_pool2d`` on cnnkernels' kernels: same
    arguments and results, indices included (first maximum wins a tie, NaN
    propagates). Like every pooling function here, the backend is the
    current choice of ``cnnkernels.use`` unless ``backend`` pins the call."""
    input, unbatched = _batched(input)
    kernel, stride, padding, dilation = _window(kernel_size, stride, padding, dilation)
    result = max_pool2d_op(input, kernel, stride, padding, dilation,
                           _args.flag(ceil_mode, "ceil_mode"),
                           _needs_indices(input, return_indices),
                           _backend.requested(backend))
    return _max_result(result, unbatched, return_indices)


def adaptive_max_pool2d(input: Tensor, output_size, return_indices: bool = False, *,
                        backend: Optional[str] = None):
    """``torch.nn.functional.adaptive_max_pool2d`` on cnnkernels' kernels."""
    input, unbatched = _batched(input)
    result = adaptive_max_pool2d_op(
        input, _output_size(input, output_size),
        _needs_indices(input, return_indices),
        _backend.requested(backend))
    return _max_result(result, unbatched, return_indices)


def avg_pool2d(input: Tensor, kernel_size, stride=None, padding=0, ceil_mode: bool = False,
               count_include_pad: bool = True, divisor_override: Optional[int] = None, *,
               backend: Optional[str] = None) -> Tensor:
    """``torch.nn.functional.avg_pool2d`` on cnnkernels' kernels (any
    non-zero ``divisor_override``, negative too, like torch)."""
    input, unbatched = _batched(input)
    kernel, stride, padding, _ = _window(kernel_size, stride, padding, 1)
    if divisor_override is not None:
        divisor_override = _args.integer(divisor_override, "divisor_override")
        if divisor_override == 0:
            raise ValueError("divisor_override must be a non-zero int or None, got 0")
    output = avg_pool2d_op(input, kernel, stride, padding, _args.flag(ceil_mode, "ceil_mode"),
                           _args.flag(count_include_pad, "count_include_pad"), divisor_override,
                           _backend.requested(backend))
    return _unbatch(output, unbatched)


def adaptive_avg_pool2d(input: Tensor, output_size, *, backend: Optional[str] = None) -> Tensor:
    """``torch.nn.functional.adaptive_avg_pool2d`` on cnnkernels' kernels
    (output_size 1 is the global average pool of ResNet, MobileNet and
    Inception)."""
    input, unbatched = _batched(input)
    output = adaptive_avg_pool2d_op(input, _output_size(input, output_size),
                                    _backend.requested(backend))
    return _unbatch(output, unbatched)
