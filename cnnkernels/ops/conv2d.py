"""conv2d as PyTorch custom operators: ``cnnk::conv2d`` and its two backward
ops, each with a fake (meta) implementation, the autograd formula, and the
dispatch to the cpu (C++), cuda (CUDA C++) and triton backends.

The public ``conv2d`` normalises torch's argument forms (int or pair,
"same"/"valid" padding, 3-D unbatched input), picks the backend and the
algorithm, and calls the op; the op validates every tensor before any
kernel runs, so calling ``torch.ops.cnnk.conv2d`` directly is safe too.
"""

from collections.abc import Sequence
from typing import NamedTuple, Optional

import torch
from torch import Tensor

from cnnkernels import _args, _backend, _ext
from cnnkernels.ops._define import Family

OP_NAME = "cnnk::conv2d"
CONV_ALGORITHMS_IMPLEMENTED = ("direct",)


class Conv2dGeometry(NamedTuple):
    """Sizes and parameters in the order the kernels take them (see
    csrc/include/cnnk/conv2d.h and kernels/conv2d.py)."""

    N: int
    C: int
    H: int
    W: int
    K: int
    R: int
    S: int
    P: int
    Q: int
    stride_h: int
    stride_w: int
    pad_top: int
    pad_left: int
    dil_h: int
    dil_w: int
    groups: int


def _geometry(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
              padding: Sequence[int], dilation: Sequence[int], groups: int,
              activation: str) -> Conv2dGeometry:
    """Validate everything that does not depend on the backend; shared by the
    real and the fake implementations so both reject the same inputs."""
    _args.check_tensor(input, "input", ndim=4)
    _args.check_tensor(weight, "weight", ndim=4)
    if bias is not None:
        _args.check_tensor(bias, "bias", ndim=1)
    if not input.dtype.is_floating_point:
        raise TypeError(f"input must be a floating-point tensor, got {input.dtype}")
    _args.check_same(input, "input", {"weight": weight, "bias": bias})
    if len(stride) != 2 or len(dilation) != 2 or len(padding) != 4:
        raise ValueError(f"stride and dilation take 2 values and padding 4 (top, bottom, left, "
                         f"right), got {list(stride)}, {list(dilation)}, {list(padding)}")
    if min(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {list(stride)}")
    if min(dilation) < 1:
        raise ValueError(f"dilation must be >= 1, got {list(dilation)}")
    if min(padding) < 0:
        raise ValueError(f"padding must be >= 0, got {list(padding)}")
    _args.positive_int(groups, "groups")
    _args.activation_code(None if activation == "none" else activation)

    N, C, H, W = input.shape
    K, C_g, R, S = weight.shape
    if K == 0 or C == 0:
        raise ValueError(f"input and weight need at least one channel, got input "
                         f"{tuple(input.shape)} and weight {tuple(weight.shape)}")
    if C_g * groups != C:
        raise ValueError(f"input has {C} channels but weight {tuple(weight.shape)} with "
                         f"groups={groups} expects {C_g * groups} (weight.shape[1] * groups)")
    if K % groups != 0:
        raise ValueError(f"weight.shape[0] (out channels, {K}) must be divisible by "
                         f"groups={groups}")
    if bias is not None and bias.shape[0] != K:
        raise ValueError(f"bias must have weight.shape[0] = {K} elements, got {bias.shape[0]}")
    sh, sw = stride
    pt, pb, pl, pr = padding
    dh, dw = dilation
    P = _args.conv_output_size(H, R, sh, pt, pb, dh)
    Q = _args.conv_output_size(W, S, sw, pl, pr, dw)
    if P < 1 or Q < 1:
        raise ValueError(
            f"output size ({P}, {Q}) is too small: input ({H}, {W}) with padding "
            f"{list(padding)} is smaller than the dilated kernel "
            f"({dh * (R - 1) + 1}, {dw * (S - 1) + 1})")
    return Conv2dGeometry(N, C, H, W, K, R, S, P, Q, sh, sw, pt, pl, dh, dw, groups)


def _check_backend(backend: str, algorithm: str, tensors: dict) -> None:
    if algorithm not in CONV_ALGORITHMS_IMPLEMENTED:
        raise ValueError(f"conv_algorithm must be one of {CONV_ALGORITHMS_IMPLEMENTED}, "
                         f"got {algorithm!r}")
    _backend.check_runnable(backend, "conv2d", tensors)


# Rank of each tensor argument of the C++ launchers (1-D ones are optional biases).
_LAUNCHER_ARG_RANKS = {"forward": (4, 4, 1, 4), "grad_input": (4, 4, 4, 4),
                       "grad_weight": (4, 4, 4, 4, 1)}


def _launch(kernel: str, backend: str, g: Conv2dGeometry, activation: str, *tensors) -> None:
    """Run one of the three kernels on the given backend; ``tensors`` are in
    the launcher's order, None for an absent optional tensor."""
    act = _args.ACTIVATIONS[activation]
    if backend == "triton":
        from cnnkernels.kernels import conv2d as triton_conv2d

        getattr(triton_conv2d, kernel)(g, act, *tensors)
        return
    args = [tuple(g), act]
    args += [_ext.tensor1(t) if rank == 1 else _ext.tensor4(t)
             for t, rank in zip(tensors, _LAUNCHER_ARG_RANKS[kernel], strict=True)]
    if kernel == "grad_weight" and backend == "cuda":
        # Scratch for the split reduction, from torch's caching allocator.
        nbytes = _ext.cuda_kernels().conv2d_grad_weight_workspace_bytes(
            _ext.DTYPE_CODES[tensors[0].dtype], tuple(g), act)
        workspace = torch.empty(nbytes, dtype=torch.uint8, device=tensors[0].device)
        args += [workspace.data_ptr(), nbytes]
    _ext.run_kernel(backend, f"conv2d_{kernel}", tensors[0], *args)


def _forward_output(input: Tensor, weight: Tensor, g: Conv2dGeometry) -> Tensor:
    # torch's rule: channels_last when the input or the weight is, except for
    # float64 on CUDA, which torch's convolution always returns contiguous.
    channels_last = ((_args.is_channels_last(input) or _args.is_channels_last(weight))
                     and not (input.is_cuda and input.dtype == torch.float64))
    return _args.empty_4d((g.N, g.K, g.P, g.Q), input, channels_last)


def _grad_input_output(input: Tensor) -> Tensor:
    return _args.empty_4d(input.shape, input, _args.is_channels_last(input))


@torch.library.custom_op(OP_NAME, mutates_args=(), device_types=("cpu", "cuda"))
def _conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
            padding: Sequence[int], dilation: Sequence[int], groups: int, activation: str,
            backend: str, algorithm: str) -> Tensor:
    g = _geometry(input, weight, bias, stride, padding, dilation, groups, activation)
    output = _forward_output(input, weight, g)
    _check_backend(backend, algorithm, {"input": input, "weight": weight, "bias": bias,
                                        "output": output})
    _args.poison(output)
    if output.numel() > 0:
        _launch("forward", backend, g, activation, input, weight, bias, output)
    return output


@_conv2d.register_fake
def _conv2d_fake(input, weight, bias, stride, padding, dilation, groups, activation, backend,
                 algorithm):
    g = _geometry(input, weight, bias, stride, padding, dilation, groups, activation)
    return _forward_output(input, weight, g)


@torch.library.custom_op("cnnk::conv2d_grad_input", mutates_args=(),
                         device_types=("cpu", "cuda"))
def _conv2d_grad_input(grad_output: Tensor, output: Optional[Tensor], input: Tensor,
                       weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                       dilation: Sequence[int], groups: int, activation: str, backend: str,
                       algorithm: str) -> Tensor:
    g = _check_grad_args(grad_output, output, input, weight, stride, padding, dilation, groups,
                         activation)
    grad_input = _grad_input_output(input)
    _check_backend(backend, algorithm, {"grad_output": grad_output, "output": output,
                                        "weight": weight, "grad_input": grad_input})
    _args.poison(grad_input)
    if grad_input.numel() > 0:
        _launch("grad_input", backend, g, activation, grad_output, output, weight, grad_input)
    return grad_input


@_conv2d_grad_input.register_fake
def _conv2d_grad_input_fake(grad_output, output, input, weight, stride, padding, dilation,
                            groups, activation, backend, algorithm):
    _check_grad_args(grad_output, output, input, weight, stride, padding, dilation, groups,
                     activation)
    return _grad_input_output(input)


@torch.library.custom_op("cnnk::conv2d_grad_weight", mutates_args=(),
                         device_types=("cpu", "cuda"))
def _conv2d_grad_weight(grad_output: Tensor, output: Optional[Tensor], input: Tensor,
                        weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                        dilation: Sequence[int], groups: int, activation: str, backend: str,
                        algorithm: str) -> tuple[Tensor, Tensor]:
    g = _check_grad_args(grad_output, output, input, weight, stride, padding, dilation, groups,
                         activation)
    grad_weight, grad_bias = _grad_weight_outputs(weight)
    _check_backend(backend, algorithm, {"grad_output": grad_output, "output": output,
                                        "input": input, "grad_weight": grad_weight})
    _args.poison(grad_weight, grad_bias)
    if g.N == 0:
        # No samples: the sums are empty. Zero-filling is all there is to compute.
        grad_weight.zero_()
        grad_bias.zero_()
    else:
        _launch("grad_weight", backend, g, activation, grad_output, output, input, grad_weight,
                grad_bias)
    return grad_weight, grad_bias


@_conv2d_grad_weight.register_fake
def _conv2d_grad_weight_fake(grad_output, output, input, weight, stride, padding, dilation,
                             groups, activation, backend, algorithm):
    _check_grad_args(grad_output, output, input, weight, stride, padding, dilation, groups,
                     activation)
    return _grad_weight_outputs(weight)


def _grad_weight_outputs(weight: Tensor) -> tuple[Tensor, Tensor]:
    grad_weight = _args.empty_4d(weight.shape, weight, _args.is_channels_last(weight))
    grad_bias = torch.empty(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return grad_weight, grad_bias


def _check_grad_args(grad_output, output, input, weight, stride, padding, dilation, groups,
                     activation) -> Conv2dGeometry:
    g = _geometry(input, weight, None, stride, padding, dilation, groups, activation)
    _args.check_tensor(grad_output, "grad_output", ndim=4)
    _args.check_same(input, "input", {"grad_output": grad_output, "output": output})
    expected = (g.N, g.K, g.P, g.Q)
    if tuple(grad_output.shape) != expected:
        raise ValueError(f"grad_output must have the output's shape {expected}, "
                         f"got {tuple(grad_output.shape)}")
    if activation != "none":
        if output is None:
            raise ValueError(f"output (the forward result) is needed to differentiate the fused "
                             f"activation {activation!r}")
        if tuple(output.shape) != expected:
            raise ValueError(f"output must have shape {expected}, got {tuple(output.shape)}")
    return g


def _setup_context(ctx, inputs, output) -> None:
    input, weight, bias, stride, padding, dilation, groups, activation, backend, algorithm = inputs
    ctx.save_for_backward(input, weight, output if activation != "none" else None)
    ctx.params = (stride, padding, dilation, groups, activation, backend, algorithm)
    ctx.has_bias = bias is not None


def _backward(ctx, grad_output):
    input, weight, output = ctx.saved_tensors
    grad_input = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_input = torch.ops.cnnk.conv2d_grad_input(grad_output, output, input, weight,
                                                      *ctx.params)
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        grad_weight, grad_bias = torch.ops.cnnk.conv2d_grad_weight(grad_output, output, input,
                                                                   weight, *ctx.params)
        if not ctx.has_bias:
            grad_bias = None
    return grad_input, grad_weight, grad_bias, None, None, None, None, None, None, None


_conv2d.register_autograd(_backward, setup_context=_setup_context)


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0,
           dilation=1, groups: int = 1, *, activation: Optional[str] = None) -> Tensor:
    """``torch.nn.functional.conv2d`` on cnnkernels' kernels.

    Same arguments, defaults and result (shape, dtype, memory format) as
    torch: stride/padding/dilation take an int or a pair, padding also
    "same" or "valid"; input may be 3-D (unbatched). ``activation`` (None,
    "relu" or "relu6") is applied in the kernel's epilogue, and its gradient
    in the backward kernels. Backend and algorithm come from
    ``cnnkernels.use`` / ``CNNK_BACKEND``.
    """
    _args.check_tensor(input, "input", ndim=(3, 4))
    _args.check_tensor(weight, "weight", ndim=4)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    groups = _args.positive_int(groups, "groups")
    stride = _args.pair(stride, "stride", minimum=1)
    dilation = _args.pair(dilation, "dilation", minimum=1)
    padding = _args.conv_padding(padding, tuple(weight.shape[2:]), stride, dilation)
    act = "none" if activation is None else activation
    _args.activation_code(activation)
    backend = _backend.resolve_for_device_type(input.device.type, _backend.current_backend())
    algorithm = _backend.resolve_conv_algorithm()
    output = torch.ops.cnnk.conv2d(input, weight, bias, list(stride), list(padding),
                                   list(dilation), groups, act, backend, algorithm)
    return output.squeeze(0) if unbatched else output


FAMILY = Family(name="conv2d", public=("conv2d",),
                triton_modules=("cnnkernels.kernels.conv2d.direct",),
                bench_module="cnnkernels.bench.conv2d")
