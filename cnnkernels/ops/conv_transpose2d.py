"""conv_transpose2d: the transposed 2-D convolution
(``torch.nn.functional.conv_transpose2d``) with a fused bias and activation,
computed on conv2d's kernels without a zero-inserted input.

The transposed convolution of x (N, C_in, H, W) by w (C_in, C_out/groups,
R, S) is exactly conv2d's input gradient: y is the gradient of the input
(N, C_out, H_out, W_out) of the conv2d whose output is x and whose weight
(K = C_in, C/groups = C_out/groups, R, S) is the same tensor w, with the same
stride, top/left padding, dilation and groups. One ``Conv2dGeometry``
describes that conv2d (``transposed_geometry``), and the three conv2d
launchers of its algorithm compute everything:

- forward: y = grad_input launcher(grad_output = x, weight = w). Every
  backend's grad_input skips the zero insertion: the cpu GEMM core's
  transposed GEMM, Triton's implicit GEMM per stride phase over only the
  taps that feed it, the CUDA transposed gather.
- grad_x = forward launcher(input = grad_z, weight = w), no epilogue;
- grad_w = grad_weight launcher(grad_output = x, input = grad_z), whose
  shape (K = C_in, C_out/groups, R, S) is w's.

The geometry's P, Q are H, W themselves (not derived from a padding): with
an output_padding at least the stride (torch allows it below the dilation)
the conv2d's bottom padding would be negative, which conv2d's own ops
refuse; the launchers only read P and Q.

Why the bias and activation are a second pass: conv2d's grad_input
launchers have no epilogue. The second pass is conv2d's forward epilogue
itself, through the direct launcher of a 1x1 depthwise convolution with a
weight of ones (z = 1 * y0 + bias, y = act(z), exact: a product by one and
one rounding of the sum, as in conv2d's epilogue): every backend has it, and
its backward pieces are conv2d's too (grad_z = grad_y * act'(saved) by
``conv2d_activation_grad``; grad_bias is the fused grad_bias of that 1x1
convolution's grad_weight launcher). Without bias and activation the
forward is the single grad_input pass.

Operators: ``conv_transpose2d`` (forward, with autocast; returns y and,
for silu when derivatives are taken, z), ``conv_transpose2d_grad_input``
and ``conv_transpose2d_grad_weight`` (with grad_bias). All three are
bilinear maps of one another, so their autograd formulas (reverse and
forward mode, any order) are built from the three themselves.
"""

from collections.abc import Sequence
from typing import Optional

import torch
from torch import Tensor

from cnnkernels import _args, _backend
from cnnkernels._ext import Activation
from cnnkernels.ops._define import Family, Launch, define_op, derivatives_needed, save
from cnnkernels.ops.conv2d import (
    ALGORITHMS,
    Conv2dGeometry,
    _activation_grad,
    _channels_last,
    _check_grad_output,
    _Direct,
    _forward_outputs,
    _fused_jvp,
    _kernels,
    _save_fused,
    _sum,
)

# No kernels of its own: conv2d's (whose static check covers them).
FAMILY = Family(name="conv_transpose2d", public=("conv_transpose2d",), triton_modules=(),
                bench_module="cnnkernels.bench.conv_transpose2d", native=False)

__all__ = list(FAMILY.public)


def transposed_geometry(input: Tensor, weight: Tensor, bias: Optional[Tensor],
                        stride: Sequence[int], padding: Sequence[int],
                        output_padding: Sequence[int], dilation: Sequence[int], groups: int,
                        algorithm: str) -> Conv2dGeometry:
    """Validate (torch's rules and messages where torch has them) and give
    the geometry of the conv2d whose input gradient is the transposed
    convolution: conv2d input (N, C_out, H_out, W_out), weight (C_in,
    C_out/groups, R, S), output (N, C_in, H, W); no activation (the
    grad_input launchers apply none: the epilogue pass does)."""
    _args.check_tensor(input, "input", ndim=4)
    _args.check_tensor(weight, "weight", ndim=4)
    if bias is not None:
        _args.check_tensor(bias, "bias", ndim=1)
    if not input.dtype.is_floating_point:
        raise TypeError(f"input must be a floating-point tensor, got {input.dtype}")
    _args.check_same(input, "input", {"weight": weight, "bias": bias})
    if any(len(v) != 2 for v in (stride, padding, output_padding, dilation)):
        raise ValueError(f"stride, padding, output_padding and dilation take 2 values, got "
                         f"{list(stride)}, {list(padding)}, {list(output_padding)}, "
                         f"{list(dilation)}")
    if min(stride) < 1:
        raise ValueError(f"stride must be >= 1, got {list(stride)}")
    if min(dilation) < 1:
        raise ValueError(f"dilation must be >= 1, got {list(dilation)}")
    if min(padding) < 0 or min(output_padding) < 0:
        raise ValueError(f"padding and output_padding must be >= 0, got {list(padding)} and "
                         f"{list(output_padding)}")
    _args.positive_int(groups, "groups")
    _backend.check_choice("conv_algorithm", algorithm, ("auto", *ALGORITHMS))
    # torch's rule, per dimension: smaller than the stride or the dilation.
    if any(op >= s and op >= d for op, s, d in zip(output_padding, stride, dilation,
                                                   strict=True)):
        raise ValueError(
            f"output padding must be smaller than either stride or dilation (like torch), got "
            f"output_padding {list(output_padding)}, stride {list(stride)}, dilation "
            f"{list(dilation)}")

    N, C_in, H, W = input.shape
    K, C_out_g, R, S = weight.shape
    if C_in == 0 or C_out_g == 0:
        raise ValueError(f"input and weight need at least one channel, got input "
                         f"{tuple(input.shape)} and weight {tuple(weight.shape)}")
    if C_in != K:
        raise ValueError(f"input has {C_in} channels but weight {tuple(weight.shape)} expects "
                         f"{K} (weight.shape[0])")
    if C_in % groups != 0:
        raise ValueError(f"input channels ({C_in}) must be divisible by groups={groups}")
    if (H == 0 or W == 0) and N > 0:
        raise ValueError(f"input must have non-zero height and width unless the batch is "
                         f"empty (like torch), got shape {tuple(input.shape)}")
    if R == 0 or S == 0:
        raise ValueError(f"the kernel size (weight.shape[2:]) must be greater than zero, got "
                         f"{tuple(weight.shape[2:])}")
    C_out = C_out_g * groups
    if bias is not None and bias.shape[0] != C_out:
        raise ValueError(f"bias must have weight.shape[1] * groups = {C_out} elements, got "
                         f"{bias.shape[0]}")
    sh, sw = stride
    ph, pw = padding
    dh, dw = dilation
    for what, value in (("the stride", max(sh, sw)), ("the dilated kernel height", dh * R),
                        ("the dilated kernel width", dw * S)):
        _args.check_int64_safe(what, value)
    H_out = (H - 1) * sh - 2 * ph + dh * (R - 1) + output_padding[0] + 1
    W_out = (W - 1) * sw - 2 * pw + dw * (S - 1) + output_padding[1] + 1
    if H_out < 1 or W_out < 1:
        raise ValueError(f"output size ({H_out}, {W_out}) is too small: input ({H}, {W}), "
                         f"kernel ({R}, {S}), stride {list(stride)}, padding {list(padding)}, "
                         f"output_padding {list(output_padding)}, dilation {list(dilation)}")
    # As in conv2d: a single input row needs no stride, a one-row filter no
    # dilation (keeps huge values out of the kernels' arithmetic).
    sh, sw = (1 if H == 1 else sh), (1 if W == 1 else sw)
    dh, dw = (1 if R == 1 else dh), (1 if S == 1 else dw)
    return Conv2dGeometry(N, C_out, H_out, W_out, C_in, R, S, H, W, sh, sw, ph, pw, dh, dw,
                          groups, Activation.none)


def _epilogue_geometry(g: Conv2dGeometry, activation: Activation) -> Conv2dGeometry:
    """The 1x1 depthwise convolution (weight of ones) over the transposed
    output that applies the bias and the activation (conv2d's epilogue)."""
    return Conv2dGeometry(g.N, g.C, g.H, g.W, g.C, 1, 1, g.H, g.W, 1, 1, 0, 0, 1, 1, g.C,
                          activation)


def _ones(g: Conv2dGeometry, like: Tensor) -> Tensor:
    return torch.ones((g.C, 1, 1, 1), dtype=like.dtype, device=like.device)


def _run_forward(backend: str, g: Conv2dGeometry, activation: Activation, algorithm: str,
                 x: Tensor, w: Tensor, bias: Optional[Tensor], y: Tensor,
                 preact: Optional[Tensor]) -> None:
    kernels = _kernels(g, algorithm, backend, "grad_input", x.dtype)
    if bias is None and activation == Activation.none:
        kernels.grad_input(backend, g, x, None, w, y)
        return
    y0 = torch.empty_like(y)
    kernels.grad_input(backend, g, x, None, w, y0)
    _Direct.forward(backend, _epilogue_geometry(g, activation), y0, _ones(g, x), bias, None, y,
                            preact)


@define_op("cnnk::conv_transpose2d", returns=tuple[Tensor, Tensor], autocast=True)
def conv_transpose2d_op(input: Tensor, weight: Tensor, bias: Optional[Tensor],
                        stride: Sequence[int], padding: Sequence[int],
                        output_padding: Sequence[int], dilation: Sequence[int], groups: int,
                        activation: str, keep_preactivation: bool, algorithm: str,
                        backend: str) -> Launch:
    """(output, preactivation): output = act(conv_transpose + bias); the
    preactivation z = conv_transpose + bias when the activation is silu and
    ``keep_preactivation``, else an empty tensor."""
    g = transposed_geometry(input, weight, bias, stride, padding, output_padding, dilation,
                            groups, algorithm)
    act = _args.activation(None if activation == "none" else activation)
    output, preactivation, preact = _forward_outputs((g.N, g.C, g.H, g.W), input, weight,
                                                     activation, keep_preactivation)
    return Launch((output, preactivation),
                  {"input": input, "weight": weight, "bias": bias, "output": output,
                   "preactivation": preact},
                  lambda b: _run_forward(b, g, act, algorithm, input, weight, bias, output, preact),
                  g.index_extent())


@define_op("cnnk::conv_transpose2d_grad_input", returns=Tensor)
def conv_transpose2d_grad_input_op(grad_output: Tensor, input: Tensor, weight: Tensor,
                                   stride: Sequence[int], padding: Sequence[int],
                                   output_padding: Sequence[int], dilation: Sequence[int],
                                   groups: int, algorithm: str, backend: str) -> Launch:
    """The input's gradient: conv2d forward of ``grad_output`` (already
    through the activation's derivative) with the weight; ``input`` gives
    only the shape and format."""
    g = transposed_geometry(input, weight, None, stride, padding, output_padding, dilation,
                            groups, algorithm)
    _check_grad_output(grad_output, (g.N, g.C, g.H, g.W), input)
    grad_input = _args.empty_4d(input.shape, input, _channels_last(input, weight))
    return Launch(grad_input, {"grad_output": grad_output, "weight": weight,
                               "grad_input": grad_input},
                  lambda b: _kernels(g, algorithm, b, "forward", input.dtype).forward(
                      b, g, grad_output, weight, None, None, grad_input, None),
                  g.index_extent())


def _run_grad_weight(backend: str, g: Conv2dGeometry, algorithm: str, grad_z: Tensor,
                     x: Tensor, grad_w: Tensor, grad_bias: Tensor) -> None:
    # conv2d's grad_weight with grad_output = x, input = grad_z; its fused
    # grad_bias (a sum of x) is not ours: scratch.
    scratch = torch.empty(g.K, dtype=x.dtype, device=x.device)
    _kernels(g, algorithm, backend, "grad_weight", x.dtype).grad_weight(
        backend, g, x, None, grad_z, grad_w, scratch)
    # grad_bias = the sum of grad_z over N, H_out, W_out: the fused grad_bias
    # of the 1x1 epilogue convolution's grad_weight.
    ge = _epilogue_geometry(g, Activation.none)
    ones_grad = torch.empty((g.C, 1, 1, 1), dtype=x.dtype, device=x.device)
    _Direct.grad_weight(backend, ge, grad_z, None, grad_z, ones_grad, grad_bias)


@define_op("cnnk::conv_transpose2d_grad_weight", returns=tuple[Tensor, Tensor])
def conv_transpose2d_grad_weight_op(grad_output: Tensor, input: Tensor, weight: Tensor,
                                    stride: Sequence[int], padding: Sequence[int],
                                    output_padding: Sequence[int], dilation: Sequence[int],
                                    groups: int, algorithm: str, backend: str) -> Launch:
    """(grad_weight, grad_bias) from ``grad_output`` (already through the
    activation's derivative) and the input; ``weight`` gives only the shape
    and format."""
    g = transposed_geometry(input, weight, None, stride, padding, output_padding, dilation,
                            groups, algorithm)
    _check_grad_output(grad_output, (g.N, g.C, g.H, g.W), input)
    grad_weight = _args.empty_4d(weight.shape, weight, _channels_last(input, weight))
    grad_bias = torch.empty(g.C, dtype=weight.dtype, device=weight.device)
    return Launch((grad_weight, grad_bias),
                  {"grad_output": grad_output, "input": input, "grad_weight": grad_weight},
                  lambda b: _run_grad_weight(b, g, algorithm, grad_output, input, grad_weight,
                                             grad_bias),
                  g.index_extent(), empty_sum=g.N == 0)


def _conv_setup(ctx, inputs, outputs) -> None:
    (input, weight, bias, stride, padding, output_padding, dilation, groups, activation, keep,
     algorithm, backend) = inputs
    _save_fused(ctx, "conv_transpose2d", input, weight, bias, outputs, activation, keep)
    ctx.geometry = (stride, padding, output_padding, dilation, groups)
    ctx.activation, ctx.algorithm, ctx.backend = activation, algorithm, backend


def _conv_backward(ctx, grad_output, grad_preactivation):
    input, weight, saved = ctx.saved_tensors
    needs = ctx.needs_input_grad
    if grad_preactivation is not None and grad_preactivation.numel() == 0:
        grad_preactivation = None
    nothing = [None] * 9
    if grad_output is None and grad_preactivation is None:
        return None, None, None, *nothing
    grad_z = _sum(None if grad_output is None
                  else _activation_grad(grad_output, saved, ctx.activation, ctx.backend),
                  grad_preactivation)
    params = (*ctx.geometry, ctx.algorithm, ctx.backend)
    grad_input = grad_weight = grad_bias = None
    if needs[0]:
        grad_input = conv_transpose2d_grad_input_op(grad_z, input, weight, *params)
    if needs[1] or needs[2]:
        grad_weight, grad_bias = conv_transpose2d_grad_weight_op(grad_z, input, weight, *params)
        if not ctx.has_bias:
            grad_bias = None
    return grad_input, grad_weight, grad_bias, *nothing


def _transpose(params: tuple, x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """The plain transposed convolution (no activation) with the ops'
    parameters (stride, padding, output_padding, dilation, groups,
    algorithm, backend)."""
    *geometry, algorithm, backend = params
    return conv_transpose2d_op(x, w, b, *geometry, "none", False, algorithm, backend)[0]


def _conv_jvp(ctx, input_tangent, weight_tangent, bias_tangent, *_):
    input, weight, saved = ctx.saved_tensors
    params = (*ctx.geometry, ctx.algorithm, ctx.backend)
    return _fused_jvp(ctx, lambda x, w, b: _transpose(params, x, w, b), input, weight, saved,
                      ctx.activation, ctx.backend, input_tangent, weight_tangent, bias_tangent)


conv_transpose2d_op.register_derivatives(setup_context=_conv_setup, backward=_conv_backward,
                                         jvp=_conv_jvp)


def _grad_setup(ctx, inputs, output) -> None:
    grad_output, input, weight, *params = inputs
    save(ctx, grad_output, input, weight)
    ctx.params = tuple(params)


def _grad_input_backward(ctx, cotangent):
    """grad_input = F(grad_z, w), conv2d's forward: bilinear; its adjoint in
    grad_z is the transposed convolution, in w the weight gradient."""
    grad_z, _, weight = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_grad_z = grad_weight = None
    if needs[0]:
        grad_grad_z = _transpose(ctx.params, cotangent, weight, None)
    if needs[2]:
        grad_weight, _ = conv_transpose2d_grad_weight_op(grad_z, cotangent, weight, *ctx.params)
    return grad_grad_z, None, grad_weight, *([None] * 7)


def _grad_input_jvp(ctx, grad_z_tangent, _input_tangent, weight_tangent, *_):
    grad_z, input, weight = ctx.saved_tensors
    return _sum(
        None if grad_z_tangent is None
        else conv_transpose2d_grad_input_op(grad_z_tangent, input, weight, *ctx.params),
        None if weight_tangent is None
        else conv_transpose2d_grad_input_op(grad_z, input, weight_tangent, *ctx.params))


conv_transpose2d_grad_input_op.register_derivatives(
    setup_context=_grad_setup, backward=_grad_input_backward, jvp=_grad_input_jvp)


def _grad_weight_backward(ctx, grad_grad_weight, grad_grad_bias):
    """grad_weight = D_w(x, grad_z), conv2d's weight gradient: bilinear;
    <c, D_w(x, grad_z)> = <grad_z, T(x, c)> = <x, F(grad_z, c)>, so the
    adjoint in grad_z is the transposed convolution (plus grad_bias's
    broadcast), in x conv2d's forward."""
    grad_z, input, _ = ctx.saved_tensors
    needs = ctx.needs_input_grad
    grad_grad_z = grad_input = None
    if needs[0]:
        grad_grad_z = _transpose(ctx.params, input, grad_grad_weight, grad_grad_bias)
    if needs[1]:
        grad_input = conv_transpose2d_grad_input_op(grad_z, input, grad_grad_weight,
                                                    *ctx.params)
    return grad_grad_z, grad_input, None, *([None] * 7)


def _grad_weight_jvp(ctx, grad_z_tangent, input_tangent, *_):
    grad_z, input, weight = ctx.saved_tensors
    weight_tangent = bias_tangent = None
    if grad_z_tangent is not None:
        weight_tangent, bias_tangent = conv_transpose2d_grad_weight_op(
            grad_z_tangent, input, weight, *ctx.params)
    if input_tangent is not None:
        weight_tangent = _sum(weight_tangent, conv_transpose2d_grad_weight_op(
            grad_z, input_tangent, weight, *ctx.params)[0])
    return weight_tangent, bias_tangent


conv_transpose2d_grad_weight_op.register_derivatives(
    setup_context=_grad_setup, backward=_grad_weight_backward, jvp=_grad_weight_jvp)


def conv_transpose2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1,
                     padding=0, output_padding=0, groups: int = 1, dilation=1, *,
                     activation: Optional[str] = None, backend: Optional[str] = None) -> Tensor:
    """``torch.nn.functional.conv_transpose2d`` on cnnkernels' kernels, with
    a fused ``activation`` (None, "relu", "relu6", "silu") applied after the
    bias.

    Same arguments, defaults and result (shape, dtype, memory format) as
    torch: stride/padding/output_padding/dilation take an int or a pair;
    input may be 3-D (unbatched); under autocast it runs in the autocast
    dtype. Computed as conv2d's input gradient (no zero insertion), its
    gradients as conv2d's forward and weight gradient. The algorithm comes
    from ``cnnkernels.use``, the backend too unless ``backend`` pins this
    call to one.
    """
    _args.check_tensor(input, "input", ndim=(3, 4))
    _args.check_tensor(weight, "weight", ndim=4)
    if bias is not None:
        _args.check_tensor(bias, "bias", ndim=1)
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
    groups = _args.positive_int(groups, "groups")
    stride = _args.pair(stride, "stride", minimum=1)
    padding = _args.pair(padding, "padding", minimum=0)
    output_padding = _args.pair(output_padding, "output_padding", minimum=0)
    dilation = _args.pair(dilation, "dilation", minimum=1)
    act = _args.activation(activation).name
    keep = act == "silu" and derivatives_needed((input, weight, bias))
    output, _ = conv_transpose2d_op(input, weight, bias, list(stride), list(padding),
                                    list(output_padding), list(dilation), groups, act, keep,
                                    _backend.current_conv_algorithm(),
                                    _backend.requested(backend))
    return output.squeeze(0) if unbatched else output
