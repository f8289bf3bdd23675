"""conv2d: 2-D convolution (``torch.nn.functional.conv2d``) with a fused
epilogue: bias, a residual and an activation (cnnk/conv2d.h:
z = conv + bias + residual, y = act(z), one pass over the output).

Operators (``torch.ops.cnnk.*``), each a plan (cnnkernels/ops/_define.py):
``conv2d`` (forward, with autocast; returns y and, when kept, z),
``conv2d_grad_input`` and ``conv2d_grad_weight`` (which also gives
grad_bias), and ``conv2d_activation_grad`` (grad_z = grad_y * act'(saved):
the residual's gradient). All four have autograd formulas built from the
four themselves, so second and higher derivatives run on our kernels too:
grad_input and grad_weight are linear in grad_output and bilinear with the
weight and the input; the activation's derivative is read from a saved
tensor (cnnk/conv2d.h): the forward output for relu and relu6 (a 0/1 mask,
torch's convention at the kinks, whose own derivative is 0), the
pre-activation z for silu (silu is not invertible from its output), whose
derivative through z takes silu'' (computed with torch: elementwise glue
in a derivative formula).

Why the forward op returns z: silu's backward needs it, and recomputing it
would cost a second convolution; the public function asks for it
(``keep_preactivation``) only when derivatives will be taken, so inference
writes the output once. z is a differentiable output: in silu's double
backward the derivative of the backward ops with respect to z flows back
through it. Why the residual's gradient is an op: it is grad_z, which
the backward materialises once (our kernel) and then hands to the
grad_input / grad_weight kernels with no activation left to apply, instead
of having each of them re-read grad_y and the saved tensor.

Algorithms: ``ALGORITHMS`` lists those implemented; ``route`` picks one for
``auto``; each has one module per backend (kernels/conv2d/<algorithm>.py,
csrc/cpu/conv2d/<algorithm>.cpp, csrc/cuda/conv2d/<algorithm>.cu, launchers
``conv2d_<algorithm>_*``) and one launcher class here.
"""

import importlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from cnnkernels import _args, _backend, _ext
from cnnkernels._ext import Activation
from cnnkernels.ops._define import Family, Launch, define_op, derivatives_needed, save

FAMILY = Family(name="conv2d", public=("conv2d",),
                triton_modules=("cnnkernels.kernels.conv2d.direct",
                                "cnnkernels.kernels.conv2d.implicit_gemm",
                                "cnnkernels.kernels.conv2d.im2col",
                                "cnnkernels.kernels.conv2d.depthwise",
                                "cnnkernels.kernels.conv2d.activation"),
                bench_module="cnnkernels.bench.conv2d")

__all__ = list(FAMILY.public)

ALGORITHMS = ("direct", "implicit_gemm", "pointwise", "im2col", "depthwise")


@dataclass(frozen=True)
class Conv2dGeometry:
    """Sizes and parameters of one convolution, field for field
    ``cnnk::Conv2dGeometry`` (csrc/include/cnnk/conv2d.h): every backend's
    launchers take it by field name. Input (N, C, H, W), weight
    (K, C/groups, R, S), output (N, K, P, Q); ``pad_top``/``pad_left`` are the
    top and left padding (the bottom and right ones only shape P and Q)."""

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
    activation: Activation

    @property
    def C_g(self) -> int:
        return self.C // self.groups

    @property
    def K_g(self) -> int:
        return self.K // self.groups

    def index_extent(self) -> int:
        """The largest value the cuda and triton kernels' 32-bit index
        arithmetic reaches: sizes, pixel counts, reduction lengths and the
        furthest row or column a tap addresses."""
        RS = self.R * self.S
        return max(self.N, self.C, self.K, self.N * self.P * self.Q, self.N * self.H * self.W,
                   self.C_g * RS, self.K_g * RS, self.stride_h * self.dil_h,
                   self.stride_w * self.dil_w,
                   (self.P - 1) * self.stride_h + (self.R - 1) * self.dil_h + self.H
                   + self.pad_top,
                   (self.Q - 1) * self.stride_w + (self.S - 1) * self.dil_w + self.W
                   + self.pad_left)


def is_pointwise(g: Conv2dGeometry) -> bool:
    """A 1x1 convolution with stride 1 and no padding: a plain GEMM over the
    N*H*W pixels (what the ``pointwise`` algorithm takes)."""
    return (g.R == 1 and g.S == 1 and g.stride_h == 1 and g.stride_w == 1 and g.pad_top == 0
            and g.pad_left == 0 and g.P == g.H and g.Q == g.W)


def is_depthwise(g: Conv2dGeometry) -> bool:
    """One input channel per group (groups == C), any channel multiplier
    K/groups: what the ``depthwise`` algorithm takes."""
    return g.C_g == 1


def _is_fully_connected(g: Conv2dGeometry) -> bool:
    """The filter covers the whole unpadded input, undilated: one output
    pixel, every input element read once (a fully connected layer)."""
    return (g.P == 1 and g.Q == 1 and g.R == g.H and g.S == g.W and g.pad_top == 0
            and g.pad_left == 0 and g.dil_h == 1 and g.dil_w == 1)


def tf32_allowed() -> bool:
    """torch's rule for fp32 convolutions: TF32 tensor cores when
    ``torch.backends.cudnn.allow_tf32`` (on by default), exact fp32 otherwise."""
    return torch.backends.cudnn.allow_tf32


def route(g: Conv2dGeometry, backend: str, direction: str = "forward",
          dtype: torch.dtype = torch.float32) -> str:
    """The algorithm ``auto`` runs for ``g`` on ``backend`` in ``direction``
    (forward, grad_input or grad_weight) for inputs of ``dtype``.

    Every backend that has it (cpu, triton, and cuda where the build has
    the kernels): depthwise for one input channel per group
    (``is_depthwise``), every direction and dtype (a GEMM of reduction
    length R*S wastes the GEMM core and the tensor cores; the depthwise
    kernels keep the taps in registers and use exact FMAs, so fp64 and
    exact fp32 take them too).

    cpu otherwise: implicit GEMM (the GEMM core; 1x1 convolutions included,
    its pointwise path), except a filter that covers its whole unpadded
    input (one output pixel: a fully connected layer written as a
    convolution, as LeNet-5's C5 often is): im2col, whose patch matrix is the
    input itself, so the three passes are plain GEMMs (forward+backward
    3.8x faster than implicit GEMM on C5 at batch 8, whose gathered
    backward has a reduction of N*P*Q = 8).

    GPU (triton, and cuda where the build has the kernels) otherwise: the
    tensor-core algorithms, pointwise for 1x1 stride-1 unpadded convolutions
    and implicit GEMM otherwise, except where they cannot win or cannot be
    exact: one input channel per group on a CUDA build without the
    depthwise kernels (direct), fp64 (no fp64 tensor-core path) and fp32 when
    ``torch.backends.cudnn.allow_tf32`` is off (exact fp32 is the direct
    kernels' FMA). im2col is never chosen by ``auto``: it is the reference
    formulation the implicit GEMM is measured against.
    """
    available = _available(backend)
    if is_depthwise(g) and "depthwise" in available:
        return "depthwise"
    if backend == "cpu":
        return "im2col" if _is_fully_connected(g) else "implicit_gemm"
    exact_fp32 = dtype == torch.float32 and not tf32_allowed()
    if (g.C_g == 1 or dtype == torch.float64 or exact_fp32
            or "implicit_gemm" not in available):
        return "direct"
    return "pointwise" if is_pointwise(g) else "implicit_gemm"


def _geometry(input: Tensor, weight: Tensor, bias: Optional[Tensor], stride: Sequence[int],
              padding: Sequence[int], dilation: Sequence[int], groups: int,
              activation: str, algorithm: str,
              residual: Optional[Tensor] = None) -> Conv2dGeometry:
    """Validate everything that does not depend on the backend."""
    _args.check_tensor(input, "input", ndim=4)
    _args.check_tensor(weight, "weight", ndim=4)
    if bias is not None:
        _args.check_tensor(bias, "bias", ndim=1)
    if residual is not None:
        _args.check_tensor(residual, "residual", ndim=4)
    if not input.dtype.is_floating_point:
        raise TypeError(f"input must be a floating-point tensor, got {input.dtype}")
    _args.check_same(input, "input", {"weight": weight, "bias": bias, "residual": residual})
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
    _backend.check_choice("conv_algorithm", algorithm, ("auto", *ALGORITHMS))

    N, C, H, W = input.shape
    K, C_g, R, S = weight.shape
    if K == 0 or C == 0:
        raise ValueError(f"input and weight need at least one channel, got input "
                         f"{tuple(input.shape)} and weight {tuple(weight.shape)}")
    if (H == 0 or W == 0) and N > 0:
        raise ValueError(f"input must have non-zero height and width unless the batch is "
                         f"empty (like torch), got shape {tuple(input.shape)}")
    if R == 0 or S == 0:
        raise ValueError(f"the kernel size (weight.shape[2:]) must be greater than zero, got "
                         f"{tuple(weight.shape[2:])}")
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
    _args.check_int64_safe("the padded input height", H + pt + pb)
    _args.check_int64_safe("the padded input width", W + pl + pr)
    _args.check_int64_safe("the dilated kernel height", dh * (R - 1) + 1)
    _args.check_int64_safe("the dilated kernel width", dw * (S - 1) + 1)
    P = _args.conv_output_size(H, R, sh, pt, pb, dh)
    Q = _args.conv_output_size(W, S, sw, pl, pr, dw)
    if P < 1 or Q < 1:
        raise ValueError(
            f"output size ({P}, {Q}) is too small: input ({H}, {W}) with padding "
            f"{list(padding)} is smaller than the dilated kernel "
            f"({dh * (R - 1) + 1}, {dw * (S - 1) + 1})")
    # A single output row reads from row -pad_top whatever the stride, a
    # one-row filter whatever the dilation: 1 there keeps a stride or
    # dilation up to 2^63 - 1 (torch takes them) out of the kernels' arithmetic.
    sh, sw = (1 if P == 1 else sh), (1 if Q == 1 else sw)
    dh, dw = (1 if R == 1 else dh), (1 if S == 1 else dw)
    if residual is not None and tuple(residual.shape) != (N, K, P, Q):
        raise ValueError(f"residual must have the output's shape {(N, K, P, Q)} (it is not "
                         f"broadcast), got {tuple(residual.shape)}")
    act = _args.activation(None if activation == "none" else activation)
    return Conv2dGeometry(N, C, H, W, K, R, S, P, Q, sh, sw, pt, pl, dh, dw, groups, act)


def _output_geometry(output_shape, activation: str) -> Conv2dGeometry:
    """The output (N, K, P, Q) and the activation as the geometry of a 1 x 1
    convolution producing it: all conv2d_activation_grad reads."""
    N, K, P, Q = output_shape
    return Conv2dGeometry(N, K, P, Q, K, 1, 1, P, Q, 1, 1, 0, 0, 1, 1, 1,
                          _args.activation(None if activation == "none" else activation))


def _grad_weight_workspace(backend: str, algorithm: str, g: Conv2dGeometry, x: Tensor) -> tuple:
    """The CUDA grad_weight launchers' scratch for their split reduction,
    from torch's caching allocator (``conv2d_<algorithm>_grad_weight_
    workspace_bytes``); the other backends take none."""
    if backend != "cuda":
        return ()
    nbytes = getattr(_ext.cuda_kernels(), f"conv2d_{algorithm}_grad_weight_workspace_bytes")(
        _ext.dtype_code(x.dtype), g)
    return (torch.empty(nbytes, dtype=torch.uint8, device=x.device),)


def _triton_activation():
    from cnnkernels.kernels.conv2d import activation

    return activation


class _Launchers:
    """An algorithm whose directions are one launcher each on every backend,
    ``{PREFIX}_forward``, ``{PREFIX}_grad_input`` and ``{PREFIX}_grad_weight``
    (with the CUDA workspace that ``conv2d_{WORKSPACE}_grad_weight_workspace_
    bytes`` sizes): kernels/conv2d/{TRITON_MODULE}.py (imported on first
    use) or _C's, each called with the backend's ``_flags`` last."""

    BACKENDS = ("cpu", "cuda", "triton")
    PREFIX: str
    WORKSPACE: str
    TRITON_MODULE: str

    @classmethod
    def _launchers(cls, backend, like):
        return _ext.launchers(backend, like, lambda: importlib.import_module(
            f"cnnkernels.kernels.conv2d.{cls.TRITON_MODULE}"))

    @staticmethod
    def _flags(backend: str) -> tuple:
        return ()

    @classmethod
    def forward(cls, backend: str, g: Conv2dGeometry, x, w, bias, residual, y, preact) -> None:
        getattr(cls._launchers(backend, x), f"{cls.PREFIX}_forward")(
            g, x, w, bias, residual, y, preact, *cls._flags(backend))

    @classmethod
    def grad_input(cls, backend: str, g: Conv2dGeometry, grad_y, y, w, grad_x) -> None:
        getattr(cls._launchers(backend, grad_y), f"{cls.PREFIX}_grad_input")(
            g, grad_y, y, w, grad_x, *cls._flags(backend))

    @classmethod
    def grad_weight(cls, backend: str, g: Conv2dGeometry, grad_y, y, x, grad_w,
                    grad_bias) -> None:
        getattr(cls._launchers(backend, x), f"{cls.PREFIX}_grad_weight")(
            g, grad_y, y, x, grad_w, grad_bias,
            *_grad_weight_workspace(backend, cls.WORKSPACE, g, x), *cls._flags(backend))


class _Direct(_Launchers):
    """The direct algorithm's kernels on each backend (launchers
    ``conv2d_direct_*``): kernels/conv2d/direct.py (Triton),
    csrc/cpu/conv2d/direct.cpp and csrc/cuda/conv2d/direct.cu (through _C)."""

    PREFIX, WORKSPACE, TRITON_MODULE = "conv2d_direct", "direct", "direct"


def _tf32_flag(backend: str) -> tuple:
    """The CUDA tensor-core launchers take torch's TF32 switch for
    convolutions; Triton's read it themselves, the cpu's have no TF32."""
    return (tf32_allowed(),) if backend == "cuda" else ()


class _ImplicitGemm(_Launchers):
    """The implicit_gemm algorithm (launchers ``conv2d_implicit_gemm_*``):
    kernels/conv2d/implicit_gemm.py (Triton, tensor cores),
    csrc/cpu/conv2d/implicit_gemm.cpp (the cpu GEMM core) and
    csrc/cuda/conv2d/implicit_gemm.cu (mma.sync)."""

    PREFIX, WORKSPACE, TRITON_MODULE = "conv2d_implicit_gemm", "implicit_gemm", "implicit_gemm"
    _flags = staticmethod(_tf32_flag)


class _Pointwise(_ImplicitGemm):
    """The pointwise algorithm: 1x1 convolutions with stride 1 and no
    padding as a plain GEMM over the N*H*W pixels (launchers
    ``conv2d_pointwise_*``): in Triton the implicit GEMM kernels specialised
    for that shape (no gather); on the cpu and cuda backends the implicit
    GEMM launchers, whose 1x1 path already is that GEMM (the cpu packs pixel
    panels directly; the cuda kernel's tap loop has one tap)."""

    PREFIX = "conv2d_pointwise"

    @classmethod
    def _launchers(cls, backend, like):
        if backend == "triton":
            return super()._launchers(backend, like)
        return _ImplicitGemmLaunchers(_ext.native(backend, like))


class _ImplicitGemmLaunchers:
    """``conv2d_pointwise_*`` on the cpu and cuda backends: the implicit GEMM
    launchers."""

    def __init__(self, native):
        self._native = native

    def __getattr__(self, name: str):
        return getattr(self._native, name.replace("conv2d_pointwise", "conv2d_implicit_gemm"))


def _triton_im2col():
    from cnnkernels.kernels.conv2d import im2col

    return im2col


class _Im2col:
    """The im2col algorithm, the course's formulation: the patch matrix
    (N, groups*C/groups*R*S, P, Q) written by ``conv2d_im2col`` (our kernel
    on each backend), then the backend's pointwise GEMM with the fused
    epilogue; grad_weight runs the pointwise grad_weight on recomputed
    patches, grad_input the pointwise grad_input into patch gradients that
    ``conv2d_col2im`` gathers back onto the input (no atomics). The patch
    matrix costs N*P*Q*C*R*S elements of memory and two passes over it: the
    baseline the implicit GEMM, which never writes it, is measured against.

    The patch channels follow the weight's memory order, (c, r, s) for a
    contiguous weight and (r, s, c) for a channels_last one, so that the
    weight is the GEMM's (K, C/groups*R*S) operand without a copy; any other
    weight layout is copied to contiguous first."""

    BACKENDS = ("cpu", "cuda", "triton")

    @staticmethod
    def _pointwise_geometry(g: Conv2dGeometry, activation=None) -> Conv2dGeometry:
        J = g.C_g * g.R * g.S
        return Conv2dGeometry(g.N, g.groups * J, g.P, g.Q, g.K, 1, 1, g.P, g.Q, 1, 1, 0, 0, 1, 1,
                              g.groups, g.activation if activation is None else activation)

    @staticmethod
    def _patches(backend: str, g: Conv2dGeometry, x: Tensor, taps_channels_last: bool) -> Tensor:
        J = g.C_g * g.R * g.S
        patches = _args.empty_4d((g.N, g.groups * J, g.P, g.Q), x, True)
        _ext.launchers(backend, x, _triton_im2col).conv2d_im2col(g, x, patches,
                                                                 taps_channels_last)
        return patches

    @classmethod
    def _weight_operand(cls, w: Tensor) -> tuple[Tensor, bool]:
        taps_channels_last = _args.is_channels_last(w)
        if not (taps_channels_last or w.is_contiguous()):
            w = w.contiguous()
        return cls._gemm_view(w, taps_channels_last), taps_channels_last

    @staticmethod
    def _gemm_view(w: Tensor, taps_channels_last: bool) -> Tensor:
        """The (K, C/groups*R*S, 1, 1) GEMM view of a contiguous or
        channels_last weight (or weight gradient), no copy."""
        K, C_g, R, S = w.shape
        return w.as_strided((K, C_g * R * S, 1, 1), (w.stride(0), 1, 1, 1))

    @classmethod
    def forward(cls, backend: str, g: Conv2dGeometry, x, w, bias, residual, y, preact) -> None:
        w_gemm, taps_channels_last = cls._weight_operand(w)
        patches = cls._patches(backend, g, x, taps_channels_last)
        _Pointwise.forward(backend, cls._pointwise_geometry(g), patches, w_gemm, bias, residual,
                           y, preact)

    @classmethod
    def grad_input(cls, backend: str, g: Conv2dGeometry, grad_y, y, w, grad_x) -> None:
        w_gemm, taps_channels_last = cls._weight_operand(w)
        g1 = cls._pointwise_geometry(g)
        grad_patches = _args.empty_4d((g1.N, g1.C, g1.H, g1.W), grad_y, True)
        _Pointwise.grad_input(backend, g1, grad_y, y, w_gemm, grad_patches)
        _ext.launchers(backend, grad_y, _triton_im2col).conv2d_col2im(
            g, grad_patches, grad_x, taps_channels_last)

    @classmethod
    def grad_weight(cls, backend: str, g: Conv2dGeometry, grad_y, y, x, grad_w,
                    grad_bias) -> None:
        taps_channels_last = _args.is_channels_last(grad_w)
        target = grad_w if taps_channels_last or grad_w.is_contiguous() else None
        gemm_grad = torch.empty_like(grad_w, memory_format=torch.contiguous_format) \
            if target is None else target
        patches = cls._patches(backend, g, x, taps_channels_last)
        _Pointwise.grad_weight(backend, cls._pointwise_geometry(g), grad_y, y, patches,
                               cls._gemm_view(gemm_grad, taps_channels_last), grad_bias)
        if target is None:
            grad_w.copy_(gemm_grad)


class _Depthwise(_Launchers):
    """The depthwise algorithm, one input channel per group (launchers
    ``conv2d_depthwise_*``): csrc/cpu/conv2d/depthwise.cpp (padded planes,
    taps in registers, plane kernels per instruction set),
    kernels/conv2d/depthwise.py (Triton) and csrc/cuda/conv2d/depthwise.cu
    (spatial tiles, taps in registers; grad_weight a fixed-order split)."""

    PREFIX, WORKSPACE, TRITON_MODULE = "conv2d_depthwise", "depthwise", "depthwise"


_ALGORITHM_KERNELS = {"direct": _Direct, "implicit_gemm": _ImplicitGemm, "pointwise": _Pointwise,
                      "im2col": _Im2col, "depthwise": _Depthwise}


def _available(backend: str) -> tuple[str, ...]:
    """The algorithms whose kernels exist on ``backend`` in this build (the
    CUDA build may predate the tensor-core kernels)."""
    if backend != "cuda":
        return tuple(a for a, k in _ALGORITHM_KERNELS.items() if backend in k.BACKENDS)
    if not _ext.has_cuda_kernels():
        return ("direct",)
    launchers = {"direct": "conv2d_direct_forward", "implicit_gemm": "conv2d_implicit_gemm_forward",
                 "pointwise": "conv2d_implicit_gemm_forward", "im2col": "conv2d_im2col",
                 "depthwise": "conv2d_depthwise_forward"}
    return tuple(a for a, launcher in launchers.items()
                 if hasattr(_ext.cuda_kernels(), launcher))


def _kernels(g: Conv2dGeometry, algorithm: str, backend: str, direction: str, dtype):
    chosen = route(g, backend, direction, dtype) if algorithm == "auto" else algorithm
    if chosen not in _available(backend):
        raise ValueError(f"conv_algorithm {algorithm!r} does not run on the {backend!r} backend, "
                         f"which has {', '.join(_available(backend))}; use "
                         f"conv_algorithm='auto' or one of those")
    if chosen == "pointwise" and not is_pointwise(g):
        raise ValueError(f"conv_algorithm 'pointwise' takes 1x1 convolutions with stride 1 and "
                         f"no padding, got a {g.R}x{g.S} kernel, stride "
                         f"({g.stride_h}, {g.stride_w}), padding ({g.pad_top}, {g.pad_left}); "
                         f"use 'implicit_gemm' or 'auto'")
    if chosen == "depthwise" and not is_depthwise(g):
        raise ValueError(f"conv_algorithm 'depthwise' takes one input channel per group "
                         f"(groups == in_channels), got {g.C} input channels in {g.groups} "
                         f"groups; use 'direct', 'implicit_gemm' or 'auto'")
    return _ALGORITHM_KERNELS[chosen]


def _channels_last(input: Tensor, weight: Tensor) -> bool:
    """torch's rule for a convolution's output and both its gradients:
    channels_last when the input or the weight is, except for float64 on
    CUDA, which torch's convolution always keeps contiguous."""
    return ((_args.is_channels_last(input) or _args.is_channels_last(weight))
            and not (input.is_cuda and input.dtype == torch.float64))


def _forward_outputs(shape: tuple, input: Tensor, weight: Tensor, activation: str,
                     keep_preactivation: bool) -> tuple:
    """A forward op's (output, preactivation, preact): the output of
    ``shape`` in torch's memory format; the pre-activation z when the
    activation is silu and it is kept, else an empty tensor; preact, z for
    the launchers (None when not kept)."""
    channels_last = _channels_last(input, weight)
    output = _args.empty_4d(shape, input, channels_last)
    kept = activation == "silu" and keep_preactivation
    preactivation = (_args.empty_4d(output.shape, input, channels_last) if kept
                     else input.new_empty(0))
    return output, preactivation, preactivation if kept else None


@define_op("cnnk::conv2d", returns=tuple[Tensor, Tensor], autocast=True)
def conv2d_op(input: Tensor, weight: Tensor, bias: Optional[Tensor], residual: Optional[Tensor],
              stride: Sequence[int], padding: Sequence[int], dilation: Sequence[int], groups: int,
              activation: str, keep_preactivation: bool, algorithm: str,
              backend: str) -> Launch:
    """(output, preactivation): output = act(conv + bias + residual); the
    preactivation z = conv + bias + residual when the activation is silu and
    ``keep_preactivation`` (what silu's derivative reads), else an empty
    tensor."""
    g = _geometry(input, weight, bias, stride, padding, dilation, groups, activation, algorithm,
                  residual)
    output, preactivation, preact = _forward_outputs((g.N, g.K, g.P, g.Q), input, weight,
                                                     activation, keep_preactivation)
    return Launch((output, preactivation),
                  {"input": input, "weight": weight, "bias": bias, "residual": residual,
                   "output": output, "preactivation": preact},
                  lambda b: _kernels(g, algorithm, b, "forward", input.dtype).forward(
                      b, g, input, weight, bias, residual, output, preact),
                  g.index_extent())


def _grad_geometry(grad_output, output, input, weight, stride, padding, dilation, groups,
                   activation, algorithm) -> Conv2dGeometry:
    g = _geometry(input, weight, None, stride, padding, dilation, groups, activation, algorithm)
    expected = (g.N, g.K, g.P, g.Q)
    _check_grad_output(grad_output, expected, input, output)
    _check_saved(output, activation, expected)
    return g


def _check_grad_output(grad_output: Tensor, expected: tuple, input: Tensor,
                       output: Optional[Tensor] = None) -> None:
    """A backward op's grad_output: 4-D, of the forward output's shape
    ``expected``, with input's dtype and device (and output's, if given)."""
    _args.check_tensor(grad_output, "grad_output", ndim=4)
    _args.check_same(input, "input", {"grad_output": grad_output, "output": output})
    if tuple(grad_output.shape) != expected:
        raise ValueError(f"grad_output must have the output's shape {expected}, "
                         f"got {tuple(grad_output.shape)}")


def _check_saved(output: Optional[Tensor], activation: str, expected: tuple) -> None:
    """The tensor an activation's derivative is read from: the forward
    output, or for silu the pre-activation (cnnk/conv2d.h)."""
    if output is not None:
        _args.check_tensor(output, "output", ndim=4)
    if activation != "none":
        if output is None:
            raise ValueError(f"output (the forward output; for silu the pre-activation) is "
                             f"needed to differentiate the fused activation {activation!r}")
        if tuple(output.shape) != expected:
            raise ValueError(f"output must have shape {expected}, got {tuple(output.shape)}")


@define_op("cnnk::conv2d_grad_input", returns=Tensor)
def conv2d_grad_input_op(grad_output: Tensor, output: Optional[Tensor], input: Tensor,
                         weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                         dilation: Sequence[int], groups: int, activation: str, algorithm: str,
                         backend: str) -> Launch:
    """grad_output (through the activation's derivative at ``output``: the
    forward output, or for silu the pre-activation) back through the
    convolution; ``input`` gives only the shape and format."""
    g = _grad_geometry(grad_output, output, input, weight, stride, padding, dilation, groups,
                       activation, algorithm)
    grad_input = _args.empty_4d(input.shape, input, _channels_last(input, weight))
    return Launch(grad_input, {"grad_output": grad_output, "output": output, "weight": weight,
                               "grad_input": grad_input},
                  lambda b: _kernels(g, algorithm, b, "grad_input", grad_output.dtype).grad_input(
                      b, g, grad_output, output, weight, grad_input),
                  g.index_extent())


@define_op("cnnk::conv2d_grad_weight", returns=tuple[Tensor, Tensor])
def conv2d_grad_weight_op(grad_output: Tensor, output: Optional[Tensor], input: Tensor,
                          weight: Tensor, stride: Sequence[int], padding: Sequence[int],
                          dilation: Sequence[int], groups: int, activation: str, algorithm: str,
                          backend: str) -> Launch:
    """(grad_weight, grad_bias) from grad_output (masked as in grad_input)
    and the input; ``weight`` gives only the shape and format."""
    g = _grad_geometry(grad_output, output, input, weight, stride, padding, dilation, groups,
                       activation, algorithm)
    grad_weight = _args.empty_4d(weight.shape, weight, _channels_last(input, weight))
    grad_bias = torch.empty(weight.shape[0], dtype=weight.dtype, device=weight.device)
    return Launch((grad_weight, grad_bias),
                  {"grad_output": grad_output, "output": output, "input": input,
                   "grad_weight": grad_weight},
                  lambda b: _kernels(g, algorithm, b, "grad_weight", input.dtype).grad_weight(
                      b, g, grad_output, output, input, grad_weight, grad_bias),
                  g.index_extent(), empty_sum=g.N == 0)


@define_op("cnnk::conv2d_activation_grad", returns=Tensor)
def conv2d_activation_grad_op(grad_output: Tensor, output: Optional[Tensor], activation: str,
                              backend: str) -> Launch:
    """grad_output * act'(output), elementwise: the gradient of the
    pre-activation z (and of the residual). ``output`` is the forward
    output for relu and relu6, the pre-activation for silu."""
    _args.check_tensor(grad_output, "grad_output", ndim=4)
    if not grad_output.dtype.is_floating_point:
        raise TypeError(f"grad_output must be a floating-point tensor, got {grad_output.dtype}")
    _args.check_same(grad_output, "grad_output", {"output": output})
    g = _output_geometry(tuple(grad_output.shape), activation)
    _check_saved(output, activation, tuple(grad_output.shape))
    grad_z = _args.empty_4d(grad_output.shape, grad_output, _args.is_channels_last(grad_output))
    return Launch(grad_z, {"grad_output": grad_output, "output": output, "grad_z": grad_z},
                  lambda b: _ext.launchers(b, grad_output, _triton_activation)
                  .conv2d_activation_grad(g, grad_output, output, grad_z),
                  g.index_extent())


def _activation_grad(grad: Tensor, saved: Optional[Tensor], activation: str,
                     backend: str) -> Tensor:
    """grad through the fused activation (cnnk::activation_grad, our
    kernels): itself without one."""
    if activation == "none":
        return grad
    return conv2d_activation_grad_op(grad, saved, activation, backend)


def _silu_second_derivative(z: Tensor) -> Tensor:
    """silu''(z) = s (1 - s) (2 + z (1 - 2 s)), s = sigmoid(z); torch
    differentiates it further."""
    s = torch.sigmoid(z)
    return s * (1 - s) * (2 + z * (1 - 2 * s))


def _through_saved(grad: Tensor, saved: Tensor, saved_term: Optional[Tensor],
                   activation: str) -> Optional[Tensor]:
    """The derivative of grad * act'(saved) with respect to saved, applied
    to ``saved_term`` (a tangent or a cotangent): grad * act''(saved) *
    saved_term for silu; None (zero) for relu and relu6, whose derivative
    is piecewise constant."""
    if activation != "silu" or saved_term is None:
        return None
    return grad * _silu_second_derivative(saved) * saved_term


def _activation_grad_vjp(cotangent: Tensor, grad: Tensor, saved: Optional[Tensor],
                         activation: str, backend: str):
    """The reverse-mode derivative of grad * act'(saved) with respect to
    (grad, saved), for the cotangent."""
    return (_activation_grad(cotangent, saved, activation, backend),
            _through_saved(grad, saved, cotangent, activation))


def _activation_grad_setup(ctx, inputs, output) -> None:
    grad_output, saved, activation, backend = inputs
    save(ctx, grad_output, saved)
    ctx.params = (activation, backend)


def _activation_grad_backward(ctx, cotangent):
    grad_output, saved = ctx.saved_tensors
    return (*_activation_grad_vjp(cotangent, grad_output, saved, *ctx.params), None, None)


def _activation_grad_jvp(ctx, grad_output_tangent, saved_tangent, *_):
    grad_output, saved = ctx.saved_tensors
    activation, backend = ctx.params
    return _sum(
        None if grad_output_tangent is None
        else _activation_grad(grad_output_tangent, saved, activation, backend),
        _through_saved(grad_output, saved, saved_tangent, activation))


conv2d_activation_grad_op.register_derivatives(setup_context=_activation_grad_setup,
                                               backward=_activation_grad_backward,
                                               jvp=_activation_grad_jvp)


def _sum(*terms: Optional[Tensor]) -> Optional[Tensor]:
    """The sum of the terms that are not None (None if all are)."""
    present = [t for t in terms if t is not None]
    return None if not present else sum(present[1:], present[0])


def _unmasked(params: tuple) -> tuple:
    """The backward ops' trailing parameters with no activation to apply."""
    stride, padding, dilation, groups, _, algorithm, backend = params
    return (stride, padding, dilation, groups, "none", algorithm, backend)


def _save_fused(ctx, op: str, input: Tensor, weight: Tensor, bias: Optional[Tensor],
                outputs: tuple, activation: str, keep: bool) -> None:
    """The setup a forward op with a fused activation shares (``op``: its
    name, for the error): input, weight and the tensor the activation's
    derivative reads (the output; silu's pre-activation) saved, and what
    the backward and jvp ask of the bias and the outputs."""
    output, preactivation = outputs
    if activation == "silu" and not keep:
        raise ValueError(f"{op} with activation 'silu' is differentiated from its "
                         f"pre-activation: call it with keep_preactivation=True")
    saved = {"none": None, "silu": preactivation}.get(activation, output)
    save(ctx, input, weight, saved)
    ctx.has_bias = bias is not None
    ctx.kept_preactivation = activation == "silu"
    ctx.output_shape = output.shape
    # Unused outputs' gradients arrive as None (the pre-activation's, but in
    # silu's double backward), not as tensors of zeros.
    ctx.set_materialize_grads(False)


def _fused_jvp(ctx, conv, input: Tensor, weight: Tensor, saved: Optional[Tensor],
               activation: str, backend: str, input_tangent, weight_tangent, bias_tangent,
               residual_tangent=None) -> tuple:
    """The tangents (output, pre-activation) of a convolution ``conv(x, w,
    b)`` (no activation) with a fused activation: bilinear in (input,
    weight), affine in the bias and the residual, which gives z's tangent;
    y's is act'(z) times it."""
    tangent = _sum(
        None if input_tangent is None else conv(input_tangent, weight, None),
        None if weight_tangent is None else conv(input, weight_tangent, bias_tangent),
        None if bias_tangent is None or weight_tangent is not None
        else bias_tangent[None, :, None, None].expand(ctx.output_shape),
        residual_tangent)
    preactivation_tangent = tangent if ctx.kept_preactivation else tangent.new_zeros(0)
    return _activation_grad(tangent, saved, activation, backend), preactivation_tangent


def _conv2d_setup(ctx, inputs, outputs) -> None:
    (input, weight, bias, _residual, stride, padding, dilation, groups, activation, keep,
     algorithm, backend) = inputs
    _save_fused(ctx, "conv2d", input, weight, bias, outputs, activation, keep)
    ctx.params = (stride, padding, dilation, groups, activation, algorithm, backend)


def _conv2d_backward(ctx, grad_output, grad_preactivation):
    input, weight, saved = ctx.saved_tensors
    params = ctx.params
    activation, backend = params[4], params[6]
    needs = ctx.needs_input_grad
    if grad_preactivation is not None and grad_preactivation.numel() == 0:
        grad_preactivation = None
    grad_input = grad_weight = grad_bias = grad_residual = None
    if grad_output is None and grad_preactivation is None:
        return grad_input, grad_weight, grad_bias, grad_residual, *([None] * 8)
    if needs[3] or grad_preactivation is not None:
        # grad_z once (the residual's gradient), read by the kernels below
        # with no activation left to apply.
        grad_z = _sum(None if grad_output is None
                      else _activation_grad(grad_output, saved, activation, backend),
                      grad_preactivation)
        grad, saved, params = grad_z, None, _unmasked(params)
        grad_residual = grad_z if needs[3] else None
    else:
        grad = grad_output
    if needs[0]:
        grad_input = conv2d_grad_input_op(grad, saved, input, weight, *params)
    if needs[1] or needs[2]:
        grad_weight, grad_bias = conv2d_grad_weight_op(grad, saved, input, weight, *params)
        if not ctx.has_bias:
            grad_bias = None
    return grad_input, grad_weight, grad_bias, grad_residual, *([None] * 8)


def _conv2d_jvp(ctx, input_tangent, weight_tangent, bias_tangent, residual_tangent, *_):
    input, weight, saved = ctx.saved_tensors
    stride, padding, dilation, groups, activation, algorithm, backend = ctx.params

    def conv(x, w, b):
        return conv2d_op(x, w, b, None, stride, padding, dilation, groups, "none", False,
                         algorithm, backend)[0]

    return _fused_jvp(ctx, conv, input, weight, saved, activation, backend, input_tangent,
                      weight_tangent, bias_tangent, residual_tangent)


conv2d_op.register_derivatives(setup_context=_conv2d_setup, backward=_conv2d_backward,
                               jvp=_conv2d_jvp)


def _grad_setup(ctx, inputs, output) -> None:
    grad_output, output, input, weight, *params = inputs
    save(ctx, grad_output, output, input, weight)
    ctx.params = tuple(params)


def _forward_conv(params: tuple, x: Tensor, w: Tensor, b: Optional[Tensor]) -> Tensor:
    """The plain forward convolution with the backward ops' parameters."""
    stride, padding, dilation, groups, _, algorithm, backend = params
    return conv2d_op(x, w, b, None, stride, padding, dilation, groups, "none", False, algorithm,
                     backend)[0]


def _grad_input_backward(ctx, grad_grad_input):
    """grad_input is linear in grad_output' = grad_output * act'(output)
    (its adjoint is the forward convolution, taken back through
    grad_output' to grad_output and output) and in the weight (its adjoint
    is grad_weight)."""
    grad_output, saved, _, weight = ctx.saved_tensors
    activation, backend = ctx.params[4], ctx.params[6]
    grad_grad_output = grad_saved = grad_weight = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        grad_grad_output, grad_saved = _activation_grad_vjp(
            _forward_conv(ctx.params, grad_grad_input, weight, None), grad_output, saved,
            activation, backend)
    if ctx.needs_input_grad[3]:
        grad_weight, _ = conv2d_grad_weight_op(grad_output, saved, grad_grad_input, weight,
                                               *ctx.params)
    return grad_grad_output, grad_saved, None, grad_weight, *([None] * 7)


def _grad_input_jvp(ctx, grad_output_tangent, saved_tangent, _input, weight_tangent, *_):
    """Linear in grad_output and in the weight; through the saved tensor
    only for silu."""
    grad_output, saved, input, weight = ctx.saved_tensors
    through_saved = _through_saved(grad_output, saved, saved_tangent, ctx.params[4])
    return _sum(
        None if grad_output_tangent is None else
        conv2d_grad_input_op(grad_output_tangent, saved, input, weight, *ctx.params),
        None if weight_tangent is None else
        conv2d_grad_input_op(grad_output, saved, input, weight_tangent, *ctx.params),
        None if through_saved is None else
        conv2d_grad_input_op(through_saved, None, input, weight, *_unmasked(ctx.params)))


conv2d_grad_input_op.register_derivatives(setup_context=_grad_setup,
                                          backward=_grad_input_backward, jvp=_grad_input_jvp)


def _grad_weight_backward(ctx, grad_grad_weight, grad_grad_bias):
    """grad_weight is linear in grad_output' (its adjoint is the forward
    convolution of the input, grad_bias's the broadcast, taken back as in
    grad_input) and in the input (its adjoint is grad_input)."""
    grad_output, saved, input, _ = ctx.saved_tensors
    activation, backend = ctx.params[4], ctx.params[6]
    grad_grad_output = grad_saved = grad_input = None
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        grad_grad_output, grad_saved = _activation_grad_vjp(
            _forward_conv(ctx.params, input, grad_grad_weight, grad_grad_bias), grad_output,
            saved, activation, backend)
    if ctx.needs_input_grad[2]:
        grad_input = conv2d_grad_input_op(grad_output, saved, input, grad_grad_weight,
                                          *ctx.params)
    return grad_grad_output, grad_saved, grad_input, None, *([None] * 7)


def _grad_weight_jvp(ctx, grad_output_tangent, saved_tangent, input_tangent, *_):
    """Linear in grad_output; grad_weight (not grad_bias) is also linear in
    the input; through the saved tensor only for silu."""
    grad_output, saved, input, weight = ctx.saved_tensors
    weight_tangent = bias_tangent = None
    if grad_output_tangent is not None:
        weight_tangent, bias_tangent = conv2d_grad_weight_op(grad_output_tangent, saved, input,
                                                             weight, *ctx.params)
    if input_tangent is not None:
        weight_tangent = _sum(weight_tangent, conv2d_grad_weight_op(
            grad_output, saved, input_tangent, weight, *ctx.params)[0])
    through_saved = _through_saved(grad_output, saved, saved_tangent, ctx.params[4])
    if through_saved is not None:
        extra_weight, extra_bias = conv2d_grad_weight_op(through_saved, None, input, weight,
                                                         *_unmasked(ctx.params))
        weight_tangent, bias_tangent = (_sum(weight_tangent, extra_weight),
                                        _sum(bias_tangent, extra_bias))
    return weight_tangent, bias_tangent


conv2d_grad_weight_op.register_derivatives(setup_context=_grad_setup,
                                           backward=_grad_weight_backward, jvp=_grad_weight_jvp)


def conv2d(input: Tensor, weight: Tensor, bias: Optional[Tensor] = None, stride=1, padding=0,
           dilation=1, groups: int = 1, *, activation: Optional[str] = None,
           residual: Optional[Tensor] = None, backend: Optional[str] = None) -> Tensor:
    """``torch.nn.functional.conv2d`` on cnnkernels' kernels, with a fused
    epilogue: ``activation(conv2d(input, weight, bias, ...) + residual)``.

    Same arguments, defaults and result (shape, dtype, memory format) as
    torch: stride/padding/dilation take an int or a pair, padding also
    "same" or "valid"; input may be 3-D (unbatched); under autocast it runs
    in the autocast dtype. ``residual`` (a ResNet block's shortcut) is a
    tensor of exactly the output's shape (it is not broadcast), any layout,
    of the input's dtype and device, added before the activation;
    ``activation`` is None, "relu", "relu6" or "silu". Both are applied in
    the kernel's epilogue (one pass over the output) and their gradients in
    the backward kernels; the residual's gradient is grad_output through the
    activation's derivative. The algorithm comes from ``cnnkernels.use``,
    the backend too unless ``backend`` pins this call to one ("auto",
    "cpu", "cuda", "triton").
    """
    _args.check_tensor(input, "input", ndim=(3, 4))
    _args.check_tensor(weight, "weight", ndim=4)
    if bias is not None:
        _args.check_tensor(bias, "bias", ndim=1)
    if residual is not None:
        _args.check_tensor(residual, "residual", ndim=input.dim())
    unbatched = input.dim() == 3
    if unbatched:
        input = input.unsqueeze(0)
        residual = None if residual is None else residual.unsqueeze(0)
    groups = _args.positive_int(groups, "groups")
    stride = _args.pair(stride, "stride", minimum=1)
    dilation = _args.pair(dilation, "dilation", minimum=1)
    padding = _args.conv_padding(padding, tuple(weight.shape[2:]), stride, dilation)
    act = _args.activation(activation).name
    # silu's derivative reads the pre-activation: kept only when needed.
    keep = act == "silu" and derivatives_needed((input, weight, bias, residual))
    output, _ = conv2d_op(input, weight, bias, residual, list(stride), list(padding),
                          list(dilation), groups, act, keep, _backend.current_conv_algorithm(),
                          _backend.requested(backend))
    return output.squeeze(0) if unbatched else output
